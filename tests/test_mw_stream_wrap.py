"""The stream-wrapping stage alone: usage asked for on chat streams (and noted whether the client
asked), unbuffered stream headers, a client disconnect cancelling the handler at once (499) during
a stream or while any request waits for its upstream, a quick answer costing no watcher, and
requests that do not stream passed through untouched."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from stubs import CHAT, Receiver, Sent, StubApp, call, context, make_scope, runtime

from llm_proxy.core.context import RequestContext, get_context
from llm_proxy.middleware.stream_wrap import WATCH_AFTER, StreamWrapMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SNAPSHOT = runtime()


def streaming(path: str = CHAT, **extra: Any) -> RequestContext:
    return context(SNAPSHOT, path, body={"model": "gpt-4o", "stream": True, "messages": [], **extra})


async def wrapped(ctx: RequestContext, app: StubApp | None = None, path: str = CHAT) -> Sent:
    return await call(StreamWrapMiddleware(app or StubApp()), make_scope(path, ctx=ctx))


async def test_a_chat_stream_without_include_usage_gets_it_and_the_body_is_marked_dirty() -> None:
    ctx = streaming(stream_options={"chunk_size": 3})
    await wrapped(ctx)
    assert ctx.body is not None
    assert ctx.body["stream_options"] == {"chunk_size": 3, "include_usage": True}
    assert ctx.body_dirty and not ctx.client_wants_usage


@pytest.mark.parametrize("options", [None, "yes", {"include_usage": False}])
async def test_odd_or_false_stream_options_are_replaced_by_include_usage(options: Any) -> None:
    ctx = streaming(stream_options=options)
    await wrapped(ctx)
    assert ctx.body is not None and ctx.body["stream_options"]["include_usage"] is True
    assert ctx.body_dirty and not ctx.client_wants_usage


async def test_a_chat_stream_that_asks_for_usage_is_left_as_it_is() -> None:
    ctx = streaming(stream_options={"include_usage": True})
    before = dict(ctx.body or {})
    await wrapped(ctx)
    assert ctx.body == before
    assert ctx.client_wants_usage and not ctx.body_dirty


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
async def test_other_surfaces_streams_keep_their_body(path: str) -> None:
    ctx = streaming(path)
    before = dict(ctx.body or {})
    sent = await wrapped(ctx, path=path)
    assert ctx.body == before and not ctx.body_dirty
    assert sent.headers["x-accel-buffering"] == "no"  # every stream is unbuffered


async def test_a_stream_is_marked_unbuffered_and_uncached() -> None:
    sent = await wrapped(streaming())
    assert sent.headers["x-accel-buffering"] == "no"
    assert sent.headers["cache-control"] == "no-cache"
    assert sent.headers["content-type"] == "application/json"  # the app's own headers stay
    assert sent.body == b'{"ok":true}'


async def test_a_request_that_does_not_stream_passes_through_untouched() -> None:
    ctx = context(SNAPSHOT, body={"model": "gpt-4o", "messages": []})
    app, receive, sent = StubApp(), Receiver(), Sent()
    await StreamWrapMiddleware(app)(make_scope(ctx=ctx), receive, sent)
    assert app.receives == [receive] and app.sends == [sent]
    assert "stream_options" not in (ctx.body or {}) and not ctx.body_dirty
    assert "x-accel-buffering" not in sent.headers


class Hanging:
    """A streaming handler whose upstream goes quiet after the first chunk; notes whether it was
    cancelled (and so closed its upstream response)."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_client_disconnect_cancels_the_handler_and_is_recorded_as_499() -> None:
    ctx, app = streaming(), Hanging()
    task = asyncio.create_task(call(StreamWrapMiddleware(app), make_scope(ctx=ctx), Receiver(disconnect=True)))
    done, _ = await asyncio.wait({task}, timeout=2)  # not wait_for: its own cancel must not do the stage's job
    if not done:
        task.cancel()
        pytest.fail("the handler kept running after the client left")
    sent = task.result()
    assert app.cancelled and ctx.disconnected
    assert (ctx.status, ctx.error_type) == (499, "client_disconnected")
    assert sent.body == b"data: {}\n\n"


async def test_a_cancellation_from_outside_is_not_swallowed() -> None:
    ctx, app = streaming(), Hanging()
    task = asyncio.create_task(call(StreamWrapMiddleware(app), make_scope(ctx=ctx), Receiver()))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert app.cancelled and not ctx.disconnected and ctx.status == 0


async def test_the_disconnect_watcher_does_not_outlive_the_response() -> None:
    before = asyncio.all_tasks()
    ctx = streaming()
    await wrapped(ctx)  # the client stays connected: the watcher is still waiting when the stream ends
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert left == []
    assert ctx.status == 0 and not ctx.disconnected


class Waiting:
    """A handler that sent its request upstream and waits for an answer that does not come."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        assert ctx is not None
        ctx.upstream_started = time.perf_counter()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def run_bounded(app: Any, ctx: RequestContext, receive: Receiver) -> Sent:
    task = asyncio.create_task(call(StreamWrapMiddleware(app), make_scope(ctx=ctx), receive))
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        task.cancel()
        pytest.fail("the handler kept waiting after the client left")
    return task.result()


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_a_client_leaving_while_the_upstream_is_awaited_cancels_it_as_499(stream: bool) -> None:
    body = {"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "x" * 400}]}
    ctx, app = context(SNAPSHOT, body=body), Waiting()
    started = time.perf_counter()
    sent = await run_bounded(app, ctx, Receiver(disconnect=True))
    assert time.perf_counter() - started < WATCH_AFTER + 0.5
    assert app.cancelled and ctx.disconnected and sent.messages == []
    assert (ctx.status, ctx.error_type) == (499, "client_disconnected")
    assert ctx.error_message == "The client closed the connection before the answer."
    # the prompt went upstream: it is what is known of the usage (estimated), no completion
    assert ctx.usage is not None and ctx.usage.prompt_tokens >= 100 and ctx.usage.completion_tokens == 0
    assert ctx.metadata["usage_estimated"] is True


async def test_a_quick_answer_never_watches_the_client() -> None:
    ctx, receive = context(SNAPSHOT, body={"model": "gpt-4o", "messages": []}), Receiver(disconnect=True)
    before = asyncio.all_tasks()
    sent = await call(StreamWrapMiddleware(StubApp()), make_scope(ctx=ctx), receive)
    await asyncio.sleep(WATCH_AFTER * 2)  # the timer was cancelled: it starts nothing later either
    assert sent.status == 200 and receive.calls == 0
    assert [t for t in asyncio.all_tasks() - before if not t.done()] == []
    assert ctx.status == 0 and not ctx.disconnected


class AnswersThenLingers:
    """Answers at once, then keeps working (an after-plugin) past the moment a server reports the
    finished response as a disconnect; ``response_started`` stands for the outermost layer's mark."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        assert ctx is not None
        ctx.response_started = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        try:
            await asyncio.sleep(WATCH_AFTER * 3)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_a_disconnect_after_the_answer_is_not_a_499(stream: bool) -> None:
    ctx = context(SNAPSHOT, body={"model": "gpt-4o", "stream": stream, "messages": []})
    app = AnswersThenLingers()
    await run_bounded(app, ctx, Receiver(disconnect=True))
    assert not app.cancelled and not ctx.disconnected
    assert ctx.status == 0 and ctx.error_type is None


def test_the_watch_survives_the_stage_moving_to_another_event_loop() -> None:
    """A mounted app can be driven by one loop, then another (test clients do): the stage's timer,
    left pending on a closed loop, must not keep the next loop's requests unwatched."""
    answers: list[Any] = [StubApp(), Waiting()]  # the first request is answered, the second waits

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await answers.pop(0)(scope, receive, send)

    stage = StreamWrapMiddleware(handler)

    async def one() -> RequestContext:
        ctx = context(SNAPSHOT, body={"model": "gpt-4o", "messages": []})
        await asyncio.wait_for(stage(make_scope(ctx=ctx), Receiver(disconnect=True), Sent()), 2)
        return ctx

    assert asyncio.run(one()).status == 0  # answered at once: its loop closes with the timer pending
    assert asyncio.run(one()).status == 499
