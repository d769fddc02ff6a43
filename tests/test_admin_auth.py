"""Users, roles, sessions, CSRF and login throttling, against the real gateway over HTTP.

Each test runs the gateway under uvicorn with its own SQLite file and talks to ``/api`` with
an ``httpx.Client`` that keeps cookies as a browser would. Password hashing runs at its
production cost here (tens of ms per hash); the unit tests at the end lower it by parameter.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import MASTER_KEY

from llm_proxy.accounts.passwords import ScryptCost, hash_password, needs_rehash, verify_password
from llm_proxy.accounts.sessions import COOKIE_NAME, SessionStore
from llm_proxy.accounts.users import User, UserStore
from llm_proxy.cli import main as cli_main

NEW_PASSWORD = "correct-horse-battery-9"
CHEAP = ScryptCost(n=2**4, r=1, p=1)


def login(gw: Any, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=gw.url, timeout=10)
    gw.clients.append(client)
    return client, client.post("/api/auth/login", json={"username": username, "password": password})


def admin_session(gw: Any) -> tuple[httpx.Client, str]:
    """Log in as the default admin and change the default password, as a first user would."""
    client, r = login(gw, "admin", "admin123")
    assert r.status_code == 200, r.text
    r = client.post("/api/auth/password", json={"current_password": "admin123", "new_password": NEW_PASSWORD},
                    headers={"x-csrf-token": r.json()["csrf_token"]})
    assert r.status_code == 200, r.text
    return client, r.json()["csrf_token"]


def make_user(client: httpx.Client, csrf: str, username: str, role: str, password: str = "viewer-pass-1") -> dict:
    r = client.post("/api/users", json={"username": username, "password": password, "role": role,
                                        "must_change_password": False}, headers={"x-csrf-token": csrf})
    assert r.status_code == 201, r.text
    return r.json()


def stored_admin(gw: Any) -> User:
    users = UserStore(gw.db_path)
    try:
        user = users.by_name("admin")
    finally:
        users.close()
    assert user is not None
    return user


def code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def with_cookie(gw: Any, value: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/api/auth/me", headers={"cookie": f"{COOKIE_NAME}={value}"}, timeout=10)


def test_first_login_forces_a_password_change(make_gateway: Any) -> None:
    gw = make_gateway()
    client, r = login(gw, "admin", "admin123")
    assert r.status_code == 200
    body = r.json()
    assert body["must_change_password"] is True and body["user"]["role"] == "admin"
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/api" in set_cookie
    csrf = body["csrf_token"]
    first_cookie = client.cookies[COOKIE_NAME]

    # everything but me/password/logout is refused until the password is changed
    r = client.get("/api/users")
    assert r.status_code == 403 and code(r) == "password_change_required"
    r = client.post("/api/users", json={"username": "x", "password": "whatever-123"}, headers={"x-csrf-token": csrf})
    assert r.status_code == 403 and code(r) == "password_change_required"
    assert client.get("/api/auth/me").json()["must_change_password"] is True

    for new, expected in (("short", "weak_password"), ("admin123", "weak_password")):
        r = client.post("/api/auth/password", json={"current_password": "admin123", "new_password": new},
                        headers={"x-csrf-token": csrf})
        assert r.status_code == 400 and code(r) == expected
    r = client.post("/api/auth/password", json={"current_password": "wrong-one", "new_password": NEW_PASSWORD},
                    headers={"x-csrf-token": csrf})
    assert r.status_code == 400 and code(r) == "wrong_password"

    r = client.post("/api/auth/password", json={"current_password": "admin123", "new_password": NEW_PASSWORD},
                    headers={"x-csrf-token": csrf})
    assert r.status_code == 200 and r.json()["must_change_password"] is False
    assert r.json()["csrf_token"] != csrf  # the session was rotated
    assert client.get("/api/users").status_code == 200
    assert with_cookie(gw, first_cookie).status_code == 401  # the pre-change session is over

    assert login(gw, "admin", "admin123")[1].status_code == 401
    r = login(gw, "admin", NEW_PASSWORD)[1]
    assert r.status_code == 200 and r.json()["must_change_password"] is False


def test_viewer_reads_but_cannot_write(make_gateway: Any) -> None:
    gw = make_gateway()
    admin, csrf = admin_session(gw)
    make_user(admin, csrf, "vera", "viewer")
    viewer, r = login(gw, "vera", "viewer-pass-1")
    assert r.status_code == 200 and r.json()["user"]["role"] == "viewer"
    vcsrf = r.json()["csrf_token"]

    r = viewer.get("/api/users")
    assert r.status_code == 200 and {u["username"] for u in r.json()["data"]} == {"admin", "vera"}
    for method, path, body in (("POST", "/api/users", {"username": "eve", "password": "eve-pass-123"}),
                               ("PATCH", "/api/users/2", {"role": "admin"}),
                               ("DELETE", "/api/users/1", None),
                               ("POST", "/api/providers/openai/keys", {"api_key": "sk-x-0123456789"})):
        r = viewer.request(method, path, json=body, headers={"x-csrf-token": vcsrf})
        assert r.status_code == 403 and code(r) == "forbidden", (method, path, r.text)
    assert viewer.get("/api/providers/openai/keys").status_code == 403  # secrets are admin-only, even masked
    assert [u["role"] for u in admin.get("/api/users").json()["data"]] == ["admin", "viewer"]


def test_state_changing_session_requests_need_the_csrf_token(make_gateway: Any) -> None:
    gw = make_gateway()
    admin, csrf = admin_session(gw)
    new_user = {"username": "carl", "password": "carl-pass-123"}
    for headers in ({}, {"x-csrf-token": "0" * 64}, {"x-csrf-token": csrf[:-1]}):
        r = admin.post("/api/users", json=new_user, headers=headers)
        assert r.status_code == 403 and code(r) == "csrf_failed", headers
    assert admin.get("/api/users").status_code == 200  # reads need no token
    assert admin.get("/api/auth/me").json()["csrf_token"] == csrf
    assert admin.post("/api/users", json=new_user, headers={"x-csrf-token": csrf}).status_code == 201
    assert admin.post("/api/auth/logout").status_code == 403  # logout is a write too


def test_tampered_or_foreign_session_cookie_is_refused(make_gateway: Any) -> None:
    gw = make_gateway()
    admin, _ = admin_session(gw)
    cookie = admin.cookies[COOKIE_NAME]
    assert with_cookie(gw, cookie).status_code == 200
    payload, stamp, signature = cookie.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    for forged in (f"{payload}.{stamp}.{flipped}{signature[1:]}",  # signature altered
                   f"{payload[:-2]}{'xy' if payload[-2:] != 'xy' else 'zz'}.{stamp}.{signature}",  # payload altered
                   "garbage", ""):
        r = with_cookie(gw, forged)
        assert r.status_code == 401 and code(r) == "unauthenticated", forged
    # a well-formed cookie signed with another secret (another install) is no better
    other = SessionStore(gw.db_path.with_name("other.db"))
    user = stored_admin(gw)
    assert with_cookie(gw, other.issue(user).cookie or "").status_code == 401
    other.close()


def test_expired_session_cookie_is_refused(make_gateway: Any) -> None:
    gw = make_gateway()
    admin_session(gw)
    user = stored_admin(gw)
    now = SessionStore(gw.db_path)  # the gateway's own secret, read from the database
    fresh = now.issue(user).cookie or ""
    assert with_cookie(gw, fresh).status_code == 200
    then = SessionStore(gw.db_path, clock=lambda: time.time() - 12 * 3600 - 5)
    old = then.issue(user).cookie or ""
    r = with_cookie(gw, old)
    assert r.status_code == 401 and code(r) == "unauthenticated"
    now.close()
    then.close()


def test_logout_and_new_logins_end_the_old_session(make_gateway: Any) -> None:
    gw = make_gateway()
    admin, csrf = admin_session(gw)
    before = admin.cookies[COOKIE_NAME]
    r = admin.post("/api/auth/login", json={"username": "admin", "password": NEW_PASSWORD})
    assert r.status_code == 200
    assert admin.cookies[COOKIE_NAME] != before and with_cookie(gw, before).status_code == 401  # rotated
    after = admin.cookies[COOKIE_NAME]
    r = admin.post("/api/auth/logout", headers={"x-csrf-token": r.json()["csrf_token"]})
    assert r.status_code == 200
    assert COOKIE_NAME not in admin.cookies
    assert with_cookie(gw, after).status_code == 401  # replaying the cookie does not bring it back


def test_failed_logins_are_throttled(make_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    gw = make_gateway()
    admin_session(gw)
    with caplog.at_level(logging.WARNING, "llm_proxy.accounts"):
        for _ in range(5):
            assert login(gw, "admin", "not-the-password")[1].status_code == 401
    r = login(gw, "admin", NEW_PASSWORD)[1]  # even the right password waits...
    assert r.status_code == 429 and code(r) == "too_many_attempts"
    assert r.headers["retry-after"] == "1"
    assert login(gw, "nobody-else", "wrong-password")[1].status_code == 401  # other names are not locked
    time.sleep(1.05)
    r = login(gw, "admin", NEW_PASSWORD)[1]  # ...a second (a backoff that grows), not 5 minutes
    assert r.status_code == 200, r.text
    assert "login throttled: 5 failed attempts for user 'admin', the latest from 127.0.0.1" in caplog.text
    assert "not-the-password" not in caplog.text and NEW_PASSWORD not in caplog.text


def test_master_key_is_an_admin_bearer_without_csrf(make_gateway: Any) -> None:
    gw = make_gateway()
    bearer = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    gw.clients.append(bearer)
    r = bearer.post("/api/users", json={"username": "ops", "password": "ops-pass-123", "role": "admin"})
    assert r.status_code == 201 and r.json()["role"] == "admin"
    me = bearer.get("/api/auth/me").json()
    assert me["via"] == "master_key" and me["user"]["role"] == "admin" and me["csrf_token"] is None
    assert bearer.post("/api/auth/password", json={"current_password": "a" * 8, "new_password": "b" * 8}
                       ).status_code == 400
    r = httpx.get(f"{gw.url}/api/users", headers={"authorization": "Bearer sk-wrong-key-0000000"})
    assert r.status_code == 401
    assert httpx.get(f"{gw.url}/api/users").status_code == 401


def test_reset_admin_from_the_cli(make_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gw = make_gateway()
    admin, csrf = admin_session(gw)
    make_user(admin, csrf, "ops", "admin", password="ops-pass-123")
    config = tmp_path / "reset.yaml"
    config.write_text(yaml.safe_dump({"database": {"path": str(gw.db_path)}}))
    assert cli_main(["reset-admin", "--config", str(config)]) == 0
    assert "reset user 'admin'" in capsys.readouterr().out

    assert admin.get("/api/users").status_code == 401  # the admin's sessions were signed out
    assert login(gw, "admin", NEW_PASSWORD)[1].status_code == 401
    client, r = login(gw, "admin", "admin123")
    assert r.status_code == 200 and r.json()["must_change_password"] is True
    assert client.get("/api/users").status_code == 403

    # a deleted (or demoted, or disabled) admin is brought back
    ops, r = login(gw, "ops", "ops-pass-123")
    assert ops.delete("/api/users/1", headers={"x-csrf-token": r.json()["csrf_token"]}).status_code == 200
    assert login(gw, "admin", "admin123")[1].status_code == 401
    assert cli_main(["reset-admin", "--config", str(config)]) == 0
    assert "re-created user 'admin'" in capsys.readouterr().out
    r = login(gw, "admin", "admin123")[1]
    assert r.status_code == 200 and r.json()["must_change_password"] is True and r.json()["user"]["role"] == "admin"


def test_user_management_guards(make_gateway: Any) -> None:
    gw = make_gateway()
    admin, csrf = admin_session(gw)
    h = {"x-csrf-token": csrf}
    for change in ({"role": "viewer"}, {"disabled": True}):
        r = admin.patch("/api/users/1", json=change, headers=h)
        assert r.status_code == 409 and code(r) == "last_admin"
    r = admin.delete("/api/users/1", headers=h)
    assert r.status_code == 409 and code(r) == "last_admin"
    assert admin.post("/api/users", json={"username": "ADMIN", "password": "x" * 10}, headers=h).status_code == 409
    assert code(admin.post("/api/users", json={"username": "bad name", "password": "x" * 10}, headers=h)) \
        == "invalid_username"
    assert code(admin.post("/api/users", json={"username": "ok", "password": "x" * 10, "role": "root"},
                           headers=h)) == "invalid_role"
    assert code(admin.patch("/api/users/1", json={"colour": "red"}, headers=h)) == "unknown_field"
    assert admin.patch("/api/users/99", json={"role": "viewer"}, headers=h).status_code == 404

    vic = make_user(admin, csrf, "vic", "viewer")
    vic_client, _ = login(gw, "vic", "viewer-pass-1")
    assert vic_client.get("/api/users").status_code == 200
    assert admin.patch(f"/api/users/{vic['id']}", json={"disabled": True}, headers=h).json()["disabled"] is True
    assert vic_client.get("/api/users").status_code == 401  # disabling ends the sessions
    r = login(gw, "vic", "viewer-pass-1")[1]
    assert r.status_code == 403 and code(r) == "account_disabled"

    # an admin-set password must be changed by its user
    r = admin.patch(f"/api/users/{vic['id']}", json={"disabled": False, "password": "temp-pass-123"}, headers=h)
    assert r.json()["must_change_password"] is True
    assert login(gw, "vic", "temp-pass-123")[1].json()["must_change_password"] is True

    # a deleted user's session never fits the next user, even one with the same name
    kim = make_user(admin, csrf, "kim", "viewer")
    kim_client, _ = login(gw, "kim", "viewer-pass-1")
    assert admin.delete(f"/api/users/{kim['id']}", headers=h).status_code == 200
    assert make_user(admin, csrf, "kim", "viewer")["id"] != kim["id"]
    assert kim_client.get("/api/users").status_code == 401

    listing = admin.get("/api/users")
    assert "scrypt" not in listing.text and "password_hash" not in listing.text
    raw = sqlite3.connect(gw.db_path).execute("SELECT password_hash FROM users").fetchall()
    assert all(h.startswith("scrypt$n=16384,r=8,p=1$") for (h,) in raw)


def test_login_needs_json(make_gateway: Any) -> None:
    gw = make_gateway()
    r = httpx.post(f"{gw.url}/api/auth/login", content=b"username=admin&password=admin123",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    r = httpx.post(f"{gw.url}/api/auth/login", json=["admin"])
    assert r.status_code == 400 and code(r) == "invalid_json"


# -- units ---------------------------------------------------------------------------------------

def test_password_hash_format_and_verification() -> None:
    encoded = hash_password("hunter2-long", CHEAP)
    assert encoded.startswith("scrypt$n=16,r=1,p=1$") and "hunter2" not in encoded
    assert verify_password("hunter2-long", encoded)
    assert not verify_password("hunter3-long", encoded)
    assert hash_password("hunter2-long", CHEAP) != encoded  # salted
    assert needs_rehash(encoded) and not needs_rehash(encoded, CHEAP)
    for broken in ("", "bcrypt$x$y$z", "scrypt$n=16$AA$AA", "scrypt$n=16,r=1,p=1$!!$AA"):
        assert not verify_password("hunter2-long", broken)


def test_default_admin_is_created_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "users.db"
    with caplog.at_level(logging.WARNING, "llm_proxy.accounts"):
        store = UserStore(db, cost=CHEAP)
        assert [u.username for u in store.list_users()] == ["admin"]
        store.close()
        again = UserStore(db, cost=CHEAP)
        assert len(again.list_users()) == 1
    assert sum("default admin" in r.message for r in caplog.records) == 1
    assert "admin123" not in caplog.text
    user = again.authenticate("admin", "admin123")
    assert user is not None and user.must_change_password
    again.close()
