"""Stream wrapping and client disconnects: the ASGI side of every answer an upstream gives.

Asks the upstream for usage on a stream even when the client did not (the relay strips that
chunk again), marks streams unbuffered for reverse proxies, and watches the client: when it
disconnects while the handler below waits for the upstream (any request, before the first
byte) or relays a stream, the handler is cancelled at once, so the upstream connection is
closed (the provider stops generating) instead of being read to the end for nobody. The
request is then logged once as 499 ``client_disconnected``. uvicorn's ``send`` silently does
nothing after a disconnect, so waiting on ``receive`` is the only way to know.

Watching costs a task, so a request is watched only once it has waited between one and two
``WATCH_AFTER`` periods: one timer per stage ticks while requests are in flight and starts the
watch of those that were already waiting at the previous tick. A quick answer costs a set
insert and removal (a timer of its own would cost more than the rest of this stage); a client
that leaves sooner has its upstream cut at that tick. A started stream is always watched.
Only requests whose body the alias layer has read are watched, so the watcher never takes a
body message a handler still needs.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core.context import RequestContext, Usage, get_context
from llm_proxy.core.tokens import estimate_prompt_tokens

__all__ = ["WATCH_AFTER", "StreamWrapMiddleware"]

WATCH_AFTER = 0.05  # the ticker's period (s): a request still waiting after one to two of them is watched

_STREAM_HEADERS = ((b"x-accel-buffering", b"no"), (b"cache-control", b"no-cache"))


class _Ticker:
    """The one timer of a stage: each tick starts the watch of the requests that were already in
    flight at the previous one, and it stops while nothing is in flight. Shared by the stage's
    requests (it is the only state on the stage), and bound to the loop it runs on."""

    __slots__ = ("fresh", "aged", "handle", "loop")

    def __init__(self) -> None:
        self.fresh: set[_Watch] = set()  # arrived since the last tick
        self.aged: set[_Watch] = set()  # in flight at the last tick: watched at the next
        self.handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, watch: _Watch) -> None:
        self.fresh.add(watch)
        if self.handle is None or self.loop is not watch.loop:  # idle, or a new loop (a remounted app)
            self.loop = watch.loop
            self.handle = watch.loop.call_later(WATCH_AFTER, self._tick)

    def discard(self, watch: _Watch) -> None:
        self.fresh.discard(watch)
        self.aged.discard(watch)

    def _tick(self) -> None:
        aged, self.aged, self.fresh = self.aged, self.fresh, set()
        for watch in aged:
            watch.start()
        loop = self.loop
        self.handle = loop.call_later(WATCH_AFTER, self._tick) if self.aged and loop is not None else None


class _Watch:
    """One request's disconnect watch: started by the ticker, or when a stream starts."""

    __slots__ = ("ctx", "receive", "send", "task", "loop", "watcher", "cut", "streaming", "over")

    def __init__(self, ctx: RequestContext, receive: Receive, send: Send) -> None:
        task = ctx.task if ctx.task is not None else asyncio.current_task()  # the outermost stage looked it up
        assert task is not None
        self.ctx, self.receive, self.send, self.task = ctx, receive, send, task
        self.loop = task.get_loop()
        self.watcher: asyncio.Task[None] | None = None
        self.cut = False  # the client left, and the request's task was cancelled for it
        self.streaming = False  # a stream's head has gone out
        self.over = False  # the response has ended: servers report that as a disconnect too

    def start(self) -> None:
        if self.watcher is None and not self.over:
            self.watcher = self.loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        ctx = self.ctx
        if self.over or (ctx.response_started and not ctx.stream):  # answered: nothing left to cut short
            return
        ctx.disconnected = self.cut = True
        self.task.cancel()

    async def send_stream(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *_STREAM_HEADERS]
            self.streaming = True
            self.start()
        elif not message.get("more_body", False):
            self.over = True
        await self.send(message)

    def record(self) -> None:
        """The request as the log shows it: 499, with the usage the relay counted or, when the
        upstream had been asked but had not answered, the prompt (estimated) it was sent."""
        ctx = self.ctx
        when = "during the stream" if self.streaming else "before the answer"
        ctx.fail(499, "client_disconnected", f"The client closed the connection {when}.")
        asked = ctx.upstream_started is not None and ctx.surface is not None and ctx.surface.generative
        if ctx.usage is None and asked:
            ctx.usage = Usage(prompt_tokens=estimate_prompt_tokens(ctx.body), completion_tokens=0)
            ctx.metadata["usage_estimated"] = True

    def close(self) -> None:
        self.over = True
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


class StreamWrapMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.ticker = _Ticker()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or ctx.body is None:  # no body read, no upstream to cut short (models, health)
            await self.app(scope, receive, send)
            return
        if ctx.stream:
            body = ctx.body
            if ctx.surface is not None and ctx.surface.stream_usage:  # others: by translation
                options = body.get("stream_options")
                ctx.client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
                if not ctx.client_wants_usage:
                    body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                              "include_usage": True}
                    ctx.body_dirty = True
        watch = _Watch(ctx, receive, send)
        ticker = self.ticker
        ticker.add(watch)
        try:
            await self.app(scope, receive, watch.send_stream if ctx.stream else send)
        except asyncio.CancelledError:
            if not watch.cut or watch.task.uncancel() > 0:
                raise
            watch.record()
        finally:
            ticker.discard(watch)
            watch.close()
