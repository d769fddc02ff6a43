"""Keep-alive on both sides of the gateway (issue 10 item 7).

Upstream: a raw asyncio HTTP/1.1 server on 127.0.0.1 that closes idle connections after 1 s
the way a real one races its clients: its close takes 0.2 s to reach the gateway (a network
trip, made long enough to hit), and a request that crosses it is reset unanswered. Requests
through the gateway spaced 0.9-1.1 s apart then fail on a pool that keeps connections longer
than the upstream (aiohttp's 15 s, what the gateway had), and none fail with a pool expiry
below the upstream's, with its ``Keep-Alive: timeout=`` honoured, or with the default expiry
and the stale-connection retry. Client side: ``llm-proxy serve`` keeps an idle client
connection open for ``server.keep_alive_timeout`` and then closes it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import CLIENT_KEY, Gateway, gateway_config
from test_cli import clean_env, free_port, good_config, serving, write_config
from test_transport import Seen, chunk, respond, serve

from llm_proxy.core.config import ConfigError, parse_config
from llm_proxy.upstream.transport import AiohttpTransport, _idle_limit

IDLE = 1.0  # the upstream closes a connection idle this long...
CLOSE_LAG = 0.2  # ...and the gateway learns of it this much later
# pauses between requests, clear of the window edges by more than the time a request takes to arrive
GAPS = (0.9, 1.05, 0.92, 1.1, 0.91, 1.08, 0.94, 1.04, 0.9, 1.06, 0.93, 1.07)
COMPLETION = orjson.dumps({
    "id": "chatcmpl-ka", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
})


@dataclass
class Arrival:
    """One request as the upstream received it: on which connection, and what it did."""

    mode: str
    connection: int
    nth: int  # 1 for a connection's first request
    outcome: str  # answered | reset | dropped


@dataclass
class Upstream:
    """By the first path segment (the ``mode``), what it starts with: ``race`` idles out as
    described above, ``ka`` also says ``Keep-Alive: timeout=1``, ``stale`` answers each
    connection's first request only and closes it at the next without answering, ``hangup``
    answers nothing."""

    port: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    _connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        connection, nth = self._connections, 0
        idle: float | None = None  # no idle timer before the first request
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle)
                except TimeoutError:
                    # the close is on its way: a request that arrives meanwhile crossed it
                    try:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_LAG)
                    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                        return
                    self.arrivals.append(Arrival(_mode(head), connection, nth + 1, "reset"))
                    _reset(writer)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                nth += 1
                mode = _mode(head)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if mode.startswith("hangup") or (mode.startswith("stale") and nth > 1):
                    self.arrivals.append(Arrival(mode, connection, nth, "dropped"))
                    return
                self.arrivals.append(Arrival(mode, connection, nth, "answered"))
                extra = b"Keep-Alive: timeout=1\r\n" if mode.startswith("ka") else b""
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (len(COMPLETION), extra, COMPLETION))
                await writer.drain()
                idle = IDLE if mode.startswith(("race", "ka")) else None
        finally:
            writer.close()

    def of(self, mode: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.mode == mode]


def _mode(head: bytes) -> str:
    return head.split(b" ", 2)[1].split(b"/")[1].decode()  # POST /<mode>/v1/chat/completions


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a kernel answers data sent to a socket already closed."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
def idle_upstream() -> Iterator[Upstream]:
    """The upstream on its own event loop in a thread."""
    state = Upstream()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(state.handle, "127.0.0.1", 0))
    state.port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield state

    async def stop() -> None:
        server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def provider(upstream: Upstream, mode: str, model: str, **settings: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/{mode}/v1", "api_key": "sk-up",
            "models": [model], "timeouts": {"connect": 2, "read": 5, "total": 10}, **settings}


def gateway_for(upstream: Upstream, tmp_path: Path, providers: dict[str, dict[str, Any]]) -> Gateway:
    # no retry rounds and no breakers in the way: what is measured is the transport's own behaviour
    routing = {"retries": 0, "breaker": {"failures": 1000, "transient_failures": 1000}}
    config = gateway_config("http://unused", tmp_path / "ka.db", providers=providers, routing=routing, aliases={})
    return Gateway(config).start()


def chat(client: httpx.Client, url: str, model: str) -> httpx.Response:
    return client.post(f"{url}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"authorization": f"Bearer {CLIENT_KEY}"})


def spaced(url: str, model: str) -> list[int]:
    """A request, then one after each pause in GAPS: the statuses."""
    statuses = []
    with httpx.Client(timeout=10, trust_env=False) as client:
        for gap in (0.0, *GAPS):
            time.sleep(gap)
            statuses.append(chat(client, url, model).status_code)
    return statuses


def test_requests_across_the_upstream_idle_timeout_never_fail(idle_upstream: Upstream, tmp_path: Path) -> None:
    up = idle_upstream
    gw = gateway_for(up, tmp_path, {
        "defaults": provider(up, "race-defaults", "m-defaults"),  # 4 s expiry + the stale-connection retry
        "expiry": provider(up, "race-expiry", "m-expiry", pool_idle_timeout=0.5, retry_stale_connection=False),
        "header": provider(up, "ka-header", "m-header", retry_stale_connection=False),  # Keep-Alive: timeout=1
        "before": provider(up, "race-before", "m-before", pool_idle_timeout=15, retry_stale_connection=False),
    })
    try:
        models = ("m-defaults", "m-expiry", "m-header", "m-before")
        with ThreadPoolExecutor(len(models)) as pool:  # side by side: one pass of the gaps for all four
            defaults, expiry, header, before = pool.map(lambda m: spaced(gw.url, m), models)
    finally:
        gw.stop()
    late = sum(CLOSE_LAG > gap - IDLE > 0 for gap in GAPS)  # requests meant to cross the upstream's close
    # how the gateway failed before: aiohttp's 15 s pool, and no retry of a POST (exact counts
    # depend on timing only if the machine is slow enough to shift a request across a window edge)
    resets = [a.outcome for a in up.of("race-before")].count("reset")
    assert before.count(502) == resets >= late - 1 > 0, before
    assert defaults == expiry == header == [200] * (len(GAPS) + 1)
    # defaults: each request that crossed the close went out again, on a new connection
    retried = [up.of("race-defaults")[i + 1] for i, a in enumerate(up.of("race-defaults")) if a.outcome == "reset"]
    assert len(retried) >= late - 1
    assert {(a.nth, a.outcome) for a in retried} == {(1, "answered")}
    # an expiry under the upstream's, configured or announced: no request met a connection that idled out
    assert [a.outcome for a in up.of("race-expiry") + up.of("ka-header")] == ["answered"] * 2 * (len(GAPS) + 1)


def test_a_dropped_reused_connection_is_retried_once_on_a_new_one(idle_upstream: Upstream, tmp_path: Path) -> None:
    up = idle_upstream
    gw = gateway_for(up, tmp_path, {
        "on": provider(up, "stale-on", "m-on"),
        "off": provider(up, "stale-off", "m-off", retry_stale_connection=False),
        "fresh": provider(up, "hangup", "m-fresh"),
    })
    try:
        with httpx.Client(timeout=10, trust_env=False) as client:
            on = [chat(client, gw.url, "m-on") for _ in range(3)]
            off = [chat(client, gw.url, "m-off") for _ in range(2)]
            fresh = chat(client, gw.url, "m-fresh")
    finally:
        gw.stop()
    assert [r.status_code for r in on] == [200, 200, 200]
    # the second request reached the upstream twice: dropped on the reused connection, answered on a new one
    assert [(a.nth, a.outcome) for a in up.of("stale-on")] == [(1, "answered"), (2, "dropped"), (1, "answered"),
                                                               (1, "answered")]
    assert [r.status_code for r in off] == [200, 502]
    assert off[1].json()["error"]["code"] == "upstream_error"
    assert len(up.of("stale-off")) == 2
    # a new connection that fails is not retried: the upstream may be what broke it
    assert fresh.status_code == 502
    assert len(up.of("hangup")) == 1


def test_keep_alive_timeout_header_shortens_the_pool_expiry() -> None:
    assert _idle_limit("timeout=5, max=100", 4.0) is None  # the pool's 4 s is already shorter
    assert _idle_limit("timeout=5", 15.0) == 4.0
    assert _idle_limit("max=100, Timeout=2", 15.0) == 1.0
    assert _idle_limit("timeout=1", 4.0) == 0.5
    assert _idle_limit('timeout="3"', 4.0) == 2.0
    assert _idle_limit("max=100", 4.0) is None
    assert _idle_limit("timeout=abc", 4.0) is None


def test_keep_alive_timeout_counts_from_when_the_connection_goes_back_to_the_pool() -> None:
    async def small(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(200, b"ok", "Keep-Alive: timeout=1"))  # read whole with the head

    async def slow(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunk(b"first"))
        await writer.drain()
        await asyncio.sleep(0.7)  # longer than the 0.5 s the connection may then idle
        writer.write(chunk(b"last") + b"0\r\n\r\n")

    async def plain(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(200, b"ok"))

    async def get(transport: AiohttpTransport, url: str, pause: float) -> None:
        await asyncio.sleep(pause)
        response = await transport.handle_async_request(httpx.Request("GET", url))
        await response.aread()
        await response.aclose()

    async def main() -> list[int]:
        async with serve({"/small": small, "/slow": slow, "/plain": plain}) as srv, AiohttpTransport() as t:
            for path, pause in (("/small", 0), ("/small", 0.2), ("/small", 0.7),  # kept, then dropped
                                ("/slow", 0), ("/slow", 0.2), ("/plain", 0.7),  # from the stream's end
                                ("/plain", 0.7)):  # no header: the pool's 4 s
                await get(t, srv.url(path), pause)
            return [seen.peer_port for seen in srv.seen]

    ports = asyncio.run(main())
    assert ports[0] == ports[1] != ports[2] == ports[3] == ports[4] != ports[5] == ports[6]


def test_keep_alive_settings_are_checked_at_load() -> None:
    config = parse_config({"providers": {"p": {"base_url": "http://x"}}}, {})
    assert config.server.keep_alive_timeout == 75
    assert config.providers["p"].pool_idle_timeout == 4.0
    assert config.providers["p"].retry_stale_connection is True
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"keep_alive_timeout": 0},
                      "providers": {"p": {"base_url": "http://x", "pool_idle_timeout": 0}}}, {})
    assert [e.split(":")[0] for e in caught.value.errors] == ["server.keep_alive_timeout",
                                                              "providers.p.pool_idle_timeout"]


def _get(sock: socket.socket) -> bytes:
    """GET /health/live on ``sock``, keeping the connection; the whole response."""
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_serve_keeps_an_idle_client_connection_for_keep_alive_timeout(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, good_config(host="127.0.0.1", port=port, keep_alive_timeout=2))
    with serving(["--config", str(path)], clean_env(tmp_path), tmp_path) as process:
        process.wait_live(port)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert _get(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # idle, under the timeout: the same connection still serves
            assert _get(sock).startswith(b"HTTP/1.1 200")
            answered = time.monotonic()
            assert sock.recv(1) == b""  # then the gateway closes it, at the timeout
            closed = time.monotonic() - answered
        process.stop(signal.SIGTERM)
    assert 1.5 < closed < 4, closed
    assert "Traceback" not in process.output, process.output
