"""Google Gemini ``generateContent`` wire format ⇄ OpenAI chat completions.

Gemini differs from the hub in ways that need code rather than renames: a separate
``systemInstruction``, roles ``user``/``model``, tool results as ``functionResponse`` parts
matched by function *name*, whole function calls in streams, usage that is cumulative in every
stream chunk, and two stream framings (SSE with ``?alt=sse``, else one incrementally streamed
JSON array).
"""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import unquote_to_bytes

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import bad_request
from llm_proxy.core.json_stream import JsonArraySplitter
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.shapes import CHAT_REQUEST, INTEGER, NUMBER, OBJECT, STRING, Shape
from llm_proxy.core.sse import SSEEvent
from llm_proxy.core.wire import (
    Chunk,
    Translated,
    TranslatedFormat,
    UpstreamCall,
    UpstreamError,
    bad_upstream,
    loads_or_none,
    rename_params,
)
from llm_proxy.core.wire import StreamDecoder as _BaseDecoder
from llm_proxy.providers import gemini_media
from llm_proxy.providers.gemini_media import model_path

__all__ = [
    "CHAT_SHAPE",
    "FORMAT",
    "GeminiFormat",
    "StreamDecoder",
    "auth_headers",
    "build_request",
    "parse_error",
    "parse_response",
    "retry_delay",
]

# OpenAI name → generationConfig field. max_completion_tokens comes after max_tokens: the newer name wins.
PARAMS = {k: f"generationConfig.{v}" for k, v in {
    "temperature": "temperature", "top_p": "topP", "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens", "stop": "stopSequences", "n": "candidateCount", "seed": "seed",
    "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}.items()}
# reasoning_effort → thinkingBudget tokens. 24576 is gemini-2.5-flash's ceiling (2.5-pro allows 32768);
# 512 stays above 2.5-pro's floor of 128. Gemini 3 still accepts thinkingBudget besides thinkingLevel.
THINKING_BUDGETS = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(_FILTERED, "content_filter")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error"}
_LEAKED = "API key was reported as leaked"
# What ``build_request`` reads, by JSON type (checked before it runs: a wrong type is a 400, not a crash).
CHAT_SHAPE = Shape({
    **CHAT_REQUEST,
    "messages[].content[].input_audio": OBJECT,
    "messages[].content[].input_audio.format": STRING,
    "messages[].content[].input_audio.data": STRING,
    "seed": INTEGER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "response_format": OBJECT,
    "response_format.type": STRING,
    "response_format.json_schema": OBJECT,
    "response_format.json_schema.schema": OBJECT,
})
# Gemini 3 rejects a replayed functionCall turn without the thoughtSignature it issued. OpenAI clients
# cannot carry it, so the first call of each such turn gets Google's documented bypass value.
_SKIP_SIGNATURE = "skip_thought_signature_validator"


def build_request(body: JSONObject, model: str, *, api_key: str, stream: bool,
                  max_output_tokens: int | None = None) -> UpstreamCall:
    """OpenAI chat request → ``generateContent`` call. The key goes in a header only: URLs get logged."""
    messages = body.get("messages") or []
    out: JSONObject = {"contents": _contents(messages, model.removeprefix("models/").startswith("gemini-3"))}
    system = [{"text": t} for m in messages if m.get("role") in ("system", "developer") if (t := _text(m.get("content")))]
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
        if schema := (fmt.get("json_schema") or {}).get("schema"):
            gen["responseJsonSchema"] = schema  # full JSON Schema; ``responseSchema`` takes an OpenAPI subset
    effort = body.get("reasoning_effort")
    if effort == "none":
        gen["thinkingConfig"] = {"thinkingBudget": 0}
    elif effort:
        gen["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS.get(effort, 8192), "includeThoughts": True}
    if not gen:
        del out["generationConfig"]
    path = model_path(model) + (":streamGenerateContent?alt=sse" if stream else ":generateContent")
    return UpstreamCall(path, orjson.dumps(out), auth_headers(api_key))


def auth_headers(api_key: str) -> dict[str, str]:
    """The key goes in a header, never the URL: URLs get logged."""
    return {"x-goog-api-key": api_key}


def _text(content: JSONValue) -> str:
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _contents(messages: list[JSONObject], gemini3: bool) -> list[JSONObject]:
    contents: list[JSONObject] = []
    names: dict[str, str] = {}  # tool_call_id → function name: Gemini matches results by name
    tool_turn = False
    for m in messages:
        role, prev_tool, tool_turn = m.get("role"), tool_turn, m.get("role") == "tool"
        if role == "user":
            contents.append({"role": "user", "parts": _user_parts(m.get("content"))})
        elif role == "assistant":
            parts: list[JSONObject] = [{"text": t} for t in [_text(m.get("content"))] if t]
            for i, call in enumerate(m.get("tool_calls") or []):
                fn = call.get("function") or {}
                names[call.get("id", "")] = fn.get("name", "")
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    raise bad_request("tool_calls arguments must be JSON", param="messages") from None
                # No ``id``: several Gemini endpoints reject functionCall.id as an unknown field.
                parts.append({"functionCall": {"name": fn.get("name"), "args": args}}
                             | ({"thoughtSignature": _SKIP_SIGNATURE} if gemini3 and i == 0 else {}))
            if parts:
                contents.append({"role": "model", "parts": parts})
        elif role == "tool":
            if not (name := names.get(m.get("tool_call_id", "")) or m.get("name")):
                raise bad_request(f"tool message {m.get('tool_call_id')!r} answers no earlier tool call",
                                  param="messages")
            text = _text(m.get("content"))
            try:
                result = orjson.loads(text)
            except orjson.JSONDecodeError:
                result = text
            part = {"functionResponse": {"name": name, "response": {"result": result}}}
            if prev_tool:  # consecutive results form one user turn
                contents[-1]["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        elif role not in ("system", "developer"):
            raise bad_request(f"unsupported message role {role!r}", param="messages")
    return contents


def _user_parts(content: JSONValue) -> list[JSONObject]:
    if not isinstance(content, list):
        return [{"text": content or ""}]
    parts: list[JSONObject] = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            parts.append({"text": p.get("text") or ""})
        elif kind == "image_url":
            url = p["image_url"] if isinstance(p.get("image_url"), str) else (p.get("image_url") or {}).get("url") or ""
            if not url.startswith("data:"):
                raise bad_request("remote image URLs are not supported for Gemini yet; send a data: URL",
                                  param="messages")
            header, _, payload = url[5:].partition(",")
            mime, *flags = header.split(";")
            if "base64" not in flags:  # Gemini wants base64; a plain data: URL holds percent-encoded bytes
                payload = base64.b64encode(unquote_to_bytes(payload)).decode()
            parts.append({"inlineData": {"mimeType": mime or "text/plain", "data": payload}})
        elif kind == "input_audio":
            audio = p.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}", "data": audio.get("data")}})
        else:
            raise bad_request(f"content part type {kind!r} is not supported for Gemini", param="messages")
    return parts


def _declaration(tool: JSONObject) -> JSONObject:
    if tool.get("type") != "function":
        raise bad_request(f"tool type {tool.get('type')!r} is not supported for Gemini", param="tools")
    fn = tool.get("function") or {}
    decl = {"name": fn.get("name"), "description": fn.get("description", "")}
    if fn.get("parameters"):
        # parametersJsonSchema takes OpenAI's JSON Schema as is (additionalProperties, $ref, anyOf, ...), as
        # the live captures show; the older ``parameters`` (OpenAPI subset) would need lossy key stripping.
        decl["parametersJsonSchema"] = fn["parameters"]
    return decl


def _tool_choice(choice: JSONValue) -> JSONObject:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if not (name := (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None):
        raise bad_request(f"unsupported tool_choice {choice!r}", param="tool_choice")
    return {"mode": "ANY", "allowedFunctionNames": [name]}


def _usage(meta: JSONValue) -> Usage | None:
    """Gemini counts thoughts apart from candidates; OpenAI folds reasoning into completion tokens.
    promptTokenCount already includes cachedContentTokenCount; tool-use prompt tokens are input too."""
    if not isinstance(meta, dict):
        return None
    thoughts = meta.get("thoughtsTokenCount") or 0
    return Usage(prompt_tokens=(meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
                 completion_tokens=(meta.get("candidatesTokenCount") or 0) + thoughts,
                 reasoning_tokens=thoughts, cached_tokens=meta.get("cachedContentTokenCount") or 0)


def _usage_dict(u: Usage) -> JSONObject:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}


def _finish(reason: str | None, tool_calls: bool) -> str:
    """Gemini has no tool-call finish reason: STOP after a functionCall means tool_calls."""
    mapped = _FINISH.get(reason or "", "stop")
    return "tool_calls" if mapped == "stop" and tool_calls else mapped


def _parts(parts: JSONValue, first_call: int, rid: str) -> tuple[str, str, list[JSONObject]]:
    """(content, reasoning, tool calls) of one candidate. A call without Gemini's own ``id`` gets
    ``call_<responseId>_<n>``: deterministic, and unique across the turns of a conversation."""
    text: list[str] = []
    thought: list[str] = []
    calls: list[JSONObject] = []
    for part in parts or ():
        if fc := part.get("functionCall"):
            n = first_call + len(calls)
            calls.append({"index": n, "id": fc.get("id") or f"call_{rid}_{n}", "type": "function",
                          "function": {"name": fc.get("name"), "arguments": orjson.dumps(fc.get("args") or {}).decode()}})
        elif part.get("text"):
            (thought if part.get("thought") else text).append(part["text"])
    return "".join(text), "".join(thought), calls


def parse_response(data: bytes | JSONObject, model: str) -> Translated:
    """A ``generateContent`` answer → an OpenAI ``chat.completion``; anything else is a bad upstream."""
    obj = loads_or_none(data)
    candidates = obj.get("candidates") if obj is not None else None
    if obj is None or not (isinstance(candidates, list) or "promptFeedback" in obj) or not all(
            isinstance(c, dict) for c in candidates or ()):
        raise bad_upstream("Gemini", "a response that is not a generateContent answer")
    rid, usage, choices = obj.get("responseId") or uuid.uuid4().hex, _usage(obj.get("usageMetadata")), []
    for pos, cand in enumerate(candidates or ()):
        text, reasoning, calls = _parts((cand.get("content") or {}).get("parts"), 0, rid)
        message: JSONObject = {"role": "assistant", "content": text or None}
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


class StreamDecoder(_BaseDecoder):
    """Gemini stream → OpenAI chunks; the framing (SSE or JSON array) is told by the first byte."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._array: bool | None = None  # None until the first non-whitespace byte
        self._elements = JsonArraySplitter()
        self._id: str | None = None
        self._created = int(time.time())
        self._choices: dict[int, list[int]] = {}  # candidate index → [role sent (a bool), tool calls so far]

    def feed(self, chunk: bytes) -> list[Chunk]:
        if self._array is None:
            if not (head := chunk.lstrip()):
                return []
            self._array = head[:1] in (b"[", b"{")  # ``{``: a bare object (an error), same splitter
        if not self._array:
            return super().feed(chunk)
        return [c for raw in self._elements.feed(chunk) for c in self._translate(loads_or_none(raw))]

    def finish(self) -> list[Chunk]:
        out = [] if self._array else super().finish()
        if self.usage is not None:
            out.append(self._chunk([], usage=_usage_dict(self.usage)))
        return out

    def _events(self, events: list[SSEEvent]) -> list[Chunk]:
        return [c for ev in events if ev.data.strip() and ev.data != b"[DONE]"
                for c in self._translate(loads_or_none(ev.data))]

    def _chunk(self, choices: list[JSONObject], **extra: JSONValue) -> JSONObject:
        return {"id": self._id or f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": self._created, "model": self.model, "choices": choices, **extra}

    def _translate(self, obj: JSONObject | None) -> list[Chunk]:
        if obj is None:
            self.error = {"message": "Gemini sent a malformed stream event", "type": "api_error", "param": None,
                          "code": None}
            return []
        if "error" in obj:
            err = _error(obj["error"], 0)
            self.error = {"message": err.message, "type": err.type, "param": None, "code": err.code}
            return []
        if self._id is None:
            self._id = f"chatcmpl-{obj.get('responseId') or uuid.uuid4().hex}"
            self.model = obj.get("modelVersion") or self.model
        self.usage = _usage(obj.get("usageMetadata")) or self.usage  # cumulative: keep the last, never sum
        candidates, out = obj.get("candidates") or [], []
        if not candidates and (obj.get("promptFeedback") or {}).get("blockReason"):
            self.finish_reason = "content_filter"
            return [self._chunk([{"index": 0, "delta": {}, "finish_reason": "content_filter"}])]
        for pos, cand in enumerate(candidates):
            if not isinstance(cand, dict):
                continue
            idx = cand.get("index", pos)
            state = self._choices.setdefault(idx, [False, 0])
            text, reasoning, calls = _parts((cand.get("content") or {}).get("parts"), state[1], self._id[9:])
            delta: JSONObject = {} if state[0] else {"role": "assistant"}
            if reasoning:
                delta["reasoning_content"] = reasoning
            if text:
                delta["content"] = text
            if calls:  # Gemini sends whole calls: one complete delta each, never argument fragments
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


def retry_delay(data: bytes | JSONObject) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"34.4s"``), for the relay's Retry-After header."""
    obj = _error_object(data)
    err = obj.get("error") if obj is not None else None
    if not isinstance(err, dict):
        return None
    delays = [d["retryDelay"] for d in err.get("details") or () if isinstance(d, dict) and "retryDelay" in d]
    try:
        return float(delays[0].removesuffix("s")) if delays else None
    except (AttributeError, ValueError):
        return None


def _error_object(data: object) -> JSONObject | None:
    """The ``google.rpc.Status`` wrapper, also when it comes in a one-element array (array stream)."""
    obj = loads_or_none(data, object)
    obj = obj[0] if isinstance(obj, list) and obj else obj
    return obj if isinstance(obj, dict) else None


def _error(err: JSONValue, status: int) -> UpstreamError:
    """``status`` < 400 means mid-stream (HTTP 200): the body's own code decides."""
    err = err if isinstance(err, dict) else {"message": str(err)}
    status = status if status >= 400 else int(err.get("code") or 500)
    message = str(err.get("message") or f"Gemini returned HTTP {status}")
    reasons = {d.get("reason") for d in err.get("details") or [] if isinstance(d, dict)}
    if status in (400, 401) and ("API_KEY_INVALID" in reasons or "API key not valid" in message):
        return UpstreamError(401, message, "authentication_error", "invalid_api_key")  # Gemini says 400
    if (status == 401 and err.get("status") == "UNAUTHENTICATED") or (status == 403 and _LEAKED in message):
        # the credentials themselves are refused (a blocked leaked key is a 403 PERMISSION_DENIED)
        return UpstreamError(status, message, _ERROR_TYPES[status], "invalid_api_key")
    if (delay := retry_delay({"error": err})) is not None:  # UpstreamError has no header slot: say it here too
        message += f" (retry in {delay:g}s)"
    etype = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return UpstreamError(status, message, etype, str(err.get("status") or "").lower() or None)


def parse_error(status: int, data: bytes | JSONObject) -> UpstreamError:
    """google.rpc.Status (in a one-element array from the JSON-array stream) → OpenAI shape.
    The code is the Google status lowercased (``resource_exhausted``); a bad key becomes 401,
    and a refused key (bad, unauthenticated, blocked as leaked) has the code ``invalid_api_key``,
    while a 403 PERMISSION_DENIED (this key may not use this model) keeps ``permission_denied``."""
    obj = _error_object(data)
    if obj is not None and "error" in obj:
        return _error(obj["error"], status)
    text = data[:300].decode("utf-8", "replace").strip() if isinstance(data, bytes) else ""
    return _error(f"Gemini returned HTTP {status}" + (f": {text}" if text else ""), status)


class GeminiFormat(TranslatedFormat):
    """Google Gemini ``generateContent``: chat translated, embeddings and Imagen translated too;
    remote images are fetched first (Gemini takes only inline bytes)."""

    name = "gemini"
    label = "Gemini"
    needs_inline_images = True
    chat_shape = CHAT_SHAPE
    embeddings = gemini_media.EMBEDDINGS
    images = gemini_media.IMAGES


FORMAT = GeminiFormat(auth=auth_headers, build=build_request, parse=parse_response,
                      decoder=StreamDecoder, error=parse_error)
