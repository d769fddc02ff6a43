"""Sending the request's chat-shaped body to the routed provider: the step every surface shares.

Chat completions, Anthropic Messages and Responses all end up here with ``ctx.body`` in
OpenAI chat shape. Before-plugins run, the body is forwarded as the client's own bytes to
a provider whose format passes chat through (re-serialised only if something changed it) or
built by the provider's wire format, and the upstream answer comes back open (streams) or read.
Upstream failures are raised as ``ProxyError`` in OpenAI shape, before any byte is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httpx
import orjson
from starlette.types import Send

from llm_proxy.core import metrics
from llm_proxy.core.context import Deployment, RequestContext
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.providers.openai import CHAT_PATH
from llm_proxy.routing import pipeline
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.exchange import open_upstream, transport_error
from llm_proxy.upstream.remote_images import BudgetExhausted

__all__ = [
    "Upstream",
    "chat_answer",
    "complete_chat",
    "forward_body",
    "run_before",
    "send_chat",
    "send_chat_to",
    "send_native",
    "with_plugins",
]

_MAX_ERROR_BODY = 64 * 1024


@dataclass(slots=True)
class Upstream:
    provider: ProviderRuntime
    response: httpx.Response
    deadline: float | None
    data: bytes  # the body, when it was read (non-streaming)
    first: bytes = b""  # a stream's first chunk, read before answering so a dead stream can fail over
    chunks: AsyncIterator[bytes] | None = None  # the rest of the stream


async def with_plugins(ctx: RequestContext, handler: Callable[[RequestContext, Send], Awaitable[None]],
                       send: Send) -> None:
    """Run a surface's handler between the after and error plugin stages."""
    plugins = runtime_of(ctx).plugins
    try:
        await handler(ctx, send)
    except Exception as exc:
        if plugins.has_error:
            await plugins.run_error(ctx, exc)
        raise
    if plugins.has_after and ctx.error_type is None:
        await plugins.run_after(ctx)


async def run_before(ctx: RequestContext) -> None:
    plugins = runtime_of(ctx).plugins
    if plugins.has_before:
        await plugins.run_before(ctx)


def forward_body(ctx: RequestContext) -> bytes:
    """The client's bytes, unless a layer changed the body or the upstream names the model otherwise."""
    body = ctx.body
    assert body is not None and ctx.deployment is not None
    if body.get("model") != ctx.deployment.model:
        body["model"] = ctx.deployment.model
        ctx.body_dirty = True
    return orjson.dumps(body) if ctx.body_dirty else ctx.raw_body


async def send_chat(ctx: RequestContext) -> Upstream:
    """Send the chat-shaped body through the resilience pipeline (before-plugins run once)."""
    ctx.deployment = ctx.candidates[0]
    await run_before(ctx)
    return await pipeline.run(ctx, lambda target: send_chat_to(ctx, target))


async def send_chat_to(ctx: RequestContext, target: Deployment) -> Upstream:
    """One attempt: the chat-shaped body to ``target``, as the client's bytes or built by its format.

    A body the format cannot express (``build_chat`` refuses it with a 4xx) is not the
    client's fault while another deployment may take it as it is: ``CannotServe``."""
    runtime = runtime_of(ctx)
    provider = runtime.upstreams.providers[target.provider]
    wire = provider.wire
    if wire.chat_passthrough:
        path, body, extra = CHAT_PATH, forward_body(ctx), None
    else:
        assert ctx.body is not None
        if wire.chat_shape is not None:  # before anything reads the body, image inlining included
            wire.chat_shape.check(ctx.body)
        fetcher = runtime.upstreams.image_fetcher
        if wire.needs_inline_images and fetcher is not None:
            try:
                await fetcher.inline_images(ctx.body)
            except BudgetExhausted as busy:  # the gateway's own limit: no verdict on this deployment
                raise pipeline.CannotServe(busy) from None
        limits = runtime.pricing.catalog.limits(target.model, provider.catalog_id)
        try:
            call = wire.build_chat(
                ctx.body, target.model, api_key=provider.api_key(ctx.key_index), stream=ctx.stream,
                max_output_tokens=limits[1] if limits else None,
            )
        except ProxyError as exc:
            if exc.status >= 500:
                raise
            raise pipeline.CannotServe(exc) from None
        path, body, extra = call.path, call.body, call.headers
    return await _send(ctx, provider, path, body, extra)


async def send_native(
    ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes, headers: dict[str, str]
) -> Upstream:
    """Send a body already in the provider's own format (a pass-through surface).

    Before-plugins are not run: they edit chat-shaped bodies (see README)."""
    return await _send(ctx, provider, path, body, headers)


async def _send(
    ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes, extra: dict[str, str] | None
) -> Upstream:
    total = provider.config.timeouts.total
    first, chunks = b"", None
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
            else:  # nothing has reached the client yet: a stream that dies now can still fail over
                chunks = aiter(cast(httpx.AsyncByteStream, response.stream))  # async transports only
                try:
                    first = await _first_chunk(chunks)
                except BaseException:
                    await response.aclose()
                    raise
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(ctx, provider, exc) from None
    except _EmptyStream:
        message = f"Provider '{provider.name}' ended the stream before sending anything."
        provider.record_error(message)
        metrics.UPSTREAM_ERRORS.labels(provider.name, "stream_interrupted").inc()
        raise ProxyError(502, message, type="upstream_error", code="upstream_error") from None
    if status >= 400:
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        error = provider.wire.upstream_error(provider.name, status, data, response.headers)
        provider.record_error(f"HTTP {status}: {error.message[:200]}")
        metrics.UPSTREAM_ERRORS.labels(provider.name, f"http_{status // 100}xx").inc()
        raise error
    if not ctx.stream:
        ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
        provider.record_ok()
    if ctx.stream:
        return Upstream(provider, response, deadline, data, first, chunks)
    return Upstream(provider, response, deadline, data)


class _EmptyStream(Exception):
    pass


async def _first_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    async for chunk in chunks:
        if chunk:
            return chunk
    raise _EmptyStream


async def complete_chat(ctx: RequestContext) -> JSONObject:
    """A non-streaming chat completion as a dict, whatever the provider's format."""
    return chat_answer(ctx, await send_chat(ctx))


def chat_answer(ctx: RequestContext, up: Upstream) -> JSONObject:
    """A read (non-streaming) chat answer as an OpenAI dict, metered, whatever its format."""
    translated = up.provider.wire.parse_chat(up.data, ctx.deployment.model if ctx.deployment else "")
    ctx.usage, ctx.finish_reason = translated.usage, translated.finish_reason
    return translated.response


async def _read(response: httpx.Response, limit: int | None) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in cast(httpx.AsyncByteStream, response.stream):  # the raw bytes; no decoding layers
        parts.append(chunk)
        size += len(chunk)
        if limit is not None and size >= limit:
            break
    return b"".join(parts)
