"""Relaying an upstream stream to the client while metering it.

One loop per stream: hand each upstream chunk to a relay, forward what it returns, and in
``finally`` always close the upstream response — also when the client went away (the
stream-wrap layer cancels this task) — and fill in usage from what was received when the
upstream never sent its own. A failure after the first byte cannot change the HTTP status
any more, so it ends the stream with an error event in the client's format instead of a
silent or truncated 200. So does the end of the shutdown grace: the stream's task is
cancelled with its context marked ``shut_down`` (``core/drain.py``), and the relay ends it
with the client format's error event, logged as 503 ``shutdown`` — no check per chunk.

Two relays: ``PassthroughRelay`` (OpenAI-compatible upstream, OpenAI client: bytes go
through) and ``ChunkRelay`` (any other pairing: a decoder turns upstream bytes into OpenAI
chunk dicts, an encoder turns those into the client's event format).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, TypeAlias

import httpx
import orjson
from starlette.types import Send

from llm_proxy.core import metrics
from llm_proxy.core.context import RequestContext, Usage
from llm_proxy.core.drain import CUT_MESSAGE, SHUTDOWN_TYPE
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.sse import SSEDecoder, encode_event
from llm_proxy.core.tokens import estimate_prompt_tokens
from llm_proxy.core.wire import Chunk, StreamDecoder
from llm_proxy.providers.openai import ChatStreamMeter
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.upstream.dispatch import Upstream
from llm_proxy.upstream.exchange import transport_error

__all__ = [
    "ChunkEncoder",
    "ChunkRelay",
    "ErrorEvent",
    "OpenAIChunkEncoder",
    "ObservedRelay",
    "PassthroughRelay",
    "Relay",
    "SurfaceEncoder",
    "SurfaceStream",
    "relay_stream",
    "relay_surface",
]

_DONE = b"data: [DONE]\n\n"
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_LAST_WRITE = 2.0  # s a stream cut by the shutdown gets to write its error event (a client may not read)
_SHUTDOWN_EVENT: JSONObject = {"message": CUT_MESSAGE, "type": SHUTDOWN_TYPE, "param": None, "code": "shutting_down"}


ErrorEvent: TypeAlias = Callable[[JSONObject], bytes]
"""A mid-stream failure (an OpenAI error dict) as an event of the client's format."""


class Relay(Protocol):
    """Upstream bytes in, client bytes out, and the stream's outcome read when it ends."""

    @property
    def usage(self) -> Usage | None: ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def error(self) -> JSONObject | None: ...

    @property
    def output_events(self) -> int: ...

    @property
    def complete(self) -> bool: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def failure(self, error: JSONObject) -> bytes: ...


class ChunkEncoder(Protocol):
    """OpenAI chunk dicts → the client's events (``ChunkRelay``'s second half)."""

    def feed(self, chunk: Chunk) -> bytes: ...

    def finish(self, usage: Usage | None) -> bytes: ...

    def error(self, error: JSONObject) -> bytes: ...


class SurfaceStream(Protocol):
    """Chat chunks → a client surface's own event stream (Anthropic Messages, Responses)."""

    def start(self) -> bytes: ...

    def feed(self, chunk: Chunk) -> bytes: ...

    def finish(self, usage: Usage | None = None) -> bytes: ...


def _openai_error_event(error: JSONObject) -> bytes:
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


class PassthroughRelay:
    """An OpenAI-compatible upstream: its bytes go out untouched unless the usage chunk the
    gateway asked for must be stripped, in which case events are re-framed one by one."""

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._meter = ChatStreamMeter()
        self._decoder = SSEDecoder()
        self._strip = not ctx.client_wants_usage
        self._done = False

    @property
    def usage(self) -> Usage | None:
        return self._meter.usage

    @property
    def finish_reason(self) -> str | None:
        return self._meter.finish_reason

    @property
    def error(self) -> JSONObject | None:
        return self._meter.error

    @property
    def output_events(self) -> int:
        return self._meter.output_events

    @property
    def complete(self) -> bool:
        return self._done or self._meter.finish_reason is not None

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] | None = [] if self._strip else None
        for event in self._decoder.feed(chunk):
            self._handle(event.data, out)
        return chunk if out is None else b"".join(out)

    def finish(self) -> bytes:
        out: list[bytes] = []
        for event in self._decoder.flush():
            self._handle(event.data, out)
        return b"".join(out) if self._strip else b""  # unstripped: the raw bytes already went out

    def failure(self, error: JSONObject) -> bytes:
        return _openai_error_event(error)

    def _handle(self, data: bytes, out: list[bytes] | None) -> None:
        if data == b"[DONE]":
            self._done = True
            if out is not None:
                out.append(_DONE)
            return
        meter = self._meter
        before = meter.output_events
        usage_only = meter.feed(data)
        if meter.output_events != before and self._ctx.first_token_at is None:
            self._ctx.first_token_at = time.perf_counter()
        if out is not None and not usage_only:
            out.append(b"data: " + data + b"\n\n" if b"\n" not in data else encode_event(data))


class OpenAIChunkEncoder:
    """Chunk dicts → OpenAI SSE, for a native upstream serving an OpenAI chat client."""

    def __init__(self, strip_usage: bool) -> None:
        self._strip = strip_usage

    def feed(self, chunk: Chunk) -> bytes:
        if self._strip and not chunk.get("choices"):
            return b""
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def finish(self, usage: Usage | None) -> bytes:
        return _DONE

    def error(self, error: JSONObject) -> bytes:
        return _openai_error_event(error)


class SurfaceEncoder:
    """A client surface's event stream (Anthropic Messages, Responses) as a relay encoder;
    ``error`` renders a mid-stream failure in that surface's own shape."""

    def __init__(self, stream: SurfaceStream, error: ErrorEvent) -> None:
        self._stream = stream
        self.error = error

    def feed(self, chunk: Chunk) -> bytes:
        return self._stream.feed(chunk)

    def finish(self, usage: Usage | None) -> bytes:
        return self._stream.finish(usage)


class _DecodedRelay:
    """Relay state read from a decoder, and output counted for time to first token."""

    def __init__(self, ctx: RequestContext, decoder: StreamDecoder) -> None:
        self._ctx = ctx
        self._decoder = decoder
        self.output_events = 0

    @property
    def usage(self) -> Usage | None:
        return self._decoder.usage

    @property
    def finish_reason(self) -> str | None:
        return self._decoder.finish_reason

    @property
    def error(self) -> JSONObject | None:
        return self._decoder.error

    @property
    def complete(self) -> bool:
        return self._decoder.finish_reason is not None

    def _count(self, chunk: Chunk) -> None:
        if any(_has_output(c.get("delta") or {}) for c in chunk.get("choices") or ()):
            self.output_events += 1
            if self._ctx.first_token_at is None:
                self._ctx.first_token_at = time.perf_counter()


class ChunkRelay(_DecodedRelay):
    """Upstream bytes → (decoder) OpenAI chunk dicts → (encoder) the client's events."""

    def __init__(self, ctx: RequestContext, decoder: StreamDecoder, encoder: ChunkEncoder) -> None:
        super().__init__(ctx, decoder)
        self._encoder = encoder
        self._error_sent = False

    def feed(self, chunk: bytes) -> bytes:
        return self._encode(self._decoder.feed(chunk))

    def finish(self) -> bytes:
        tail = self._encode(self._decoder.finish())
        if self._decoder.error is not None or not self.complete:
            return tail  # relay_stream ends it with an error event
        return tail + self._encoder.finish(self._decoder.usage)

    def failure(self, error: JSONObject) -> bytes:
        return self._encoder.error(error)

    def _encode(self, chunks: list[Chunk]) -> bytes:
        out: list[bytes] = []
        for chunk in chunks:
            self._count(chunk)
            out.append(self._encoder.feed(chunk))
        error = self._decoder.error
        if error is not None and not self._error_sent:
            self._error_sent = True
            out.append(self._encoder.error(error))
        return b"".join(out)


class ObservedRelay(_DecodedRelay):
    """The upstream already speaks the client's format (Anthropic → /v1/messages, OpenAI →
    /v1/responses): its bytes go through untouched, and a decoder reads them for metering."""

    def __init__(self, ctx: RequestContext, decoder: StreamDecoder, failure: ErrorEvent) -> None:
        super().__init__(ctx, decoder)
        self._failure = failure

    def feed(self, chunk: bytes) -> bytes:
        for decoded in self._decoder.feed(chunk):
            self._count(decoded)
        return chunk

    def finish(self) -> bytes:
        for decoded in self._decoder.finish():
            self._count(decoded)
        return b""

    def failure(self, error: JSONObject) -> bytes:
        return self._failure(error)


def _has_output(delta: JSONObject) -> bool:
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"))


async def relay_surface(ctx: RequestContext, up: Upstream, send: Send, stream: SurfaceStream,
                        on_error: ErrorEvent) -> None:
    """Stream a chat answer to a client surface (Anthropic Messages, Responses): its opening
    events, then every upstream chunk decoded to chat and re-encoded by ``stream``."""
    await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
    await send({"type": "http.response.body", "body": stream.start(), "more_body": True})
    decoder = up.provider.wire.stream_decoder(ctx.deployment.model if ctx.deployment is not None else "")
    relay = ChunkRelay(ctx, decoder, SurfaceEncoder(stream, on_error))
    await relay_stream(ctx, up, send, relay)


async def relay_stream(ctx: RequestContext, up: Upstream, send: Send, relay: Relay) -> None:
    """Relay an open upstream stream (its first chunk already read)."""
    provider: ProviderRuntime = up.provider
    response: httpx.Response = up.response
    assert up.chunks is not None
    failure: str | None = None
    shut_down = False
    try:
        async with asyncio.timeout_at(up.deadline):
            body = relay.feed(up.first)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            async for chunk in up.chunks:  # the raw byte stream; no decoding layers
                body = relay.feed(chunk)
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            tail = relay.finish()
            if tail:
                await send({"type": "http.response.body", "body": tail, "more_body": True})
        if relay.error is not None:
            failure = str(relay.error.get("message") or "upstream error event")
            ctx.fail(502, "upstream_stream_error", failure)
            metrics.UPSTREAM_ERRORS.labels(provider.name, "stream_error").inc()
        elif not relay.complete:
            failure = "the upstream closed the stream before it finished"
            metrics.UPSTREAM_ERRORS.labels(provider.name, "stream_interrupted").inc()
    except (httpx.HTTPError, TimeoutError) as exc:  # counted by transport_error
        failure = transport_error(ctx, provider, exc).message
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not ctx.shut_down or task is None or task.uncancel() > 0:
            raise  # the client left (stream-wrap logs it) or the server cancels: not ours to end
        shut_down = True
        failure = CUT_MESSAGE
    finally:
        await response.aclose()
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        ctx.finish_reason = relay.finish_reason
        if relay.usage is not None:
            ctx.usage = relay.usage
        else:  # cut short: charge what was delivered
            ctx.usage = Usage(prompt_tokens=estimate_prompt_tokens(ctx.body), completion_tokens=relay.output_events)
            ctx.metadata["usage_estimated"] = True
    if failure is None:
        provider.record_ok()
    elif shut_down:  # not the provider's fault: nothing counted against it
        ctx.fail(503, SHUTDOWN_TYPE, CUT_MESSAGE)
        try:
            async with asyncio.timeout(_LAST_WRITE):
                await send({"type": "http.response.body", "body": relay.failure(_SHUTDOWN_EVENT), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            pass  # a client that does not read: the server closes its connection
        return
    elif relay.error is None:
        ctx.fail(502, "upstream_stream_interrupted", failure)
        error = {"message": f"Stream interrupted: {failure}", "type": "upstream_error",
                 "param": None, "code": "stream_interrupted"}
        await send({"type": "http.response.body", "body": relay.failure(error), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
