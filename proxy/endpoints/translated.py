"""The one flow for a client surface that some formats serve natively and every other through chat.

Anthropic Messages and OpenAI Responses both work this way. Whether a deployment gets the
request natively or through chat is decided per attempt, inside the one resilience
pipeline, so a request fails over across every deployment of its model whatever their
formats. A deployment whose wire format passes the surface through
(``WireFormat.passes_through``) gets the client's own bytes and its answer comes back as
it is, read only for metering. Any other gets the request translated to chat (once, the
first time one needs it; before-plugins run then, on that chat body), served like a chat
completion, and its answer or event stream translated back. A surface says only what
differs: its native path and headers, how a native answer is metered, and its translations.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

import orjson
from starlette.types import Send

from llm_proxy.core.context import Deployment, RequestContext
from llm_proxy.core.errors import ProxyError, send_json
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.wire import StreamDecoder
from llm_proxy.routing import pipeline
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.dispatch import (
    Upstream,
    chat_answer,
    forward_body,
    run_before,
    send_chat_to,
    send_native,
)
from llm_proxy.upstream.relay import ErrorEvent, ObservedRelay, SurfaceStream, relay_stream, relay_surface

__all__ = ["ErrorEvent", "SurfaceStream", "TranslatedSurface", "serve"]

_SSE = (b"content-type", b"text/event-stream; charset=utf-8")


class TranslatedSurface(Protocol):
    """What one request on such a surface needs beyond the shared flow."""

    surface: str  # the name formats pass through ("messages", "responses")
    path: str  # where a provider that passes it through takes it

    def native_headers(self, provider: ProviderRuntime, key_index: int) -> dict[str, str]: ...

    def meter_native(self, ctx: RequestContext, up: Upstream) -> None: ...

    def native_observer(self, up: Upstream, model: str) -> tuple[StreamDecoder, ErrorEvent]: ...

    def to_chat(self, body: JSONObject) -> JSONObject: ...

    def from_chat(self, completion: JSONObject) -> JSONObject: ...

    def chat_stream(self) -> tuple[SurfaceStream, ErrorEvent]: ...


async def serve(ctx: RequestContext, send: Send, flow: TranslatedSurface) -> None:
    providers = runtime_of(ctx).upstreams.providers
    surface = flow.surface
    bodies = _Bodies(ctx, flow)

    def attempt(target: Deployment) -> Awaitable[Upstream]:
        provider = providers[target.provider]
        if provider.wire.passes_through(surface, provider.config):
            if ctx.body is not bodies.native:
                bodies.use_native()
            return send_native(ctx, provider, flow.path, forward_body(ctx), flow.native_headers(provider, ctx.key_index))
        return bodies.send_chat(target)

    try:
        up = await pipeline.run(ctx, attempt)
    except _PluginStopped as stopped:
        raise stopped.error from None
    provider = up.provider
    if provider.wire.passes_through(surface, provider.config):
        if not ctx.stream:
            flow.meter_native(ctx, up)
            await send_json(send, 200, up.data)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
        decoder, failure = flow.native_observer(up, ctx.deployment.model if ctx.deployment is not None else "")
        await relay_stream(ctx, up, send, ObservedRelay(ctx, decoder, failure))
        return
    if not ctx.stream:
        await send_json(send, 200, orjson.dumps(flow.from_chat(chat_answer(ctx, up))))
        return
    stream, failure = flow.chat_stream()
    await relay_surface(ctx, up, send, stream, failure)


class _PluginStopped(Exception):
    """A before-plugin's verdict, carried out of the pipeline: it says nothing about a deployment."""

    def __init__(self, error: ProxyError) -> None:
        self.error = error


class _Bodies:
    """The request's two bodies, ``ctx.body`` set per attempt: the client's own (native
    attempts) and its chat translation, made the first time a translated attempt needs it."""

    __slots__ = ("_ctx", "_flow", "native", "_native_dirty", "_chat", "_refused")

    def __init__(self, ctx: RequestContext, flow: TranslatedSurface) -> None:
        self._ctx = ctx
        self._flow = flow
        self.native: JSONObject = ctx.body if ctx.body is not None else {}
        self._native_dirty = ctx.body_dirty  # changed since it was read (so re-serialised)?
        self._chat: JSONObject | None = None
        self._refused: ProxyError | None = None  # why it cannot be said in chat

    def use_native(self) -> None:
        ctx = self._ctx
        self._chat = ctx.body  # a before-plugin may have replaced it
        ctx.body, ctx.body_dirty = self.native, self._native_dirty

    async def send_chat(self, target: Deployment) -> Upstream:
        ctx = self._ctx
        if self._refused is not None:
            raise pipeline.CannotServe(self._refused)
        if ctx.body is self.native:
            self._native_dirty = ctx.body_dirty
            if self._chat is None:
                try:
                    chat = self._flow.to_chat(self.native)
                except ProxyError as exc:  # e.g. state only the native API keeps: a native deployment may serve it
                    self._refused = exc
                    raise pipeline.CannotServe(exc) from None
                ctx.body, ctx.body_dirty = chat, True
                try:
                    await run_before(ctx)
                except ProxyError as exc:
                    raise _PluginStopped(exc) from exc
            else:
                ctx.body, ctx.body_dirty = self._chat, True
        return await send_chat_to(ctx, target)
