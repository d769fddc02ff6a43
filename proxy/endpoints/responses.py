"""``POST /v1/responses`` (OpenAI Responses API).

A provider that serves ``/responses`` itself (``responses_api: true``, i.e. OpenAI) gets the
client's bytes and its answer is relayed as is, read only for metering. Every other
provider is reached through chat: the request is translated to chat, served like a chat
completion, and the answer or event stream translated back into Responses shapes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext, Usage
from llm_proxy.core.errors import send_json
from llm_proxy.inbound import responses as inbound
from llm_proxy.routing import pipeline
from llm_proxy.upstream.dispatch import complete_chat, forward_body, send_chat, send_native, with_plugins
from llm_proxy.upstream.relay import JsonEventDecoder, ObservedRelay, relay_stream, relay_surface

__all__ = ["ResponsesObserver", "responses", "usage_from_responses"]

_SSE = (b"content-type", b"text/event-stream; charset=utf-8")


def usage_from_responses(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    cached = (u.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(prompt_tokens=int(u.get("input_tokens") or 0), completion_tokens=int(u.get("output_tokens") or 0),
                 reasoning_tokens=int(reasoning), cached_tokens=int(cached))


async def responses(scope: Scope, receive: Receive, send: Send) -> None:
    await with_plugins(scope["state"][SCOPE_KEY], _responses, send)


async def _responses(ctx: RequestContext, send: Send) -> None:
    providers = ctx.runtime.providers
    request = ctx.body or {}
    model = ctx.requested_model or ctx.candidates[0].model
    passthrough = [t for t in ctx.candidates if providers[t.provider].config.responses_api
                   and providers[t.provider].translator is None]
    if passthrough and passthrough[0] == ctx.candidates[0]:  # fail over among those that speak Responses
        ctx.candidates = passthrough
        up = await pipeline.run(
            ctx, lambda target: send_native(ctx, providers[target.provider], "/responses", forward_body(ctx), {}))
        if not ctx.stream:
            try:
                obj = orjson.loads(up.data)
            except orjson.JSONDecodeError:
                obj = {}
            ctx.usage = usage_from_responses(obj.get("usage") if isinstance(obj, dict) else None)
            await send_json(send, 200, up.data)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [_SSE]})
        stream = inbound.EventStream(request, model)
        relay = ObservedRelay(ctx, ResponsesObserver(), lambda error: _failed(stream, error))
        await relay_stream(ctx, up, send, relay)
        return

    ctx.body = inbound.to_chat(request)
    ctx.body_dirty = True
    if not ctx.stream:
        completion = await complete_chat(ctx)
        await send_json(send, 200, orjson.dumps(inbound.from_chat(completion, request)))
        return
    up = await send_chat(ctx)
    stream = inbound.EventStream(request, model)
    await relay_surface(ctx, up, send, stream, lambda error: _failed(stream, error))



def _failed(stream: Any, error: dict[str, Any]) -> bytes:
    return stream.error(str(error.get("message") or "upstream error"), str(error.get("code") or "server_error"))


class ResponsesObserver(JsonEventDecoder):
    """Reads a Responses event stream passing through: usage from the final response,
    and each delta counted as output (for time to first token)."""

    def _take(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        kind = obj.get("type")
        if kind in ("response.output_text.delta", "response.reasoning_summary_text.delta",
                    "response.function_call_arguments.delta"):
            return {"choices": [{"delta": {"content": "x"}}]}
        if kind in ("response.completed", "response.incomplete"):
            response = obj.get("response") or {}
            self.usage = usage_from_responses(response.get("usage"))
            self.finish_reason = "stop" if kind == "response.completed" else "length"
        elif kind in ("response.failed", "error"):
            err = (obj.get("response") or {}).get("error") if kind == "response.failed" else obj
            self.error = {"message": str((err or {}).get("message") or "response failed"),
                          "code": (err or {}).get("code")}
        return None

