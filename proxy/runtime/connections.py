"""Client connections the server sheds, so idle, silent and trickling sockets cannot take it down.

uvicorn has no deadline for a request head (a socket that sends nothing stays open for ever)
and its ``limit_concurrency`` only answers once a head has arrived, so idle sockets still hold
every file descriptor. This wraps uvicorn's HTTP protocol with three rules:

- a connection must send a complete request head within ``header_timeout`` of opening (or
  of the first byte of a later keep-alive request; the idle gap between requests is uvicorn's
  keep-alive timeout): else it is closed, with a 408 when part of a head came;
- a request body must arrive within ``body_timeout`` of its head: else 408 if no answer was
  started, and the connection is closed (the app sees a disconnect);
- at most ``max_connections`` are open: a new one beyond it closes the connection that has
  waited longest for a request head (an attacker's, nearly always), or is answered 503 when
  every connection has a request in flight.

Head and body timers are set only while something is missing: a request whose head and body
come in one read, as nearly all do, sets none. What was shed is counted in
``llm_proxy_connections_shed_total{reason}`` and summarised in one log line every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import sys
from collections import Counter
from typing import Any, cast

import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llm_proxy.core.metrics import CONNECTIONS_SHED

__all__ = ["ConnectionGuard", "GuardedServer", "default_limits", "guarded_config", "guarded_protocol",
           "raise_open_file_limit", "serve"]

logger = logging.getLogger("llm_proxy.connections")

SUMMARY_EVERY = 2.0  # seconds between two "shed" log lines at most
LISTEN_BACKLOG = 2048  # uvicorn's default: connections the kernel queues before we accept them


def _response(status: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code}})
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


HEAD_TIMEOUT = _response(b"408 Request Timeout", "request_timeout", "The request head did not arrive in time.")
BODY_TIMEOUT = _response(b"408 Request Timeout", "request_timeout", "The request body did not arrive in time.")
BUSY = _response(b"503 Service Unavailable", "too_many_connections",
                 "The gateway has as many connections open as it accepts; retry shortly.")


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (every socket is a file); (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    return soft, hard


def default_limits(open_files: int) -> tuple[int, int]:
    """(max_connections, accept batch) that leave file descriptors for upstream connections, the
    database and an accept burst: asyncio accepts up to its ``backlog`` sockets in one go, before
    any is seen, and an accept that hits the open-file limit stops accepting for a second."""
    batch = min(LISTEN_BACKLOG, max(16, open_files // 8))
    return max(16, open_files - 2 * batch - max(64, open_files // 8)), batch


class GuardedServer(uvicorn.Server):
    """uvicorn's server with the kernel's listen queue kept long while asyncio accepts in small
    batches (both are one ``backlog`` setting in asyncio): a burst of attack connections then
    waits in the kernel, holding no file of ours, instead of dropping other clients' SYNs.
    The last summary of what was shed is logged at shutdown."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        self.guard.log_summary()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for listener in server.sockets:
                with socket.socket(fileno=os.dup(listener.fileno())) as sock:
                    sock.listen(LISTEN_BACKLOG)


def guarded_config(app: Any, *, guard: ConnectionGuard, accept_batch: int, **options: Any) -> uvicorn.Config:
    """uvicorn's config for ``app`` with ``guard``'s protocol and the accept batch as asyncio's backlog."""
    return uvicorn.Config(app, http=guarded_protocol(guard), backlog=accept_batch, **options)


def serve(app: Any, *, guard: ConnectionGuard, accept_batch: int, **options: Any) -> None:
    """``uvicorn.run(app, **options)`` (one process, no reload) with ``guard``'s connection rules."""
    server = GuardedServer(guarded_config(app, guard=guard, accept_batch=accept_batch, **options), guard)
    try:
        server.run()
    except KeyboardInterrupt:  # as uvicorn.run: SIGINT is a clean stop
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


class ConnectionGuard:
    """What every connection of one server shares: the limits, who is waiting, what was shed."""

    def __init__(self, *, header_timeout: float, body_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.open = 0
        self.waiting: dict[Any, None] = {}  # no request in flight, oldest first
        self._shed: Counter[str] = Counter()
        self._summary: asyncio.TimerHandle | None = None

    def shed(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        CONNECTIONS_SHED.labels(reason).inc()
        self._shed[reason] += 1
        if self._summary is None:
            self._summary = loop.call_later(SUMMARY_EVERY, self.log_summary)

    def log_summary(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
        self._summary = None
        if self._shed:
            logger.warning("shed %d client connection(s) in the last %gs: %s (open now: %d, max %d)",
                           sum(self._shed.values()), SUMMARY_EVERY,
                           ", ".join(f"{r}={n}" for r, n in sorted(self._shed.items())),
                           self.open, self.max_connections)
            self._shed.clear()


def _guard_methods(base: type[Any]) -> dict[str, Any]:
    """The overriding methods, on top of ``base`` (uvicorn's h11 or httptools protocol)."""

    def connection_made(self: Any, transport: asyncio.Transport) -> None:
        base.connection_made(self, transport)
        guard: ConnectionGuard = self.guard
        guard.open += 1
        self._counted = True
        self._partial = False
        self._timer = self.loop.call_later(guard.header_timeout, self._late, "header_timeout")
        guard.waiting[self] = None
        if guard.open > guard.max_connections:
            victim = next((c for c in guard.waiting if c is not self), None)
            if victim is not None:
                victim._drop("evicted", None)
            else:
                self._drop("over_capacity", BUSY)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        self._forget()
        base.connection_lost(self, exc)

    def data_received(self: Any, data: bytes) -> None:
        cycle = self.cycle
        base.data_received(self, data)
        if self.transport.is_closing():
            return
        if self.cycle is not cycle:  # a request head completed
            self.guard.waiting.pop(self, None)
            self._cancel()
            self._partial = False
            if self.cycle.more_body:
                self._timer = self.loop.call_later(self.guard.body_timeout, self._late, "body_timeout")
        elif self.cycle is not None and not self.cycle.response_complete:
            if not self.cycle.more_body:
                self._cancel()  # the body arrived
        else:  # bytes of a head that has not completed
            self._partial = True
            if self._timer is None:
                self._timer = self.loop.call_later(self.guard.header_timeout, self._late, "header_timeout")

    def on_response_complete(self: Any) -> None:
        base.on_response_complete(self)
        self._cancel()
        if not self.transport.is_closing() and self._counted:
            self.guard.waiting[self] = None  # idle between requests: keep-alive timeout applies

    def _late(self: Any, reason: str) -> None:
        self._timer = None
        if reason == "body_timeout":
            started = self.cycle is not None and self.cycle.response_started
            self._drop(reason, None if started else BODY_TIMEOUT)
        else:
            self._drop(reason, HEAD_TIMEOUT if self._partial else None)

    def _drop(self: Any, reason: str, answer: bytes | None) -> None:
        self.guard.shed(reason, self.loop)
        self._forget()
        if not self.transport.is_closing():
            if answer is not None:
                self.transport.write(answer)
            self.transport.close()

    def _cancel(self: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _forget(self: Any) -> None:
        self._cancel()
        self.guard.waiting.pop(self, None)
        if self._counted:
            self._counted = False
            self.guard.open -= 1

    return {"connection_made": connection_made, "connection_lost": connection_lost, "data_received": data_received,
            "on_response_complete": on_response_complete, "_late": _late, "_drop": _drop, "_cancel": _cancel,
            "_forget": _forget}


def guarded_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, as uvicorn's ``auto`` picks, else h11)
    with ``guard``'s rules; pass it to uvicorn as ``http=``."""
    base: type[Any]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        base = HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        base = H11Protocol
    namespace: dict[str, Any] = {"guard": guard, **_guard_methods(base)}
    return cast("type[asyncio.Protocol]", type(f"Guarded{base.__name__}", (base,), namespace))
