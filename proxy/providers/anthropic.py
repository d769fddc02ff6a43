"""Anthropic Messages wire format (``POST /v1/messages``) <-> OpenAI Chat Completions.

Anthropic differs from the hub in structure, not just names (the request side is in
``anthropic_request``): answers are content blocks, usage counts cache reads apart from input,
and streams are typed events with per-block deltas. Pure translation; the caller does the HTTP.
"""

from __future__ import annotations

import time

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.sse import SSEEvent
from llm_proxy.core.wire import (
    Chunk,
    Translated,
    TranslatedFormat,
    UpstreamError,
    bad_upstream,
    loads_or_none,
)
from llm_proxy.core.wire import StreamDecoder as _BaseDecoder
from llm_proxy.providers.anthropic_request import (
    API_VERSION,
    CHAT_SHAPE,
    MESSAGES_PATH,
    auth_headers,
    build_request,
)

__all__ = [
    "API_VERSION",
    "CHAT_SHAPE",
    "ERROR_TYPE_BY_STATUS",
    "FORMAT",
    "MESSAGES_PATH",
    "AnthropicFormat",
    "StreamDecoder",
    "auth_headers",
    "build_request",
    "parse_error",
    "parse_response",
]

_FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
# Anthropic error.type -> the OpenAI error type a client's SDK branches on (5xx family is api_error,
# as in proxy.providers.openai); the Anthropic type itself is kept as ``code`` when it differs.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error", "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error", "permission_error": "permission_error",
    "not_found_error": "not_found_error", "rate_limit_error": "rate_limit_error",
    "billing_error": "insufficient_quota", "api_error": "api_error", "timeout_error": "api_error",
    "overloaded_error": "api_error",
}
# The Anthropic error type an HTTP status stands for (also what the inbound Messages surface answers).
ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error",
}


def _finish(stop_reason: JSONValue) -> str | None:
    return None if stop_reason is None else _FINISH.get(stop_reason, "stop")


def _usage(u: JSONValue) -> Usage:
    """Anthropic's input_tokens excludes cache reads/writes; OpenAI's prompt_tokens includes them."""
    u = u if isinstance(u, dict) else {}
    read, write = int(u.get("cache_read_input_tokens") or 0), int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + read + write
    return Usage(prompt, int(u.get("output_tokens") or 0), cached_tokens=read, cache_write_tokens=write)


def _usage_json(u: Usage) -> JSONObject:
    return {
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _openai_error(atype: JSONValue, message: JSONValue) -> JSONObject:
    atype = str(atype or "api_error")
    etype = _ERROR_TYPES.get(atype, "api_error")
    return {"message": str(message or atype), "type": etype, "code": None if atype == etype else atype}


def parse_response(data: bytes | str | JSONObject, model: str) -> Translated:
    """An Anthropic ``message`` (bytes or parsed) -> an OpenAI ``chat.completion``."""
    obj = loads_or_none(data)
    if obj is None or obj.get("type") == "error" or not isinstance(obj.get("content"), list):
        raise bad_upstream("Anthropic", "a response that is not a message")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[JSONObject] = []
    for block in obj["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": args}})
    message: JSONObject = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    finish = _finish(obj.get("stop_reason"))
    usage = _usage(obj.get("usage"))
    response = {
        "id": obj.get("id"), "object": "chat.completion", "created": int(time.time()),
        "model": obj.get("model") or model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": _usage_json(usage),
    }
    return Translated(response, usage, finish)


class StreamDecoder(_BaseDecoder):
    """Anthropic SSE events (any byte chunking) -> OpenAI ``chat.completion.chunk`` dicts.

    Tool calls are numbered in the order their ``tool_use`` blocks start, since OpenAI's
    ``tool_calls[].index`` counts calls, not Anthropic's content blocks (text, thinking...).
    """

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.id = ""
        self.created = int(time.time())
        self._tools: dict[int | None, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._counts: JSONObject = {}  # raw Anthropic usage, updated as events report it
        self._done = False  # message_stop or error seen: later bytes are ignored

    def _events(self, events: list[SSEEvent]) -> list[Chunk]:
        out: list[Chunk] = []
        for ev in events:
            if self._done:
                break
            obj = loads_or_none(ev.data)
            if obj is None:
                self.error = _openai_error("api_error", "Anthropic sent a malformed stream event")
                self._done = True
                break
            self._event(obj.get("type") or ev.event, obj, out)
        return out

    def _chunk(self, delta: JSONObject, finish: str | None = None) -> JSONObject:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _event(self, kind: JSONValue, obj: JSONObject, out: list[JSONObject]) -> None:
        if kind == "content_block_delta":  # the hot path first
            delta, index = obj.get("delta") or {}, obj.get("index")
            dtype = delta.get("type")
            if dtype == "text_delta" and delta.get("text"):
                out.append(self._chunk({"content": delta["text"]}))
            elif dtype == "input_json_delta" and delta.get("partial_json") and index in self._tools:
                call = {"index": self._tools[index], "function": {"arguments": delta["partial_json"]}}
                out.append(self._chunk({"tool_calls": [call]}))
            elif dtype == "thinking_delta" and delta.get("thinking"):
                out.append(self._chunk({"reasoning_content": delta["thinking"]}))
            # signature_delta, citations_delta: nothing in OpenAI's chunk shape carries them
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            btype = block.get("type")
            if btype == "text" and block.get("text"):
                out.append(self._chunk({"content": block["text"]}))
            elif btype == "thinking" and block.get("thinking"):
                out.append(self._chunk({"reasoning_content": block["thinking"]}))
            elif btype == "tool_use":
                self._tools[obj.get("index")] = n = len(self._tools)
                call = {"index": n, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""}}
                out.append(self._chunk({"tool_calls": [call]}))
        elif kind == "message_start":
            msg = obj.get("message") or {}
            self.id = msg.get("id") or self.id
            self.model = msg.get("model") or self.model
            self._counts.update(msg.get("usage") or {})
            self.usage = _usage(self._counts)
            out.append(self._chunk({"role": "assistant", "content": ""}))
        elif kind == "message_delta":
            if obj.get("usage"):  # cumulative counts, some or all of them
                self._counts.update(obj["usage"])
                self.usage = _usage(self._counts)
            stop = (obj.get("delta") or {}).get("stop_reason")
            if stop:
                self.finish_reason = _finish(stop)
                out.append(self._chunk({}, self.finish_reason))
        elif kind == "message_stop":
            self._done = True
            if self.usage is not None:  # include_usage style: the relay drops it if not asked for
                out.append(self._chunk({}) | {"choices": [], "usage": _usage_json(self.usage)})
        elif kind == "error":
            err = found if isinstance(found := obj.get("error"), dict) else {}
            self.error = _openai_error(err.get("type"), err.get("message"))
            self._done = True
        # ping, content_block_stop and event types added later: nothing to emit


def parse_error(status: int, data: bytes | str | JSONObject) -> UpstreamError:
    """Anthropic's ``{"type":"error","error":{"type","message"}}`` -> status and OpenAI error.

    Anthropic's own ``authentication_error`` (401: the key is malformed, revoked or expired, as
    opposed to ``permission_error``, 403: this key may not use this resource) gets OpenAI's
    ``invalid_api_key`` code, which is what tells the pipeline the key itself is refused; a bare
    401 without Anthropic's envelope (from a proxy in between) does not."""
    obj = loads_or_none(data)
    err = obj.get("error") if obj is not None else None
    atype = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    key_refused = atype == "authentication_error"
    if not atype:
        atype = ERROR_TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if not message:
        raw = data if isinstance(data, bytes | str) else b""
        text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)[:300].strip()
        message = f"Anthropic returned HTTP {status}" + (f": {text}" if text else "")
    e = _openai_error(atype, message)
    # 529 is Anthropic's private "overloaded" status. 503 is the standard "busy, retry later"
    # status that OpenAI SDKs, HTTP libraries and load balancers all treat as retryable.
    if status == 529:
        status = 503
    return UpstreamError(status, e["message"], e["type"], "invalid_api_key" if key_refused else e["code"])


class AnthropicFormat(TranslatedFormat):
    """Anthropic Messages: chat translated; the Messages surface passes through as bytes."""

    name = "anthropic"
    label = "Anthropic"
    passthrough_surface = "messages"
    chat_shape = CHAT_SHAPE


FORMAT = AnthropicFormat(auth=auth_headers, build=build_request, parse=parse_response,
                         decoder=StreamDecoder, error=parse_error)
