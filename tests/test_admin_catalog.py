"""Providers, models, prices, discounts and groups changed through the admin API, against the
real gateway: each change must hold for the very next client request, survive a restart on the
same database, and leave config.yaml's value back in force once the database entry is removed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import (
    CLIENT_KEY,
    MASTER_KEY,
    UPSTREAM_KEY,
    Gateway,
    free_port,
    gateway_config,
    read_body,
    serve_asgi,
)
from cryptography.fernet import Fernet
from openai import OpenAI

from llm_proxy.accounts.provider_secrets import ProviderSecretStore, SecretBox, mask
from llm_proxy.core.config import parse_config
from llm_proxy.runtime.overlay import ModelOverride, Overlay, apply_overlay
from llm_proxy.testing.mock_upstream import MockUpstream

STORED_KEY = "sk-proj-STORED-provider-key-5d2e8a7b1c"
TIMEOUTS = {"connect": 1, "read": 5, "total": 10}


def admin(gw: Any) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    gw.clients.append(client)
    return client


def chat(gw: Any, model: str, text: str = "say hello please") -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}]}, timeout=10)


def last_row(gw: Any, count: int) -> dict[str, Any]:
    rows = gw.rows(count)
    assert len(rows) == count
    return rows[-1]


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def provider(url: str, models: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "api_key": UPSTREAM_KEY, "models": models, "timeouts": TIMEOUTS,
            **extra}


# -- providers -----------------------------------------------------------------------------------

def test_disabling_a_provider_moves_its_models_and_survives_a_restart(mock: MockUpstream, tmp_path: Path) -> None:
    config = gateway_config(mock.base_url_v1, tmp_path / "gw.db", providers={
        "openai": provider(mock.base_url_v1, ["gpt-4o", "gpt-4o-mini"]),
        "deepseek": provider(mock.base_url_v1, ["deepseek-chat", "gpt-4o"]),
    })
    gw = Gateway(config).start()
    try:
        assert chat(gw, "gpt-4o").status_code == 200 and last_row(gw, 1)["provider"] == "openai"
        r = admin(gw).patch("/api/providers/openai", json={"enabled": False})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["enabled"] is False and body["enabled_in_config"] is True and body["enabled_override"] is False
        assert body["disabled_reason"] == "disabled through the admin API"

        assert chat(gw, "gpt-4o").status_code == 200 and last_row(gw, 2)["provider"] == "deepseek"  # served elsewhere
        r = chat(gw, "gpt-4o-mini")
        assert r.status_code == 503 and error_code(r) == "provider_disabled"
        health = httpx.get(f"{gw.url}/health").json()["providers"]["openai"]
        assert health == {"status": "disabled"}  # why is on the admin API only (checked above)
    finally:
        gw.stop()

    gw = Gateway(config).start()  # same config, same database: the database still wins
    try:
        assert chat(gw, "gpt-4o-mini").status_code == 503
        listed = {p["name"]: p for p in admin(gw).get("/api/providers").json()["data"]}
        assert listed["openai"]["enabled"] is False and listed["deepseek"]["enabled"] is True
        r = admin(gw).patch("/api/providers/openai", json={"enabled": True})
        assert r.status_code == 200 and r.json()["enabled"] is True
        assert chat(gw, "gpt-4o-mini").status_code == 200

        admin(gw).patch("/api/providers/openai", json={"enabled": False})
        r = admin(gw).delete("/api/providers/openai/overrides")  # back to config.yaml's value: enabled
        assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["enabled_override"] is None
        assert chat(gw, "gpt-4o").status_code == 200 and last_row(gw, 6)["provider"] == "openai"
    finally:
        gw.stop()


def test_provider_listing_and_bad_requests(make_gateway: Any) -> None:
    gw = make_gateway()
    api = admin(gw)
    data = {p["name"]: p for p in api.get("/api/providers").json()["data"]}
    openai = data["openai"]
    assert openai["type"] == "openai" and openai["enabled"] is True and openai["models"] == 3
    assert openai["keys"] == {"in_use": 1, "stored": 0, "config": [mask(UPSTREAM_KEY)], "database": []}
    assert openai["breakers"] == {} and UPSTREAM_KEY not in api.get("/api/providers").text

    assert api.patch("/api/providers/nope", json={"enabled": False}).status_code == 404
    r = api.patch("/api/providers/openai", json={"enabled": "no", "colour": 1})
    assert r.status_code == 400 and error_code(r) == "invalid_value"
    assert "enabled:" in r.json()["error"]["message"] and "colour: unknown key" in r.json()["error"]["message"]
    assert chat(gw, "gpt-4o").status_code == 200  # nothing was changed


async def _echoing_upstream(scope: Any, receive: Any, send: Any) -> None:
    """Answers every request 500 with an error that quotes the request, as upstreams' errors can."""
    body = await read_body(receive)
    error = b'{"error": {"message": "could not process: ' + body.replace(b'"', b"'") + b'", "type": "server_error"}}'
    await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": error})


def test_health_shows_states_only_and_the_last_error_is_on_the_admin_api(make_gateway: Any) -> None:
    """/health needs no key: an upstream's error text there would show one client's request to anyone."""
    with serve_asgi(_echoing_upstream) as url:
        gw = make_gateway(providers={"echo": provider(url + "/v1", ["gpt-4o"])}, routing={"retries": 0})
        assert chat(gw, "gpt-4o", "my private prompt PRIVATE-4711").status_code == 500
        health = httpx.get(gw.url + "/health")
        assert "PRIVATE-4711" not in health.text
        assert health.json()["providers"]["echo"] == {"status": "enabled"}
        (listed,) = admin(gw).get("/api/providers").json()["data"]
        assert "PRIVATE-4711" in listed["last_error"] and listed["last_error_at"] > 0
        assert httpx.get(gw.url + "/api/providers").status_code == 401  # and that needs a login or key


def test_admin_changes_keep_the_breakers_of_unchanged_deployments(make_gateway: Any, mock: MockUpstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = make_gateway(providers={"dead": provider(dead, ["gpt-4o"]), "alive": provider(mock.base_url_v1, ["gpt-4o"])})
    for _ in range(6):
        assert chat(gw, "gpt-4o").status_code == 200
    breakers = lambda: httpx.get(gw.url + "/health").json()["providers"]["dead"].get("breakers")  # noqa: E731
    assert breakers() == {"gpt-4o": "open"}
    before = gw.runtime
    r = admin(gw).patch("/api/models/gpt-4o", json={"price": {"input": 1, "output": 2}})
    assert r.status_code == 200, r.text
    assert gw.runtime is not before  # a new snapshot...
    assert breakers() == {"gpt-4o": "open"}  # ...that remembers what the old one learned
    listed = {p["name"]: p for p in admin(gw).get("/api/providers").json()["data"]}
    assert listed["dead"]["breakers"] == {"gpt-4o": "open"}


# -- provider keys -------------------------------------------------------------------------------

def test_a_key_added_through_the_api_is_used_upstream_at_once(make_gateway: Any, mock: MockUpstream) -> None:
    keyless = {"type": "openai", "base_url": mock.base_url_v1, "models": ["gpt-4o"], "timeouts": TIMEOUTS}
    gw = make_gateway(environ={"LLM_PROXY__ENCRYPTION_KEY": Fernet.generate_key().decode()},
                      providers={"openai": keyless, "deepseek": provider(mock.base_url_v1, ["deepseek-chat"])})
    api = admin(gw)
    r = chat(gw, "gpt-4o")
    assert r.status_code == 503 and "no api_key configured" in r.text

    r = api.post("/api/providers/openai/keys", json={"api_key": STORED_KEY, "label": "ops"})
    assert r.status_code == 201 and STORED_KEY not in r.text
    key_id = r.json()["id"]
    mock.reset()
    assert chat(gw, "gpt-4o").status_code == 200
    assert mock.requests[-1].headers["authorization"] == f"Bearer {STORED_KEY}"

    listing = api.get("/api/providers")
    assert STORED_KEY not in listing.text
    keys = {p["name"]: p for p in listing.json()["data"]}["openai"]["keys"]
    assert keys["in_use"] == 1 and keys["stored"] == 1 and keys["config"] == []
    assert keys["database"] == [{"id": key_id, "label": "ops", "masked": mask(STORED_KEY), "disabled": False}]

    # a provider with a key in config.yaml rotates over both
    assert api.post("/api/providers/deepseek/keys", json={"api_key": STORED_KEY}).status_code == 201
    mock.reset()
    for _ in range(2):
        assert chat(gw, "deepseek-chat").status_code == 200
    assert {r.headers["authorization"] for r in mock.requests} == {f"Bearer {UPSTREAM_KEY}", f"Bearer {STORED_KEY}"}

    assert api.delete(f"/api/providers/openai/keys/{key_id}").status_code == 200
    assert chat(gw, "gpt-4o").status_code == 503  # the key is gone from the running config too


def test_stored_keys_without_the_encryption_key_are_skipped_with_a_warning(
        mock: MockUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "keys.db"
    secrets = ProviderSecretStore(db)
    secrets.add("openai", STORED_KEY, SecretBox(Fernet.generate_key().decode()))
    secrets.close()
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        gw = Gateway(gateway_config(mock.base_url_v1, db)).start()  # no LLM_PROXY__ENCRYPTION_KEY
    try:
        mock.reset()
        assert chat(gw, "gpt-4o").status_code == 200
        assert mock.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        warnings = [r.getMessage() for r in caplog.records if "admin API are not used" in r.getMessage()]
        assert len(warnings) == 1 and "LLM_PROXY__ENCRYPTION_KEY" in warnings[0]
        assert STORED_KEY not in caplog.text
    finally:
        gw.stop()


# -- models, prices, discounts -------------------------------------------------------------------

def test_disabling_a_model_answers_404_until_the_override_is_removed(make_gateway: Any) -> None:
    gw = make_gateway(groups={"quick": {"targets": ["gpt-4o"]}})
    api = admin(gw)
    r = api.patch("/api/models/gpt-4o-mini", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = chat(gw, "gpt-4o-mini")
    assert r.status_code == 404 and error_code(r) == "model_not_found"
    assert "gpt-4o-mini" not in {m["id"] for m in httpx.get(
        f"{gw.url}/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"}).json()["data"]}
    models = {m["id"]: m for m in api.get("/api/models").json()["data"]}
    assert models["gpt-4o-mini"]["enabled"] is False and models["gpt-4o"]["enabled"] is True
    assert chat(gw, "gpt-4o").status_code == 200

    # a model a config group relies on cannot be switched off: the group would break
    r = api.patch("/api/models/gpt-4o", json={"enabled": False})
    assert r.status_code == 400 and error_code(r) == "invalid_config"
    assert "groups.quick.targets[0]" in r.json()["error"]["message"]
    assert chat(gw, "quick").status_code == 200

    r = api.delete("/api/models/gpt-4o-mini/overrides")
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["override"] is None
    assert chat(gw, "gpt-4o-mini").status_code == 200
    assert error_code(api.delete("/api/models/gpt-4o-mini/overrides")) == "override_not_found"
    assert error_code(api.patch("/api/models/nope", json={"enabled": False})) == "model_not_found"


def test_a_price_override_sets_the_logged_cost(make_gateway: Any) -> None:
    gw = make_gateway()
    api = admin(gw)
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 1)
    assert row["cost_usd"] == (row["prompt_tokens"] * 2.5 + row["completion_tokens"] * 10) / 10**6  # catalog

    r = api.patch("/api/models/gpt-4o", json={"price": {"input": 1.25, "output": 3}})
    assert r.status_code == 200, r.text
    (deployment,) = r.json()["deployments"]
    assert deployment["provider"] == "openai" and deployment["price"]["input"] == 1.25
    assert deployment["price"]["output"] == 3 and deployment["price"]["cache_read"] == 1.25  # the rest: catalog
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 2)
    assert row["cost_usd"] == (row["prompt_tokens"] * 1.25 + row["completion_tokens"] * 3) / 10**6

    r = api.patch("/api/models/gpt-4o", json={"price": {"input": -1, "outptu": 2}})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "models.gpt-4o.price.input: must not be negative" in message and "outptu: unknown key" in message

    assert api.delete("/api/models/gpt-4o/overrides").status_code == 200
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 3)
    assert row["cost_usd"] == (row["prompt_tokens"] * 2.5 + row["completion_tokens"] * 10) / 10**6


def test_a_discount_applies_until_it_expires(make_gateway: Any) -> None:
    gw = make_gateway()
    api = admin(gw)
    price = {"input": 2, "output": 4}

    def full(row: dict[str, Any]) -> float:
        return (row["prompt_tokens"] * 2 + row["completion_tokens"] * 4) / 10**6

    r = api.patch("/api/models/gpt-4o", json={"price": price, "discount_pct": 50,
                                              "discount_expires_at": "2999-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    assert r.json()["discount"] == {"pct": 50.0, "expires_at": "2999-01-01T00:00:00Z", "active": True}
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 1)
    assert row["cost_usd"] == full(row) / 2

    r = api.patch("/api/models/gpt-4o", json={"discount_expires_at": time.time() - 60})  # epoch, in the past
    assert r.status_code == 200 and r.json()["discount"]["active"] is False
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 2)
    assert row["cost_usd"] == full(row)

    # expiry is checked per request: no reload is needed for a discount to end
    assert api.patch("/api/models/gpt-4o", json={"discount_expires_at": time.time() + 1.0}).status_code == 200
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 3)
    assert row["cost_usd"] == full(row) / 2
    time.sleep(1.1)
    assert chat(gw, "gpt-4o").status_code == 200
    row = last_row(gw, 4)
    assert row["cost_usd"] == full(row)

    for body in ({"discount_pct": 0}, {"discount_pct": 101}, {"discount_expires_at": "next tuesday"}):
        r = api.patch("/api/models/gpt-4o-mini", json=body)
        assert r.status_code == 400 and error_code(r) == "invalid_value", body
    r = api.patch("/api/models/gpt-4o-mini", json={"discount_pct": 10})
    assert r.status_code == 400 and "required with discount_pct" in r.text
    r = api.patch("/api/models/gpt-4o", json={"discount_pct": None})  # clearing it takes the expiry along
    assert r.status_code == 200 and r.json()["discount"] is None and r.json()["override"]["price"] == price


def test_a_group_price_bills_a_model_that_has_none(make_gateway: Any) -> None:
    gw = make_gateway(groups={"house": {"targets": ["mock-gpt"]}})
    api = admin(gw)
    assert chat(gw, "house").status_code == 200
    assert last_row(gw, 1)["cost_usd"] is None  # mock-gpt has no price anywhere

    r = api.patch("/api/models/house", json={"price": {"input": 3, "output": 6}})
    assert r.status_code == 200 and r.json()["source"] == "config" and r.json()["price"] == {"input": 3, "output": 6}
    assert chat(gw, "house").status_code == 200
    row = last_row(gw, 2)
    assert row["resolved_model"] == "mock-gpt" and row["group_name"] == "house"
    assert row["cost_usd"] == (row["prompt_tokens"] * 3 + row["completion_tokens"] * 6) / 10**6
    assert chat(gw, "mock-gpt").status_code == 200
    assert last_row(gw, 3)["cost_usd"] is None  # asked for directly, not through the group: still unpriced
    r = api.patch("/api/models/house", json={"enabled": False})
    assert r.status_code == 400 and "a group has no switch" in r.text


# -- groups --------------------------------------------------------------------------------------

def test_a_group_put_through_the_api_is_validated_like_config_and_served_at_once(make_gateway: Any) -> None:
    gw = make_gateway()
    api = admin(gw)
    r = api.put("/api/groups/broken", json={"targets": ["nope"], "strategy": "bogus", "colour": "red"})
    assert r.status_code == 400 and error_code(r) == "invalid_config"
    message = r.json()["error"]["message"]
    assert "groups.broken.targets[0]: unknown model or group 'nope'" in message
    assert "groups.broken.strategy: expected one of heuristic, classifier" in message
    assert "groups.broken.colour: unknown key" in message
    assert "broken" not in {g["name"] for g in api.get("/api/groups").json()["data"]}  # nothing stored

    r = api.put("/api/groups/smart", json={"targets": ["gpt-4o-mini", "gpt-4o"], "logic_level": 4,
                                           "rules": [{"pattern": "\\bproof\\b", "target": "gpt-4o"}]})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "database" and r.json()["overrides_config"] is False
    client = OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    reply = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "a proof please"}])
    assert reply.choices[0].message.content
    row = last_row(gw, 1)
    assert row["group_name"] == "smart" and row["resolved_model"] == "gpt-4o"
    listed = {m.id: m for m in client.models.list().data}
    assert listed["smart"].owned_by == "llm-proxy"

    # a cycle through two groups is refused, with the cycle spelled out
    assert api.put("/api/groups/outer", json={"targets": ["smart"]}).status_code == 201
    r = api.put("/api/groups/smart", json={"targets": ["outer"]})
    assert r.status_code == 400 and "group cycle" in r.text and "set through the admin API" in r.text
    # a group others rely on cannot be deleted
    r = api.delete("/api/groups/smart")
    assert r.status_code == 400 and "groups.outer.targets[0]" in r.text
    assert api.put("/api/groups/smart", json={"targets": ["deepseek-chat"]}).status_code == 200
    assert chat(gw, "outer").status_code == 200 and last_row(gw, 3)["resolved_model"] == "deepseek-chat"  # 2: /v1/models
    assert api.delete("/api/groups/outer").status_code == 200
    assert chat(gw, "outer").status_code == 404


def test_a_database_group_wins_over_a_config_group_until_deleted(make_gateway: Any) -> None:
    gw = make_gateway(groups={"fast": {"targets": ["gpt-4o-mini"], "primary_use": "from the file"}})
    api = admin(gw)
    assert chat(gw, "fast").status_code == 200 and last_row(gw, 1)["resolved_model"] == "gpt-4o-mini"
    (fast,) = api.get("/api/groups").json()["data"]
    assert fast["source"] == "config" and fast["spec"]["targets"] == ["gpt-4o-mini"]

    r = api.put("/api/groups/fast", json={"targets": ["deepseek-chat"]})
    assert r.status_code == 201 and r.json()["overrides_config"] is True
    assert chat(gw, "fast").status_code == 200 and last_row(gw, 2)["resolved_model"] == "deepseek-chat"
    (fast,) = api.get("/api/groups").json()["data"]
    assert fast["source"] == "database" and fast["spec"]["targets"] == ["deepseek-chat"]

    r = api.delete("/api/groups/fast")
    assert r.status_code == 200 and r.json() == {"name": "fast", "deleted": True, "restored_from_config": True}
    assert chat(gw, "fast").status_code == 200 and last_row(gw, 3)["resolved_model"] == "gpt-4o-mini"
    r = api.delete("/api/groups/fast")  # only in config.yaml now
    assert r.status_code == 409 and error_code(r) == "config_group"
    assert error_code(api.delete("/api/groups/nope")) == "group_not_found"


def test_admin_changes_reuse_the_loaded_file_and_a_reload_keeps_them(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway()
    api = admin(gw)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump({**gw.config_source, "aliases": {"gpt4": "gpt-4o", "newer": "gpt-4o"}}))
    gw.app.state.runtime_holder.source = path  # someone is editing the file: not reloaded yet

    assert api.put("/api/groups/mine", json={"targets": ["gpt-4o"]}).status_code == 201
    assert api.patch("/api/providers/deepseek", json={"enabled": False}).status_code == 200
    assert chat(gw, "mine").status_code == 200
    assert chat(gw, "newer").status_code == 404  # an admin change does not pick up the half-edited file

    r = api.post("/api/config/reload")  # the reload does, and the database's entries stay on top
    assert r.status_code == 200 and r.json()["groups"] == 1
    assert chat(gw, "newer").status_code == 200 and chat(gw, "mine").status_code == 200
    assert chat(gw, "deepseek-chat").status_code == 503

    # a file edit that breaks a database entry is refused, naming the entry; the running config stays
    path.write_text(yaml.safe_dump({**gw.config_source, "providers": {
        "openai": {**gw.config_source["providers"]["openai"], "models": ["gpt-4o-mini"]},
        "deepseek": gw.config_source["providers"]["deepseek"]}}))
    r = api.post("/api/config/reload")
    assert r.status_code == 400 and "groups.mine.targets[0]" in r.text and "set through the admin API" in r.text
    assert chat(gw, "mine").status_code == 200


# -- who may -------------------------------------------------------------------------------------

def test_viewers_read_without_keys_and_nobody_else_writes(make_gateway: Any) -> None:
    gw = make_gateway()
    r = admin(gw).post("/api/users", json={"username": "vera", "password": "viewer-pass-1", "role": "viewer",
                                           "must_change_password": False})
    assert r.status_code == 201, r.text
    viewer = httpx.Client(base_url=gw.url, timeout=10)
    gw.clients.append(viewer)
    r = viewer.post("/api/auth/login", json={"username": "vera", "password": "viewer-pass-1"})
    assert r.status_code == 200
    csrf = {"x-csrf-token": r.json()["csrf_token"]}

    for path in ("/api/providers", "/api/models", "/api/groups"):
        assert viewer.get(path).status_code == 200, path
        assert httpx.get(gw.url + path).status_code == 401, path
    keys = viewer.get("/api/providers").json()["data"][0]["keys"]
    assert set(keys) == {"in_use", "stored"}  # counts only: even masked keys are for admins

    writes = (("PATCH", "/api/providers/openai", {"enabled": False}),
              ("DELETE", "/api/providers/openai/overrides", None),
              ("PATCH", "/api/models/gpt-4o", {"enabled": False}),
              ("DELETE", "/api/models/gpt-4o/overrides", None),
              ("PUT", "/api/groups/g", {"targets": ["gpt-4o"]}),
              ("DELETE", "/api/groups/g", None))
    for method, path, body in writes:
        r = viewer.request(method, path, json=body, headers=csrf)
        assert r.status_code == 403 and error_code(r) == "forbidden", (method, path)
        r = httpx.request(method, gw.url + path, json=body)
        assert r.status_code == 401, (method, path)
        r = httpx.request(method, gw.url + path, json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"})
        assert r.status_code == 401, (method, path)  # a client key is not an admin credential
    assert chat(gw, "gpt-4o").status_code == 200


# -- the overlay itself (pure) -------------------------------------------------------------------

def test_apply_overlay_is_pure_and_follows_deployments() -> None:
    config = parse_config({
        "providers": {
            "azure": {"base_url": "https://example.test/v1", "api_key": "k" * 10},
            "local": {"type": "ollama", "base_url": "http://127.0.0.1:11434", "api_key_required": False,
                      "models": ["llama3"]},
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "azure", "model": "gpt-4o-2024-08-06"}]}},
    }, {})
    overlay = Overlay(models={"gpt-4o": ModelOverride(price={"input": 1.0}),
                              "llama3": ModelOverride(enabled=False)})
    applied = apply_overlay(config, overlay, {"azure": ["stored-key-123"]})
    azure, local = applied.providers["azure"], applied.providers["local"]
    assert azure.prices["gpt-4o-2024-08-06"].input == 1.0  # under the name the upstream knows it by
    assert azure.api_keys == ("stored-key-123",)
    assert local.models == () and local.enabled is False  # not "discover everything"
    assert config.providers["local"].models == ("llama3",) and config.providers["azure"].prices == {}
    assert apply_overlay(config, Overlay()) == config
