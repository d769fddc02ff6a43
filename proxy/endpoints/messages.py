"""``POST /v1/messages`` (Anthropic Messages API) and ``/v1/messages/count_tokens``.

When the deployment tried passes Messages through (Anthropic), the client's bytes go up and
Anthropic's come back, read only for metering — thinking signatures, cache control and beta
features survive. Any other is reached through chat (``endpoints.translated``), so a
Claude-Code-style client works against OpenAI, Gemini, DeepSeek or Ollama models, and a
request fails over between the two kinds, decided per attempt.
"""

from __future__ import annotations

import os

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext
from llm_proxy.core.errors import send_json
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.scope import header
from llm_proxy.core.wire import StreamDecoder
from llm_proxy.endpoints.translated import ErrorEvent, serve
from llm_proxy.inbound import anthropic_messages as inbound
from llm_proxy.inbound.anthropic_messages import EventStream
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.dispatch import Upstream, forward_body, send_native, with_plugins

__all__ = ["count_tokens", "messages"]

_VERSION = "2023-06-01"
SURFACE = "messages"


async def messages(scope: Scope, receive: Receive, send: Send) -> None:
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    await with_plugins(ctx, lambda c, s: serve(c, s, _Messages(scope, c)), send)


async def count_tokens(scope: Scope, receive: Receive, send: Send) -> None:
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    ctx.deployment = target = ctx.candidates[0]
    provider = runtime_of(ctx).upstreams.providers[target.provider]
    if provider.wire.passes_through(SURFACE, provider.config):
        up = await send_native(ctx, provider, "/v1/messages/count_tokens", forward_body(ctx), _headers(scope, provider))
        data = up.data
    else:  # no tokenizer for other vendors here: an estimate, and said so in a header
        data = orjson.dumps({"input_tokens": inbound.count_tokens(ctx.body or {})})
    await send_json(send, 200, data)


def _headers(scope: Scope, provider: ProviderRuntime, key_index: int = 0) -> dict[str, str]:
    """Anthropic's own headers: the provider's key, and the client's API version and betas."""
    headers = {"anthropic-version": (header(scope, b"anthropic-version") or _VERSION.encode()).decode("latin-1")}
    beta = header(scope, b"anthropic-beta")
    if beta:
        headers["anthropic-beta"] = beta.decode("latin-1")
    headers.update(provider.wire.auth_headers(provider.api_key(key_index)))
    return headers


class _Messages:
    """One Messages request on the shared translated-surface flow."""

    surface = SURFACE
    path = "/v1/messages"

    def __init__(self, scope: Scope, ctx: RequestContext) -> None:
        self._scope = scope
        self._model = ctx.requested_model or ctx.candidates[0].model

    def native_headers(self, provider: ProviderRuntime, key_index: int) -> dict[str, str]:
        return _headers(self._scope, provider, key_index)

    def meter_native(self, ctx: RequestContext, up: Upstream) -> None:
        translated = up.provider.wire.parse_chat(up.data, ctx.deployment.model if ctx.deployment is not None else "")
        ctx.usage, ctx.finish_reason = translated.usage, translated.finish_reason

    def native_observer(self, up: Upstream, model: str) -> tuple[StreamDecoder, ErrorEvent]:
        return up.provider.wire.stream_decoder(model), _error_event

    def to_chat(self, body: JSONObject) -> JSONObject:
        return inbound.to_chat(body)

    def from_chat(self, completion: JSONObject) -> JSONObject:
        return inbound.from_chat(completion, self._model)

    def chat_stream(self) -> tuple[EventStream, ErrorEvent]:
        return EventStream(self._model, "msg_" + os.urandom(12).hex()), _error_event


def _error_event(error: JSONObject) -> bytes:
    kind = "overloaded_error" if error.get("code") in ("overloaded_error", "overloaded") else "api_error"
    body = {"type": "error", "error": {"type": kind, "message": str(error.get("message") or "upstream error")}}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
