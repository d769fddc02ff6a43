"""What the mock upstream says: ``#mock`` directives, token counts, OpenAI-shaped bodies.

Kept apart from the server (``mock_upstream``) so the wire shapes can be read and
checked without thinking about threads or disconnects. The rules are documented in
``mock_upstream``, the module tests import.

A stream's frames are generated one at a time as the server sends them, never held as a
list: a ``chunks=200000`` stream (tens of MB) to a slow reader costs the mock only the frame
in hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

from llm_proxy.core.jsontypes import JSONArray, JSONObject

__all__ = [
    "REASONING_PIECES",
    "TOOL_ARGUMENTS",
    "TOOL_CALL_ID",
    "Options",
    "Receive",
    "Reply",
    "Scope",
    "Send",
    "build_reply",
    "content_pieces",
    "error_event_frame",
    "error_json",
    "header_dict",
    "models_body",
    "parse_options",
    "prompt_tokens",
    "respond",
    "send_failure",
]

_CONTENT_WORDS = ("Hello", " from", " the", " mock", " upstream.")
REASONING_PIECES = ("Let me", " think", " it through.")
TOOL_CALL_ID = "call_mock_1"
TOOL_ARGUMENTS = '{"city": "Paris"}'
_TOOL_ARGUMENT_FRAGMENTS = ('{"city"', ': "Par', 'is"}')
_DONE_FRAME = b"data: [DONE]\n\n"
_BODY_KINDS = ("text", "html", "empty")
_FINGERPRINT = "fp_mock"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# status -> (type, code, message), as OpenAI sends them; others fall back by class (4xx/5xx).
_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (mock)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (mock)."),
    403: ("invalid_request_error", "permission_denied", "You are not allowed to use this model (mock)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (mock)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (mock)."),
    500: ("server_error", None, "The server had an error while processing your request (mock)."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later (mock)."),
}
_INT_KEYS = frozenset(
    "status retry_after hang cut_after error_event_after chunks latency_ms chunk_ms cached".split()
)


@dataclass(slots=True, frozen=True)
class Options:
    """How to answer one request: the server's defaults overlaid with the ``#mock`` directive."""

    chunks: int = 5
    latency_ms: int = 0
    chunk_ms: int = 0
    cached: int = 0
    status: int | None = None
    retry_after: int | None = None
    hang: bool = False
    cut_after: int | None = None
    error_event_after: int | None = None
    body: str | None = None

    @property
    def failing(self) -> bool:
        """True when the answer is an error response rather than a completion."""
        return self.body is not None or (self.status is not None and self.status >= 400)


def _message_text(message: object) -> str:
    """A message's text: string content, or the ``text`` parts of list content joined by spaces."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return " ".join(t for t in parts if isinstance(t, str))
    return ""


def prompt_tokens(messages: JSONArray) -> int:
    """3 per message plus its whitespace-separated words: crude, but easy to predict in a test."""
    return sum(3 + len(_message_text(m).split()) for m in messages)


def _pieces(n: int) -> Iterator[str]:
    return (_CONTENT_WORDS[i] if i < len(_CONTENT_WORDS) else f" more{i}" for i in range(n))


def content_pieces(n: int) -> list[str]:
    """The ``n`` streamed content pieces; joined, they are the non-stream content."""
    return list(_pieces(n))


def parse_options(body: object, defaults: Options) -> Options:
    """Overlay the ``#mock`` lines of the last user message on ``defaults``.

    Raises ValueError for a body without messages, or an unknown key or bad value in a
    directive, so a typo in a test fails loudly.
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list (mock).")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    changes: dict[str, Any] = {}  # field name -> value, checked above: replace() takes them as keywords
    for line in _message_text(users[-1]).splitlines() if users else []:
        words = line.split()
        if not words or words[0] != "#mock":
            continue
        for pair in words[1:]:
            key, sep, value = pair.partition("=")
            if key == "body" and sep and value in _BODY_KINDS:
                changes[key] = value
            elif key in _INT_KEYS and sep and value.isdigit():
                changes[key] = bool(int(value)) if key == "hang" else int(value)
            else:
                keys = ", ".join(sorted(_INT_KEYS | {"body"}))
                raise ValueError(f"bad #mock directive {pair!r}; keys: {keys}; body is one of {_BODY_KINDS}")
    return dataclasses.replace(defaults, **changes)


def error_json(status: int, message: str | None = None) -> bytes:
    """An OpenAI error envelope with the type and code OpenAI uses for ``status``."""
    fallback = _ERROR_KINDS[500 if status >= 500 else 400]
    type_, code, default = _ERROR_KINDS.get(status, fallback)
    error = {"message": message or default, "type": type_, "param": None, "code": code}
    return orjson.dumps({"error": error})


def _raw_error_body(kind: str, status: int) -> tuple[bytes, bytes]:
    """A non-JSON error page (content type, body), as proxies and load balancers send them."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if kind == "html":
        title = f"{status} {phrase}"
        page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
        return b"text/html; charset=utf-8", page.encode()
    if kind == "empty":
        return b"text/plain; charset=utf-8", b""
    return b"text/plain; charset=utf-8", f"{status} {phrase} (mock upstream)\n".encode()


def error_event_frame() -> bytes:
    """The mid-stream error event OpenAI sends when a generation fails after it began."""
    message = "The server had an error while streaming (mock)."
    return _frame({"error": {"message": message, "type": "server_error", "param": None, "code": None}})


def models_body(models: list[str]) -> bytes:
    data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in models]
    return orjson.dumps({"object": "list", "data": data})


def _frame(obj: JSONObject) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@dataclass(slots=True)
class Reply:
    """One chat completion, decided up front so the JSON and the stream say the same thing."""

    completion_id: str
    model: str
    pieces: int  # content pieces (``content_pieces``), generated when sent; 0 for a tool call
    reasoning: list[str]
    tool_name: str | None
    prompt_tokens: int
    cached_tokens: int
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_name else "stop"

    def usage(self) -> JSONObject:
        main = len(_TOOL_ARGUMENT_FRAGMENTS) if self.tool_name else self.pieces
        completion = main + len(self.reasoning)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": len(self.reasoning)},
        }

    def completion_body(self) -> bytes:
        message: JSONObject = {
            "role": "assistant",
            "content": None if self.tool_name else "".join(_pieces(self.pieces)),
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_name:
            function = {"name": self.tool_name, "arguments": TOOL_ARGUMENTS}
            message["tool_calls"] = [{"id": TOOL_CALL_ID, "type": "function", "function": function}]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return orjson.dumps({**self._envelope("chat.completion"), "choices": [choice], "usage": self.usage()})

    def stream_head(self) -> bytes:
        """The role chunk; content is null for a tool call, as OpenAI sends it."""
        return self._chunk({"role": "assistant", "content": None if self.tool_name else ""})

    def stream_pieces(self) -> Iterator[bytes]:
        """Reasoning deltas, then content deltas (or the tool-call header and argument fragments),
        each frame made when it is asked for."""
        for r in self.reasoning:
            yield self._chunk({"content": None, "reasoning_content": r})
        if not self.tool_name:
            for c in _pieces(self.pieces):
                yield self._chunk({"content": c})
            return
        function = {"name": self.tool_name, "arguments": ""}
        yield self._chunk(
            {"tool_calls": [{"index": 0, "id": TOOL_CALL_ID, "type": "function", "function": function}]}
        )
        for a in _TOOL_ARGUMENT_FRAGMENTS:
            yield self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]})

    def stream_frames(self, end: int | None) -> Iterator[bytes]:
        """What follows the role chunk: every piece and the tail, or only the first ``end`` pieces
        (a stream that is cut or ends with an error event after them)."""
        if end is not None:
            return itertools.islice(self.stream_pieces(), end)
        return itertools.chain(self.stream_pieces(), self.stream_tail())

    def stream_tail(self) -> list[bytes]:
        """Finish chunk, the usage chunk only when asked for, then ``[DONE]``."""
        frames = [self._chunk({}, self.finish_reason)]
        if self.include_usage:
            frames.append(
                _frame({**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage()})
            )
        return [*frames, _DONE_FRAME]

    def _envelope(self, obj: str) -> JSONObject:
        return {
            "id": self.completion_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": _FINGERPRINT,
        }

    def _chunk(self, delta: JSONObject, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk: JSONObject = {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return _frame(chunk)


def build_reply(payload: JSONObject, number: int, options: Options) -> Reply:
    """Decide the completion for a request body (already checked to carry a message list)."""
    tool_name: str | None = None
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        function = tools[0].get("function") if isinstance(tools[0], dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        tool_name = name if isinstance(name, str) else "tool"
    model = str(payload.get("model") or "mock-gpt")
    stream_options = payload.get("stream_options")
    prompt = prompt_tokens(payload["messages"])
    return Reply(
        completion_id=f"chatcmpl-mock{number}",
        model=model,
        pieces=0 if tool_name else options.chunks,
        reasoning=list(REASONING_PIECES) if "reasoner" in model else [],
        tool_name=tool_name,
        prompt_tokens=prompt,
        cached_tokens=min(options.cached, prompt),
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
    )


def header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI headers as a dict with lowercase names; repeated headers are joined with ", "."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


async def respond(
    send: Send,
    status: int,
    body: bytes,
    rid: bytes,
    content_type: bytes = b"application/json",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Send a whole non-streaming response with its ``x-request-id``."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_failure(send: Send, opts: Options, rid: bytes) -> None:
    """The error response a directive asked for: JSON envelope, or a raw page with ``body=``."""
    status = opts.status if opts.status is not None else 502
    extra = ((b"retry-after", str(opts.retry_after).encode()),) if opts.retry_after is not None else ()
    if opts.body is None:
        return await respond(send, status, error_json(status), rid, extra=extra)
    content_type, body = _raw_error_body(opts.body, status)
    await respond(send, status, body, rid, content_type, extra)
