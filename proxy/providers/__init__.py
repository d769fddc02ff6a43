"""The wire-format registry: one ``WireFormat`` per provider ``type``, each in its own module.

``type: openai`` is every OpenAI-compatible server (OpenAI, DeepSeek, Moonshot, xAI, Mistral,
vLLM, ...): configuration, not code. A new format is one module and one entry below.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from llm_proxy.core.wire import WireFormat
from llm_proxy.providers import anthropic, gemini, ollama, openai

__all__ = ["FORMATS", "wire_format"]

FORMATS: Mapping[str, WireFormat] = MappingProxyType({
    fmt.name: fmt for fmt in (openai.FORMAT, anthropic.FORMAT, gemini.FORMAT, ollama.FORMAT)
})


def wire_format(type_name: str) -> WireFormat:
    """The format of a provider ``type``; ValueError for a type no module implements."""
    fmt = FORMATS.get(type_name)
    if fmt is None:
        raise ValueError(f"no wire format for provider type {type_name!r}")
    return fmt
