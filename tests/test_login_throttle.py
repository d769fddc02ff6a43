"""Login throttling: who the client is (``X-Forwarded-For`` only from configured proxies, through
``llm-proxy serve`` as a process), a per-user backoff that floods of other names cannot reset,
bounded memory, and warnings that never carry a password.

The process tests run the gateway at its production password-hashing cost (tens of ms a
login); the unit tests drive ``LoginThrottle`` with an injected clock.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount
from test_cli import clean_env, free_port, good_config, serving, write_config

from llm_proxy.accounts.login_throttle import LoginThrottle
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
    assert "login throttled: 20 failed attempts from 127.0.0.1 in 300 s" in output, output
    assert WRONG not in output and "nobody-" not in output  # no password, no unknown name


def test_forwarded_for_is_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    statuses, output = serve_and_flood(tmp_path, "proxied", forwarded_allow_ips=["127.0.0.1"])
    assert statuses == [401] * 25  # 25 clients behind the proxy, one failure each
    assert "trusting X-Forwarded-For and X-Forwarded-Proto from 127.0.0.1" in output, output
    assert "login throttled" not in output, output


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


def gateway_throttle(gw: Any) -> LoginThrottle:
    (admin,) = [r for r in gw.app.routes if isinstance(r, Mount) and r.path == "/api"]
    throttle = admin.app.state.services.login_throttle
    assert isinstance(throttle, LoginThrottle)
    return throttle


def test_a_flood_of_names_over_http_does_not_reset_the_admins_backoff(make_gateway: Any) -> None:
    """Made-up names from many addresses (a botnet behind the trusted local proxy: the thread-served
    test gateway runs uvicorn with its defaults, as a host app would) overflow the name and address
    tables; the admin's backoff stays."""
    gw = make_gateway()
    throttle = gateway_throttle(gw)
    throttle.base_delay, throttle.max_names, throttle.max_addresses = 60.0, 10, 10
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        def login(username: str, password: str, address: str) -> httpx.Response:
            return client.post("/api/auth/login", json={"username": username, "password": password},
                               headers={"x-forwarded-for": address})

        for i in range(5):
            assert login("admin", WRONG, f"198.51.100.{i + 1}").status_code == 401
        for i in range(25):
            assert login(f"made-up-{i}", WRONG, f"203.0.113.{i + 1}").status_code == 401
        r = login("admin", "admin123", "192.0.2.1")  # the right password, from a fresh address
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 30
    assert len(throttle._names) <= 10 and len(throttle._addresses) <= 10


# -- LoginThrottle alone ------------------------------------------------------------------------

def make(**kwargs: Any) -> tuple[LoginThrottle, list[float]]:
    now = [1000.0]
    return LoginThrottle(clock=lambda: now[0], **kwargs), now


def fail(throttle: LoginThrottle, username: str, address: str, known: bool = True) -> None:
    assert throttle.retry_after(username, address) is None, (username, address)
    throttle.attempt(username, address, known=known)
    throttle.failed(username, address, known=known)


def test_the_backoff_grows_to_a_minute_never_a_lockout() -> None:
    throttle, now = make()
    for i in range(5):
        fail(throttle, "admin", f"10.0.0.{i}")
    waits = []
    for _ in range(9):  # an attacker who tries again the moment it is allowed
        wait = throttle.retry_after("ADMIN", "10.9.9.9")
        assert wait is not None
        waits.append(wait)
        now[0] += wait
        fail(throttle, "admin", f"10.1.0.{len(waits)}")
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    # the real admin, right password: at most a minute away; a success clears the backoff
    wait = throttle.retry_after("admin", "192.0.2.1")
    assert wait is not None and wait <= 60
    now[0] += wait
    assert throttle.retry_after("admin", "192.0.2.1") is None
    throttle.attempt("admin", "192.0.2.1", known=True)
    throttle.succeeded("admin", "192.0.2.1")
    fail(throttle, "admin", "192.0.2.1")
    assert throttle.retry_after("admin", "192.0.2.1") is None  # 1 failure: free again
    # five quiet minutes forget a backoff too
    for _ in range(5):
        now[0] += 60
        fail(throttle, "bob", "10.2.0.1")
    now[0] += 300
    fail(throttle, "bob", "10.2.0.1")
    assert throttle.retry_after("bob", "10.2.0.2") is None


def test_flooding_10000_made_up_names_does_not_reset_a_real_users_backoff() -> None:
    throttle, now = make()
    for i in range(6):
        now[0] += 5
        fail(throttle, "admin", f"10.0.0.{i}")
    assert throttle.retry_after("admin", "192.0.2.1") == 2
    for i in range(12_000):  # from as many addresses: the per-address window does not stop them
        throttle.attempt(f"user{i}", f"2001:db8:{i:x}::1", known=False)
    assert throttle.retry_after("admin", "192.0.2.1") == 2
    assert len(throttle._names) == 10_000 and len(throttle._addresses) == 10_000  # bounded
    assert "user0" not in throttle._names and "user11999" in throttle._names  # the oldest made-up names went


def test_unknown_names_are_throttled_like_real_ones() -> None:
    throttle, _ = make()
    for i in range(5):
        fail(throttle, "ghost", f"10.0.0.{i}", known=False)
        fail(throttle, "admin", f"10.1.0.{i}", known=True)
    assert throttle.retry_after("ghost", "192.0.2.1") == throttle.retry_after("admin", "192.0.2.1") == 1


def test_the_address_window_counts_ipv6_per_64() -> None:
    throttle, now = make(per_address=3)
    for i in range(3):
        fail(throttle, f"u{i}", f"2001:db8:1:2::{i + 1}")
    assert throttle.retry_after("other", "2001:db8:1:2:ffff::9") == 300
    assert throttle.retry_after("other", "2001:db8:1:3::1") is None  # another /64
    for i in range(3):
        fail(throttle, f"v{i}", "::ffff:10.0.0.7" if i % 2 else "10.0.0.7")
    assert throttle.retry_after("other", "10.0.0.7") == 300  # IPv4-mapped is the same address
    now[0] += 200
    assert throttle.retry_after("other", "10.0.0.7") == 100
    now[0] += 101
    assert throttle.retry_after("other", "10.0.0.7") is None
    fail(throttle, "w", "10.0.0.8")
    fail(throttle, "w", "10.0.0.8")
    throttle.attempt("w", "10.0.0.8", known=True)
    throttle.succeeded("w", "10.0.0.8")  # a success is forgiven: still two failures, not three
    assert throttle.retry_after("other", "10.0.0.8") is None


def test_throttling_is_logged_without_passwords_or_unknown_names(caplog: pytest.LogCaptureFixture) -> None:
    throttle, _ = make(per_address=6)
    with caplog.at_level(logging.WARNING, "llm_proxy.accounts"):
        for i in range(4):
            fail(throttle, "admin", "10.0.0.1")
            fail(throttle, "Hunter2-Typed-As-A-Name", f"10.0.1.{i}", known=False)
        assert not caplog.records
        fail(throttle, "admin", "10.0.0.1")
        fail(throttle, "Hunter2-Typed-As-A-Name", "10.0.1.9", known=False)
        fail(throttle, "carol", "10.0.0.1")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "login throttled: 5 failed attempts for user 'admin', the latest from 10.0.0.1; next attempt in 1 s",
        "login throttled: 5 failed attempts for an unknown user name, the latest from 10.0.1.9; next attempt in 1 s",
        "login throttled: 6 failed attempts from 10.0.0.1 in 300 s",
    ]
    assert "hunter2" not in caplog.text.lower()


def test_quiet_entries_are_forgotten_and_bounds_hold_over_time() -> None:
    throttle, now = make(max_names=100, max_addresses=100)
    for i in range(5000):
        now[0] += 0.5
        throttle.attempt(f"n{i}", f"10.0.{i // 256 % 256}.{i % 256}", known=False)
    assert len(throttle._names) == len(throttle._addresses) == 100
    now[0] += 301
    throttle.attempt("admin", "192.0.2.1", known=True)
    assert len(throttle._names) == 100  # names are only forgotten as new ones come in
    throttle.attempt("late", "192.0.2.2", known=False)
    assert list(throttle._names) == ["late"] and set(throttle._addresses) == {"192.0.2.1", "192.0.2.2"}
