"""Shared fixtures: a mock upstream and the gateway, both real HTTP servers on 127.0.0.1.

Streaming, disconnects and pooling only behave for real over sockets, so end-to-end tests
run the gateway under uvicorn in a thread (httpx's serve-in-thread pattern) rather than
through an in-process transport that buffers whole bodies.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from llm_proxy.app import create_app
from llm_proxy.core.config import parse_config
from llm_proxy.testing.mock_upstream import MockUpstream

MASTER_KEY = "sk-test-master-0123456789"
CLIENT_KEY = "sk-test-client-0123456789"
UPSTREAM_KEY = "sk-upstream-secret-abcdef"
# Recorded provider traffic, kept in the repository (provenance in tests/fixtures/INDEX.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def gateway_config(upstream_v1: str, db_path: Path, **overrides: Any) -> dict[str, Any]:
    """A config dict with two OpenAI-compatible providers pointed at the mock."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "warning"},
        "database": {"path": str(db_path)},
        "auth": {"master_key": MASTER_KEY, "keys": [{"key": CLIENT_KEY, "name": "team-a"}]},
        "providers": {
            "openai": {
                "type": "openai",
                "base_url": upstream_v1,
                "api_key": UPSTREAM_KEY,
                "models": ["gpt-4o", "gpt-4o-mini", "mock-gpt"],
                "timeouts": {"connect": 2, "read": 5, "total": 20},
            },
            "deepseek": {
                "type": "openai",
                "base_url": upstream_v1,
                "api_key": UPSTREAM_KEY,
                "models": ["deepseek-chat", "deepseek-reasoner"],
                "timeouts": {"connect": 2, "read": 5, "total": 20},
            },
        },
        "aliases": {"gpt4": "gpt-4o"},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


class Gateway:
    """The gateway served by uvicorn in a daemon thread."""

    def __init__(self, config: dict[str, Any], environ: dict[str, str] | None = None) -> None:
        self.config_source = config
        self.config = parse_config(config, environ or {})
        self.db_path = Path(self.config.database.path)
        self.app = create_app(self.config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=3, lifespan="on")
        )
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.clients: list[Any] = []  # SDK clients a test made; closed on stop

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime_holder.current

    def start(self) -> Gateway:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def rows(self, expected: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Request-log rows, waiting (bounded) for the writer thread to reach ``expected``."""
        deadline = time.monotonic() + timeout
        while True:
            rows: list[dict[str, Any]] = []
            if self.db_path.exists():
                conn = sqlite3.connect(self.db_path)
                conn.row_factory = sqlite3.Row
                try:
                    rows = [dict(r) for r in conn.execute("SELECT * FROM request_logs ORDER BY id")]
                except sqlite3.OperationalError:
                    rows = []
                finally:
                    conn.close()
            if expected is None or len(rows) >= expected or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockUpstream]:
    mock = MockUpstream()
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def mock(upstream: MockUpstream) -> MockUpstream:
    upstream.reset()
    return upstream


@pytest.fixture
def gateway(mock: MockUpstream, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(gateway_config(mock.base_url_v1, tmp_path / "llm_proxy.db")).start()
    yield gw
    gw.stop()


@pytest.fixture
def make_gateway(mock: MockUpstream, tmp_path: Path) -> Iterator[Any]:
    """Build a gateway from overrides of the default test config."""
    started: list[Gateway] = []

    def factory(environ: dict[str, str] | None = None, **overrides: Any) -> Gateway:
        gw = Gateway(gateway_config(mock.base_url_v1, tmp_path / f"gw{len(started)}.db", **overrides), environ)
        started.append(gw.start())
        return gw

    yield factory
    for gw in started:
        gw.stop()


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve a raw ASGI app (a test upstream) on 127.0.0.1 in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test upstream did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def read_body(receive: Any) -> bytes:
    """The whole request body of a raw ASGI request."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
