"""Stream wrapping: the ASGI side of every streamed response.

Asks the upstream for usage even when the client did not (the relay strips that chunk
again), marks the response as unbuffered for reverse proxies, and watches the client:
when it disconnects, the handler below is cancelled at once so the upstream response is
closed instead of being read to the end for nobody. uvicorn's ``send`` silently does
nothing after a disconnect, so waiting on ``receive`` is the only way to know.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core.context import get_context

__all__ = ["StreamWrapMiddleware"]

_STREAM_HEADERS = ((b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache"))


class StreamWrapMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or not ctx.stream:
            await self.app(scope, receive, send)
            return
        body = ctx.body  # set whenever ``stream`` is (both come from the parsed body)
        if body is not None and ctx.surface is not None and ctx.surface.stream_usage:  # others: by translation
            options = body.get("stream_options")
            ctx.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not ctx.client_wants_usage:
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                ctx.body_dirty = True

        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task[None] | None = None
        finished = False

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            if not finished:
                ctx.disconnected = True
                task.cancel()

        async def send_stream(message: Message) -> None:
            nonlocal watcher
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *_STREAM_HEADERS]
                watcher = asyncio.ensure_future(watch_disconnect())
            await send(message)

        try:
            await self.app(scope, receive, send_stream)
        except asyncio.CancelledError:
            if not ctx.disconnected or task.uncancel() > 0:
                raise
            ctx.fail(499, "client_disconnected", "The client closed the connection during the stream.")
        finally:
            finished = True
            if watcher is not None and not watcher.done():
                watcher.cancel()
