"""The gateway mounted inside a host Starlette app, with and without its lifespan wired.

Starlette's ``Mount`` never runs a sub-app's lifespan, so a host must pass the gateway's on
(``lifespan=gateway.router.lifespan_context``, or by entering it inside its own lifespan).
A host that forgets still gets a working gateway: it starts on its first request and its
request log is drained when the interpreter exits.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from conftest import CLIENT_KEY, gateway_config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from llm_proxy.app import create_app
from llm_proxy.core.config import parse_config
from llm_proxy.testing.mock_upstream import MockUpstream


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("host home")


def host_app(gateway: Starlette, wiring: str) -> Starlette:
    routes = [Route("/", home), Mount("/llm", app=gateway)]
    if wiring == "lifespan_context":
        return Starlette(routes=routes, lifespan=gateway.router.lifespan_context)
    if wiring == "composed":
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            # the host's own startup/shutdown around the gateway's
            async with gateway.router.lifespan_context(gateway):
                app.state.host_ready = True
                yield
        return Starlette(routes=routes, lifespan=lifespan)
    assert wiring == "none"
    return Starlette(routes=routes)


class Host:
    """A host app under uvicorn in a thread; ``after_serve`` runs on the server's loop at the end."""

    def __init__(self, app: Starlette, after_serve: Any = None) -> None:
        self.app = app
        self.after_serve = after_serve
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            if self.after_serve is not None:
                await self.after_serve()

    def start(self) -> Host:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "host did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM request_logs").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def exercise(url: str) -> None:
    """What a user of the mounted gateway does, through the official SDK."""
    client = openai.OpenAI(base_url=url + "/llm/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10)
    try:
        done = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert done.choices[0].message.content == "Hello from the mock upstream."
        assert done.usage is not None and done.usage.completion_tokens == 5

        stream = client.chat.completions.create(
            model="gpt4", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from the mock upstream."
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

        ids = {m.id for m in client.models.list()}
        assert {"gpt-4o", "gpt4", "deepseek-chat"} <= ids

        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "model_not_found"
    finally:
        client.close()

    health = httpx.get(url + "/llm/health", timeout=5)
    assert health.status_code == 200, health.text
    assert health.json()["ready"] is True
    home_page = httpx.get(url + "/", timeout=5)
    assert (home_page.status_code, home_page.text) == (200, "host home")
    missing = httpx.get(url + "/llm/v1/nothing-here", headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=5)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Unknown request URL: GET /llm/v1/nothing-here."


@pytest.mark.parametrize("wiring", ["lifespan_context", "composed"])
def test_mounted_with_lifespan(mock: MockUpstream, tmp_path: Path, wiring: str) -> None:
    db = tmp_path / "mounted.db"
    gateway = create_app(parse_config(gateway_config(mock.base_url_v1, db), {}))
    holder = gateway.state.runtime_holder
    # hold every row in the queue until the writer is closed, so only a drain can write them
    writer, closing = holder.current.request_log.writer, threading.Event()
    real_write, real_close = writer._write, writer.close

    def held_write(conn: Any, batch: list[Any]) -> None:
        closing.wait(10)
        real_write(conn, batch)

    def close(timeout: float = 30.0) -> None:
        closing.set()
        real_close(timeout)

    writer._write, writer.close = held_write, close
    host = Host(host_app(gateway, wiring)).start()
    try:
        assert holder.started  # by the host's lifespan, before any request
        exercise(host.url)
        assert count_rows(db) == 0
    finally:
        host.stop()
    assert closing.is_set() and not holder.started  # the host's shutdown closed it
    rows = sqlite3.connect(db).execute("SELECT endpoint, status FROM request_logs ORDER BY id").fetchall()
    assert rows == [("chat.completions", 200), ("chat.completions", 200), ("models", 200),
                    ("chat.completions", 404), ("other", 404)]
    assert mock.streams_completed == 1


def test_mounted_without_lifespan_starts_on_first_request(mock: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "lazy.db"
    gateway = create_app(parse_config(gateway_config(mock.base_url_v1, db), {}))
    holder = gateway.state.runtime_holder

    async def cleanup() -> None:  # test hygiene only: close the upstream clients on their own loop
        await holder.aclose()

    host = Host(host_app(gateway, "none"), after_serve=cleanup).start()
    try:
        assert not holder.started
        # a readiness probe is often the first request: it starts the gateway and sees it ready
        health = httpx.get(host.url + "/llm/health", timeout=5)
        assert (health.status_code, health.json()["ready"]) == (200, True)
        assert holder.started
        exercise(host.url)
        deadline = time.monotonic() + 5
        while count_rows(db) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count_rows(db) == 5  # the lazily started writer writes as usual
    finally:
        host.stop()


def test_concurrent_first_requests_start_once(mock: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "lazy-burst.db"
    gateway = create_app(parse_config(gateway_config(mock.base_url_v1, db), {}))
    holder = gateway.state.runtime_holder
    writer = holder.current.request_log.writer
    starts: list[float] = []
    real_start = writer.start

    def counting_start() -> None:
        starts.append(time.monotonic())
        real_start()

    writer.start = counting_start

    async def cleanup() -> None:
        await holder.aclose()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            replies = await asyncio.gather(*(
                client.post(f"{host.url}/llm/v1/chat/completions",
                            json={"model": "gpt-4o", "messages": [{"role": "user", "content": f"hi {i}"}]},
                            headers={"Authorization": f"Bearer {CLIENT_KEY}"})
                for i in range(20)
            ))
        return [r.status_code for r in replies]

    host = Host(host_app(gateway, "none"), after_serve=cleanup).start()
    try:
        assert asyncio.run(burst()) == [200] * 20
        assert len(starts) == 1
    finally:
        host.stop()


SCRIPT = textwrap.dedent(
    """
    import atexit, json, sqlite3, sys, threading, time

    import httpx, uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from llm_proxy.app import create_app
    from llm_proxy.core.config import parse_config

    config, key = json.loads(sys.argv[1]), sys.argv[2]
    gateway = create_app(parse_config(config, {}))
    host = Starlette(routes=[Mount("/llm", app=gateway)])  # the lifespan is NOT passed on
    writer = gateway.state.runtime_holder.current.request_log.writer
    gate = threading.Event()
    real_write = writer._write

    def held_write(conn, batch):  # the disk "hangs" until the interpreter starts exiting
        gate.wait(10)
        real_write(conn, batch)

    writer._write = held_write
    server = uvicorn.Server(uvicorn.Config(host, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    for i in range(6):
        r = httpx.post(f"http://127.0.0.1:{port}/llm/v1/chat/completions", timeout=10,
                       headers={"Authorization": "Bearer " + key},
                       json={"model": "gpt-4o", "stream": i % 2 == 1,
                             "messages": [{"role": "user", "content": f"hi {i}"}]})
        assert r.status_code == 200, r.text
    atexit.register(gate.set)  # atexit runs last-registered first: releases the disk before the drain
    server.should_exit = True
    thread.join(10)
    written = sqlite3.connect(config["database"]["path"]).execute("SELECT count(*) FROM request_logs")
    print(json.dumps({"written_before_exit": written.fetchone()[0], "queued": writer.queued}))
    """
)


def test_unwired_host_drains_request_log_at_interpreter_exit(mock: MockUpstream, tmp_path: Path) -> None:
    db = tmp_path / "atexit.db"
    config = gateway_config(mock.base_url_v1, db, request_log={"batch_size": 1})
    script = tmp_path / "host.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), json.dumps(config), CLIENT_KEY],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["written_before_exit"] == 0
    assert report["queued"] >= 5  # one row may be in the writer's hands already
    assert count_rows(db) == 6


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    stray = [t for t in threading.enumerate() if t.ident not in before and t.name == "llm-proxy-log-writer"]
    assert not stray, stray
