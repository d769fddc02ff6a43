"""Who the client is for login throttling: ``X-Forwarded-For`` only from configured proxies,
through ``llm-proxy serve`` as a process, at its production password-hashing cost."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import clean_env, free_port, good_config, serving, write_config

from llm_proxy.core.config import ConfigError, parse_config

WRONG = "wrong-password-1"


def failed_logins(base: str, count: int, forwarded: bool) -> list[int]:
    """``count`` logins with made-up names (no per-user limit), each claiming a new address."""
    statuses = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for i in range(count):
            headers = {"x-forwarded-for": f"203.0.113.{i + 1}"} if forwarded else {}
            r = client.post(f"{base}/api/auth/login", json={"username": f"nobody-{i}", "password": WRONG},
                            headers=headers)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "too_many_attempts"
                assert 1 <= int(r.headers["retry-after"]) <= 300
    return statuses


def serve_and_flood(tmp_path: Path, name: str, **server: Any) -> tuple[list[int], str]:
    port = free_port()
    path = write_config(tmp_path, good_config(host="127.0.0.1", port=port, **server), f"{name}.yaml")
    env = clean_env(tmp_path, LLM_PROXY__DATABASE__PATH=str(tmp_path / f"{name}.db"))
    with serving(["--config", str(path)], env, tmp_path) as process:
        process.wait_live(port)
        statuses = failed_logins(f"http://127.0.0.1:{port}", 25, forwarded=True)
        process.stop(signal.SIGTERM)
    assert "Traceback" not in process.output, process.output
    return statuses, process.output


def test_forwarded_for_from_localhost_does_not_bypass_the_address_limit(tmp_path: Path) -> None:
    statuses, output = serve_and_flood(tmp_path, "default")
    assert statuses == [401] * 20 + [429] * 5  # every attempt counted against the real peer, 127.0.0.1
    assert WRONG not in output and "nobody-" not in output  # no password, no unknown name


def test_forwarded_for_is_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    statuses, output = serve_and_flood(tmp_path, "proxied", forwarded_allow_ips=["127.0.0.1"])
    assert statuses == [401] * 25  # 25 clients behind the proxy, one failure each
    assert "trusting X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1" in output, output


def test_proxy_entries_are_checked_at_load() -> None:
    assert parse_config({"server": {"forwarded_allow_ips": ["10.0.0.5", "10.0.0.0/8", "::1"]}}, {}) \
        .server.forwarded_allow_ips == ("10.0.0.5", "10.0.0.0/8", "::1")
    assert parse_config({"server": {"forwarded_allow_ips": ["*"]}}, {}).server.forwarded_allow_ips == ("*",)
    assert parse_config({}, {}).server.forwarded_allow_ips == ()
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"forwarded_allow_ips": ["10.0.0.1/8", "proxy.internal", "*"]}}, {})
    errors = caught.value.errors
    assert [e.split(":")[0] for e in errors] == [f"server.forwarded_allow_ips[{i}]" for i in range(3)], errors
    with pytest.raises(ConfigError, match="expected a list"):
        parse_config({"server": {"forwarded_allow_ips": "10.0.0.5"}}, {})
    env = {"LLM_PROXY__SERVER__FORWARDED_ALLOW_IPS": "[10.0.0.5, 10.0.0.6]"}
    assert parse_config({}, env).server.forwarded_allow_ips == ("10.0.0.5", "10.0.0.6")
