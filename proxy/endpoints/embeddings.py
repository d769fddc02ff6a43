"""``POST /v1/embeddings``: dispatch to the chosen provider and answer in OpenAI's shape.

OpenAI-compatible providers get the client's bytes (model renamed if the target's name
differs) at ``{base_url}/embeddings`` and their bytes go back untouched; only the usage is
read. Gemini (``batchEmbedContents``) and Ollama (``/api/embed``) are translated by
``proxy.providers.embeddings``. Never streamed. The upstream helpers here are shared with
the images endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
from starlette.types import Receive, Scope, Send

from proxy import metrics
from proxy.context import SCOPE_KEY, RequestContext, Usage
from proxy.errors import ProxyError, bad_request
from proxy.providers import embeddings as native
from proxy.providers.openai import native_error, upstream_error
from proxy.runtime import ProviderRuntime
from proxy.upstream import open_upstream, transport_error

__all__ = ["call_upstream", "create_embeddings", "deadline_for", "forward_body", "open_checked", "run_endpoint",
           "send_body", "unsupported"]

EMBEDDINGS_PATH = "/embeddings"
_JSON = (b"content-type", b"application/json")
_MAX_ERROR_BODY = 64 * 1024


async def create_embeddings(scope: Scope, receive: Receive, send: Send) -> None:
    await run_endpoint(scope["state"][SCOPE_KEY], send, _dispatch)


# -- shared with the images endpoint -------------------------------------------------------------


async def run_endpoint(ctx: RequestContext, send: Send,
                       dispatch: Callable[[RequestContext, ProviderRuntime, Send], Awaitable[None]]) -> None:
    """Pick the first candidate and run ``dispatch`` inside the plugin hooks, as chat does."""
    runtime = ctx.runtime
    plugins = runtime.plugins
    try:
        ctx.target = target = ctx.candidates[0]
        provider = runtime.providers[target.provider]
        if plugins.has_before:
            await plugins.run_before(ctx)
        await dispatch(ctx, provider, send)
    except Exception as exc:
        if plugins.has_error:
            await plugins.run_error(ctx, exc)
        raise
    if plugins.has_after and ctx.error_type is None:
        await plugins.run_after(ctx)


def forward_body(ctx: RequestContext) -> bytes:
    """The client's bytes, unless the model name or a layer changed the body."""
    body = ctx.body
    assert body is not None and ctx.target is not None
    if body.get("model") != ctx.target.model:
        body["model"] = ctx.target.model
        ctx.body_dirty = True
    return orjson.dumps(body) if ctx.body_dirty else ctx.raw_body


def unsupported(what: str, provider: ProviderRuntime) -> ProxyError:
    return bad_request(f"{what} is not supported for provider '{provider.name}' (type {provider.config.type}).",
                       code="unsupported_endpoint", param="model")


def deadline_for(provider: ProviderRuntime) -> float | None:
    total = provider.config.timeouts.total  # from sending to the last byte, as for chat
    return asyncio.get_running_loop().time() + total if total else None


async def _read(response: httpx.Response, limit: int | None = None) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.stream:  # raw bytes, no decoding layers
        parts.append(chunk)
        size += len(chunk)
        if limit is not None and size >= limit:
            break
    return b"".join(parts)


async def open_checked(ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes,
                       extra: dict[str, str] | None) -> httpx.Response:
    """Send the request; an upstream error status becomes a ProxyError in OpenAI shape, status kept.
    Call inside the deadline and map httpx/timeout errors with ``transport_error``."""
    response = await open_upstream(ctx, provider, path, body, extra)
    status = response.status_code
    if status < 400:
        return response
    try:
        data = await _read(response, _MAX_ERROR_BODY)
    finally:
        await response.aclose()
    ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
    translator = provider.translator
    error = (upstream_error(provider.name, status, data, response.headers) if translator is None
             else native_error(translator, status, data, response.headers))
    provider.record_error(f"HTTP {status}: {error.message[:200]}")
    metrics.UPSTREAM_ERRORS.labels(provider.name, f"http_{status // 100}xx").inc()
    raise error


async def call_upstream(ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes,
                        extra: dict[str, str] | None = None) -> bytes:
    """POST and read the whole answer within the provider's total deadline; errors raised as above."""
    try:
        async with asyncio.timeout_at(deadline_for(provider)):
            response = await open_checked(ctx, provider, path, body, extra)
            try:
                data = await _read(response)
            finally:
                await response.aclose()
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(ctx, provider, exc) from None
    ctx.upstream_elapsed = time.perf_counter() - (ctx.upstream_started or ctx.started)
    provider.record_ok()
    return data


async def send_body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [_JSON, (b"content-length", b"%d" % len(data))]})
    await send({"type": "http.response.body", "body": data})


# -- embeddings -------------------------------------------------------------------------------------


def _passthrough_usage(data: bytes, ctx: RequestContext) -> Usage | None:
    """``usage.prompt_tokens`` of an OpenAI-shaped answer; estimated from text input when absent."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, int):
        return Usage(prompt_tokens=tokens)
    value = (ctx.body or {}).get("input")
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
        ctx.metadata["usage_estimated"] = True
        return Usage(prompt_tokens=native.estimate_tokens(texts))
    return None


async def _dispatch(ctx: RequestContext, provider: ProviderRuntime, send: Send) -> None:
    body = ctx.body
    target = ctx.target
    assert body is not None and target is not None
    if ctx.stream:
        raise bad_request("stream is not supported for embeddings", param="stream")
    kind = provider.config.type
    if kind == "openai":
        data = await call_upstream(ctx, provider, EMBEDDINGS_PATH, forward_body(ctx))
        ctx.usage = _passthrough_usage(data, ctx)
        await send_body(send, data)
        return
    if kind not in ("gemini", "ollama"):
        raise unsupported("Embeddings", provider)
    texts = native.embed_texts(body, kind)
    fmt = native.encoding_format(body)
    if kind == "gemini":
        call = native.gemini_embed_request(body, target.model, texts, api_key=provider.config.api_key)
        data = await call_upstream(ctx, provider, call.path, call.body, call.headers)
        response, ctx.usage = native.gemini_embed_response(data, target.model, texts, fmt, provider.name)
        estimated = True  # Gemini reports no tokens for embeddings
    else:
        call = native.ollama_embed_request(body, target.model, texts, api_key=provider.config.api_key)
        data = await call_upstream(ctx, provider, call.path, call.body, call.headers)
        response, ctx.usage, estimated = native.ollama_embed_response(data, target.model, texts, fmt, provider.name)
    if estimated:
        ctx.metadata["usage_estimated"] = True
    await send_body(send, orjson.dumps(response))
