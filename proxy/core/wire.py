"""What a wire format is: the capabilities the gateway asks of it, and the types they trade in.

OpenAI chat is the hub. A format (``proxy/providers/<format>.py``) is pure — no HTTP, no
routing, no storage — and is one ``WireFormat`` subclass whose class attributes say what it
can do; callers ask for a capability (``wire.needs_inline_images``, ``wire.embeddings``),
never for a type string. Its chat capability:

* ``build_chat(body, model, *, api_key, stream, max_output_tokens) -> UpstreamCall`` — an
  OpenAI chat-completions body (a parsed dict) → the native request; ``chat_shape`` declares
  the JSON types of the fields it reads, checked by the caller before anything reads the body
  (so a wrong type is a 400 naming the field, never a crash in the translator);
* ``parse_chat(data, model) -> Translated`` — a native non-streaming answer → an OpenAI
  ``chat.completion`` dict plus usage and finish reason (``bad_upstream`` if unreadable);
* ``stream_decoder(model) -> StreamDecoder`` — per-stream state turning raw upstream bytes
  (any chunking; the decoder owns the framing) into ``chat.completion.chunk`` dicts;
* ``parse_error(status, data) -> UpstreamError`` — a native error body → the status and
  OpenAI-shaped error the client should get.

Simple parameter renames are data (a table per format applied by ``rename_params``);
structural transforms (messages, system, tools, tool_choice) are code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypeVar, overload

import orjson

from llm_proxy.core.context import Usage
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.shapes import Shape
from llm_proxy.core.sse import SSEDecoder, SSEEvent

if TYPE_CHECKING:
    from llm_proxy.core.config import ProviderConfig

__all__ = [
    "FINISH_REASONS",
    "TranslatedFormat",
    "KEEP_HEADERS",
    "Chunk",
    "EmbeddingsCodec",
    "Embedded",
    "ImagesCodec",
    "JsonEventDecoder",
    "ModelDiscovery",
    "Passthrough",
    "StreamDecoder",
    "Translated",
    "UpstreamCall",
    "UpstreamError",
    "WireFormat",
    "bad_upstream",
    "loads_or_none",
    "rename_params",
]

# The vocabulary an OpenAI client understands.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# Headers from an upstream error that a client needs to back off correctly.
KEEP_HEADERS = ("retry-after", "retry-after-ms")

Chunk = JSONObject  # one OpenAI ``chat.completion.chunk`` (or a relay's stand-in for one)
_T = TypeVar("_T")


@dataclass(slots=True)
class UpstreamCall:
    """What to send: a path appended to the provider's ``base_url``, the body, and the
    format's own headers (authentication, API version), added to the provider's headers."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Translated:
    response: JSONObject
    usage: Usage | None
    finish_reason: str | None


@dataclass(slots=True)
class UpstreamError:
    status: int
    message: str
    type: str
    code: str | None = None


@overload
def loads_or_none(data: object) -> JSONObject | None: ...
@overload
def loads_or_none(data: object, expect: type[_T]) -> _T | None: ...
def loads_or_none(data: object, expect: type[object] = dict) -> object:
    """``data`` parsed as JSON when it is of the ``expect``-ed type, else None (bad JSON too).

    Already-parsed data (not bytes or text) is checked as it is."""
    if isinstance(data, bytes | bytearray | memoryview | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    return data if isinstance(data, expect) else None


def bad_upstream(source: str, what: str) -> ProxyError:
    """A success answer the gateway cannot read: the same 502 whatever the format."""
    return ProxyError(502, f"{source} returned {what}.", type="upstream_error", code="bad_upstream_response")


def rename_params(body: JSONObject, table: dict[str, str], out: JSONObject) -> None:
    """Copy OpenAI parameters present in ``body`` to ``out`` under their native names.

    ``table`` maps an OpenAI name to a dotted native path (``"top_p": "generationConfig.topP"``).
    """
    for name, path in table.items():
        value = body.get(name)
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value


class StreamDecoder:
    """One upstream stream → OpenAI chunk dicts; holds what the relay reads when it ends.

    ``usage``, ``finish_reason`` and ``error`` (a mid-stream error as an OpenAI error dict)
    are the outcome. SSE formats implement ``_events``; other framings override ``feed`` and
    ``finish`` and leave the inner SSE decoder unused."""

    def __init__(self, model: str = "") -> None:
        self.model = model
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: JSONObject | None = None
        self._sse = SSEDecoder()

    def feed(self, chunk: bytes) -> list[Chunk]:
        return self._events(self._sse.feed(chunk))

    def finish(self) -> list[Chunk]:
        """End of upstream bytes: an unterminated last event counts (real upstreams send one)."""
        return self._events(self._sse.flush())

    def _events(self, events: list[SSEEvent]) -> list[Chunk]:
        raise NotImplementedError


class JsonEventDecoder(StreamDecoder):
    """SSE events whose ``data`` is a JSON object, read once each; a subclass says what an
    object means (``_take``). Unreadable events and those after an error are skipped."""

    def _events(self, events: list[SSEEvent]) -> list[Chunk]:
        out: list[Chunk] = []
        for event in events:
            if event.data == b"[DONE]" or self.error is not None:
                continue
            obj = loads_or_none(event.data)
            if obj is not None:
                taken = self._take(obj)
                if taken is not None:
                    out.append(taken)
        return out

    def _take(self, obj: JSONObject) -> Chunk | None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Passthrough:
    """An OpenAI-shaped endpoint the format serves as is: the client's bytes go to ``path``."""

    path: str


@dataclass(slots=True)
class Embedded:
    response: JSONObject  # OpenAI's embeddings list
    usage: Usage
    estimated: bool  # the upstream reported no token count


class EmbeddingsCodec:
    """``/v1/embeddings`` translated: the OpenAI body (with its ``input`` as texts) → the
    native call, and the native answer → OpenAI's list in the asked ``encoding_format``."""

    def build(self, body: JSONObject, model: str, texts: list[str], *, api_key: str) -> UpstreamCall:
        raise NotImplementedError

    def parse(self, data: bytes, model: str, texts: list[str], encoding: str, provider: str) -> Embedded:
        raise NotImplementedError


class ImagesCodec:
    """``/v1/images/generations`` translated (never streamed)."""

    def unsupported(self, model: str) -> str | None:
        """Why ``model`` cannot generate images here (``"with a non-Imagen model"``), or None."""
        return None

    def build(self, body: JSONObject, model: str, *, api_key: str) -> UpstreamCall:
        raise NotImplementedError

    def parse(self, data: bytes, response_format: str | None, provider: str) -> JSONObject:
        """The OpenAI answer: ``{"created", "data": [...]}``."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ModelDiscovery:
    """How a format lists the models a server has: ``GET path``, the answer read by ``parse``
    (unreadable answers yield none). The runtime does the HTTP."""

    path: str
    parse: Callable[[bytes], list[str]]


class WireFormat:
    """One upstream wire format and what it can do. Capabilities are plain class attributes
    (read per request on the hot path); the optional ones are None when unsupported."""

    name: ClassVar[str]
    label: ClassVar[str]  # how errors name the upstream ("Gemini returned ...")
    # Chat requests go up as the client's own bytes and answers come back untouched.
    chat_passthrough: ClassVar[bool] = False
    # The client surface whose bytes this format serves unchanged ("messages" for Anthropic).
    passthrough_surface: ClassVar[str | None] = None
    # Remote image URLs must be fetched and inlined before the request is built.
    needs_inline_images: ClassVar[bool] = False
    # The key rides in the provider's fixed headers (every request, pass-through included);
    # otherwise each call the format builds places it (``auth_headers``).
    static_auth: ClassVar[bool] = False
    # The types of the chat fields ``build_chat`` reads; None only where chat passes through.
    chat_shape: ClassVar[Shape | None] = None
    embeddings: ClassVar[EmbeddingsCodec | Passthrough | None] = None
    images: ClassVar[ImagesCodec | Passthrough | None] = None
    discovery: ClassVar[ModelDiscovery | None] = None

    def passes_through(self, surface: str, config: ProviderConfig) -> bool:
        """Whether a provider of this format serves the client ``surface`` natively."""
        return surface == self.passthrough_surface

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that carry ``api_key`` where this API wants it."""
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def build_chat(self, body: JSONObject, model: str, *, api_key: str, stream: bool,
                   max_output_tokens: int | None) -> UpstreamCall:
        raise NotImplementedError

    def parse_chat(self, data: bytes | JSONObject, model: str) -> Translated:
        raise NotImplementedError

    def stream_decoder(self, model: str) -> StreamDecoder:
        raise NotImplementedError

    def parse_error(self, status: int, data: bytes) -> UpstreamError:
        """The upstream's error in OpenAI terms. When the provider says the key itself is
        refused (not merely this model or feature), the code is ``invalid_api_key``: the
        pipeline rests a key for every model only on that."""
        raise NotImplementedError

    def upstream_error(self, provider: str, status: int, data: bytes, headers: Mapping[str, str]) -> ProxyError:
        """An upstream error response as the client should get it (back-off headers kept)."""
        keep = {name: headers[name] for name in KEEP_HEADERS if name in headers}
        err = self.parse_error(status, data)
        return ProxyError(err.status, err.message, type=err.type, code=err.code, headers=keep)


class TranslatedFormat(WireFormat):
    """A format translated through chat by its module's pure functions: the methods only hand
    over to them, so each format module names its functions once instead of wrapping each."""

    def __init__(self, *, auth: Callable[[str], dict[str, str]],
                 build: Callable[..., UpstreamCall],
                 parse: Callable[[bytes | JSONObject, str], Translated],
                 decoder: Callable[[str], StreamDecoder],
                 error: Callable[[int, bytes], UpstreamError]) -> None:
        self._auth, self._build, self._parse, self._decoder, self._error = auth, build, parse, decoder, error

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return self._auth(api_key)

    def build_chat(self, body: JSONObject, model: str, *, api_key: str, stream: bool,
                   max_output_tokens: int | None) -> UpstreamCall:
        return self._build(body, model, api_key=api_key, stream=stream, max_output_tokens=max_output_tokens)

    def parse_chat(self, data: bytes | JSONObject, model: str) -> Translated:
        return self._parse(data, model)

    def stream_decoder(self, model: str) -> StreamDecoder:
        return self._decoder(model)

    def parse_error(self, status: int, data: bytes) -> UpstreamError:
        return self._error(status, data)
