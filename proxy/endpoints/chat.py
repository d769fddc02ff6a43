"""``POST /v1/chat/completions``: dispatch to the chosen provider and relay the answer.

By the time a request gets here it is authenticated, parsed and routed (``ctx.candidates``).
When the provider's format passes chat through, the upstream's bytes are relayed as they are,
read only as far as metering needs; any other answer comes back through its wire format.
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext
from llm_proxy.providers.openai import parse_chat_response
from llm_proxy.upstream.dispatch import send_chat, with_plugins
from llm_proxy.upstream.relay import ChunkRelay, OpenAIChunkEncoder, PassthroughRelay, relay_stream

__all__ = ["chat_completions"]

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    await with_plugins(scope["state"][SCOPE_KEY], _chat, send)


async def _chat(ctx: RequestContext, send: Send) -> None:
    up = await send_chat(ctx)
    wire = up.provider.wire
    if not ctx.stream:
        data = up.data
        if wire.chat_passthrough:
            ctx.usage, ctx.finish_reason, _ = parse_chat_response(data)
        else:
            translated = wire.parse_chat(data, ctx.deployment.model if ctx.deployment else "")
            ctx.usage, ctx.finish_reason = translated.usage, translated.finish_reason
            data = orjson.dumps(translated.response)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
    relay: PassthroughRelay | ChunkRelay
    if wire.chat_passthrough:
        relay = PassthroughRelay(ctx)
    else:
        decoder = wire.stream_decoder(ctx.deployment.model if ctx.deployment else "")
        relay = ChunkRelay(ctx, decoder, OpenAIChunkEncoder(strip_usage=not ctx.client_wants_usage))
    await relay_stream(ctx, up, send, relay)
