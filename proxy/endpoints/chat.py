"""``POST /v1/chat/completions``: dispatch to the chosen provider and relay the answer.

By the time a request gets here it is authenticated, parsed and routed (``ctx.candidates``).
The body is forwarded as the client's own bytes unless a layer changed it; the upstream's
answer is forwarded as its own bytes, read only as far as metering needs.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
from starlette.types import Receive, Scope, Send

from proxy import metrics
from proxy.context import SCOPE_KEY, RequestContext
from proxy.providers.openai import CHAT_PATH, native_error, parse_chat_response, upstream_error
from proxy.streaming import PassthroughRelay, TranslatedRelay, relay_stream
from proxy.upstream import open_upstream, transport_error

__all__ = ["chat_completions"]

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_MAX_ERROR_BODY = 64 * 1024


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    plugins = ctx.runtime.plugins
    try:
        await _dispatch(ctx, send)
    except Exception as exc:
        if plugins.has_error:
            await plugins.run_error(ctx, exc)
        raise
    if plugins.has_after and ctx.error_type is None:
        await plugins.run_after(ctx)


def _forward_body(ctx: RequestContext) -> bytes:
    body = ctx.body
    assert body is not None and ctx.target is not None
    if body.get("model") != ctx.target.model:
        body["model"] = ctx.target.model
        ctx.body_dirty = True
    return orjson.dumps(body) if ctx.body_dirty else ctx.raw_body


async def _dispatch(ctx: RequestContext, send: Send) -> None:
    runtime = ctx.runtime
    ctx.target = target = ctx.candidates[0]
    provider = runtime.providers[target.provider]
    if runtime.plugins.has_before:
        await runtime.plugins.run_before(ctx)
    native = provider.translator
    if native is None:  # OpenAI-compatible: the client's bytes go up, the upstream's come back
        path, body, extra = CHAT_PATH, _forward_body(ctx), None
    else:
        limits = runtime.catalog.limits(target.model, provider.catalog_id)
        call = native.build_request(
            ctx.body, target.model, api_key=provider.config.api_key, stream=ctx.stream,
            max_output_tokens=limits[1] if limits else None,
        )
        path, body, extra = call.path, call.body, call.headers
    total = provider.config.timeouts.total
    deadline = asyncio.get_running_loop().time() + total if total else None
    data = b""
    try:
        async with asyncio.timeout_at(deadline):  # total: from sending to the last byte
            response = await open_upstream(ctx, provider, path, body, extra)
            status = response.status_code
            if status >= 400 or not ctx.stream:
                try:
                    data = await _read(response, limit=_MAX_ERROR_BODY if status >= 400 else None)
                finally:
                    await response.aclose()
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(ctx, provider, exc) from None

    if status >= 400:
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        error = (upstream_error(provider.name, status, data, response.headers) if native is None
                 else native_error(native, status, data, response.headers))
        provider.record_error(f"HTTP {status}: {error.message[:200]}")
        metrics.UPSTREAM_ERRORS.labels(provider.name, f"http_{status // 100}xx").inc()
        raise error
    if not ctx.stream:
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        provider.record_ok()
        if native is None:
            ctx.usage, ctx.finish_reason, _ = parse_chat_response(data)
        else:
            translated = native.parse_response(data, target.model)
            ctx.usage, ctx.finish_reason = translated.usage, translated.finish_reason
            data = orjson.dumps(translated.response)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
        return

    await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
    relay = PassthroughRelay(ctx) if native is None else TranslatedRelay(ctx, native.StreamDecoder(target.model))
    await relay_stream(ctx, provider, response, send, deadline, relay)


async def _read(response: httpx.Response, limit: int | None) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.stream:  # the raw byte stream; no decoding layers
        parts.append(chunk)
        size += len(chunk)
        if limit is not None and size >= limit:
            break
    return b"".join(parts)
