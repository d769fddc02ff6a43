"""``POST /v1/embeddings``: dispatch to the chosen provider and answer in OpenAI's shape.

A format that serves embeddings as is (``Passthrough``: OpenAI-compatible servers) gets the
client's bytes (model renamed if the target's name differs) and its bytes go back untouched;
only the usage is read. Any other format translates them with its ``EmbeddingsCodec``; one
with no embeddings, or that cannot express the request, is skipped for the next deployment
(decided per attempt, so failover crosses formats). Never streamed.
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, Deployment, RequestContext, Usage
from llm_proxy.core.errors import ProxyError, bad_request, send_json
from llm_proxy.core.vectors import embed_texts, encoding_format, estimate_tokens
from llm_proxy.core.wire import Passthrough
from llm_proxy.providers.openai import embedding_tokens
from llm_proxy.routing import pipeline
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.dispatch import forward_body, run_before, send_native, with_plugins

__all__ = ["call", "create_embeddings", "unsupported"]


async def create_embeddings(scope: Scope, receive: Receive, send: Send) -> None:
    await with_plugins(scope["state"][SCOPE_KEY], _dispatch, send)


def unsupported(what: str, provider: ProviderRuntime) -> ProxyError:
    return bad_request(f"{what} is not supported for provider '{provider.name}' (type {provider.config.type}).",
                       code="unsupported_endpoint", param="model")


async def call(ctx: RequestContext, provider: ProviderRuntime, path: str, body: bytes,
               headers: dict[str, str] | None = None) -> bytes:
    """POST to the provider and read the answer (errors, deadline and timeouts as for chat)."""
    return (await send_native(ctx, provider, path, body, headers or {})).data


def _passthrough_usage(data: bytes, ctx: RequestContext) -> Usage | None:
    """``usage.prompt_tokens`` of an OpenAI-shaped answer; estimated from text input when absent."""
    tokens = embedding_tokens(data)
    if tokens is not None:
        return Usage(prompt_tokens=tokens)
    value = (ctx.body or {}).get("input")
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
        ctx.metadata["usage_estimated"] = True
        return Usage(prompt_tokens=estimate_tokens(texts))
    return None


async def _dispatch(ctx: RequestContext, send: Send) -> None:
    ctx.deployment = ctx.candidates[0]
    await run_before(ctx)
    if ctx.stream:
        raise bad_request("stream is not supported for embeddings", param="stream")
    data, ctx.usage, estimated = await pipeline.run(ctx, lambda target: _embed(ctx, target))
    if estimated:
        ctx.metadata["usage_estimated"] = True
    await send_json(send, 200, data)


async def _embed(ctx: RequestContext, target: Deployment) -> tuple[bytes, Usage | None, bool]:
    """One deployment's embeddings: (the answer in OpenAI's shape, usage, whether estimated)."""
    provider = runtime_of(ctx).upstreams.providers[target.provider]
    body = ctx.body
    assert body is not None
    codec = provider.wire.embeddings
    if isinstance(codec, Passthrough):
        data = await call(ctx, provider, codec.path, forward_body(ctx))
        usage = _passthrough_usage(data, ctx)
        return data, usage, bool(ctx.metadata.get("usage_estimated"))
    if codec is None:
        raise pipeline.CannotServe(unsupported("Embeddings", provider))
    try:  # what this format cannot express (token arrays…) another deployment may take as it is
        texts = embed_texts(body, provider.wire.name)
        fmt = encoding_format(body)
        request = codec.build(body, target.model, texts, api_key=provider.api_key(ctx.key_index))
    except ProxyError as exc:
        raise pipeline.CannotServe(exc) from None
    data = await call(ctx, provider, request.path, request.body, request.headers)
    answer = codec.parse(data, target.model, texts, fmt, provider.name)
    return orjson.dumps(answer.response), answer.usage, answer.estimated
