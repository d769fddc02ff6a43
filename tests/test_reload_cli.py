"""Config reload the way an operator does it: ``llm-proxy serve --config FILE`` as a process,
the file edited, then ``POST /api/config/reload`` and ``kill -HUP``, the change seen through
the public API. Every wait is bounded and the server is always killed (``serving``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
from test_cli import clean_env, free_port, serving, write_config

from llm_proxy.testing.mock_upstream import MockUpstream

MASTER = "sk-reload-master-0123456789"
AUTH = {"authorization": f"Bearer {MASTER}"}


def config(upstream_v1: str, db: Path, models: list[str], aliases: dict[str, str]) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "log_level": "info"},
        "database": {"path": str(db)},
        "auth": {"master_key": MASTER},
        "providers": {"mock": {"type": "openai", "base_url": upstream_v1, "api_key": "sk-upstream-reload",
                               "models": models, "timeouts": {"connect": 2, "read": 5, "total": 20}}},
        "aliases": aliases,
    }


def model_ids(client: httpx.Client, base: str) -> set[str]:
    r = client.get(base + "/v1/models", headers=AUTH)
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


def chat(client: httpx.Client, base: str, model: str) -> httpx.Response:
    return client.post(base + "/v1/chat/completions", headers=AUTH,
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}]})


def wait_for_models(client: httpx.Client, base: str, wanted: set[str], timeout: float = 10.0) -> set[str]:
    """The model list once it holds ``wanted`` (a SIGHUP reload runs in the background), or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        ids = model_ids(client, base)
        if wanted <= ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.05)


def test_serve_reloads_its_config_file_by_api_and_by_sighup(mock: MockUpstream, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "reload.db"
    path = write_config(tmp_path, config(mock.base_url_v1, db, ["gpt-4o"], {}))
    with serving(["--config", str(path), "--port", str(port)], clean_env(tmp_path), tmp_path) as server, \
            httpx.Client(trust_env=False, timeout=10) as client:
        server.wait_live(port)
        assert model_ids(client, base) == {"gpt-4o"}
        assert chat(client, base, "fast").status_code == 404

        # 1. edit the file, reload through the admin API: the answer says so and the change serves at once
        write_config(tmp_path, config(mock.base_url_v1, db, ["gpt-4o"], {"fast": "gpt-4o"}))
        r = client.post(base + "/api/config/reload", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] is True
        assert model_ids(client, base) == {"gpt-4o", "fast"}
        served = chat(client, base, "fast")
        assert served.status_code == 200, served.text
        assert served.json()["model"] == "gpt-4o"

        # 2. edit it again (a new model and an alias to it), then kill -HUP
        write_config(tmp_path, config(mock.base_url_v1, db, ["gpt-4o", "gpt-4o-mini"],
                                      {"fast": "gpt-4o", "cheap": "gpt-4o-mini"}))
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for_models(client, base, {"cheap"}) == {"gpt-4o", "gpt-4o-mini", "fast", "cheap"}
        served = chat(client, base, "cheap")
        assert served.status_code == 200, served.text
        assert served.json()["model"] == "gpt-4o-mini"

        # 3. a broken edit is refused on SIGHUP (logged) and by the API (400); the running config stays
        path.write_text("providers: {broken: {base_url: nope}}\n", encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        r = client.post(base + "/api/config/reload", headers=AUTH)
        assert r.status_code == 400 and "base_url" in r.json()["error"]["message"]
        assert chat(client, base, "cheap").status_code == 200
        code = server.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), server.output
    assert "Traceback" not in server.output, server.output
    assert server.output.count("configuration reloaded") == 2, server.output
    assert "reload refused, the running configuration stays" in server.output, server.output
