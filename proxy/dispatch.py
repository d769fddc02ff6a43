"""Sending the request's chat-shaped body to the routed provider: the step every surface shares.

Chat completions, Anthropic Messages and Responses all end up here with ``ctx.body`` in
OpenAI chat shape. Before-plugins run, the body is forwarded as the client's own bytes to
an OpenAI-compatible provider (re-serialised only if something changed it) or built by the
provider's translator, and the upstream answer comes back open (streams) or read.
Upstream failures are raised as ``ProxyError`` in OpenAI shape, before any byte is sent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx
import orjson

from proxy import metrics
from proxy.context import RequestContext
from proxy.errors import ProxyError
from proxy.providers.openai import CHAT_PATH, native_error, parse_chat_response, upstream_error
from proxy.runtime import ProviderRuntime
from proxy.upstream import open_upstream, transport_error

__all__ = ["FAILOVER_STATUSES", "Upstream", "complete_chat", "forward_body", "run_before", "send_chat", "send_native", "with_plugins"]

_MAX_ERROR_BODY = 64 * 1024


@dataclass(slots=True)
class Upstream:
    provider: ProviderRuntime
    native: ModuleType | None  # the translator; None for an OpenAI-compatible provider
    response: httpx.Response
    deadline: float | None
    data: bytes  # the body, when it was read (non-streaming)


async def with_plugins(ctx: RequestContext, handler: Any, send: Any) -> None:
    """Run a surface's handler between the after and error plugin stages."""
    plugins = ctx.runtime.plugins
    try:
        await handler(ctx, send)
    except Exception as exc:
        if plugins.has_error:
            await plugins.run_error(ctx, exc)
        raise
    if plugins.has_after and ctx.error_type is None:
        await plugins.run_after(ctx)


async def run_before(ctx: RequestContext) -> None:
    if ctx.runtime.plugins.has_before:
        await ctx.runtime.plugins.run_before(ctx)


def forward_body(ctx: RequestContext) -> bytes:
    """The client's bytes, unless a layer changed the body or the upstream names the model otherwise."""
    body = ctx.body
    assert body is not None and ctx.target is not None
    if body.get("model") != ctx.target.model:
        body["model"] = ctx.target.model
        ctx.body_dirty = True
    return orjson.dumps(body) if ctx.body_dirty else ctx.raw_body


# Failures another deployment of the same model may not share: before the first byte
# reaches the client, the next candidate is tried. A 400 is the client's and is returned.
FAILOVER_STATUSES = frozenset({401, 403, 408, 429, 500, 502, 503, 504, 529})


async def send_chat(ctx: RequestContext) -> Upstream:
    """Send to the first candidate; on a failover-worthy failure, to the next, in order.

    Before-plugins run once, for the first candidate. Each attempt is recorded for the
    request log when there is more than one candidate."""
    breakers = ctx.runtime.breakers
    candidates = ctx.candidates
    ctx.target = candidates[0]
    await run_before(ctx)
    if len(candidates) == 1:  # nothing to fail over to: the breaker only watches
        breaker = breakers.get(candidates[0].provider, candidates[0].model)
        try:
            up = await _send_to(ctx, candidates[0])
        except ProxyError as exc:
            breaker.record(exc.status)
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.record(up.response.status_code)
        return up
    # Deployments whose breaker lets a request through are tried in order (asking only right
    # before trying, so a half-open probe is a real one); open ones after, soonest to reopen
    # first, so a request is never failed blind while something may still work.
    attempts: list[dict[str, Any]] = ctx.metadata.setdefault("attempts", [])
    deferred: list[tuple[Any, Any]] = []
    failure: ProxyError | None = None
    for target in candidates:
        breaker = breakers.get(target.provider, target.model)
        if not breaker.allow():
            deferred.append((target, breaker))
            continue
        up, failure = await _attempt_one(ctx, target, breaker, attempts)
        if up is not None:
            return up
    for target, breaker in sorted(deferred, key=lambda item: item[1].retry_at):
        up, failure = await _attempt_one(ctx, target, breaker, attempts)
        if up is not None:
            return up
    assert failure is not None
    raise failure


async def _attempt_one(
    ctx: RequestContext, target: Any, breaker: Any, attempts: list[dict[str, Any]]
) -> tuple[Upstream | None, ProxyError | None]:
    """One deployment: its answer, or the failure when another deployment may do better
    (anything else is raised at once)."""
    ctx.target = target
    started = time.perf_counter()
    try:
        up = await _send_to(ctx, target)
    except ProxyError as exc:
        breaker.record(exc.status)
        attempts.append(_attempt(target, exc.status, started, exc.code or exc.type))
        if exc.status not in FAILOVER_STATUSES:
            raise
        return None, exc
    except BaseException:  # cancelled (client gone) or a bug: no verdict on the deployment
        breaker.release()
        raise
    breaker.record(up.response.status_code)
    attempts.append(_attempt(target, up.response.status_code, started, None))
    return up, None


def _attempt(target: Any, status: int, started: float, error: str | None) -> dict[str, Any]:
    return {"provider": target.provider, "model": target.model, "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 2), "error": error}


async def _send_to(ctx: RequestContext, target: Any) -> Upstream:
    runtime = ctx.runtime
    provider = runtime.providers[target.provider]
    native = provider.translator
    if native is None:
        path, body, extra = CHAT_PATH, forward_body(ctx), None
    else:
        if runtime.image_fetcher is not None and provider.config.type in ("gemini", "ollama"):
            await runtime.image_fetcher.inline_images(ctx.body)  # these need image bytes inline
        limits = runtime.catalog.limits(target.model, provider.catalog_id)
        call = native.build_request(
            ctx.body, target.model, api_key=provider.config.api_key, stream=ctx.stream,
            max_output_tokens=limits[1] if limits else None,
        )
        path, body, extra = call.path, call.body, call.headers
    return await _send(ctx, provider, native, native, path, body, extra)


async def send_native(
    ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes, headers: dict[str, str]
) -> Upstream:
    """Send a body already in the provider's own format (a pass-through surface).

    Before-plugins are not run: they edit chat-shaped bodies (see README)."""
    return await _send(ctx, provider, None, provider.translator, path, body, headers)


async def _send(
    ctx: RequestContext,
    provider: ProviderRuntime,
    native: ModuleType | None,
    errors: ModuleType | None,
    path: str,
    body: bytes,
    extra: dict[str, str] | None,
) -> Upstream:
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
        error = (upstream_error(provider.name, status, data, response.headers) if errors is None
                 else native_error(errors, status, data, response.headers))
        provider.record_error(f"HTTP {status}: {error.message[:200]}")
        metrics.UPSTREAM_ERRORS.labels(provider.name, f"http_{status // 100}xx").inc()
        raise error
    if not ctx.stream:
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        provider.record_ok()
    return Upstream(provider, native, response, deadline, data)


async def complete_chat(ctx: RequestContext) -> dict[str, Any]:
    """A non-streaming chat completion as a dict, whatever the provider's format."""
    up = await send_chat(ctx)
    if up.native is None:
        try:
            result = orjson.loads(up.data)
        except orjson.JSONDecodeError:
            result = None
        if not isinstance(result, dict):
            raise ProxyError(502, f"Provider '{up.provider.name}' sent a chat completion that is not a JSON object.",
                             type="upstream_error", code="bad_upstream_response")
        ctx.usage, ctx.finish_reason, _ = parse_chat_response(result)
        return result
    translated = up.native.parse_response(up.data, ctx.target.model if ctx.target else "")
    ctx.usage, ctx.finish_reason = translated.usage, translated.finish_reason
    return translated.response


async def _read(response: httpx.Response, limit: int | None) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.stream:  # the raw byte stream; no decoding layers
        parts.append(chunk)
        size += len(chunk)
        if limit is not None and size >= limit:
            break
    return b"".join(parts)
