"""``POST /v1/messages`` (Anthropic Messages API) and ``/v1/messages/count_tokens``.

When the routed provider is Anthropic the client's bytes go up and Anthropic's come back,
read only for metering — thinking signatures, cache control and beta features survive.
Any other provider is reached through chat: the request is translated to chat, served
like a chat completion, and the answer or event stream translated back, so a
Claude-Code-style client works against OpenAI, Gemini, DeepSeek or Ollama models.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext, Target
from llm_proxy.core.errors import send_json
from llm_proxy.core.scope import header
from llm_proxy.inbound import anthropic_messages as inbound
from llm_proxy.routing import pipeline
from llm_proxy.upstream.dispatch import (
    Upstream,
    complete_chat,
    forward_body,
    send_chat,
    send_native,
    with_plugins,
)
from llm_proxy.upstream.relay import ObservedRelay, relay_stream, relay_surface

__all__ = ["count_tokens", "messages"]

_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_VERSION = "2023-06-01"


async def messages(scope: Scope, receive: Receive, send: Send) -> None:
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    await with_plugins(ctx, lambda c, s: _messages(c, s, scope), send)


async def count_tokens(scope: Scope, receive: Receive, send: Send) -> None:
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    ctx.target = target = ctx.candidates[0]
    provider = ctx.runtime.providers[target.provider]
    if provider.config.type == "anthropic":
        up = await send_native(ctx, provider, "/v1/messages/count_tokens", forward_body(ctx), _headers(scope, provider))
        data = up.data
    else:  # no tokenizer for other vendors here: an estimate, and said so in a header
        data = orjson.dumps({"input_tokens": inbound.count_tokens(ctx.body or {})})
    await send_json(send, 200, data)



def _headers(scope: Scope, provider: Any, key_index: int = 0) -> dict[str, str]:
    """Anthropic's own headers: the provider's key, and the client's API version and betas."""
    headers = {"anthropic-version": (header(scope, b"anthropic-version") or _VERSION.encode()).decode("latin-1")}
    beta = header(scope, b"anthropic-beta")
    if beta:
        headers["anthropic-beta"] = beta.decode("latin-1")
    key = provider.api_key(key_index)
    if key:
        headers["x-api-key"] = key
    return headers


async def _messages(ctx: RequestContext, send: Send, scope: Scope) -> None:
    providers = ctx.runtime.providers
    model = ctx.requested_model or ctx.candidates[0].model
    # Fail over within one wire family: Anthropic's own API, or everything reached through chat.
    native_first = providers[ctx.candidates[0].provider].config.type == "anthropic"
    ctx.candidates = [t for t in ctx.candidates if (providers[t.provider].config.type == "anthropic") == native_first]
    if native_first:
        def attempt(target: Target) -> Awaitable[Upstream]:
            provider = providers[target.provider]
            return send_native(ctx, provider, "/v1/messages", forward_body(ctx), _headers(scope, provider, ctx.key_index))

        up = await pipeline.run(ctx, attempt)
        up_target = ctx.target
        assert up_target is not None
        native = up.provider.translator
        assert native is not None
        if not ctx.stream:
            translated = native.parse_response(up.data, up_target.model)
            ctx.usage, ctx.finish_reason = translated.usage, translated.finish_reason
            await send_json(send, 200, up.data)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
        relay = ObservedRelay(ctx, native.StreamDecoder(up_target.model), _error_event)
        await relay_stream(ctx, up, send, relay)
        return

    original = ctx.body or {}
    ctx.body = inbound.to_chat(original)
    ctx.body_dirty = True
    if not ctx.stream:
        completion = await complete_chat(ctx)
        await send_json(send, 200, orjson.dumps(inbound.from_chat(completion, model)))
        return
    up = await send_chat(ctx)
    stream = inbound.EventStream(model, "msg_" + os.urandom(12).hex())
    await relay_surface(ctx, up, send, stream, _error_event)



def _error_event(error: dict[str, Any]) -> bytes:
    kind = "overloaded_error" if error.get("code") in ("overloaded_error", "overloaded") else "api_error"
    body = {"type": "error", "error": {"type": kind, "message": str(error.get("message") or "upstream error")}}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"

