"""A gateway with no client key serves loopback clients only, over real connections: a Unix
socket (no client address) is refused unless ``auth.trust_unix_socket``, and a client reported by
name instead of address (Starlette's ``testclient``, ``localhost``) is refused as well."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import Gateway, gateway_config
from starlette.testclient import TestClient

from llm_proxy.app import create_app
from llm_proxy.core.config import parse_config

pytestmark = pytest.mark.timeout(60)

UNREACHABLE = "http://127.0.0.1:9/v1"  # no request here reaches an upstream


def open_config(db: Path, **auth: Any) -> dict[str, Any]:
    return gateway_config(UNREACHABLE, db, auth=auth)


@contextmanager
def on_unix_socket(config: dict[str, Any]) -> Iterator[httpx.Client]:
    """The gateway under uvicorn on a Unix socket, and a client connected to it."""
    with tempfile.TemporaryDirectory(prefix="lp") as folder:  # short: AF_UNIX paths are ~100 bytes at most
        path = str(Path(folder) / "gw.sock")
        server = uvicorn.Server(uvicorn.Config(create_app(parse_config(config, {})), uds=path, log_level="warning",
                                               lifespan="on", timeout_graceful_shutdown=3))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.01)
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://gateway",
                              timeout=5) as client:
                yield client
        finally:
            server.should_exit = True
            thread.join(10)


def test_a_unix_socket_client_is_not_local_by_default(tmp_path: Path) -> None:
    with on_unix_socket(open_config(tmp_path / "gw.db")) as client:
        refused = client.get("/v1/models")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/health").status_code == 200  # not an API path: no key asked


def test_a_unix_socket_client_is_served_when_unix_sockets_are_trusted(tmp_path: Path) -> None:
    with on_unix_socket(open_config(tmp_path / "gw.db", trust_unix_socket=True)) as client:
        served = client.get("/v1/models")
        assert served.status_code == 200, served.text
        assert served.json()["object"] == "list"


def test_a_tcp_loopback_client_is_served(tmp_path: Path) -> None:
    gw = Gateway(open_config(tmp_path / "gw.db")).start()
    try:
        assert gw.runtime.keys.open
        assert httpx.get(gw.url + "/v1/models", timeout=5).status_code == 200
    finally:
        gw.stop()


@pytest.mark.parametrize("name", ["testclient", "localhost"])
def test_a_client_reported_by_name_is_not_local(tmp_path: Path, name: str) -> None:
    def app(db: str) -> Any:
        return create_app(parse_config(open_config(tmp_path / db), {}))

    with TestClient(app("named.db"), client=(name, 50000)) as client:
        refused = client.get("/v1/models")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
    with TestClient(app("address.db"), client=("127.0.0.1", 50000)) as client:  # from a loopback address
        assert client.get("/v1/models").status_code == 200
