"""OpenAI Chat Completions wire format — the hub every other format translates to.

Every OpenAI-compatible upstream (OpenAI, DeepSeek, Moonshot/Kimi, xAI, Xiaomi MiMo, Ollama's
``/v1``, vLLM, llama.cpp) is configuration, not code: request and response bytes pass
through, and this module only reads what metering needs (usage, finish reason, ids) and
normalises upstream errors into OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError

__all__ = ["ChatStreamMeter", "native_error", "parse_chat_response", "upstream_error", "usage_from"]

CHAT_PATH = "/chat/completions"

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
# Headers from an upstream error that a client needs to back off correctly.
_KEEP_HEADERS = ("retry-after", "retry-after-ms")


def usage_from(u: Any) -> Usage | None:
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


def parse_chat_response(data: bytes | dict[str, Any]) -> tuple[Usage | None, str | None, str | None]:
    """(usage, finish_reason, response model) from a non-streaming chat completion
    (its bytes, or the dict when the caller needs it parsed anyway)."""
    if isinstance(data, dict):
        obj: Any = data
    else:
        try:
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
        self.error: dict[str, Any] | None = None
        self.model: str | None = None

    def feed(self, data: bytes) -> bool:
        """Record what one chunk says; return True if it is a usage-only chunk."""
        try:
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


def upstream_error(provider: str, status: int, body: bytes, headers: Any) -> ProxyError:
    """An upstream's error as the client should see it: status kept, body in OpenAI shape."""
    keep = {name: headers[name] for name in _KEEP_HEADERS if name in headers}
    keep.update({k: v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")})
    etype = _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    message, code, param = None, None, None
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
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


def native_error(translator: Any, status: int, body: bytes, headers: Any) -> ProxyError:
    """A native-format upstream error, translated by its module, in OpenAI shape."""
    keep = {name: headers[name] for name in _KEEP_HEADERS if name in headers}
    err = translator.parse_error(status, body)
    return ProxyError(err.status, err.message, type=err.type, code=err.code, headers=keep)
