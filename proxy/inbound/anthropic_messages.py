"""Anthropic Messages API (``POST /v1/messages``) served from the chat hub: the mirror of
``llm_proxy.providers.anthropic``.

A Claude-Code-style client speaks Anthropic; any provider speaks chat after translation. So
requests become chat requests here, and chat results (a ``chat.completion`` or a stream of
``chat.completion.chunk`` dicts) become Anthropic ``message`` objects and typed SSE events.
The chat side is kept portable (string content unless images need parts, no
``cache_control``) because the target may be any provider. Pure: no HTTP, no I/O.
"""

from __future__ import annotations

import hashlib
import re
import uuid

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.shapes import ARRAY, BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, Shape
from llm_proxy.core.wire import loads_or_none
from llm_proxy.providers.anthropic import ERROR_TYPE_BY_STATUS
from llm_proxy.providers.openai import usage_from

__all__ = ["REQUEST_SHAPE", "EventStream", "count_tokens", "error_body", "error_type", "from_chat", "message_id",
           "to_chat"]

# finish_reason -> stop_reason. A chat "stop" cannot tell a stop sequence from a natural end.
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
         "function_call": "tool_use", "content_filter": "refusal"}
_ERROR_TYPES = {**ERROR_TYPE_BY_STATUS, 500: "api_error", 503: "overloaded_error"}
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_EFFORT: dict[str | None, str] = {"low": "low", "medium": "medium", "high": "high", "max": "high", "xhigh": "high"}
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_-]")
_RAW_ARGS = "_raw_arguments"  # tool input key keeping arguments that were not a JSON object
_NOT_TEXT = frozenset({"type", "id", "tool_use_id", "role", "signature", "cache_control", "media_type"})
_IMAGE_TOKENS = 1600  # count_tokens: Anthropic's cost of a large image; bytes say nothing useful

# A content block's fields, whatever its type (text, image, document, tool_use, tool_result).
_BLOCK = {
    "type": STRING, "text": STRING, "id": STRING, "name": STRING, "input": OBJECT, "tool_use_id": STRING,
    "is_error": BOOLEAN, "title": STRING, "source": OBJECT, "source.type": STRING, "source.data": STRING,
    "source.media_type": STRING, "source.url": STRING,
}
# What ``to_chat`` reads, by JSON type, as Anthropic names fields in errors (``messages.0.content``).
REQUEST_SHAPE = Shape({
    "max_tokens": INTEGER,
    "messages": ARRAY,
    "messages[]": OBJECT,
    "messages[].role": STRING,
    "messages[].content": STRING | ARRAY,
    "messages[].content[]": OBJECT,
    **{f"messages[].content[].{k}": v for k, v in _BLOCK.items()},
    "messages[].content[].content": STRING | ARRAY,  # a tool_result's
    "messages[].content[].content[]": OBJECT,
    **{f"messages[].content[].content[].{k}": v for k, v in _BLOCK.items()},
    "system": STRING | ARRAY,
    "system[]": OBJECT,
    "system[].type": STRING,
    "system[].text": STRING,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "stop_sequences": ARRAY,
    "stop_sequences[]": STRING,
    "tools": ARRAY,
    "tools[]": OBJECT,
    "tools[].type": STRING,
    "tools[].name": STRING,
    "tools[].description": STRING,
    "tools[].input_schema": OBJECT,
    "tool_choice": OBJECT,
    "tool_choice.type": STRING,
    "tool_choice.name": STRING,
    "tool_choice.disable_parallel_tool_use": BOOLEAN,
    "thinking": OBJECT,
    "thinking.type": STRING,
    "thinking.budget_tokens": INTEGER,
    "output_config": OBJECT,
    "output_config.effort": STRING,
    "metadata": OBJECT,
    "metadata.user_id": STRING,
}, indexes="dots")


def to_chat(body: JSONObject, *, cache_control: bool = False) -> JSONObject:
    """An Anthropic Messages request -> an OpenAI chat request; ``bad_request`` if impossible.

    ``cache_control=True`` keeps Anthropic cache breakpoints on text parts (only worth it when
    the target is Anthropic; strict OpenAI-compatible servers reject the unknown key).
    """
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    REQUEST_SHAPE.check(body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise bad_request("max_tokens: Field required", param="max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("max_tokens: must be a positive integer", param="max_tokens")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages: must be a non-empty array", param="messages")
    messages: list[JSONObject] = []
    system = _system(body.get("system"), cache_control)
    if system:
        messages.append({"role": "system", "content": system})
    for i, msg in enumerate(raw):
        messages.extend(_message(msg, f"messages.{i}", cache_control))
    out: JSONObject = {"model": body.get("model"), "messages": messages, "max_tokens": max_tokens}
    for key in ("temperature", "top_p"):  # top_k has no chat equivalent: dropped
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = [_tool(t, f"tools.{i}") for i, t in enumerate(body["tools"])]
        _tool_choice(body.get("tool_choice"), out)
    effort = _effort(body.get("thinking"), body.get("output_config"))
    if effort:
        out["reasoning_effort"] = effort
    user = str((body.get("metadata") or {}).get("user_id") or "")
    if user:  # OpenAI caps ``user`` at 64 characters; Claude Code's ids are longer. A hash stays stable.
        out["user"] = user if len(user) <= 64 else hashlib.sha256(user.encode()).hexdigest()
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # the gateway meters every stream
    return out


def _system(system: JSONValue, keep_cache: bool) -> str | list[JSONObject] | None:
    if system is None or isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise bad_request("system: must be a string or an array of text blocks", param="system")
    parts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad_request(f"system.{i}: only text blocks are allowed", param="system")
        parts.append(_text_part(block, keep_cache))
    return _content(parts)


def _text_part(block: JSONObject, keep_cache: bool) -> JSONObject:
    part = {"type": "text", "text": block.get("text") or ""}
    if keep_cache and block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _content(parts: list[JSONObject]) -> str | list[JSONObject] | None:
    """Plain text joins into a string, the form every chat server accepts; else the parts."""
    parts = [p for p in parts if p["type"] != "text" or p["text"]]
    if all(p["type"] == "text" and len(p) == 2 for p in parts):
        return "\n\n".join(p["text"] for p in parts) or None
    return parts


def _image(block: JSONObject, where: str) -> JSONObject:
    src = source if isinstance(source := block.get("source"), dict) else {}
    if src.get("type") == "base64" and src.get("data"):
        url = f"data:{src.get('media_type') or 'image/png'};base64,{src['data']}"
    elif src.get("type") == "url" and src.get("url"):
        url = src["url"]
    else:
        raise bad_request(f"{where}.source: only base64 and url image sources are supported", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: JSONObject, where: str) -> JSONObject:
    src = source if isinstance(source := block.get("source"), dict) else {}
    if src.get("type") == "text":
        return {"type": "text", "text": src.get("data") or ""}
    if src.get("type") == "base64" and src.get("data"):
        url = f"data:{src.get('media_type') or 'application/pdf'};base64,{src['data']}"
        return {"type": "file", "file": {"filename": block.get("title") or "document.pdf", "file_data": url}}
    raise bad_request(f"{where}.source: only base64 and text document sources are supported", param=where)


def _message(msg: JSONValue, where: str, keep_cache: bool) -> list[JSONObject]:
    """One Anthropic turn -> chat messages: tool results become ``tool`` messages, first."""
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        raise bad_request(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
    role, content = msg["role"], msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: must be a string or an array of blocks", param=f"{where}.content")
    parts: list[JSONObject] = []
    tools: list[JSONObject] = []  # tool messages (user) or tool_calls (assistant)
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, keep_cache))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # reasoning cannot be replayed into chat; providers re-think from the text
        elif kind == "tool_use" and role == "assistant":
            args = orjson.dumps(block.get("input") or {}).decode()
            tools.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": args}})
        elif kind == "image" and role == "user":
            parts.append(_image(block, at))
        elif kind == "document" and role == "user":
            parts.append(_document(block, at))
        elif kind == "tool_result" and role == "user":
            text, images = _tool_result(block, at)
            tools.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            parts.extend(images)  # chat tool messages carry text only: images follow as user content
        else:
            raise bad_request(f"{at}: unsupported content block type {kind!r} in a {role} message", param=at)
    body = _content(parts)
    if role == "assistant":
        if body is None and not tools:
            return []  # e.g. only thinking blocks: nothing a chat model can be shown
        out: JSONObject = {"role": "assistant", "content": body}
        if tools:
            out["tool_calls"] = tools
        return [out]
    return tools + ([{"role": "user", "content": body}] if body is not None else [])


def _tool_result(block: JSONObject, where: str) -> tuple[str, list[JSONObject]]:
    content = block.get("content")
    texts: list[str] = []
    images: list[JSONObject] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(part.get("text") or "")
            elif kind == "image":
                images.append(_image(part, f"{where}.content.{k}"))
            else:
                raise bad_request(f"{where}.content.{k}: unsupported tool_result block {kind!r}", param=where)
    elif content is not None:
        raise bad_request(f"{where}.content: must be a string or an array of blocks", param=where)
    text = "\n\n".join(t for t in texts if t)
    if block.get("is_error"):
        text = f"[tool error] {text}" if text else "[tool error]"
    if images:
        note = {"type": "text", "text": f"(images returned by tool call {block.get('tool_use_id')})"}
        images.insert(0, note)
    return text, images


def _tool(tool: JSONValue, where: str) -> JSONObject:
    if not isinstance(tool, dict) or not tool.get("name") or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise bad_request(f"{where}: only custom tools with a name are supported (got type {kind!r})", param=where)
    fn: JSONObject = {"name": tool["name"]}
    if tool.get("description"):
        fn["description"] = tool["description"]
    fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


def _tool_choice(choice: JSONValue, out: JSONObject) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in _TOOL_CHOICE:
        out["tool_choice"] = _TOOL_CHOICE[kind]
    elif kind == "tool" and choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad_request(f"tool_choice: unsupported value {choice!r}", param="tool_choice")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False


def _effort(thinking: JSONValue, output_config: JSONValue) -> str | None:
    """Extended thinking -> reasoning_effort: a budget maps to a level, adaptive uses its effort."""
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = int(thinking.get("budget_tokens") or 0)
        return "low" if budget <= 2048 else "medium" if budget <= 8192 else "high"
    if kind == "adaptive" and isinstance(output_config, dict):
        return _EFFORT.get(output_config.get("effort"))
    return None


def message_id(seed: JSONValue = None) -> str:
    """``msg_`` + the upstream id's safe characters (stable for logs), else a random id."""
    tail = _UNSAFE_ID.sub("", str(seed or "").removeprefix("chatcmpl-"))
    return "msg_" + (tail or uuid.uuid4().hex)


def _tool_id(raw: JSONValue, fallback: str) -> str:
    """Anthropic tool ids match ``[A-Za-z0-9_-]+``; clients replay them, so keep them valid."""
    return _UNSAFE_ID.sub("_", str(raw)) if raw else fallback


def _input(arguments: JSONValue) -> JSONObject:
    """Tool arguments -> ``input``. Not a JSON object: ``{"_raw_arguments": raw}``, so the
    client's schema check fails visibly (and the model sees what it sent) instead of a tool
    silently running with no arguments."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    parsed = loads_or_none(arguments)
    return parsed if parsed is not None else {_RAW_ARGS: str(arguments)}


def _stop_reason(finish: JSONValue, tool_calls: bool) -> str:
    if tool_calls and finish in (None, "stop", "tool_calls", "function_call"):
        return "tool_use"  # some servers say "stop" after calling tools
    return _STOP.get(finish, "end_turn")


def _usage_json(u: Usage | None) -> dict[str, int]:
    """Anthropic's input_tokens excludes cache reads and writes; OpenAI's prompt_tokens includes them."""
    u = u or Usage()
    return {"input_tokens": max(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens),
            "output_tokens": u.completion_tokens, "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cached_tokens}


def from_chat(completion: JSONObject, model: str, usage: Usage | None = None) -> JSONObject:
    """A ``chat.completion`` -> an Anthropic ``message``; ``usage`` (already parsed) wins if given."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProxyError(502, "The upstream returned a completion without choices", type="api_error")
    msg = choices[0].get("message") or {}
    content: list[JSONObject] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, list):  # some servers answer in parts
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
    text = text or msg.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls") or []
    for n, call in enumerate(calls):
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": _tool_id(call.get("id"), f"toolu_{n}"),
                        "name": fn.get("name") or "", "input": _input(fn.get("arguments"))})
    return {
        "id": message_id(completion.get("id")), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": _stop_reason(choices[0].get("finish_reason"), bool(calls)),
        "stop_sequence": None, "usage": _usage_json(usage or usage_from(completion.get("usage"))),
    }


def _sse(event: str, data: JSONObject) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventStream:
    """``chat.completion.chunk`` dicts -> Anthropic SSE bytes, one content block at a time.

    Anthropic blocks are sequential and cannot be reopened, so a block closes whenever the
    delta kind (thinking, text, or a tool call index) changes. Servers that interleave the
    argument fragments of several tool calls are not supported (fragments of a closed call
    are dropped); OpenAI-compatible servers stream one call after another.
    """

    def __init__(self, model: str, message_id: str, input_tokens: int = 0) -> None:
        self.model = model
        self.message_id = message_id
        self.input_tokens = input_tokens
        self.usage: Usage | None = None  # as the chunks reported it (OpenAI meaning)
        self.finish_reason: str | None = None  # the chat finish_reason
        self.stop_reason: str | None = None  # set by finish()
        self._index = -1  # index of the last block started
        self._open: str | tuple[str, int] | None = None  # "thinking", "text", ("tool", block index) or None
        self._tools: dict[int, tuple[JSONValue, int]] = {}  # chat tool-call index -> (call id, block index)
        self._done = False

    def start(self) -> bytes:
        message: JSONObject = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return _sse("message_start", {"type": "message_start", "message": message})

    def feed(self, chunk: JSONObject) -> bytes:
        if self._done or not isinstance(chunk, dict):
            return b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from(chunk["usage"])
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Anthropic has one answer; n > 1 was never asked for
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
                out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                self._switch("text", {"type": "text", "text": ""}, out)
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool_delta(call, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _tool_delta(self, call: JSONObject, out: list[bytes]) -> None:
        n, cid, fn = call.get("index", 0), call.get("id"), call.get("function") or {}
        known = self._tools.get(n)
        if known is None or (cid and cid != known[0]):  # a new id at a known index: a server without indexes
            block: JSONObject = {"type": "tool_use", "id": _tool_id(cid, f"toolu_{self.message_id[4:]}_{len(self._tools)}"),
                     "name": fn.get("name") or "", "input": {}}
            self._switch(("tool", self._index + 1), block, out)
            known = self._tools[n] = (cid, self._index)
        if fn.get("arguments") and self._open == ("tool", known[1]):
            out.append(self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]}))

    def _switch(self, kind: str | tuple[str, int], block: JSONObject, out: list[bytes]) -> None:
        if self._open == kind:
            return
        self._close(out)
        self._index += 1
        self._open = kind
        out.append(_sse("content_block_start",
                        {"type": "content_block_start", "index": self._index, "content_block": block}))

    def _delta(self, delta: JSONObject) -> bytes:
        return _sse("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})

    def _close(self, out: list[bytes]) -> None:
        if self._open is None:
            return
        if self._open == "thinking":  # real streams sign thinking; there is no signature to give
            out.append(self._delta({"type": "signature_delta", "signature": ""}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open = None

    def finish(self, usage: Usage | None = None) -> bytes:
        """Close the open block, then ``message_delta`` (stop reason, final usage) and ``message_stop``."""
        if self._done:
            return b""
        self._done = True
        out: list[bytes] = []
        self._close(out)
        self.stop_reason = _stop_reason(self.finish_reason, bool(self._tools))
        counts = _usage_json(usage or self.usage) if (usage or self.usage) else {"output_tokens": 0}
        delta = {"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                 "usage": counts}
        out.append(_sse("message_delta", delta))
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, message: str, error_type: str = "api_error") -> bytes:
        """A mid-stream failure, as Anthropic reports one; the stream ends after it."""
        self._done = True
        return _sse("error", {"type": "error", "error": {"type": error_type, "message": message}})


def error_type(status: int) -> str:
    """The Anthropic ``error.type`` for an HTTP status (for stream ``error`` events too)."""
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def count_tokens(body: JSONObject) -> int:
    """An ESTIMATE of input tokens (~4 characters a token over system, messages and tools, plus a
    flat cost per image or binary document): no tokenizer matches every provider behind the gateway."""
    chars, media = _measure([body.get("system"), body.get("messages"), body.get("tools")])
    return max(1, -(-chars // 4) + media * _IMAGE_TOKENS)


def _measure(node: JSONValue) -> tuple[int, int]:
    """(characters of text, images and binary documents) under ``node``."""
    if isinstance(node, str):
        return len(node), 0
    if isinstance(node, list):
        counts = [_measure(item) for item in node]
        return sum(c for c, _ in counts), sum(m for _, m in counts)
    if not isinstance(node, dict):
        return 0, 0
    kind, source = node.get("type"), node.get("source")
    if kind in ("image", "document") and not (isinstance(source, dict) and source.get("type") == "text"):
        return 0, 1
    if kind == "tool_use" or "input_schema" in node:  # structured JSON is sent as JSON text
        return len(orjson.dumps({k: v for k, v in node.items() if k not in _NOT_TEXT})), 0
    return _measure([v for k, v in node.items() if k not in _NOT_TEXT])
