"""Database client keys end to end: shown once, stored as a hash, refused with the right status.

Keys are made through the admin API (master key bearer) or the CLI, then used through the
official ``openai`` SDK against the gateway under uvicorn with the mock upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import CLIENT_KEY, MASTER_KEY, Gateway, gateway_config, wait_until

from llm_proxy.accounts.client_keys import ClientStore, hash_key
from llm_proxy.app import create_app
from llm_proxy.core.config import parse_config
from llm_proxy.testing.mock_upstream import MockUpstream

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
ROOT = Path(__file__).resolve().parents[1]


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.url + "/api" + path, headers=ADMIN, timeout=10, **kwargs)


def new_key(gw: Gateway, **fields: Any) -> tuple[str, dict[str, Any]]:
    r = admin(gw, "POST", "/keys", json={"name": "test-key", **fields})
    assert r.status_code == 201, r.text
    data = r.json()
    return data.pop("key"), data


def sdk(gw: Gateway, key: str, **kwargs: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10, **kwargs)
    gw.clients.append(client)
    return client


def ask(client: openai.OpenAI, model: str = "gpt-4o-mini", text: str = "hello there") -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def test_key_is_shown_once_and_only_its_hash_is_stored(gateway: Gateway) -> None:
    r = admin(gateway, "POST", "/keys", json={"name": "ci", "rpm": 100})
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"
    key = r.json()["key"]
    assert key.startswith("sk-llmp-") and len(key) >= len("sk-llmp-") + 32
    listed = admin(gateway, "GET", "/keys")
    assert listed.status_code == 200
    [entry] = listed.json()["data"]
    assert key not in listed.text and hash_key(key) not in listed.text
    assert "key" not in entry and "key_hash" not in entry
    assert entry["prefix"] == key[:12] and entry["status"] == "active" and entry["rpm"] == 100

    reply = ask(sdk(gateway, key))
    assert reply.choices[0].message.content == "Hello from the mock upstream."

    row = gateway.rows(1)[0]
    assert row["client_key_id"] == entry["log_key_id"] == f"dbkey_{entry['id']}"
    conn = sqlite3.connect(gateway.db_path)
    try:
        stored = conn.execute("SELECT key_hash, prefix FROM api_keys").fetchall()
    finally:
        conn.close()
    assert stored == [(hashlib.sha256(key.encode()).hexdigest(), key[:12])]
    # The key itself is nowhere on disk: not in the database, its WAL or the request log.
    on_disk = b"".join(p.read_bytes() for p in gateway.db_path.parent.glob(gateway.db_path.name + "*"))
    assert key.encode() not in on_disk
    assert key[12:].encode() not in on_disk


def test_revoked_key_is_refused_as_invalid(gateway: Gateway) -> None:
    key, info = new_key(gateway)
    client = sdk(gateway, key)
    ask(client)
    r = admin(gateway, "POST", f"/keys/{info['id']}/revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client)
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"
    assert key not in err.value.response.text
    with pytest.raises(openai.AuthenticationError) as err:
        ask(sdk(gateway, "sk-llmp-" + "x" * 43))
    assert err.value.code == "invalid_api_key"


def test_expired_key_is_refused_with_its_own_code(gateway: Gateway) -> None:
    key, info = new_key(gateway, expires_at="2001-01-01T00:00:00Z")
    assert info["status"] == "expired"
    with pytest.raises(openai.AuthenticationError) as err:
        ask(sdk(gateway, key))
    assert err.value.status_code == 401
    assert err.value.code == "api_key_expired"
    body = err.value.response.json()["error"]
    assert body["type"] == "invalid_request_error" and "expired" in body["message"]

    soon = time.time() + 0.5
    key, _ = new_key(gateway, expires_at=soon)
    client = sdk(gateway, key)
    ask(client)
    time.sleep(max(soon - time.time(), 0) + 0.05)
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client)
    assert err.value.code == "api_key_expired"


def test_models_outside_the_allow_list_are_refused(make_gateway: Any) -> None:
    gw = make_gateway(groups={"fast": {"targets": ["gpt-4o-mini"]}})
    key, _ = new_key(gw, allowed_models=["gpt-4o", "fast"])
    client = sdk(gw, key)
    assert ask(client, "gpt-4o").model  # listed model
    assert ask(client, "gpt4").model  # an alias resolving to a listed model
    assert ask(client, "fast").model  # a listed group
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(client, "gpt-4o-mini")  # what the group serves, asked for directly
    assert err.value.status_code == 403
    assert err.value.code == "model_not_allowed"
    assert err.value.response.json()["error"]["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        ask(client, "deepseek-chat")
    rows = gw.rows(5)
    assert [r["status"] for r in rows] == [200, 200, 200, 403, 403]
    assert rows[3]["error_type"] == "invalid_request_error"
    assert {m.id for m in client.models.list()} == {"gpt-4o", "gpt4", "fast"}  # what this key may use


def test_tags_flow_into_the_request_log(gateway: Gateway) -> None:
    key, _ = new_key(gateway, tags={"team": "search", "env": "prod"})
    ask(sdk(gateway, key))
    assert json.loads(gateway.rows(1)[0]["tags"]) == {"env": "prod", "team": "search"}


def test_rotation_keeps_the_log_id_and_retires_the_old_key(gateway: Gateway) -> None:
    old, info = new_key(gateway, rpm=10)
    r = admin(gateway, "POST", f"/keys/{info['id']}/rotate")
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    rotated = r.json()
    new = rotated.pop("key")
    assert new != old and rotated["rotated_from"] == info["id"] and rotated["rpm"] == 10
    assert rotated["log_key_id"] == info["log_key_id"]
    ask(sdk(gateway, new))
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(gateway, old))

    graced = admin(gateway, "POST", f"/keys/{rotated['id']}/rotate", json={"grace_seconds": 60}).json()
    ask(sdk(gateway, new))  # still valid during the grace period
    ask(sdk(gateway, graced["key"]))
    assert {r["client_key_id"] for r in gateway.rows(4) if r["status"] == 200} == {info["log_key_id"]}
    listing = {k["id"]: k["status"] for k in admin(gateway, "GET", "/keys").json()["data"]}
    assert listing == {info["id"]: "revoked", rotated["id"]: "rotating", graced["id"]: "active"}


def test_patch_takes_effect_on_the_next_request(gateway: Gateway) -> None:
    key, info = new_key(gateway)
    client = sdk(gateway, key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert "x-ratelimit-limit-requests" not in raw.headers
    r = admin(gateway, "PATCH", f"/keys/{info['id']}", json={"rpm": 7, "allowed_models": ["gpt-4o-mini"]})
    assert r.status_code == 200 and r.json()["rpm"] == 7
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-ratelimit-limit-requests"] == "7"
    assert raw.headers["x-ratelimit-remaining-requests"] == "6"  # the request before the limit did not count


def test_admin_api_validates_and_needs_the_master_key(gateway: Gateway) -> None:
    r = admin(gateway, "POST", "/keys", json={"name": "x", "rpm": -1, "budget_day_usd": "lots", "color": "red"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "rpm" in message and "budget_day_usd" in message and "color" in message
    assert admin(gateway, "POST", "/keys", json={"rpm": 5}).status_code == 400  # no name
    assert admin(gateway, "PATCH", "/keys/999", json={"rpm": 5}).status_code == 404
    assert admin(gateway, "GET", "/keys/999/spend").status_code == 404
    anonymous = httpx.post(gateway.url + "/api/keys", json={"name": "x"})
    assert anonymous.status_code == 401
    client_key = httpx.post(gateway.url + "/api/keys", json={"name": "x"},
                            headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert client_key.status_code == 401

    r = admin(gateway, "POST", "/clients", json={"name": "acme", "tags": {"tier": "gold"}})
    assert r.status_code == 201
    client_id = r.json()["id"]
    assert admin(gateway, "POST", "/clients", json={"name": "acme"}).status_code == 409
    key, info = new_key(gateway, client_id=client_id)
    assert info["client_id"] == client_id
    clients = admin(gateway, "GET", "/clients").json()["data"]
    assert clients == [{"id": client_id, "name": "acme", "tags": {"tier": "gold"}, "keys": 1,
                        "created_at": clients[0]["created_at"]}]
    assert [k["id"] for k in admin(gateway, "GET", f"/keys?client_id={client_id}").json()["data"]] == [info["id"]]


def test_a_database_key_closes_an_open_gateway(make_gateway: Any) -> None:
    gw = make_gateway(auth={})
    assert gw.runtime.keys.open
    assert httpx.post(gw.url + "/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    store = ClientStore(gw.db_path)
    try:
        key, _ = store.create_key("first")
        store.revoke_key(store.create_key("second")[1].id)
    finally:
        store.close()
    assert wait_until(lambda: not gw.runtime.keys.open, timeout=6)  # noticed by the watcher
    r = httpx.post(gw.url + "/v1/chat/completions", json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert ask(sdk(gw, key)).choices


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PROXY")}
    return subprocess.run([sys.executable, "-m", "llm_proxy.cli", "keys", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_cli_keys_reach_a_running_gateway(gateway: Gateway, tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"database": {"path": str(gateway.db_path)}, "providers": {}}))
    made = cli(config, "create", "--name", "batch", "--models", "gpt-4o-mini", "--rpm", "3000",
               "--budget-day", "5", "--tag", "team=ml", "--expires", "2099-01-01T00:00:00Z")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk-llmp-") and "not shown again" in made.stderr

    listed = cli(config, "list")
    assert listed.returncode == 0 and key not in listed.stdout and key[:12] in listed.stdout
    assert "rpm=3000" in listed.stdout and "budget_day_usd=5.0" in listed.stdout

    client = sdk(gateway, key)

    def works() -> bool:
        try:
            ask(client)
            return True
        except openai.AuthenticationError:
            return False

    assert wait_until(works, timeout=6)  # picked up by the gateway's periodic check
    assert wait_until(lambda: any(r["client_key_id"] == "dbkey_1" and r["status"] == 200 for r in gateway.rows()))
    assert {r["tags"] for r in gateway.rows() if r["client_key_id"] == "dbkey_1"} == {'{"team":"ml"}'}

    revoked = cli(config, "revoke", "1")
    assert revoked.returncode == 0, revoked.stderr
    assert wait_until(lambda: not works(), timeout=6)
    assert cli(config, "revoke", "99").returncode == 1


def test_database_keys_survive_a_config_reload(mock: MockUpstream, tmp_path: Path) -> None:
    config = gateway_config(mock.base_url_v1, tmp_path / "reload.db")
    app = create_app(parse_config(config, {}))
    database_keys = app.state.client_keys
    try:
        key, _ = database_keys.store.create_key("k", policy={"rpm": 1})
        database_keys.reload()
        holder = app.state.runtime_holder
        before = holder.current
        config["auth"]["keys"] = [{"key": "sk-test-another-0123456789", "name": "team-b"}]
        asyncio.run(holder.reload(parse_config(config, {})))
        assert holder.current is not before
        found = holder.current.keys.lookup(key)
        assert found is not None and found.rpm == 1 and found.metered
        assert holder.current.keys.lookup("sk-test-another-0123456789").name == "team-b"
        assert holder.current.keys.lookup(CLIENT_KEY) is None  # the config's own keys follow the reload
    finally:
        database_keys.store.close()
