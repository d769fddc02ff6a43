"""Provider API keys at rest: encrypted with Fernet, shown only masked.

Fernet (from ``cryptography``) is authenticated encryption (AES-128-CBC + HMAC-SHA256)
with a versioned token format; we do not assemble crypto primitives ourselves. The key
comes from ``LLM_PROXY__ENCRYPTION_KEY`` (``Config.encryption_key``); generate one with::

    python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"

Several comma-separated keys may be given to rotate: the first encrypts, any decrypts.
Without a key the gateway refuses to store secrets rather than storing them in clear.
"""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.storage.sqlite import SqliteStore

__all__ = ["GENERATE_HINT", "ProviderSecretStore", "SecretBox", "SecretsUnavailable", "mask"]

GENERATE_HINT = ('generate one with: python -c "from cryptography.fernet import Fernet; '
                 'print(Fernet.generate_key().decode())"')


class SecretsUnavailable(Exception):
    """Secrets cannot be stored or read: no key, a malformed key, or the wrong key."""


class SecretBox:
    """Encrypts and decrypts with the configured key(s); raises ``SecretsUnavailable`` without one."""

    def __init__(self, key: str) -> None:
        keys = [k.strip() for k in (key or "").split(",") if k.strip()]
        if not keys:
            raise SecretsUnavailable(
                "Storing provider keys needs an encryption key: set LLM_PROXY__ENCRYPTION_KEY to a Fernet key "
                f"and restart ({GENERATE_HINT})."
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError):  # the message never includes the key itself
            raise SecretsUnavailable(
                f"LLM_PROXY__ENCRYPTION_KEY is not a valid Fernet key (32 url-safe base64 bytes); {GENERATE_HINT}."
            ) from None

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode("utf-8")
        except InvalidToken:
            raise SecretsUnavailable(
                "A stored provider key cannot be decrypted with LLM_PROXY__ENCRYPTION_KEY: was the key changed? "
                "List the old key after the new one (comma-separated) to keep reading it."
            ) from None


def mask(secret: str) -> str:
    """Enough to recognise a key (``sk-…abcd``), never enough to use it."""
    if len(secret) < 12:
        return "…" + secret[-2:] if len(secret) >= 6 else "…"
    return f"{secret[:3]}…{secret[-4:]}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS provider_keys (
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    ciphertext BLOB NOT NULL,
    masked TEXT NOT NULL,
    created_at REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
)
"""
_PUBLIC = "id, provider, label, masked, created_at, disabled"


def _public(row: tuple[Any, ...]) -> JSONObject:
    uid, provider, label, masked, created, disabled = row
    return {"id": uid, "provider": provider, "label": label, "masked": masked,
            "created_at": created, "disabled": bool(disabled)}


class ProviderSecretStore(SqliteStore):
    """The ``provider_keys`` table. Listing never touches the ciphertext; only the runtime decrypts."""

    def _setup(self, db: sqlite_utils.Database) -> None:
        db.execute(_SCHEMA)
        db.execute("CREATE INDEX IF NOT EXISTS provider_keys_provider ON provider_keys (provider)")

    def add(self, provider: str, secret: str, box: SecretBox, label: str = "") -> JSONObject:
        ciphertext = box.encrypt(secret)  # before any write: no key, nothing stored
        with self._db() as db, db.conn:
            key_id = db.execute(
                "INSERT INTO provider_keys (provider, label, ciphertext, masked, created_at) VALUES (?, ?, ?, ?, ?)",
                [provider, label, ciphertext, mask(secret), time.time()],
            ).lastrowid
            row = db.execute(f"SELECT {_PUBLIC} FROM provider_keys WHERE id = ?", [key_id]).fetchone()
        return _public(row)

    def list_keys(self, provider: str | None = None) -> list[JSONObject]:
        where, args = ("WHERE provider = ?", [provider]) if provider is not None else ("", [])
        with self._db() as db:
            rows = db.execute(f"SELECT {_PUBLIC} FROM provider_keys {where} ORDER BY id", args).fetchall()
        return [_public(r) for r in rows]

    def delete(self, provider: str, key_id: int) -> bool:
        with self._db() as db, db.conn:
            return db.execute("DELETE FROM provider_keys WHERE provider = ? AND id = ?",
                              [provider, key_id]).rowcount > 0

    def decrypt_all(self, provider: str, box: SecretBox) -> list[str]:
        """The enabled keys of ``provider`` in clear, oldest first: for building the runtime only."""
        with self._db() as db:
            rows = db.execute("SELECT ciphertext FROM provider_keys WHERE provider = ? AND disabled = 0 ORDER BY id",
                              [provider]).fetchall()
        return [box.decrypt(r[0]) for r in rows]
