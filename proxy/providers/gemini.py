"""Google Gemini ``generateContent`` wire format ⇄ OpenAI chat completions.

Gemini differs from the hub in ways that need code rather than renames: a separate
``systemInstruction``, roles ``user``/``model``, tool results as ``functionResponse`` parts
keyed by function *name* (no call ids on 2.x), whole function calls in streams, usage that is
cumulative in every stream chunk, and two stream framings (SSE with ``?alt=sse``, otherwise one
JSON array streamed incrementally).
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import orjson

from proxy.context import Usage
from proxy.errors import bad_request
from proxy.providers.base import Translated, UpstreamCall, UpstreamError, rename_params
from proxy.sse import SSEDecoder

__all__ = ["StreamDecoder", "build_request", "parse_error", "parse_response", "retry_delay"]

PARAMS = {
    "temperature": "generationConfig.temperature",
    "top_p": "generationConfig.topP",
    "max_tokens": "generationConfig.maxOutputTokens",
    "max_completion_tokens": "generationConfig.maxOutputTokens",  # after max_tokens: the newer name wins
    "stop": "generationConfig.stopSequences",
    "n": "generationConfig.candidateCount",
    "seed": "generationConfig.seed",
    "presence_penalty": "generationConfig.presencePenalty",
    "frequency_penalty": "generationConfig.frequencyPenalty",
}
# reasoning_effort → thinkingBudget (tokens). 24576 is gemini-2.5-flash's ceiling and within 2.5-pro's
# (32768); "minimal" stays above 2.5-pro's floor of 128. Gemini 3 still accepts thinkingBudget.
THINKING_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(
    ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"), "content_filter")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error"}
# Gemini 3 rejects replayed functionCall turns without the thoughtSignature it issued; OpenAI clients
# cannot carry it, so we send Google's documented bypass value on the first call of each such turn.
_SKIP_SIGNATURE = "skip_thought_signature_validator"


def build_request(body: dict[str, Any], model: str, *, api_key: str, stream: bool,
                  max_output_tokens: int | None = None) -> UpstreamCall:
    """OpenAI chat request → ``generateContent`` call. The key goes in a header only: URLs get logged."""
    out: dict[str, Any] = {"contents": _contents(body.get("messages") or [], model)}
    system = [{"text": t} for m in body.get("messages") or [] if m.get("role") in ("system", "developer")
              for t in [_text(m.get("content"))] if t]
    if system:
        out["systemInstruction"] = {"parts": system}
    if body.get("tools"):
        out["tools"] = [{"functionDeclarations": [_declaration(t) for t in body["tools"]]}]
    if body.get("tool_choice") is not None:
        out["toolConfig"] = {"functionCallingConfig": _tool_choice(body["tool_choice"])}
    rename_params(body, PARAMS, out)
    gen = out.setdefault("generationConfig", {})
    if isinstance(gen.get("stopSequences"), str):
        gen["stopSequences"] = [gen["stopSequences"]]
    if max_output_tokens:  # the deployment's ceiling; Gemini needs no default, so only clamp
        gen["maxOutputTokens"] = min(gen.get("maxOutputTokens") or max_output_tokens, max_output_tokens)
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:  # full JSON Schema; ``responseSchema`` would need the OpenAPI subset
            gen["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if effort == "none":
        gen["thinkingConfig"] = {"thinkingBudget": 0}
    elif effort:
        gen["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS.get(effort, THINKING_BUDGETS["medium"]),
                                 "includeThoughts": True}
    if not gen:
        del out["generationConfig"]
    name = quote(model.removeprefix("models/"), safe="-._~")
    path = f"/v1beta/models/{name}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
    return UpstreamCall(path, orjson.dumps(out), {"x-goog-api-key": api_key})


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _contents(messages: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name: functionResponse is matched by name
    gemini3 = model.removeprefix("models/").startswith("gemini-3")
    for m in messages:
        role = m.get("role")
        if role == "user":
            contents.append({"role": "user", "parts": _user_parts(m.get("content"))})
        elif role == "assistant":
            parts: list[dict[str, Any]] = [{"text": t} for t in [_text(m.get("content"))] if t]
            for i, call in enumerate(m.get("tool_calls") or []):
                fn = call.get("function") or {}
                names[call.get("id", "")] = fn.get("name", "")
                # No ``id`` sent: several Gemini endpoints reject it as an unknown field.
                part: dict[str, Any] = {"functionCall": {"name": fn.get("name"), "args": _loads(fn.get("arguments"))}}
                if gemini3 and i == 0:
                    part["thoughtSignature"] = _SKIP_SIGNATURE
                parts.append(part)
            if parts:
                contents.append({"role": "model", "parts": parts})
        elif role == "tool":
            name = names.get(m.get("tool_call_id", "")) or m.get("name")
            if not name:
                raise bad_request(f"tool message {m.get('tool_call_id')!r} answers no earlier tool call",
                                  param="messages")
            part = {"functionResponse": {"name": name, "response": {"result": _loads(_text(m.get("content")), raw=True)}}}
            if contents and contents[-1].get("tool"):  # consecutive results form one user turn
                contents[-1]["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part], "tool": True})
        elif role not in ("system", "developer"):
            raise bad_request(f"unsupported message role {role!r}", param="messages")
    for c in contents:
        c.pop("tool", None)
    return contents


def _loads(text: Any, raw: bool = False) -> Any:
    """Arguments/tool output → JSON value; a non-JSON tool output stays a string."""
    if isinstance(text, dict):
        return text
    try:
        return orjson.loads(text) if text else ({} if not raw else "")
    except orjson.JSONDecodeError:
        if raw:
            return text
        raise bad_request("tool_calls arguments must be a JSON object", param="messages") from None


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": content or ""}]
    parts: list[dict[str, Any]] = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            parts.append({"text": p.get("text") or ""})
        elif kind == "image_url":
            url = p["image_url"] if isinstance(p.get("image_url"), str) else (p.get("image_url") or {}).get("url", "")
            if not url.startswith("data:"):
                raise bad_request("remote image URLs are not supported for Gemini yet; send a data: URL",
                                  param="messages")
            parts.append({"inlineData": _data_url(url)})
        elif kind == "input_audio":
            audio = p.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}", "data": audio.get("data")}})
        elif kind == "file" and str((p.get("file") or {}).get("file_data", "")).startswith("data:"):
            parts.append({"inlineData": _data_url(p["file"]["file_data"])})
        else:
            raise bad_request(f"content part type {kind!r} is not supported for Gemini", param="messages")
    return parts


def _data_url(url: str) -> dict[str, str]:
    header, _, payload = url[5:].partition(",")
    mime, *flags = header.split(";")
    if "base64" not in flags:  # Gemini wants base64; a plain data: URL is percent-encoded bytes
        payload = base64.b64encode(unquote_to_bytes(payload)).decode()
    return {"mimeType": mime or "text/plain", "data": payload}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise bad_request(f"tool type {tool.get('type')!r} is not supported for Gemini", param="tools")
    fn = tool.get("function") or {}
    decl = {"name": fn.get("name"), "description": fn.get("description", "")}
    if fn.get("parameters"):
        # parametersJsonSchema takes the JSON Schema as is (additionalProperties, $ref, anyOf...);
        # the older ``parameters`` OpenAPI subset would force lossy stripping.
        decl["parametersJsonSchema"] = fn["parameters"]
    return decl


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not name:
        raise bad_request(f"unsupported tool_choice {choice!r}", param="tool_choice")
    return {"mode": "ANY", "allowedFunctionNames": [name]}


def _usage(meta: Any) -> Usage | None:
    """Gemini counts thoughts apart from candidates; OpenAI folds reasoning into completion."""
    if not isinstance(meta, dict):
        return None
    thoughts = meta.get("thoughtsTokenCount") or 0
    return Usage(prompt_tokens=(meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
                 completion_tokens=(meta.get("candidatesTokenCount") or 0) + thoughts,
                 reasoning_tokens=thoughts, cached_tokens=meta.get("cachedContentTokenCount") or 0)


def _usage_dict(u: Usage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}


def _finish(reason: str | None, tool_calls: bool) -> str:
    mapped = _FINISH.get(reason or "", "stop")
    return "tool_calls" if mapped == "stop" and tool_calls else mapped


def _parts(parts: Any, first_call: int, response_id: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(content, reasoning, tool calls) of one candidate's parts; ids are deterministic per response."""
    text, thought, calls = [], [], []
    for part in parts or ():
        if "functionCall" in part:
            fc = part["functionCall"]
            n = first_call + len(calls)
            calls.append({"index": n, "id": fc.get("id") or f"call_{response_id}_{n}", "type": "function",
                          "function": {"name": fc.get("name"), "arguments": orjson.dumps(fc.get("args") or {}).decode()}})
        elif part.get("text"):
            (thought if part.get("thought") else text).append(part["text"])
    return "".join(text), "".join(thought), calls


def parse_response(data: bytes | dict[str, Any], model: str) -> Translated:
    obj = orjson.loads(data) if isinstance(data, bytes | bytearray | str) else data
    rid = obj.get("responseId") or uuid.uuid4().hex
    usage = _usage(obj.get("usageMetadata"))
    choices = []
    for pos, cand in enumerate(obj.get("candidates") or []):
        text, reasoning, calls = _parts((cand.get("content") or {}).get("parts"), 0, rid)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        choices.append({"index": cand.get("index", pos), "message": message, "logprobs": None,
                        "finish_reason": _finish(cand.get("finishReason"), bool(calls))})
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append({"index": 0, "message": {"role": "assistant", "content": None}, "logprobs": None,
                        "finish_reason": "content_filter"})
    response = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()),
                "model": obj.get("modelVersion") or model, "choices": choices}
    if usage:
        response["usage"] = _usage_dict(usage)
    return Translated(response, usage, choices[0]["finish_reason"])


class StreamDecoder:
    """Gemini stream (SSE or JSON-array framing, told apart by the first byte) → OpenAI chunks."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self._sse: SSEDecoder | None = None
        self._array: bool | None = None  # None until the framing is known
        self._buf = bytearray()  # the JSON-array object in progress
        self._depth = 0
        self._in_str = self._esc = False
        self._id: str | None = None
        self._created = int(time.time())
        self._choices: dict[int, list[Any]] = {}  # candidate index → [role sent, tool calls so far]

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if self._array is None:
            head = chunk.lstrip()
            if not head:
                return []
            self._array = head[:1] in (b"[", b"{")  # ``{``: a bare (error) object, same splitter
            self._sse = None if self._array else SSEDecoder()
        if self._sse is not None:
            return self._events(self._sse.feed(chunk))
        out: list[dict[str, Any]] = []
        for raw in self._split(chunk):
            out += self._translate(orjson.loads(raw))
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = self._events(self._sse.flush()) if self._sse is not None else []
        if self.usage is not None:
            out.append(self._chunk([], usage=_usage_dict(self.usage)))
        return out

    def _events(self, events: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ev in events:
            if ev.data.strip() and ev.data != b"[DONE]":
                out += self._translate(orjson.loads(ev.data))
        return out

    def _split(self, chunk: bytes) -> list[bytes]:
        """Complete top-level objects of a streamed JSON array; tracks strings so braces in text don't count."""
        done: list[bytes] = []
        start = 0 if self._depth else -1
        i, n = 0, len(chunk)
        while i < n:
            if self._in_str:
                if self._esc:
                    self._esc, i = False, i + 1
                    continue
                m = _STR_STOP.search(chunk, i)
                if m is None:
                    break
                i = m.end()
                if m.group() == b"\\":
                    self._esc = True
                else:
                    self._in_str = False
                continue
            c = chunk[i]
            if c == 0x22:  # "
                self._in_str = self._depth > 0
            elif c in (0x7B, 0x5B) and (self._depth or c == 0x7B):  # { or [ (the outer [ is framing)
                if not self._depth:
                    start = i
                self._depth += 1
            elif c in (0x7D, 0x5D) and self._depth:  # } or ]
                self._depth -= 1
                if not self._depth:
                    self._buf += chunk[start : i + 1]
                    done.append(bytes(self._buf))
                    self._buf.clear()
                    start = -1
            i += 1
        if self._depth and start >= 0:
            self._buf += chunk[start:]
        return done

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self._id or f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": self._created, "model": self.model, "choices": choices, **extra}

    def _translate(self, obj: Any) -> list[dict[str, Any]]:
        if not isinstance(obj, dict):
            return []
        if "error" in obj:
            err = _error(obj.get("error"), 0)
            self.error = {"message": err.message, "type": err.type, "param": None, "code": err.code}
            return []
        if self._id is None:
            self._id = f"chatcmpl-{obj.get('responseId') or uuid.uuid4().hex}"
            self.model = obj.get("modelVersion") or self.model
        self.usage = _usage(obj.get("usageMetadata")) or self.usage  # cumulative: the last one wins
        out = []
        candidates = obj.get("candidates") or []
        if not candidates and (obj.get("promptFeedback") or {}).get("blockReason"):
            self.finish_reason = "content_filter"
            return [self._chunk([{"index": 0, "delta": {}, "finish_reason": "content_filter"}])]
        for pos, cand in enumerate(candidates):
            idx = cand.get("index", pos)
            state = self._choices.setdefault(idx, [False, 0])
            text, reasoning, calls = _parts((cand.get("content") or {}).get("parts"), state[1],
                                            self._id.removeprefix("chatcmpl-"))
            delta: dict[str, Any] = {} if state[0] else {"role": "assistant"}
            if reasoning:
                delta["reasoning_content"] = reasoning
            if text:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = calls
                state[1] += len(calls)
            if delta:
                state[0] = True
                out.append(self._chunk([{"index": idx, "delta": delta, "finish_reason": None}]))
            if cand.get("finishReason"):
                reason = _finish(cand["finishReason"], state[1] > 0)
                if idx == 0 or self.finish_reason is None:
                    self.finish_reason = reason
                out.append(self._chunk([{"index": idx, "delta": {}, "finish_reason": reason}]))
        return out


_STR_STOP = re.compile(rb'["\\]')


def retry_delay(data: bytes | dict[str, Any]) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"34.4s"``), for a Retry-After header."""
    try:
        obj = orjson.loads(data) if isinstance(data, bytes | bytearray | str) else data
    except orjson.JSONDecodeError:
        return None
    err = (obj[0] if isinstance(obj, list) and obj else obj or {}).get("error")
    for d in (err.get("details") or []) if isinstance(err, dict) else []:
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


def _error(err: Any, status: int) -> UpstreamError:
    if not isinstance(err, dict):
        status = status if status >= 400 else 500
        return UpstreamError(status, str(err), _ERROR_TYPES.get(status, "api_error"))
    if status < 400:  # mid-stream: the HTTP status was 200, the body's code says what failed
        status = int(err.get("code") or 500)
    message = str(err.get("message") or f"Gemini returned HTTP {status}")
    gstatus = str(err.get("status") or "")
    reasons = {d.get("reason") for d in err.get("details") or [] if isinstance(d, dict)}
    if status in (400, 401) and ("API_KEY_INVALID" in reasons or "API key not valid" in message):
        return UpstreamError(401, message, "authentication_error", "invalid_api_key")  # Gemini says 400
    delay = retry_delay({"error": err})
    if delay is not None:  # UpstreamError has no header slot: say it in the text, retry_delay() for headers
        message += f" (retry in {delay:g}s)"
    etype = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return UpstreamError(status, message, etype, gstatus.lower() or None)


def parse_error(status: int, data: bytes | dict[str, Any]) -> UpstreamError:
    """google.rpc.Status (also wrapped in a one-element array by the JSON-array stream) → OpenAI shape."""
    try:
        obj = orjson.loads(data) if isinstance(data, bytes | bytearray | str) else data
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict) and "error" in obj:
        return _error(obj["error"], status)
    text = data[:300].decode("utf-8", "replace").strip() if isinstance(data, bytes) else ""
    return _error(f"Gemini returned HTTP {status}" + (f": {text}" if text else ""), status)
