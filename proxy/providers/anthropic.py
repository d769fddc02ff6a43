"""Anthropic Messages wire format (``POST /v1/messages``) <-> OpenAI Chat Completions.

Anthropic differs from the hub in structure, not just names: the system prompt is a
top-level field, roles must alternate, tool results are user-turn content blocks, tool
arguments are JSON objects rather than strings, ``max_tokens`` is required, and streams are
typed events with per-block deltas. Pure translation; the caller does the HTTP.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.sse import SSEDecoder, SSEEvent
from llm_proxy.core.wire import Translated, UpstreamCall, UpstreamError, rename_params

__all__ = ["API_VERSION", "MESSAGES_PATH", "StreamDecoder", "build_request", "parse_error", "parse_response"]

MESSAGES_PATH = "/v1/messages"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when neither client nor catalog gives one
_RENAMES = {"temperature": "temperature", "top_p": "top_p"}
# reasoning_effort -> thinking budget; 1024 is the smallest budget Anthropic accepts.
_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_MIN_BUDGET = 1024
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
_TYPE_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error",
}


def build_request(
    body: dict[str, Any], model: str, *, api_key: str | None, stream: bool, max_output_tokens: int | None
) -> UpstreamCall:
    """An OpenAI chat request -> ``POST /v1/messages``; raises ``bad_request`` if untranslatable."""
    if (body.get("n") or 1) != 1:
        raise bad_request("Anthropic models return a single choice; n must be 1", param="n")
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": model}
    explicit = body.get("max_completion_tokens") or body.get("max_tokens")
    if explicit is not None and (not isinstance(explicit, int) or isinstance(explicit, bool) or explicit < 1):
        raise bad_request("max_tokens must be a positive integer", param="max_tokens")
    max_tokens = int(explicit or max_output_tokens or DEFAULT_MAX_TOKENS)
    budget = _budget(body.get("reasoning_effort"))
    if budget:
        # Thinking counts against max_tokens and Anthropic wants budget_tokens < max_tokens.
        if not explicit and not max_output_tokens:
            max_tokens = budget + DEFAULT_MAX_TOKENS  # no known ceiling: leave room for the answer
        elif max_tokens <= budget:
            budget = max(_MIN_BUDGET, max_tokens // 2)
            if max_tokens <= budget:
                max_tokens += budget
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        rename_params(body, _RENAMES, out)  # thinking rejects temperature/top_p changes: dropped then
        if isinstance(out.get("temperature"), int | float) and out["temperature"] > 1:
            out["temperature"] = 1.0  # OpenAI's range is 0..2, Anthropic's 0..1
    out["max_tokens"] = max_tokens
    if stream:
        out["stream"] = True
    if system:
        out["system"] = system
    out["messages"] = messages
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            out["tool_choice"] = choice
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    headers = {"anthropic-version": API_VERSION}
    if api_key:
        headers["x-api-key"] = api_key
    return UpstreamCall(MESSAGES_PATH, orjson.dumps(out), headers)


def _budget(effort: Any) -> int | None:
    if effort is None or effort == "none":
        return None
    if effort not in _BUDGETS:
        raise bad_request(f"Unsupported reasoning_effort {effort!r}", param="reasoning_effort")
    return _BUDGETS[effort]


def _messages(raw: Any) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(system, messages): system hoisted, tool results as user blocks, same-role turns merged."""
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty array", param="messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", param=where)
        role, content = msg.get("role"), msg.get("content")
        if role in ("system", "developer"):
            system.extend(_blocks(content, where, images=False))
            continue
        if role == "user":
            blocks = _blocks(content, where)
        elif role == "assistant":
            blocks = _blocks(content, where)
            blocks.extend(_tool_use(call, where) for call in msg.get("tool_calls") or ())
        elif role == "tool":
            if not msg.get("tool_call_id"):
                raise bad_request("tool messages need a tool_call_id", param=f"{where}.tool_call_id")
            role, result = "user", {"type": "tool_result", "tool_use_id": msg["tool_call_id"]}
            parts = content if isinstance(content, str) else _blocks(content, where)
            if parts:
                result["content"] = parts
            blocks = [result]
        else:
            raise bad_request(f"Unsupported message role {role!r}", param=f"{where}.role")
        if not blocks:  # Anthropic rejects empty content; an empty turn carries nothing anyway
            continue
        if turns and turns[-1]["role"] == role:  # Anthropic requires alternating roles
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise bad_request("messages must include a user or assistant message", param="messages")
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user":  # tool_result blocks must open the user turn (stable sort)
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
            turn["content"] = blocks[0]["text"]  # the plain-string form, as most clients send it
    if any("cache_control" in b for b in system):
        return system, turns  # keep the blocks so the client's cache breakpoints survive
    return "\n\n".join(b["text"] for b in system) or None, turns


def _blocks(content: Any, where: str, *, images: bool = True) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("content must be a string or an array of parts", param=f"{where}.content")
    out: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or kind == "refusal":
            text = part.get(kind)
            if not text:
                continue
            block: dict[str, Any] = {"type": "text", "text": text}
        elif kind == "image_url" and images:
            block = {"type": "image", "source": _image_source(part.get("image_url"), where)}
        else:
            raise bad_request(f"Unsupported content part {kind!r} for Anthropic", param=f"{where}.content")
        if part.get("cache_control"):
            block["cache_control"] = part["cache_control"]
        out.append(block)
    return out


def _image_source(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        if sep and header.endswith(";base64"):
            return {"type": "base64", "media_type": header[: -len(";base64")], "data": data}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise bad_request("image_url must be an http(s) URL or a base64 data: URL", param=f"{where}.content")


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not fn.get("name") or not call.get("id"):
        raise bad_request("tool_calls need an id and a function name", param=f"{where}.tool_calls")
    args = fn.get("arguments") or "{}"
    if isinstance(args, str):
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            raise bad_request("tool call arguments are not valid JSON", param=f"{where}.tool_calls") from None
    if not isinstance(args, dict):  # Anthropic's tool input must be an object
        raise bad_request("tool call arguments must be a JSON object", param=f"{where}.tool_calls")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args}


def _tool(tool: Any, i: int) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not fn.get("name"):
        raise bad_request("Only function tools with a name can be sent to Anthropic", param=f"tools[{i}]")
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    out["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and (choice.get("function") or {}).get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise bad_request(f"Unsupported tool_choice {choice!r}", param="tool_choice")
    if out and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _finish(stop_reason: Any) -> str | None:
    return None if stop_reason is None else _FINISH.get(stop_reason, "stop")


def _usage(u: Any) -> Usage:
    """Anthropic's input_tokens excludes cache reads/writes; OpenAI's prompt_tokens includes them."""
    u = u if isinstance(u, dict) else {}
    read, write = int(u.get("cache_read_input_tokens") or 0), int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + read + write
    return Usage(prompt, int(u.get("output_tokens") or 0), cached_tokens=read, cache_write_tokens=write)


def _usage_json(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _openai_error(atype: Any, message: Any) -> dict[str, Any]:
    atype = str(atype or "api_error")
    etype = _ERROR_TYPES.get(atype, "api_error")
    return {"message": str(message or atype), "type": etype, "code": None if atype == etype else atype}


def _load(data: Any) -> Any:
    if isinstance(data, bytes | bytearray | memoryview | str):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    return data


def parse_response(data: Any, model: str) -> Translated:
    """An Anthropic ``message`` (bytes or parsed) -> an OpenAI ``chat.completion``."""
    obj = _load(data)
    if not isinstance(obj, dict) or obj.get("type") == "error" or not isinstance(obj.get("content"), list):
        raise ProxyError(502, "Anthropic returned a response that is not a message", type="api_error")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
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
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
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


class StreamDecoder:
    """Anthropic SSE events (any byte chunking) -> OpenAI ``chat.completion.chunk`` dicts.

    Tool calls are numbered in the order their ``tool_use`` blocks start, since OpenAI's
    ``tool_calls[].index`` counts calls, not Anthropic's content blocks (text, thinking...).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = ""
        self.created = int(time.time())
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self._sse = SSEDecoder()
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._counts: dict[str, Any] = {}  # raw Anthropic usage, updated as events report it
        self._done = False  # message_stop or error seen: later bytes are ignored

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        return self._handle(self._sse.feed(chunk))

    def finish(self) -> list[dict[str, Any]]:
        """End of upstream bytes: an unterminated last event (real Anthropic streams) counts."""
        return self._handle(self._sse.flush())

    def _handle(self, events: list[SSEEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if self._done:
                break
            obj = _load(ev.data)
            if not isinstance(obj, dict):
                self.error = _openai_error("api_error", "Anthropic sent a malformed stream event")
                self._done = True
                break
            self._event(obj.get("type") or ev.event, obj, out)
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _event(self, kind: Any, obj: dict[str, Any], out: list[dict[str, Any]]) -> None:
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
            err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
            self.error = _openai_error(err.get("type"), err.get("message"))
            self._done = True
        # ping, content_block_stop and event types added later: nothing to emit


def parse_error(status: int, data: Any) -> UpstreamError:
    """Anthropic's ``{"type":"error","error":{"type","message"}}`` -> status and OpenAI error."""
    obj = _load(data)
    err = obj.get("error") if isinstance(obj, dict) else None
    atype = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if not atype:
        atype = _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if not message:
        raw = data if isinstance(data, bytes | str) else b""
        text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)[:300].strip()
        message = f"Anthropic returned HTTP {status}" + (f": {text}" if text else "")
    e = _openai_error(atype, message)
    # 529 is Anthropic's private "overloaded" status. 503 is the standard "busy, retry later"
    # status that OpenAI SDKs, HTTP libraries and load balancers all treat as retryable.
    if status == 529:
        status = 503
    return UpstreamError(status, e["message"], e["type"], e["code"])
