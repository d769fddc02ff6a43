"""A mock OpenAI-compatible upstream on real HTTP, for the test suite and manual load tests.

Gateway tests need an upstream that really speaks HTTP, so that pooling, disconnects and
half-sent streams happen for real, and that can be told to misbehave per request.

Serves ``POST /v1/chat/completions`` (JSON or SSE) and ``GET /v1/models``; anything else
is a 404/405 OpenAI error. Every response carries ``x-request-id: req_mock_<n>``, where
``n`` counts received requests from 1; the completion id is ``chatcmpl-mock<n>``.

Replies: content is ``"".join(content_pieces(chunks))`` ("Hello from the mock upstream."
for the default 5 chunks). With ``tools``, a call ``call_mock_1`` to the first tool with
arguments ``{"city": "Paris"}`` (streamed as 3 fragments). A model whose name contains
"reasoner" also gets ``reasoning_content`` (3 pieces, streamed first, DeepSeek-style
deltas ``{"content": null, "reasoning_content": ...}``).

Token rule, kept crude so other tests can predict it:

* ``prompt_tokens`` = sum over messages of (3 + whitespace-separated words of its text);
  text is a string content or the ``text`` parts of a list content, ``#mock`` line included.
* ``completion_tokens`` = ``chunks`` (or 3 for a tool call) + 3 for a "reasoner" model.
* ``reasoning_tokens`` = 3 for a "reasoner" model, else 0.
* ``cached_tokens`` = min(cached, prompt_tokens); ``total_tokens`` = prompt + completion.

Directives: a line ``#mock key=value ...`` in the last user message overrides the server
defaults for that one request; an unknown key or a non-integer value gets a 400.

* ``status=N`` (N >= 400): OpenAI error body for N; ``retry_after=S`` adds ``Retry-After``.
* ``body=text|html|empty``: a non-JSON error body instead (status 502 unless ``status``).
* ``hang=1``: never answer, until the client leaves or ``stop()`` (which answers 503).
* ``latency_ms`` (before the headers), ``chunk_ms`` (between stream chunks), ``chunks``,
  ``cached``: per-request versions of the server-wide attributes.
* ``cut_after=N`` / ``error_event_after=N`` (streams): after the role chunk and N more
  chunks, drop the connection / send an ``{"error": ...}`` event and end cleanly. The cut
  is an exception raised in the app, so uvicorn closes the transport mid-body and the
  client sees an incomplete chunked body (httpx: ``RemoteProtocolError``).

Observing: ``requests`` lists every ``RecordedRequest``; each started stream ends as one
of ``streams_completed`` ([DONE] sent), ``streams_aborted_by_client`` (``http.disconnect``
seen first; also counted in ``requests_aborted_by_client``) or ``streams_cut`` (cut_after,
error_event_after, stop()); ``in_flight`` is live. The counters move on the server's
thread, hence ``wait_for``. An abort is only seen while the mock is still working, so a
test that leaves a stream half-way should give it ``chunk_ms``.

Memory: a stream is generated frame by frame as it is sent, and ``send`` waits while the
client is not reading (uvicorn's flow control), so a long stream (``chunks=200000``, tens
of MB) to a slow reader holds one frame and the socket buffers, not the whole stream. A
non-stream answer is one JSON body and is built whole.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from llm_proxy.core.jsontypes import JSONValue
from llm_proxy.testing.mock_payloads import (
    Options,
    Receive,
    Reply,
    Scope,
    Send,
    build_reply,
    error_event_frame,
    error_json,
    header_dict,
    models_body,
    parse_options,
    respond,
    send_failure,
)

__all__ = ["DEFAULT_MODELS", "MockUpstream", "RecordedRequest", "main"]

DEFAULT_MODELS = ("mock-gpt", "mock-gpt-mini", "mock-reasoner")


class _CutConnection(Exception):
    """Raised in the app so uvicorn drops the socket mid-response; ASGI has no other way."""


def _not_our_cut(record: logging.LogRecord) -> bool:
    """Log filter: hide uvicorn's traceback for the cuts made on purpose."""
    return not (record.exc_info and isinstance(record.exc_info[1], _CutConnection))


@dataclass(slots=True)
class RecordedRequest:
    """What the mock received; ``body`` is the parsed JSON, or None if empty or not JSON."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: JSONValue


class _Call:
    """One request in flight: a disconnect watcher and the event that cuts its waits short."""

    __slots__ = ("client_gone", "receive", "wake", "watcher")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.wake = asyncio.Event()
        self.client_gone = False
        self.watcher: asyncio.Task[None] | None = None

    def watch(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.client_gone = True
        self.wake.set()

    async def pause(self, ms: int | None) -> bool:
        """Wait ``ms`` (None: until woken); False if the client left or the server is stopping."""
        if ms is None:
            await self.wake.wait()
        elif ms > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), ms / 1000)
        else:
            await asyncio.sleep(0)  # let a pending disconnect be noticed
        return not self.wake.is_set()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it is, with ``uvicorn[standard]``): load tests want a fast mock."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class MockUpstream:
    """The mock server: configure through attributes, ``start()`` it, read what it saw."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        chunk_ms: int = 0,
        chunks: int = 5,
        cached_tokens: int = 0,
        models: tuple[str, ...] | list[str] = DEFAULT_MODELS,
    ) -> None:
        self.host, self.port = host, port
        self._defaults = (latency_ms, chunk_ms, chunks, cached_tokens, tuple(models))
        self.in_flight = 0  # a live gauge, so reset() leaves it alone
        self.reset()
        self._received = 0
        self._calls: set[_Call] = set()
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    def reset(self) -> None:
        """Back to as-constructed: behaviour attributes, counters and recorded requests.

        A session-wide mock is reset per test, so one test's ``chunk_ms`` never leaks.
        """
        self.latency_ms, self.chunk_ms, self.chunks, self.cached_tokens, models = self._defaults
        self.models = list(models)
        self.requests: list[RecordedRequest] = []
        self.streams_started = self.streams_completed = self.streams_aborted_by_client = self.streams_cut = 0
        self.requests_aborted_by_client = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url_v1(self) -> str:
        return f"{self.url}/v1"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> MockUpstream:
        """Bind a port (a free one if ``port`` is 0) and serve from a daemon thread."""
        return self._start(timeout, foreground=False)

    def stop(self, timeout: float = 5.0) -> None:
        """Release hanging requests, then stop uvicorn and join its thread."""
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._release_all)
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._thread = self._server = self._loop = None

    def serve_forever(self) -> None:
        """Serve with access logs until Ctrl+C, for manual and load testing."""
        thread = self._start(10.0, foreground=True)._thread
        logging.getLogger("uvicorn.error").info("Mock upstream on %s (Ctrl+C to stop)", self.base_url_v1)
        try:
            while thread is not None and thread.is_alive():
                time.sleep(0.2)  # not join(): on 3.11 a Ctrl+C inside join() marks the thread stopped
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll ``predicate`` until true or ``timeout``: the server's counters move on its own thread."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True

    async def wait_for_async(
        self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
    ) -> bool:
        """``wait_for`` for async tests, where blocking would stall the caller's own loop."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(interval)
        return True

    def _start(self, timeout: float, *, foreground: bool) -> MockUpstream:
        if self._thread is not None:
            raise RuntimeError("mock upstream already started")
        logging.getLogger("uvicorn.error").addFilter(_not_our_cut)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._stopping, self._error = False, None
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            interface="asgi3",
            lifespan="off",
            ws="none",
            proxy_headers=False,
            access_log=foreground,
            timeout_graceful_shutdown=1,
            backlog=2048,
            log_level="info" if foreground else None,
            log_config=LOGGING_CONFIG if foreground else None,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"mock-upstream-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if self._error is not None or not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mock upstream did not start: {self._error!r}")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        try:
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                runner.run(self._serve(sock))
        except BaseException as exc:  # reported by start(); never let a thread die noisily
            self._error = exc
        finally:
            sock.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        assert self._server is not None
        await self._server.serve(sockets=[sock])

    def _release_all(self) -> None:
        self._stopping = True
        for call in self._calls:
            call.wake.set()

    # -- ASGI --------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app uvicorn serves: record the request, then answer it."""
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        self._received += 1
        number = self._received
        headers = header_dict(scope["headers"])
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        path, method = scope["path"], scope["method"]
        self.requests.append(
            RecordedRequest(method, path, scope["query_string"].decode("latin-1"), headers, body)
        )
        rid = f"req_mock_{number}".encode()
        self.in_flight += 1
        try:
            if path == "/v1/chat/completions" and method == "POST":
                await self._chat(body, number, receive, send, rid)
            elif path == "/v1/models" and method == "GET":
                await respond(send, 200, models_body(self.models), rid)
            elif path in ("/v1/chat/completions", "/v1/models"):
                await respond(send, 405, error_json(405, f"Method {method} not allowed (mock)."), rid)
            else:
                await respond(send, 404, error_json(404, f"Unknown path {path} (mock)."), rid)
        finally:
            self.in_flight -= 1

    async def _chat(self, body: JSONValue, number: int, receive: Receive, send: Send, rid: bytes) -> None:
        defaults = Options(
            chunks=self.chunks, latency_ms=self.latency_ms, chunk_ms=self.chunk_ms, cached=self.cached_tokens
        )
        try:
            opts = parse_options(body, defaults)
        except ValueError as exc:
            return await respond(send, 400, error_json(400, str(exc)), rid)
        streaming = body.get("stream") is True and not opts.failing
        self.streams_started += streaming
        call = _Call(receive)
        self._calls.add(call)
        if self._stopping:
            call.wake.set()
        try:
            if streaming or opts.hang or opts.latency_ms:
                call.watch()
            if not await call.pause(None if opts.hang else opts.latency_ms):
                return await self._gave_up(call, streaming, send, rid)
            if opts.failing:
                return await send_failure(send, opts, rid)
            reply = build_reply(body, number, opts)
            if not streaming:
                return await respond(send, 200, reply.completion_body(), rid)
            await self._stream(call, reply, opts, send, rid)
        finally:
            call.close()
            self._calls.discard(call)

    async def _stream(self, call: _Call, reply: Reply, opts: Options, send: Send, rid: bytes) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-request-id", rid),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply.stream_head(), "more_body": True})
        ends = [n for n in (opts.cut_after, opts.error_event_after) if n is not None]
        end = min(ends) if ends else None
        # One frame ahead, to mark the last one; each is made only when the one before has been
        # handed to uvicorn, whose send() waits while the client's socket buffer is full.
        frames = reply.stream_frames(end)
        frame = next(frames, None)
        while frame is not None:
            if not await call.pause(opts.chunk_ms):
                return await self._gave_up(call, True, send, rid, started=True)
            following = next(frames, None)
            last = end is None and following is None
            await send({"type": "http.response.body", "body": frame, "more_body": not last})
            frame = following
        if end is None:
            self.streams_completed += 1
            return
        self.streams_cut += 1
        if end == opts.cut_after:
            raise _CutConnection(f"cut_after={end}")
        await send({"type": "http.response.body", "body": error_event_frame(), "more_body": False})

    async def _gave_up(
        self, call: _Call, streaming: bool, send: Send, rid: bytes, *, started: bool = False
    ) -> None:
        """Count a request whose client left; answer (or cut) one that the shutdown interrupted."""
        if call.client_gone:
            self.requests_aborted_by_client += 1
            self.streams_aborted_by_client += streaming
            return
        self.streams_cut += streaming
        if started:
            raise _CutConnection("server stopping")
        await respond(send, 503, error_json(503, "The mock upstream is shutting down."), rid)


def main(argv: list[str] | None = None) -> None:
    """``python -m llm_proxy.testing.mock_upstream --port 18080``"""
    parser = argparse.ArgumentParser(description="Mock OpenAI-compatible upstream (see module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--chunk-ms", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--cached-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    MockUpstream(**vars(args)).serve_forever()


if __name__ == "__main__":
    main()
