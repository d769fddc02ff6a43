"""OpenAI Chat Completions wire format — the hub every other format translates to.

Every OpenAI-compatible upstream (OpenAI, DeepSeek, Moonshot/Kimi, xAI, Xiaomi MiMo, Ollama's
``/v1``, vLLM, llama.cpp) is configuration, not code: request and response bytes pass
through, and this module only reads what metering needs (usage, finish reason, ids) and
normalises upstream errors into OpenAI's error shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject, JSONValue
from llm_proxy.core.wire import (
    KEEP_HEADERS,
    Chunk,
    JsonEventDecoder,
    Passthrough,
    StreamDecoder,
    Translated,
    UpstreamCall,
    UpstreamError,
    WireFormat,
    bad_upstream,
    loads_or_none,
)

if TYPE_CHECKING:
    from llm_proxy.core.config import ProviderConfig

__all__ = [
    "CHAT_PATH",
    "FORMAT",
    "ChatStreamMeter",
    "OpenAIChunkDecoder",
    "OpenAIFormat",
    "embedding_tokens",
    "image_result",
    "parse_chat_response",
    "upstream_error",
    "usage_from",
]

CHAT_PATH = "/chat/completions"
RESPONSES_PATH = "/responses"

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def usage_from(u: JSONValue) -> Usage | None:
    """Normalise the usage dialects of OpenAI-compatible servers.

    Cached prompt tokens appear as ``prompt_tokens_details.cached_tokens`` (OpenAI, xAI),
    ``prompt_cache_hit_tokens`` (DeepSeek) or a top-level ``cached_tokens`` (Moonshot).
    Reasoning tokens are part of ``completion_tokens`` except at xAI, where the total shows
    they were counted beside it.
    """
    if not isinstance(u, dict):
        return None
    prompt = u.get("prompt_tokens") or 0
    completion = u.get("completion_tokens") or 0
    details = u.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") if isinstance(details, dict) else None) or (
        u.get("prompt_cache_hit_tokens") or u.get("cached_tokens") or 0
    )
    cdetails = u.get("completion_tokens_details")
    reasoning = (cdetails.get("reasoning_tokens") if isinstance(cdetails, dict) else None) or 0
    total = u.get("total_tokens")
    if reasoning and total == prompt + completion + reasoning:
        completion += reasoning  # xAI counts reasoning outside completion_tokens; OpenAI inside
    return Usage(
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
        reasoning_tokens=int(reasoning),
        cached_tokens=int(cached),
    )


def parse_chat_response(data: bytes | JSONObject) -> tuple[Usage | None, str | None, str | None]:
    """(usage, finish_reason, response model) from a non-streaming chat completion
    (its bytes, or the dict when the caller needs it parsed anyway)."""
    if isinstance(data, dict):
        obj: JSONValue = data
    else:
        try:  # inline rather than loads_or_none: the pass-through path
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    finish = None
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        finish = choices[0].get("finish_reason")
    return usage_from(obj.get("usage")), finish, obj.get("model")


class ChatStreamMeter:
    """Per-stream state while chat-completion chunks pass through untouched.

    ``feed`` sees each event's ``data`` once and answers whether the event is the trailing
    usage-only chunk (so the caller can drop it when the client did not ask for usage).
    """

    __slots__ = ("usage", "finish_reason", "output_events", "error", "model")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.output_events = 0
        self.error: JSONObject | None = None
        self.model: str | None = None

    def feed(self, data: bytes) -> bool:
        """Record what one chunk says; return True if it is a usage-only chunk."""
        try:  # inline rather than loads_or_none: once per event on the pass-through path
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        error = obj.get("error")
        if error is not None:
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return False
        if self.model is None:
            self.model = obj.get("model")
        usage = obj.get("usage")
        if usage:
            self.usage = usage_from(usage)
        choices = obj.get("choices")
        if not choices:
            return usage is not None
        for choice in choices:
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or delta.get(
                "tool_calls"
            ) or delta.get("refusal"):
                self.output_events += 1
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return False


def upstream_error(provider: str, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
    """An upstream's error as the client should see it: status kept, body in OpenAI shape."""
    keep = {name: headers[name] for name in KEEP_HEADERS if name in headers}
    keep.update({k: v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")})
    etype = _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    message, code, param = None, None, None
    obj = loads_or_none(body) if body else None
    if obj is not None:
        err = obj.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            if "type" in err:  # already OpenAI-shaped: the client gets the upstream's bytes
                return ProxyError(status, err["message"], type=str(err["type"]), code=err.get("code"),
                                  param=err.get("param"), headers=keep, body=body)
            message, code, param = err["message"], err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
        elif isinstance(obj.get("message"), str):  # vLLM-style {"object": "error", "message": ...}
            message, code = obj["message"], obj.get("code")
    if message is None:
        text = body[:300].decode("utf-8", "replace").strip()
        message = f"Upstream provider '{provider}' returned HTTP {status}" + (f": {text}" if text else "")
    return ProxyError(status, message, type=etype, code=None if code is None else str(code), param=param,
                      headers=keep)


def embedding_tokens(data: bytes) -> int | None:
    """``usage.prompt_tokens`` of an embeddings answer, when it has one."""
    obj = loads_or_none(data)
    usage = obj.get("usage") if obj is not None else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else None


def image_result(data: bytes) -> tuple[int, Usage | None]:
    """(images returned, gpt-image's token usage) of an images answer; DALL·E and most servers
    send no usage."""
    obj = loads_or_none(data)
    if obj is None:
        return 0, None
    images = obj.get("data")
    count = len(images) if isinstance(images, list) else 0
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return count, None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(inp, int) and not isinstance(out, int):
        return count, None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return count, Usage(prompt_tokens=inp if isinstance(inp, int) else 0,
                        completion_tokens=out if isinstance(out, int) else 0,
                        cached_tokens=cached if isinstance(cached, int) else 0)


class OpenAIChunkDecoder(JsonEventDecoder):
    """OpenAI-compatible SSE → chunk dicts, for clients that speak another format."""

    def _take(self, obj: JSONObject) -> Chunk | None:
        if obj.get("error") is not None:
            err = obj["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err), "type": "api_error"}
            return None
        if obj.get("usage"):
            self.usage = usage_from(obj["usage"])
        for choice in obj.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return obj


class OpenAIFormat(WireFormat):
    """Every OpenAI-compatible server: chat, embeddings and images pass through as bytes; the
    key is a bearer header fixed per provider; ``responses_api: true`` adds Responses."""

    name = "openai"
    label = "The OpenAI-compatible upstream"
    chat_passthrough = True
    passthrough_surface = "chat.completions"
    static_auth = True
    embeddings = Passthrough("/embeddings")
    images = Passthrough("/images/generations")

    def passes_through(self, surface: str, config: ProviderConfig) -> bool:
        return surface == "chat.completions" or (surface == "responses" and config.responses_api)

    def build_chat(self, body: JSONObject, model: str, *, api_key: str, stream: bool,
                   max_output_tokens: int | None) -> UpstreamCall:
        """Only for callers that hold no client bytes (the dispatch forwards the client's own)."""
        out = {**body, "model": model}
        if stream:
            out["stream"] = True
        return UpstreamCall(CHAT_PATH, orjson.dumps(out))

    def parse_chat(self, data: bytes | JSONObject, model: str) -> Translated:
        obj = loads_or_none(data)
        if obj is None:
            raise bad_upstream(self.label, "a chat completion that is not a JSON object")
        usage, finish, _ = parse_chat_response(obj)
        return Translated(obj, usage, finish)

    def stream_decoder(self, model: str) -> StreamDecoder:
        return OpenAIChunkDecoder(model)

    def parse_error(self, status: int, data: bytes) -> UpstreamError:
        err = upstream_error(self.name, status, data, {})
        return UpstreamError(err.status, err.message, err.type, err.code)

    def upstream_error(self, provider: str, status: int, data: bytes, headers: Mapping[str, str]) -> ProxyError:
        return upstream_error(provider, status, data, headers)


FORMAT = OpenAIFormat()
