"""Sending one request upstream and classifying what went wrong, in httpx's terms only."""

from __future__ import annotations

import time

import httpx

from llm_proxy.core import metrics
from llm_proxy.core.context import RequestContext
from llm_proxy.core.errors import ProxyError
from llm_proxy.runtime.provider import ProviderRuntime

__all__ = ["open_upstream", "transport_error"]


async def open_upstream(
    ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes, extra: dict[str, str] | None = None
) -> httpx.Response:
    """POST ``body`` and return the response with its body still unread (streaming)."""
    transport = provider.transport
    if transport is None:
        raise ProxyError(503, f"Provider '{provider.name}' is not started.", type="server_error")
    # The transport directly, not AsyncClient.send, and the body as a ready ByteStream with its
    # length given: the client's URL merging, cookie jar and header re-normalisation cost more
    # than the rest of the gateway per request (docs/benchmarks.md).
    raw = provider.raw_headers_for(ctx.key_index) if ctx.key_index else provider.raw_headers
    request = httpx.Request(
        "POST",
        provider.url(path),
        headers=[
            *raw,
            *((k.encode(), v.encode()) for k, v in extra.items()),
            (b"content-length", b"%d" % len(body)),
        ] if extra else [*raw, (b"content-length", b"%d" % len(body))],
        stream=httpx.ByteStream(body),
        extensions=provider.extensions,
    )
    request.read()
    ctx.upstream_started = time.perf_counter()
    try:
        response = await transport.handle_async_request(request)
    except httpx.HTTPError as exc:
        raise transport_error(ctx, provider, exc) from None
    ctx.upstream_headers_at = time.perf_counter()
    ctx.upstream_elapsed = ctx.upstream_headers_at - ctx.upstream_started
    ctx.upstream_request_id = response.headers.get("x-request-id")
    return response


# what the gateway was doing when a timeout of this kind fired
_WAITING: dict[type[BaseException], str] = {
    httpx.ConnectTimeout: "connecting to",
    httpx.PoolTimeout: "waiting for a connection to",
    httpx.ReadTimeout: "waiting for data from",
}


def transport_error(ctx: RequestContext, provider: ProviderRuntime, exc: BaseException) -> ProxyError:
    """Map a failure to reach or read from an upstream to a gateway error (502/504)."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        kind, status, code = "timeout", 504, "upstream_timeout"
        what = _WAITING.get(type(exc), "waiting for")
        message = f"Timed out {what} provider '{provider.name}'."
    elif isinstance(exc, httpx.ConnectError):
        kind, status, code = "connect", 502, "upstream_unreachable"
        message = f"Could not connect to provider '{provider.name}'."
    else:
        kind, status, code = "protocol", 502, "upstream_error"
        message = f"Provider '{provider.name}' broke the connection ({type(exc).__name__})."
    metrics.UPSTREAM_ERRORS.labels(provider.name, kind).inc()
    provider.record_error(message)
    return ProxyError(status, message, type="upstream_error", code=code)
