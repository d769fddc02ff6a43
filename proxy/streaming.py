"""Relaying an upstream SSE stream to the client while metering it.

One loop per stream: decode events, let the meter read each one, forward them, record the
first generated token, and in ``finally`` always close the upstream response — also when
the client went away (the stream-wrap layer cancels this task) — and fill in usage from
what was received when the upstream never sent its own. A failure after the first byte
cannot change the HTTP status any more, so it ends the stream with an OpenAI-style error
event instead of a silent or truncated 200.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from starlette.types import Send

from proxy import metrics
from proxy.context import RequestContext, Usage
from proxy.providers.openai import ChatStreamMeter
from proxy.runtime import ProviderRuntime
from proxy.sse import SSEDecoder, encode_event
from proxy.tokens import estimate_prompt_tokens
from proxy.upstream import transport_error

__all__ = ["relay_chat_stream"]

_DONE = b"data: [DONE]\n\n"


async def relay_chat_stream(
    ctx: RequestContext, provider: ProviderRuntime, response: httpx.Response, send: Send, deadline: float | None
) -> None:
    meter = ChatStreamMeter()
    decoder = SSEDecoder()
    strip_usage = not ctx.client_wants_usage
    saw_done = False
    failure: str | None = None
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in response.stream:  # the raw byte stream; no decoding layers
                out: list[bytes] | None = [] if strip_usage else None
                for event in decoder.feed(chunk):
                    saw_done = _handle(ctx, meter, event.data, out) or saw_done
                body = chunk if out is None else b"".join(out)  # nothing to strip: the upstream's bytes
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            out = [] if strip_usage else None
            for event in decoder.flush():
                saw_done = _handle(ctx, meter, event.data, out) or saw_done
            if out:
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        if meter.error is not None:
            failure = str(meter.error.get("message") or "upstream error event")
            ctx.fail(502, "upstream_stream_error", failure)
            metrics.UPSTREAM_ERRORS.labels(provider.name, "stream_error").inc()
        elif not saw_done and meter.finish_reason is None:
            failure = "the upstream closed the stream before it finished"
            metrics.UPSTREAM_ERRORS.labels(provider.name, "stream_interrupted").inc()
    except (httpx.HTTPError, TimeoutError) as exc:  # counted by transport_error
        failure = transport_error(ctx, provider, exc).message
    finally:
        await response.aclose()
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        ctx.finish_reason = meter.finish_reason
        if meter.usage is not None:
            ctx.usage = meter.usage
        else:  # cut short: charge what was delivered
            ctx.usage = Usage(prompt_tokens=estimate_prompt_tokens(ctx.body), completion_tokens=meter.output_events)
            ctx.metadata["usage_estimated"] = True
    if failure is None:
        provider.record_ok()
    elif meter.error is None:
        ctx.fail(502, "upstream_stream_interrupted", failure)
        error = {"message": f"Stream interrupted: {failure}", "type": "upstream_error",
                 "param": None, "code": "stream_interrupted"}
        await send({"type": "http.response.body", "body": b"data: " + orjson.dumps({"error": error}) + b"\n\n",
                    "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _handle(ctx: RequestContext, meter: ChatStreamMeter, data: bytes, out: list[bytes] | None) -> bool:
    """Meter one event and, when re-framing (``out`` given), queue it for the client unless it
    is the usage-only chunk; True if it was the ``[DONE]`` sentinel."""
    if data == b"[DONE]":
        if out is not None:
            out.append(_DONE)
        return True
    before = meter.output_events
    usage_only = meter.feed(data)
    if meter.output_events != before and ctx.first_token_at is None:
        ctx.first_token_at = time.perf_counter()
    if out is not None and not usage_only:
        out.append(b"data: " + data + b"\n\n" if b"\n" not in data else encode_event(data))
    return False
