"""The one flow for a client surface that some formats serve natively and every other through chat.

Anthropic Messages and OpenAI Responses both work this way. When the first candidate's wire
format passes the surface through (``WireFormat.passes_through``), the client's bytes go up
and the upstream's come back, read only for metering, and failover stays among providers
that pass it through too. Otherwise the request is translated to chat, served like a chat
completion, and the answer or event stream translated back. A surface says only what
differs: its native path and headers, how a native answer is metered, and its translations.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

import orjson
from starlette.types import Send

from llm_proxy.core.context import Deployment, RequestContext
from llm_proxy.core.errors import send_json
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.wire import StreamDecoder
from llm_proxy.routing import pipeline
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.dispatch import Upstream, complete_chat, forward_body, send_chat, send_native
from llm_proxy.upstream.relay import ErrorEvent, ObservedRelay, SurfaceStream, relay_stream, relay_surface

__all__ = ["ErrorEvent", "SurfaceStream", "TranslatedSurface", "serve"]

_SSE = (b"content-type", b"text/event-stream; charset=utf-8")

class TranslatedSurface(Protocol):
    """What one request on such a surface needs beyond the shared flow."""

    surface: str  # the name formats pass through ("messages", "responses")
    path: str  # where a provider that passes it through takes it
    one_family: bool  # translated requests also fail over only among providers that do not

    def native_headers(self, provider: ProviderRuntime, key_index: int) -> dict[str, str]: ...

    def meter_native(self, ctx: RequestContext, up: Upstream) -> None: ...

    def native_observer(self, up: Upstream, model: str) -> tuple[StreamDecoder, ErrorEvent]: ...

    def to_chat(self, body: JSONObject) -> JSONObject: ...

    def from_chat(self, completion: JSONObject) -> JSONObject: ...

    def chat_stream(self) -> tuple[SurfaceStream, ErrorEvent]: ...


async def serve(ctx: RequestContext, send: Send, flow: TranslatedSurface) -> None:
    providers = runtime_of(ctx).upstreams.providers
    surface = flow.surface

    def native(target: Deployment) -> bool:
        provider = providers[target.provider]
        return provider.wire.passes_through(surface, provider.config)

    native_first = native(ctx.candidates[0])
    if native_first or flow.one_family:
        ctx.candidates = [t for t in ctx.candidates if native(t) == native_first]
    if native_first:
        def attempt(target: Deployment) -> Awaitable[Upstream]:
            provider = providers[target.provider]
            return send_native(ctx, provider, flow.path, forward_body(ctx), flow.native_headers(provider, ctx.key_index))

        up = await pipeline.run(ctx, attempt)
        if not ctx.stream:
            flow.meter_native(ctx, up)
            await send_json(send, 200, up.data)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
        decoder, failure = flow.native_observer(up, ctx.deployment.model if ctx.deployment is not None else "")
        await relay_stream(ctx, up, send, ObservedRelay(ctx, decoder, failure))
        return

    ctx.body = flow.to_chat(ctx.body or {})
    ctx.body_dirty = True
    if not ctx.stream:
        completion = await complete_chat(ctx)
        await send_json(send, 200, orjson.dumps(flow.from_chat(completion)))
        return
    up = await send_chat(ctx)
    stream, failure = flow.chat_stream()
    await relay_surface(ctx, up, send, stream, failure)
