"""``POST /v1/images/generations``: passed through, or translated by the provider's format.

A format that serves images as is (``Passthrough``: OpenAI-compatible servers) gets the
client's bytes and its answer goes back untouched (a ``stream: true`` request, which
gpt-image models accept, is relayed byte for byte). A format with an ``ImagesCodec`` (Gemini
Imagen) is translated and never streamed. Other formats cannot generate images here. A
deployment that cannot serve the request (no images, a stream to Imagen) is skipped for the
next one, decided per attempt, so failover crosses formats.

Cost: the serving provider's ``prices.<model>.per_image`` times the images returned, set
here; without it, token usage the upstream reported (gpt-image) is priced by the catalog
like any other request; else the cost stays unknown.
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, Deployment, RequestContext, Usage
from llm_proxy.core.errors import ProxyError, bad_request, send_json
from llm_proxy.core.wire import Chunk, Passthrough, StreamDecoder
from llm_proxy.endpoints.embeddings import call, unsupported
from llm_proxy.providers.openai import image_result
from llm_proxy.routing import pipeline
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.upstream.dispatch import Upstream, forward_body, run_before, send_native, with_plugins
from llm_proxy.upstream.relay import ObservedRelay, relay_stream

__all__ = ["generate_images"]


async def generate_images(scope: Scope, receive: Receive, send: Send) -> None:
    await with_plugins(scope["state"][SCOPE_KEY], _dispatch, send)


def _meter(ctx: RequestContext, provider: ProviderRuntime, images: int, usage: Usage | None) -> None:
    assert ctx.deployment is not None
    ctx.usage = usage
    price = provider.config.prices.get(ctx.deployment.model)
    if price is not None and price.per_image is not None:
        ctx.cost = images * price.per_image  # metering keeps a cost set here


async def _dispatch(ctx: RequestContext, send: Send) -> None:
    ctx.deployment = ctx.candidates[0]
    await run_before(ctx)
    if ctx.stream:
        up = await pipeline.run(ctx, lambda target: _open_stream(ctx, target))
        ctype = up.response.headers.get("content-type", "text/event-stream")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype.encode())]})
        relay = ObservedRelay(ctx, _Bytes(), lambda error: b"data: " + orjson.dumps({"error": error}) + b"\n\n")
        await relay_stream(ctx, up, send, relay)
        return
    data, images, usage = await pipeline.run(ctx, lambda target: _generate(ctx, target))
    _meter(ctx, runtime_of(ctx).upstreams.providers[ctx.deployment.provider], images, usage)
    await send_json(send, 200, data)


async def _generate(ctx: RequestContext, target: Deployment) -> tuple[bytes, int, Usage | None]:
    """One deployment's images: (the answer in OpenAI's shape, how many images, usage)."""
    provider = runtime_of(ctx).upstreams.providers[target.provider]
    body = ctx.body
    assert body is not None
    codec = provider.wire.images
    if isinstance(codec, Passthrough):
        data = await call(ctx, provider, codec.path, forward_body(ctx))
        images, usage = image_result(data)
        return data, images, usage
    reason = codec.unsupported(target.model) if codec is not None else None
    if codec is None or reason is not None:
        raise pipeline.CannotServe(unsupported("Image generation" + (f" {reason}" if reason else ""), provider))
    try:
        request = codec.build(body, target.model, api_key=provider.api_key(ctx.key_index))
    except ProxyError as exc:  # a parameter this format cannot express: another deployment may
        raise pipeline.CannotServe(exc) from None
    data = await call(ctx, provider, request.path, request.body, request.headers)
    response = codec.parse(data, body.get("response_format"), provider.name)
    return orjson.dumps(response), len(response["data"]), None


async def _open_stream(ctx: RequestContext, target: Deployment) -> Upstream:
    """gpt-image streaming: the upstream's events go through as they come, unmetered."""
    provider = runtime_of(ctx).upstreams.providers[target.provider]
    codec = provider.wire.images
    if not isinstance(codec, Passthrough):
        raise pipeline.CannotServe(bad_request(
            f"stream is not supported for image generation with provider '{provider.name}'", param="stream"))
    return await send_native(ctx, provider, codec.path, forward_body(ctx), {})


class _Bytes(StreamDecoder):
    """An image event stream is not metered: the first bytes count as output, the end as done."""

    def __init__(self) -> None:
        super().__init__()
        self._seen = False

    def feed(self, chunk: bytes) -> list[Chunk]:
        if self._seen:
            return []
        self._seen = True
        return [{"choices": [{"delta": {"content": "image"}}]}]

    def finish(self) -> list[Chunk]:
        self.finish_reason = "stop"
        return []
