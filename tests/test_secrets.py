"""Provider keys entered through the admin API: encrypted at rest, answered only masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MASTER_KEY
from cryptography.fernet import Fernet

from llm_proxy.accounts.provider_secrets import ProviderSecretStore, SecretBox, SecretsUnavailable, mask

SECRET = "sk-proj-PLAINTEXT-provider-key-7f3a9c1e5b"


def bearer(gw: Any) -> httpx.Client:
    client = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    gw.clients.append(client)
    return client


def raw_bytes(db_path: Path) -> bytes:
    """Every byte SQLite keeps for this database: the file, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def test_secret_is_encrypted_at_rest_and_only_shown_masked(make_gateway: Any) -> None:
    key = Fernet.generate_key().decode()
    gw = make_gateway(environ={"LLM_PROXY__ENCRYPTION_KEY": key})
    api = bearer(gw)
    r = api.post("/api/providers/openai/keys", json={"api_key": SECRET, "label": "team a"})
    assert r.status_code == 201, r.text
    added = r.json()
    assert added["masked"] == "sk-…" + SECRET[-4:] and added["label"] == "team a"
    assert SECRET not in r.text

    listing = api.get("/api/providers/openai/keys")
    assert listing.status_code == 200 and SECRET not in listing.text and "ciphertext" not in listing.text
    assert [k["masked"] for k in listing.json()["data"]] == [mask(SECRET)]
    assert api.get("/api/providers/deepseek/keys").json()["data"] == []

    stored = raw_bytes(gw.db_path)
    assert stored and SECRET.encode() not in stored and b"PLAINTEXT-provider" not in stored

    # the runtime can read it back with the key, and only with the key
    secrets = ProviderSecretStore(gw.db_path)
    assert secrets.decrypt_all("openai", SecretBox(key)) == [SECRET]
    with pytest.raises(SecretsUnavailable, match="cannot be decrypted") as caught:
        secrets.decrypt_all("openai", SecretBox(Fernet.generate_key().decode()))
    assert SECRET not in str(caught.value)
    assert secrets.decrypt_all("openai", SecretBox(f"{Fernet.generate_key().decode()},{key}")) == [SECRET]
    secrets.close()

    assert api.delete(f"/api/providers/openai/keys/{added['id']}").status_code == 200
    assert api.get("/api/providers/openai/keys").json()["data"] == []
    assert api.delete(f"/api/providers/openai/keys/{added['id']}").status_code == 404


def test_without_an_encryption_key_secrets_are_refused(make_gateway: Any) -> None:
    gw = make_gateway()
    api = bearer(gw)
    r = api.post("/api/providers/openai/keys", json={"api_key": SECRET})
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["code"] == "encryption_unavailable"
    assert "LLM_PROXY__ENCRYPTION_KEY" in error["message"] and "Fernet.generate_key" in error["message"]
    assert api.get("/api/providers/openai/keys").json()["data"] == []
    assert SECRET.encode() not in raw_bytes(gw.db_path)


def test_a_malformed_encryption_key_is_refused_without_echoing_it(make_gateway: Any) -> None:
    gw = make_gateway(environ={"LLM_PROXY__ENCRYPTION_KEY": "not-a-fernet-key-but-secret"})
    r = bearer(gw).post("/api/providers/openai/keys", json={"api_key": SECRET})
    assert r.status_code == 409 and "not a valid Fernet key" in r.text
    assert "not-a-fernet-key-but-secret" not in r.text


def test_bad_requests(make_gateway: Any) -> None:
    gw = make_gateway(environ={"LLM_PROXY__ENCRYPTION_KEY": Fernet.generate_key().decode()})
    api = bearer(gw)
    assert api.post("/api/providers/nope/keys", json={"api_key": SECRET}).status_code == 404
    assert api.get("/api/providers/nope/keys").status_code == 404
    for body in ({}, {"api_key": ""}, {"api_key": "   "}, {"api_key": 42}, {"api_key": SECRET, "label": 3}):
        r = api.post("/api/providers/openai/keys", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value", body
    r = api.post("/api/providers/openai/keys", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{gw.url}/api/providers/openai/keys").status_code == 401


def test_mask() -> None:
    assert mask("sk-ant-api03-abcdefghijklmnop") == "sk-…mnop"
    assert mask("short-key") == "…ey"
    assert mask("abc") == "…"
