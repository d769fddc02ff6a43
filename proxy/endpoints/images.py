"""``POST /v1/images/generations``: OpenAI-compatible pass-through, or Gemini Imagen translated.

OpenAI-compatible providers get the client's bytes at ``{base_url}/images/generations`` and
their answer goes back untouched (a ``stream: true`` request, which gpt-image models accept,
is relayed byte for byte). Gemini ``imagen*`` models go to ``:predict``; their images come
back as ``b64_json``, or as ``data:`` URIs when ``response_format`` is ``url`` (Gemini hosts
no images). Other provider types cannot generate images here.

Cost: the serving provider's ``prices.<model>.per_image`` times the images returned, set
here; without it, token usage the upstream reported (gpt-image) is priced by the catalog
like any other request; else the cost stays unknown.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext, Target, Usage
from llm_proxy.core.errors import bad_request, send_json
from llm_proxy.endpoints.embeddings import call, unsupported
from llm_proxy.providers import embeddings as native
from llm_proxy.routing import pipeline
from llm_proxy.runtime.snapshot import ProviderRuntime
from llm_proxy.upstream.dispatch import Upstream, forward_body, run_before, send_native, with_plugins
from llm_proxy.upstream.relay import ObservedRelay, relay_stream

__all__ = ["generate_images"]

IMAGES_PATH = "/images/generations"


async def generate_images(scope: Scope, receive: Receive, send: Send) -> None:
    await with_plugins(scope["state"][SCOPE_KEY], _dispatch, send)


def _image_usage(obj: Any) -> Usage | None:
    """gpt-image's ``usage`` (input/output tokens); DALL·E and most servers send none."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(inp, int) and not isinstance(out, int):
        return None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(prompt_tokens=inp if isinstance(inp, int) else 0,
                 completion_tokens=out if isinstance(out, int) else 0,
                 cached_tokens=cached if isinstance(cached, int) else 0)


def _meter(ctx: RequestContext, provider: ProviderRuntime, images: int, usage: Usage | None) -> None:
    assert ctx.target is not None
    ctx.usage = usage
    price = provider.config.prices.get(ctx.target.model)
    if price is not None and price.per_image is not None:
        ctx.cost = images * price.per_image  # metering keeps a cost set here


async def _dispatch(ctx: RequestContext, send: Send) -> None:
    ctx.target = ctx.candidates[0]
    await run_before(ctx)
    if ctx.stream:
        up = await pipeline.run(ctx, lambda target: _open_stream(ctx, target))
        ctype = up.response.headers.get("content-type", "text/event-stream")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype.encode())]})
        relay = ObservedRelay(ctx, _Bytes(), lambda error: b"data: " + orjson.dumps({"error": error}) + b"\n\n")
        await relay_stream(ctx, up, send, relay)
        return
    data, images, usage = await pipeline.run(ctx, lambda target: _generate(ctx, target))
    _meter(ctx, ctx.runtime.providers[ctx.target.provider], images, usage)
    await send_json(send, 200, data)


async def _generate(ctx: RequestContext, target: Target) -> tuple[bytes, int, Usage | None]:
    """One deployment's images: (the answer in OpenAI's shape, how many images, usage)."""
    provider = ctx.runtime.providers[target.provider]
    body = ctx.body
    assert body is not None
    kind = provider.config.type
    if kind == "openai":
        data = await call(ctx, provider, IMAGES_PATH, forward_body(ctx))
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        images = obj.get("data") if isinstance(obj, dict) else None
        return data, len(images) if isinstance(images, list) else 0, _image_usage(obj)
    if kind != "gemini" or not native.is_imagen(target.model):
        raise unsupported("Image generation" + (" with a non-Imagen model" if kind == "gemini" else ""), provider)
    request = native.gemini_image_request(body, target.model, api_key=provider.api_key(ctx.key_index))
    data = await call(ctx, provider, request.path, request.body, request.headers)
    response = native.gemini_image_response(data, body.get("response_format"), provider.name)
    return orjson.dumps(response), len(response["data"]), None


async def _open_stream(ctx: RequestContext, target: Target) -> Upstream:
    """gpt-image streaming: the upstream's events go through as they come, unmetered."""
    provider = ctx.runtime.providers[target.provider]
    if provider.config.type != "openai":
        raise bad_request(f"stream is not supported for image generation with provider '{provider.name}'",
                          param="stream")
    return await send_native(ctx, provider, IMAGES_PATH, forward_body(ctx), {})


class _Bytes:
    """An image event stream is not metered: the first bytes count as output, the end as done."""

    usage: Usage | None = None
    error: dict[str, Any] | None = None

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self._seen = False

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if self._seen:
            return []
        self._seen = True
        return [{"choices": [{"delta": {"content": "image"}}]}]

    def finish(self) -> list[dict[str, Any]]:
        self.finish_reason = "stop"
        return []
