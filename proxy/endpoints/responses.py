"""``POST /v1/responses`` (OpenAI Responses API).

A deployment whose format passes Responses through (OpenAI with ``responses_api: true``) gets
the client's bytes and its answer is relayed as is, read only for metering. Every other is
reached through chat (``endpoints.translated``): the request is translated to chat, served
like a chat completion, and the answer or event stream translated back. Which of the two a
deployment gets is decided per attempt, so failover crosses between them.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext, Usage
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.wire import Chunk, JsonEventDecoder, StreamDecoder, loads_or_none
from llm_proxy.endpoints.translated import ErrorEvent, serve
from llm_proxy.inbound import responses as inbound
from llm_proxy.inbound.responses import EventStream
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.upstream.dispatch import Upstream, with_plugins

__all__ = ["ResponsesObserver", "responses", "usage_from_responses"]


def usage_from_responses(u: JSONValue) -> Usage | None:
    if not isinstance(u, dict):
        return None
    cached = (u.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(prompt_tokens=int(u.get("input_tokens") or 0), completion_tokens=int(u.get("output_tokens") or 0),
                 reasoning_tokens=int(reasoning), cached_tokens=int(cached))


async def responses(scope: Scope, receive: Receive, send: Send) -> None:
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    await with_plugins(ctx, lambda c, s: serve(c, s, _Responses(c)), send)


class _Responses:
    """One Responses request on the shared translated-surface flow."""

    surface = "responses"
    path = "/responses"

    def __init__(self, ctx: RequestContext) -> None:
        self._request = ctx.body or {}
        self._model = ctx.requested_model or ctx.candidates[0].model

    def native_headers(self, provider: ProviderRuntime, key_index: int) -> dict[str, str]:
        return {}  # the key is the provider's bearer header

    def meter_native(self, ctx: RequestContext, up: Upstream) -> None:
        obj = loads_or_none(up.data)
        ctx.usage = usage_from_responses(obj.get("usage") if obj is not None else None)

    def native_observer(self, up: Upstream, model: str) -> tuple[StreamDecoder, ErrorEvent]:
        stream = EventStream(self._request, self._model)
        return ResponsesObserver(), lambda error: _failed(stream, error)

    def to_chat(self, body: JSONObject) -> JSONObject:
        return inbound.to_chat(body)

    def from_chat(self, completion: JSONObject) -> JSONObject:
        return inbound.from_chat(completion, self._request)

    def chat_stream(self) -> tuple[EventStream, ErrorEvent]:
        stream = EventStream(self._request, self._model)
        return stream, lambda error: _failed(stream, error)


def _failed(stream: EventStream, error: JSONObject) -> bytes:
    return stream.error(str(error.get("message") or "upstream error"), str(error.get("code") or "server_error"))


class ResponsesObserver(JsonEventDecoder):
    """Reads a Responses event stream passing through: usage from the final response,
    and each delta counted as output (for time to first token)."""

    def _take(self, obj: JSONObject) -> Chunk | None:
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
