"""OpenAI Responses API (``POST /v1/responses``) <-> OpenAI Chat Completions.

Lets a Responses client be served by any provider: the request becomes a chat request (the
hub), and the chat completion or chunk stream becomes a ``response`` object or typed event
stream. The gateway keeps no response state, so anything that refers to a stored response
(``previous_response_id``, ``conversation``, ``item_reference``, ``background``) is a 400
rather than a silently different answer. ``store`` is accepted and ignored for the same
reason: nothing is stored, and the echoed response says ``store: false``. Pure translation.
"""

from __future__ import annotations

import time
import uuid

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import bad_request
from llm_proxy.core.jsontypes import JSONArray, JSONObject, JSONValue
from llm_proxy.core.shapes import ARRAY, BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, Shape
from llm_proxy.providers.openai import usage_from

__all__ = ["REQUEST_SHAPE", "EventStream", "from_chat", "to_chat"]

_NO_STATE = ("previous_response_id needs stored response state, which this gateway does not keep; "
             "send the full input instead")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
# chat finish_reason -> Responses incomplete_details.reason
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# ResponseError.code values a generic failure may carry; anything else is reported as server_error.
_ERROR_CODES = {"server_error", "rate_limit_exceeded", "invalid_prompt"}

# A content part's fields, whatever its type (input_text, output_text, refusal, input_image).
_PART = {"type": STRING, "text": STRING, "refusal": STRING, "image_url": STRING, "detail": STRING}
# What ``to_chat`` reads, by JSON type.
REQUEST_SHAPE = Shape({
    "instructions": STRING,
    "input": STRING | ARRAY,
    "input[]": OBJECT,
    "input[].type": STRING,
    "input[].role": STRING,
    "input[].content": STRING | ARRAY,
    "input[].content[]": OBJECT,
    **{f"input[].content[].{k}": v for k, v in _PART.items()},
    "input[].call_id": STRING,
    "input[].name": STRING,
    "input[].arguments": STRING,
    "input[].output": STRING | ARRAY,  # a function_call_output's
    "input[].output[]": OBJECT,
    **{f"input[].output[].{k}": v for k, v in _PART.items()},
    "temperature": NUMBER,
    "top_p": NUMBER,
    "parallel_tool_calls": BOOLEAN,
    "user": STRING,
    "max_output_tokens": INTEGER,
    "tools": ARRAY,
    "tools[]": OBJECT,
    "tools[].type": STRING,
    "tools[].name": STRING,
    "tools[].description": STRING,
    "tools[].parameters": OBJECT,
    "tools[].strict": BOOLEAN,
    "tool_choice": STRING | OBJECT,
    "tool_choice.type": STRING,
    "tool_choice.name": STRING,
    "reasoning": OBJECT,
    "reasoning.effort": STRING,
    "text": OBJECT,
    "text.format": OBJECT,
    "text.format.type": STRING,
    "text.format.name": STRING,
    "text.format.description": STRING,
    "text.format.schema": OBJECT,
    "text.format.strict": BOOLEAN,
})


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _sub(obj: JSONObject, key: str) -> JSONObject:
    """A nested object field, or {} when absent or not an object (a 400 upstream, not a crash here)."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- request: Responses -> chat


def to_chat(body: JSONObject) -> JSONObject:
    """A Responses request -> a chat request; raises ``bad_request`` for what chat cannot express."""
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    REQUEST_SHAPE.check(body)
    for key in ("previous_response_id", "conversation"):
        if body.get(key):
            raise bad_request(_NO_STATE, param=key)
    if body.get("background"):
        raise bad_request("background responses need stored response state, which this gateway does not "
                          "keep; send the request without background", param="background")
    if body.get("prompt"):
        raise bad_request("prompt templates are stored by OpenAI and only available from OpenAI", param="prompt")
    messages: list[JSONObject] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        _items(inp, messages)
    else:
        raise bad_request("input must be a string or a list of input items", param="input")
    out: JSONObject = {"model": body.get("model"), "messages": messages}
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        out["tools"] = [_tool(t) for t in body["tools"]]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    effort = _sub(body, "reasoning").get("effort")
    if effort is not None:
        out["reasoning_effort"] = effort
    fmt = _response_format(_sub(body, "text").get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _items(items: JSONArray, messages: list[JSONObject]) -> None:
    """Input items -> chat messages; consecutive function calls join one assistant turn."""
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("input items must be objects", param="input")
        kind = item.get("type") or "message"
        if kind == "message":
            role = _ROLES.get(item.get("role") or "")
            if role is None:
                raise bad_request(f"unsupported message role {item.get('role')!r}", param="input")
            messages.append({"role": role, "content": _content(item.get("content"), role)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # text + calls of one turn stay one turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _content(output, "tool")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        elif kind == "reasoning":
            continue  # chat providers take no reasoning back in; the next turn re-reasons
        elif kind == "item_reference":
            raise bad_request(_NO_STATE.replace("previous_response_id", "item_reference"), param="input")
        else:
            raise bad_request(f"input item type {kind} is only available from OpenAI", param="input")


def _content(content: JSONValue, role: str) -> JSONValue:
    """Responses content parts -> chat content. Only user turns may keep images, so the others
    flatten to one string, which every provider translator accepts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("message content must be a string or a list of parts", param="input")
    parts: list[JSONObject] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal") or ""})
        elif kind == "input_image" and role == "user":
            if not part.get("image_url"):
                raise bad_request("input_image by file_id needs OpenAI's file storage; send image_url "
                                  "(an https or data: URL) instead", param="input")
            image: JSONObject = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise bad_request(f"content part type {kind} is not supported in a {role} message", param="input")
    if role == "user" and any(p["type"] != "text" for p in parts):
        return parts
    return "".join(p["text"] for p in parts)


def _tool(tool: JSONValue) -> JSONObject:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise bad_request(f"tool type {kind} is only available from OpenAI", param="tools")
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _tool_choice(choice: JSONValue) -> JSONValue:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise bad_request(f"tool_choice type {kind} is only available from OpenAI", param="tool_choice")


def _response_format(fmt: JSONValue) -> JSONObject | None:
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        keys = ("name", "description", "schema", "strict")
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in keys if fmt.get(k) is not None}}
    raise bad_request(f"text.format type {fmt['type']} is not supported", param="text.format")


# ---------------------------------------------------------------- response: chat -> Responses


def _usage(u: Usage | None) -> JSONObject | None:
    if u is None:
        return None
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


def _response(request: JSONObject, *, rid: str, model: str, created: int, status: str,
              output: list[JSONObject], usage: Usage | None = None, finish: str | None = None,
              error: JSONObject | None = None) -> JSONObject:
    """The ``response`` object, echoing the request's settings as OpenAI does (the SDK requires them)."""
    reason = _INCOMPLETE.get(finish or "") if status == "incomplete" else None
    effort = _sub(request, "reasoning").get("effort")
    return {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "background": False, "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": request.get("instructions"), "max_output_tokens": request.get("max_output_tokens"),
        "model": model, "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": None},
        "store": False,  # nothing is stored, whatever the request asked
        "temperature": request.get("temperature"), "top_p": request.get("top_p"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "truncation": "disabled", "usage": _usage(usage),
        "user": request.get("user"), "metadata": request.get("metadata") or {},
    }


def _status(finish: str | None) -> str:
    return "incomplete" if finish in _INCOMPLETE else "completed"


def _text_part(text: str) -> JSONObject:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_of(message: JSONObject) -> str:
    """DeepSeek-style ``reasoning_content``; some OpenAI-compatible servers (Ollama) say ``reasoning``."""
    text = message.get("reasoning_content") or message.get("reasoning")
    return text if isinstance(text, str) else ""


def from_chat(completion: JSONObject, request: JSONObject) -> JSONObject:
    """A chat.completion -> a Responses ``response`` object for the original Responses ``request``."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    status = _status(finish)
    output: list[JSONObject] = []
    if reasoning := _reasoning_of(message):
        output.append({"id": _id("rs"), "type": "reasoning", "status": "completed",
                       "summary": [{"type": "summary_text", "text": reasoning}]})
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with text parts
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if content:
        output.append({"id": _id("msg"), "type": "message", "role": "assistant", "status": "completed",
                       "content": [_text_part(content)]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append({"id": _id("fc"), "type": "function_call", "call_id": call.get("id") or _id("call"),
                       "name": fn.get("name") or "", "arguments": fn.get("arguments") or "",
                       "status": "completed"})
    if output and status == "incomplete":
        output[-1]["status"] = "incomplete"  # the item that was cut short, as when streaming
    return _response(request, rid=_id("resp"), model=completion.get("model") or request.get("model") or "",
                     created=int(completion.get("created") or time.time()), status=status, output=output,
                     usage=usage_from(completion.get("usage")), finish=finish)


class EventStream:
    """Chat chunk dicts -> Responses SSE bytes.

    One output item is open at a time and a new one closes it, as OpenAI's own streams do
    (reasoning, then text, then each function call). Chat streams tool calls one index after
    another; a late fragment for an already closed call still lands in the final response.
    """

    def __init__(self, request: JSONObject, model: str) -> None:
        self._request, self._model = request, model
        self._rid, self._created, self._seq = _id("resp"), int(time.time()), 0
        self._output: list[JSONObject] = []
        self._open: JSONObject | None = None  # the item receiving deltas
        self._calls: dict[int, JSONObject] = {}  # chat tool-call index -> function_call item
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._ended = False

    def _event(self, type: str, **fields: JSONValue) -> bytes:
        data = {"type": type, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _on(self, item: JSONObject, type: str, **fields: JSONValue) -> bytes:
        """An event about the open item, which is always the last one added."""
        return self._event(type, item_id=item["id"], output_index=len(self._output) - 1, **fields)

    def _snapshot(self, status: str, usage: Usage | None = None, error: JSONObject | None = None) -> JSONObject:
        return _response(self._request, rid=self._rid, model=self._model, created=self._created,
                         status=status, output=self._output, usage=usage, finish=self._finish, error=error)

    def start(self) -> bytes:
        return (self._event("response.created", response=self._snapshot("in_progress"))
                + self._event("response.in_progress", response=self._snapshot("in_progress")))

    def _add(self, item: JSONObject) -> bytes:
        out = self._close()
        item["status"] = "in_progress"
        self._output.append(item)
        self._open = item
        return out + self._event("response.output_item.added", output_index=len(self._output) - 1, item=item)

    def _close(self, status: str = "completed") -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        if item["type"] == "reasoning":
            part = item["summary"][0]
            out = self._on(item, "response.reasoning_summary_text.done", summary_index=0, text=part["text"])
            out += self._on(item, "response.reasoning_summary_part.done", summary_index=0, part=part)
        elif item["type"] == "message":
            part = item["content"][0]
            out = self._on(item, "response.output_text.done", content_index=0, text=part["text"], logprobs=[])
            out += self._on(item, "response.content_part.done", content_index=0, part=part)
        else:
            out = self._on(item, "response.function_call_arguments.done", arguments=item["arguments"])
        item["status"] = status
        return out + self._event("response.output_item.done", output_index=len(self._output) - 1, item=item)

    def feed(self, chunk: JSONObject) -> bytes:
        """One chat chunk -> the events it causes (possibly none); usage is kept for ``finish``."""
        if self._ended or not isinstance(chunk, dict):
            return b""
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_from(chunk["usage"])
        choices = chunk.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        out = b""
        if reasoning := _reasoning_of(delta):
            item = self._open
            if item is None or item["type"] != "reasoning":
                item = {"id": _id("rs"), "type": "reasoning", "summary": []}
                out += self._add(item)  # serialised before the part is added: deltas are not counted twice
                item["summary"].append({"type": "summary_text", "text": ""})
                out += self._on(item, "response.reasoning_summary_part.added", summary_index=0,
                                part={"type": "summary_text", "text": ""})
            item["summary"][0]["text"] += reasoning
            out += self._on(item, "response.reasoning_summary_text.delta", summary_index=0, delta=reasoning)
        text = delta.get("content")
        if isinstance(text, str) and text:
            item = self._open
            if item is None or item["type"] != "message":
                item = {"id": _id("msg"), "type": "message", "role": "assistant", "content": []}
                out += self._add(item)
                item["content"].append(_text_part(""))
                out += self._on(item, "response.content_part.added", content_index=0, part=_text_part(""))
            item["content"][0]["text"] += text
            out += self._on(item, "response.output_text.delta", content_index=0, delta=text, logprobs=[])
        for tc in delta.get("tool_calls") or []:
            if isinstance(tc, dict):
                out += self._tool_delta(tc)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return out

    def _tool_delta(self, tc: JSONObject) -> bytes:
        index, fn, out = tc.get("index", len(self._calls)), tc.get("function") or {}, b""
        item = self._calls.get(index)
        if item is None:
            item = {"id": _id("fc"), "type": "function_call", "call_id": tc.get("id") or _id("call"),
                    "name": fn.get("name") or "", "arguments": ""}
            self._calls[index] = item
            out += self._add(item)
        fragment = fn.get("arguments")
        if isinstance(fragment, str) and fragment:
            item["arguments"] += fragment
            if item is self._open:
                out += self._on(item, "response.function_call_arguments.delta", delta=fragment)
        return out

    def finish(self, usage: Usage | None = None) -> bytes:
        """Close the open item and end with ``response.completed`` (``response.incomplete`` when cut
        short); ``usage`` overrides what the chunks reported."""
        if self._ended:
            return b""
        self._ended = True
        status = _status(self._finish)
        out = self._close(status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=self._snapshot(status, usage or self._usage))

    def error(self, message: str, code: str = "server_error") -> bytes:
        """End with ``response.failed``; items already streamed stay in the snapshot as they were."""
        if self._ended:
            return b""
        self._ended = True
        err = {"code": code if code in _ERROR_CODES else "server_error", "message": message}
        return self._event("response.failed", response=self._snapshot("failed", self._usage, err))
