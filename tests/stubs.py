"""What the per-middleware tests drive one stage with, the way Starlette tests its own middlewares.

The snapshot is the real one, built with ``build_runtime`` from a small parsed config (building
opens no connection, and the one provider below is never called). Only what would need I/O or a
database is a stub here: the request-end callable, the snapshot source, a table of database-style
keys. A stage is called as a plain ASGI callable with a hand-made scope and ``receive``, and
``Sent`` keeps every message it sends, so a test sees exactly what a server would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core.config import parse_config
from llm_proxy.core.context import SCOPE_KEY, ClientIdentity, RequestContext, get_context
from llm_proxy.core.parts import KeyLookup, Snapshot
from llm_proxy.core.surfaces import surface_for
from llm_proxy.runtime.build import build_runtime
from llm_proxy.runtime.snapshot import Runtime

__all__ = [
    "CHAT",
    "UNREACHABLE",
    "KeyTable",
    "Receiver",
    "Recorder",
    "Sent",
    "Source",
    "StubApp",
    "call",
    "context",
    "make_scope",
    "read_all",
    "runtime",
    "with_keys",
]

CHAT = "/v1/chat/completions"
UNREACHABLE = "http://127.0.0.1:9/v1"  # a provider's base_url: nothing is ever sent there


def runtime(**sections: Any) -> Runtime:
    """A real snapshot: one OpenAI-compatible provider ``openai`` (gpt-4o, gpt-4o-mini) unless
    ``providers`` is given, and whatever other top-level sections the test passes."""
    raw: dict[str, Any] = {
        "database": {"path": ":memory:"},
        "providers": {"openai": {"base_url": UNREACHABLE, "api_key": "sk-upstream-never-sent",
                                 "models": ["gpt-4o", "gpt-4o-mini"]}},
    }
    raw.update(sections)
    return build_runtime(parse_config(raw, {}))


@dataclass(frozen=True, slots=True)
class KeyTable:
    """A key lookup over a plain mapping: database-style identities without the database."""

    table: Mapping[str, ClientIdentity]
    open: bool = False
    trust_unix_socket: bool = False

    def lookup(self, key: str) -> ClientIdentity | None:
        return self.table.get(key)


def with_keys(snapshot: Runtime, keys: KeyLookup) -> Runtime:
    return dataclasses.replace(snapshot, keys=keys)


def context(snapshot: Snapshot, path: str = CHAT, *, body: dict[str, Any] | None = None,
            **fields: Any) -> RequestContext:
    """The context the outermost stage would have made for ``path`` (``body`` as the alias stage
    would have parsed it), with any other field set from ``fields``."""
    surface = surface_for(path)
    ctx = RequestContext("req_test", snapshot, surface.name if surface is not None else "", surface=surface,
                         **fields)
    if body is not None:
        ctx.body, ctx.raw_body = body, orjson.dumps(body)
        ctx.stream = body.get("stream") is True
    return ctx


def make_scope(path: str = CHAT, *, method: str = "POST",
               headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
               client: tuple[str, int] | None = ("127.0.0.1", 50000),
               ctx: RequestContext | None = None) -> Scope:
    """An HTTP scope as uvicorn hands it over; ``ctx`` goes where ``get_context`` finds it."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        "client": client, "server": ("127.0.0.1", 8080),
    }
    if ctx is not None:
        scope["state"] = {SCOPE_KEY: ctx}
    return scope


class Receiver:
    """The request channel: the body in ``chunks`` pieces, then what a server gives once the body
    is read — nothing until the client leaves (``disconnect=False``), or an ``http.disconnect``."""

    def __init__(self, body: bytes = b"", *, chunks: int = 1, disconnect: bool = False) -> None:
        size = max(1, -(-len(body) // chunks))
        pieces = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        self.pending: list[Message] = [
            {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
        ]
        self.disconnect = disconnect
        self.calls = 0

    async def __call__(self) -> Message:
        self.calls += 1
        if self.pending:
            return self.pending.pop(0)
        if not self.disconnect:
            await asyncio.Event().wait()  # blocks until cancelled, as a live connection does
        return {"type": "http.disconnect"}


@dataclass
class Sent:
    """Every message a stage sent, with the response read back from them."""

    messages: list[Message] = field(default_factory=list)

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def starts(self) -> list[Message]:
        return [m for m in self.messages if m["type"] == "http.response.start"]

    @property
    def status(self) -> int:
        (start,) = self.starts
        status: int = start["status"]
        return status

    @property
    def header_list(self) -> list[tuple[str, str]]:
        (start,) = self.starts
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.header_list)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(app: ASGIApp, scope: Scope, receive: Receive | None = None) -> Sent:
    """Run one request through ``app``; what it sent."""
    sent = Sent()
    await app(scope, receive if receive is not None else Receiver(), sent)
    return sent


async def read_all(receive: Receive) -> bytes:
    raw = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        raw += chunk
        if not message.get("more_body"):
            return raw


class StubApp:
    """The app below the stage under test: keeps what it was called with, reads the body when asked,
    runs ``effect`` on the context (what an endpoint would note down), then answers a small JSON."""

    def __init__(self, *, status: int = 200, body: bytes = b'{"ok":true}', read_body: bool = False,
                 effect: Callable[[RequestContext], None] | None = None,
                 raises: BaseException | None = None) -> None:
        self.status, self.response = status, body
        self.read_body, self.effect, self.raises = read_body, effect, raises
        self.scopes: list[Scope] = []
        self.receives: list[Receive] = []
        self.sends: list[Send] = []
        self.bodies: list[bytes] = []

    @property
    def called(self) -> int:
        return len(self.scopes)

    @property
    def ctx(self) -> RequestContext:
        ctx = get_context(self.scopes[-1])
        assert ctx is not None
        return ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        self.receives.append(receive)
        self.sends.append(send)
        if self.read_body:
            self.bodies.append(await read_all(receive))
        ctx = get_context(scope)
        if self.effect is not None and ctx is not None:
            self.effect(ctx)
        if self.raises is not None:
            raise self.raises
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": self.response})


class Recorder:
    """The request-end callable: notes each context it is handed (the request log, without one)."""

    def __init__(self, *, fails: bool = False) -> None:
        self.ended: list[RequestContext] = []
        self.fails = fails

    def __call__(self, ctx: RequestContext) -> None:
        self.ended.append(ctx)
        if self.fails:
            raise RuntimeError("the request log is unavailable")


class Source:
    """The snapshot source (the runtime holder) without its start-up I/O: ``ensure_started``
    swaps in ``after_start`` when given, as the holder swaps in the serving copy."""

    def __init__(self, current: Snapshot, *, started: bool = True, after_start: Snapshot | None = None) -> None:
        self.current = current
        self.started = started
        self.after_start = after_start
        self.starts = 0

    async def ensure_started(self) -> None:
        self.starts += 1
        self.started = True
        if self.after_start is not None:
            self.current = self.after_start

