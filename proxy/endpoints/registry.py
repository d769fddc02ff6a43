"""The handler that answers each API surface (the surfaces themselves: ``llm_proxy.core.surfaces``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from starlette.types import ASGIApp

from llm_proxy.core.surfaces import SURFACES
from llm_proxy.endpoints.chat import chat_completions
from llm_proxy.endpoints.embeddings import create_embeddings
from llm_proxy.endpoints.images import generate_images
from llm_proxy.endpoints.info import list_models
from llm_proxy.endpoints.messages import count_tokens, messages
from llm_proxy.endpoints.responses import responses

__all__ = ["HANDLERS"]

HANDLERS: Mapping[str, ASGIApp] = MappingProxyType({
    "chat.completions": chat_completions,
    "messages": messages,
    "messages.count_tokens": count_tokens,
    "responses": responses,
    "embeddings": create_embeddings,
    "images.generations": generate_images,
    "models": list_models,
})

_missing = {s.name for s in SURFACES} ^ set(HANDLERS)
if _missing:  # a surface without a handler (or a handler without a surface) is a bug, not a 404
    raise RuntimeError(f"surfaces and handlers disagree: {sorted(_missing)}")
