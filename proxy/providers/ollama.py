"""Ollama native ``/api/chat`` wire format (NDJSON streaming) ↔ OpenAI chat.

Ollama's ``/v1`` is OpenAI-compatible and needs no code; the native API is worth
translating because it exposes ``think`` levels, ``format`` schemas and ``options`` that
``/v1`` drops, and it is what Ollama Cloud documents. Differences handled here: images are
raw base64 on the message, tool-call arguments are JSON objects (OpenAI: strings) and
arrive whole, ``done_reason`` stays ``stop`` after tool calls, and a stream is one JSON
object per line ending with ``done: true`` plus token counts.
"""

from __future__ import annotations

import time
import uuid

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.shapes import CHAT_REQUEST, INTEGER, NUMBER, OBJECT, STRING, Shape
from llm_proxy.core.vectors import dimensions, embedding_list, estimate_tokens, vectors
from llm_proxy.core.wire import (
    Chunk,
    Embedded,
    EmbeddingsCodec,
    ModelDiscovery,
    Translated,
    TranslatedFormat,
    UpstreamCall,
    UpstreamError,
    bad_upstream,
    loads_or_none,
    rename_params,
)
from llm_proxy.core.wire import StreamDecoder as _BaseDecoder

__all__ = [
    "CHAT_SHAPE",
    "FORMAT",
    "OllamaEmbeddings",
    "OllamaFormat",
    "StreamDecoder",
    "auth_headers",
    "build_request",
    "parse_error",
    "parse_response",
    "parse_tags",
]

CHAT_PATH = "/api/chat"
EMBED_PATH = "/api/embed"

# max_completion_tokens comes last so it wins over the legacy max_tokens when both are sent.
_OPTIONS = {
    "temperature": "options.temperature", "top_p": "options.top_p", "seed": "options.seed",
    "presence_penalty": "options.presence_penalty", "frequency_penalty": "options.frequency_penalty",
    "max_tokens": "options.num_predict", "max_completion_tokens": "options.num_predict",
}
# What ``build_request`` reads, by JSON type (checked before it runs: a wrong type is a 400, not a crash).
CHAT_SHAPE = Shape({
    **CHAT_REQUEST,
    "messages[].tool_calls[].function.arguments": STRING | OBJECT,  # Ollama's own form is an object
    "messages[].reasoning_content": STRING,
    "seed": INTEGER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "response_format": OBJECT,
    "response_format.type": STRING,
    "response_format.json_schema": OBJECT,
    "response_format.json_schema.schema": OBJECT,
})
_ROLES: dict[str | None, str] = {"developer": "system"}
_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 429: "rate_limit_error"}


def _image(url: str) -> str:
    """Raw base64 from a ``data:`` URL; Ollama has no fetcher for remote images."""
    if not url.startswith("data:"):
        raise bad_request("remote image URLs are not supported for Ollama yet; send a data: URL")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_request("image data: URLs must be base64-encoded", param="messages")
    return payload


def _content(content: JSONValue) -> tuple[str, list[str]]:
    """(text, images): text parts joined with newlines so words of adjacent parts don't fuse."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image_url":
            image = part.get("image_url")
            images.append(_image(image.get("url") or "" if isinstance(image, dict) else str(image or "")))
        else:
            raise bad_request(f"content part type {kind!r} is not supported for Ollama", param="messages")
    return "\n".join(texts), images


def _arguments(raw: JSONValue) -> JSONValue:
    if not isinstance(raw, str):
        return raw if raw is not None else {}
    try:
        return orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise bad_request("tool call arguments must be a JSON object", param="messages") from None


def _messages(messages: JSONValue) -> list[JSONObject]:
    out: list[JSONObject] = []
    tool_names: dict[str, str] = {}  # tool_call_id → function name, for tool results' tool_name
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", param="messages")
        role = msg.get("role")
        text, images = _content(msg.get("content"))
        item: JSONObject = {"role": _ROLES.get(role, role), "content": text}
        if images:
            item["images"] = images
        if role == "assistant":
            if msg.get("reasoning_content"):
                item["thinking"] = msg["reasoning_content"]
            calls = []
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                tool_names[call.get("id", "")] = fn.get("name", "")
                args = _arguments(fn.get("arguments"))
                calls.append({"function": {"name": fn.get("name", ""), "arguments": args}})
            if calls:
                item["tool_calls"] = calls
        elif role == "tool" and tool_names.get(msg.get("tool_call_id", "")):
            item["tool_name"] = tool_names[msg["tool_call_id"]]
        out.append(item)
    return out


def _think(effort: JSONValue, model: str) -> bool | str | None:
    """gpt-oss takes a level string and ignores booleans; other thinking models take a boolean."""
    if not isinstance(effort, str):
        return None
    if effort == "none":
        return False
    if "gpt-oss" in model:
        return effort if effort in ("low", "medium", "high") else "low"
    return True


def build_request(
    body: JSONObject, model: str, *, api_key: str | None, stream: bool, max_output_tokens: int | None
) -> UpstreamCall:
    """The native request. ``max_output_tokens`` becomes ``num_predict`` only when the client
    set no limit: Ollama's default is unbounded, and a local model in a loop never stops."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise bad_request("n > 1 is not supported for Ollama", param="n")
    out: JSONObject = {"model": model, "messages": _messages(body.get("messages")), "stream": stream}
    # Ollama has no tool_choice; "none" is honoured by not offering the tools at all.
    if body.get("tools") and body.get("tool_choice") != "none":
        out["tools"] = body["tools"]
    rename_params(body, _OPTIONS, out)
    stop = body.get("stop")
    if stop:
        out.setdefault("options", {})["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if max_output_tokens and "num_predict" not in out.get("options", {}):
        out.setdefault("options", {})["num_predict"] = max_output_tokens
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        out["format"] = "json"
    elif fmt.get("type") == "json_schema":
        out["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
    think = _think(body.get("reasoning_effort"), model)
    if think is not None:
        out["think"] = think
    return UpstreamCall(path=CHAT_PATH, body=orjson.dumps(out), headers=auth_headers(api_key))


def auth_headers(api_key: str | None) -> dict[str, str]:
    """Ollama Cloud takes a bearer key; a local server ignores it."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _tool_call(call: JSONObject, n: int) -> JSONObject:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    args = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
    return {"id": call.get("id") or f"call_{n}", "type": "function",
            "function": {"name": fn.get("name", ""), "arguments": args}}


def _finish(obj: JSONObject, tools_called: bool) -> str:
    """Ollama reports ``stop`` after tool calls; ``load``/``unload`` answers carry no output."""
    if obj.get("done_reason") == "length":
        return "length"
    return "tool_calls" if tools_called else "stop"


def _usage(obj: JSONObject) -> Usage:
    return Usage(prompt_tokens=int(obj.get("prompt_eval_count") or 0),
                 completion_tokens=int(obj.get("eval_count") or 0))


def _usage_dict(u: Usage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def _error(message: str) -> JSONObject:
    return {"message": message, "type": "api_error", "param": None, "code": None}


def parse_response(data: bytes | str | JSONObject, model: str) -> Translated:
    obj = loads_or_none(data)
    if obj is None or not isinstance(obj.get("message"), dict):
        err = obj.get("error") if obj is not None else None
        if isinstance(err, str):  # the model runner failed after answering 200
            raise ProxyError(502, err, type="upstream_error", code="bad_upstream_response")
        raise bad_upstream("Ollama", "an unreadable chat response")
    msg = obj["message"]
    calls = [_tool_call(c, i) for i, c in enumerate(msg.get("tool_calls") or [])]
    message: JSONObject = {"role": "assistant", "content": msg.get("content") or (None if calls else "")}
    if msg.get("thinking"):
        message["reasoning_content"] = msg["thinking"]
    if calls:
        message["tool_calls"] = calls
    finish = _finish(obj, bool(calls))
    usage = _usage(obj)
    response = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": _usage_dict(usage)}
    return Translated(response=response, usage=usage, finish_reason=finish)


class StreamDecoder(_BaseDecoder):
    """NDJSON → OpenAI chunks (the inner SSE decoder is unused). Holds the partial line and the
    tool-call counter."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._created = int(time.time())
        self._buffer = b""
        self._started = False
        self._tools = 0
        self._done = False

    def _chunk(self, choices: list[JSONObject], **extra: JSONValue) -> JSONObject:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self.model, "choices": choices, **extra}

    def feed(self, chunk: bytes) -> list[Chunk]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        out: list[JSONObject] = []
        for line in lines:
            self._line(line, out)
        return out

    def _line(self, line: bytes, out: list[JSONObject]) -> None:
        line = line.strip()  # tolerates \r\n and blank keep-alive lines
        if not line or self.error is not None or self._done:
            return
        obj = loads_or_none(line)
        if obj is None:
            self.error = _error("Ollama sent an unreadable stream line")
            return
        if obj.get("error") is not None:
            err = obj["error"]
            self.error = _error(err if isinstance(err, str) else orjson.dumps(err).decode())
            return
        msg = obj.get("message") or {}
        delta: JSONObject = {} if self._started else {"role": "assistant", "content": ""}
        if msg.get("content"):
            delta["content"] = msg["content"]
        if msg.get("thinking"):
            delta["reasoning_content"] = msg["thinking"]
        calls = []
        for call in msg.get("tool_calls") or []:
            calls.append({"index": self._tools, **_tool_call(call, self._tools)})
            self._tools += 1
        if calls:
            delta["tool_calls"] = calls
        if delta:
            self._started = True
            out.append(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        if obj.get("done"):
            self._done = True
            self.finish_reason = _finish(obj, self._tools > 0)
            self.usage = _usage(obj)
            out.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]))

    def finish(self) -> list[JSONObject]:
        """Flush a last line sent without a newline; a stream cut before ``done`` is an error."""
        out: list[JSONObject] = []
        line, self._buffer = self._buffer, b""
        self._line(line, out)
        if not self._done and self.error is None:
            self.error = _error("Ollama stream ended before the response was complete")
        if self.usage is not None:
            out.append(self._chunk([], usage=_usage_dict(self.usage)))
        return out


def parse_error(status: int, data: bytes | str | JSONObject) -> UpstreamError:
    """``{"error": "..."}`` → OpenAI type by status; a missing model gets ``model_not_found``."""
    obj = loads_or_none(data)
    err = obj.get("error") if obj is not None else None
    if isinstance(err, dict):
        err = err.get("message")
    if isinstance(err, str) and err:
        message = err
    else:
        text = data if isinstance(data, str) else (
            orjson.dumps(data).decode() if isinstance(data, dict) else bytes(data).decode("utf-8", "replace"))
        message = f"Ollama returned HTTP {status}" + (f": {text.strip()[:300]}" if text.strip() else "")
    etype = _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    code = "model_not_found" if status == 404 and "model" in message and "not found" in message else None
    return UpstreamError(status=status, message=message, type=etype, code=code)


def parse_tags(data: bytes) -> list[str]:
    """Model names from ``GET /api/tags``, for discovery; anything unreadable yields none."""
    obj = loads_or_none(data)
    models = obj.get("models") if obj is not None else None
    return [m.get("name") or m["model"] for m in models or []
            if isinstance(m, dict) and (m.get("name") or m.get("model"))]


class OllamaEmbeddings(EmbeddingsCodec):
    """``POST /api/embed`` (``input`` string or list, ``dimensions``); ``prompt_eval_count`` is the
    prompt token count."""

    def build(self, body: JSONObject, model: str, texts: list[str], *, api_key: str) -> UpstreamCall:
        out: JSONObject = {"model": model, "input": body["input"] if isinstance(body.get("input"), str) else texts}
        dims = dimensions(body)
        if dims is not None:
            out["dimensions"] = dims
        return UpstreamCall(EMBED_PATH, orjson.dumps(out), auth_headers(api_key))

    def parse(self, data: bytes, model: str, texts: list[str], encoding: str, provider: str) -> Embedded:
        """``{"embeddings": [[...]], "prompt_eval_count"}`` → OpenAI list (usage estimated without a count)."""
        obj = loads_or_none(data)
        found = vectors(obj.get("embeddings") if obj is not None else None, len(texts), provider)
        assert obj is not None
        count = obj.get("prompt_eval_count")
        estimated = not isinstance(count, int)
        tokens = count if isinstance(count, int) else estimate_tokens(texts)
        return Embedded(embedding_list(found, model, encoding, tokens), Usage(prompt_tokens=tokens), estimated)


class OllamaFormat(TranslatedFormat):
    """Ollama's native ``/api/chat`` (NDJSON streams) and ``/api/embed``; remote images are fetched
    first (Ollama takes only base64); a provider listing no models serves what ``/api/tags`` lists."""

    name = "ollama"
    label = "Ollama"
    needs_inline_images = True
    chat_shape = CHAT_SHAPE
    embeddings = OllamaEmbeddings()
    discovery = ModelDiscovery("/api/tags", parse_tags)


FORMAT = OllamaFormat(auth=auth_headers, build=build_request, parse=parse_response,
                      decoder=StreamDecoder, error=parse_error)
