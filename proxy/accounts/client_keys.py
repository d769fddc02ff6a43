"""Clients and their API keys in SQLite: a key is shown once, then only its hash is kept.

A key is ``sk-llmp-`` plus 43 url-safe characters from ``secrets`` (256 bits). It is stored
as its SHA-256 hex digest and a 12-character display prefix. A fast unsalted hash is the
right tool here, unlike for passwords: a key has 256 bits of entropy, so there is nothing
to guess or precompute, and the gateway must check it on every request in microseconds.

Rotation makes a new key row (``rotated_from`` → the old one) that copies the old key's
policy and shares its ``lineage``: the request log's ``client_key_id`` for a database key
is ``dbkey_<lineage>``, so spend, budgets and rate-limit windows carry over a rotation and
survive restarts. Every change bumps ``api_keys_version`` in the same transaction, which is
how a running gateway notices changes made by another process (the CLI).

Methods are synchronous (SQLite): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import sqlite_utils

from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.storage.sqlite import SqliteStore

__all__ = [
    "DISPLAY_CHARS",
    "KEY_PREFIX",
    "LOG_ID_PREFIX",
    "POLICY_FIELDS",
    "ApiKey",
    "ClientStore",
    "ClientStoreError",
    "check_policy",
    "generate_key",
    "hash_key",
    "iso",
    "parse_time",
]

KEY_PREFIX = "sk-llmp-"
LOG_ID_PREFIX = "dbkey_"  # + lineage: the request log's client_key_id for a database key
DISPLAY_CHARS = 12
POLICY_FIELDS = (
    "allowed_models", "rpm", "tpm", "max_concurrent",
    "budget_day_usd", "budget_month_usd", "budget_total_usd", "expires_at", "tags",
)  # fmt: skip
_MAX_TAGS = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tags TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    client_id INTEGER REFERENCES clients(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    allowed_models TEXT,
    rpm INTEGER,
    tpm INTEGER,
    max_concurrent INTEGER,
    budget_day_usd REAL,
    budget_month_usd REAL,
    budget_total_usd REAL,
    expires_at REAL,
    revoked_at REAL,
    tags TEXT,
    created_at REAL NOT NULL,
    rotated_from INTEGER REFERENCES api_keys(id),
    lineage INTEGER
);
CREATE TABLE IF NOT EXISTS api_keys_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO api_keys_version (id, version) VALUES (1, 0);
"""
_BUMP = "UPDATE api_keys_version SET version = version + 1 WHERE id = 1"


class ClientStoreError(Exception):
    """Bad input (400), a missing row (404) or a conflict (409), with a message for the caller."""

    def __init__(self, status: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 hex digest: see the module docstring for why a fast hash is right for keys."""
    return hashlib.sha256(key.encode()).hexdigest()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: object) -> float | None:
    """An ISO 8601 time (UTC when it names no zone) or epoch seconds, as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 time or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time or epoch seconds")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _positive_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a positive integer or null")
    return value


def _usd(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError("must be a non-negative number of USD or null")
    return float(value)


def _models(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("must be a non-empty list of model or group names, or null for every model")
    if not all(isinstance(m, str) and m.strip() for m in value):
        raise ValueError("must contain non-empty strings")
    return tuple(dict.fromkeys(m.strip() for m in value))


def _tags(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("must be an object of string values")
    if len(value) > _MAX_TAGS:
        raise ValueError(f"at most {_MAX_TAGS} tags")
    for k, v in value.items():
        if not isinstance(k, str) or not k or len(k) > 64 or not isinstance(v, str) or len(v) > 256:
            raise ValueError("keys must be 1-64 characters and values strings of at most 256")
    return dict(value)


_CHECKS: dict[str, Callable[[object], object]] = {
    "allowed_models": _models, "rpm": _positive_int, "tpm": _positive_int, "max_concurrent": _positive_int,
    "budget_day_usd": _usd, "budget_month_usd": _usd, "budget_total_usd": _usd,
    "expires_at": parse_time, "tags": _tags,
}  # fmt: skip


def check_policy(fields: Mapping[str, object]) -> dict[str, object]:
    """Validated policy fields; raises ClientStoreError (400) naming every bad or unknown field."""
    problems: list[str] = []
    checked: dict[str, object] = {}
    for name, value in fields.items():
        check = _CHECKS.get(name)
        if check is None:
            problems.append(f"{name}: unknown field")
            continue
        try:
            checked[name] = check(value)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise ClientStoreError(400, "; ".join(problems), "invalid_field")
    return checked


@dataclass(slots=True, frozen=True)
class ApiKey:
    """One key row, without the key (which is never stored)."""

    id: int
    client_id: int | None
    name: str
    prefix: str
    key_hash: str
    allowed_models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    budget_day_usd: float | None
    budget_month_usd: float | None
    budget_total_usd: float | None
    expires_at: float | None
    revoked_at: float | None
    tags: dict[str, str]
    created_at: float
    rotated_from: int | None
    lineage: int

    @property
    def log_id(self) -> str:
        """The request log's ``client_key_id``: shared by a key and the keys rotated from it."""
        return f"{LOG_ID_PREFIX}{self.lineage}"

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active" if self.revoked_at is None else "rotating"

    def public(self) -> JSONObject:
        """What the admin API and the CLI show: never the key, never its hash."""
        return {
            "id": self.id,
            "client_id": self.client_id,
            "name": self.name,
            "prefix": self.prefix,
            "status": self.status(),
            "log_key_id": self.log_id,
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_concurrent": self.max_concurrent,
            "budget_day_usd": self.budget_day_usd,
            "budget_month_usd": self.budget_month_usd,
            "budget_total_usd": self.budget_total_usd,
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "tags": self.tags,
            "created_at": iso(self.created_at),
            "rotated_from": self.rotated_from,
        }


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _row_to_key(row: sqlite3.Row) -> ApiKey:
    models = orjson.loads(row["allowed_models"]) if row["allowed_models"] else None
    return ApiKey(
        id=row["id"], client_id=row["client_id"], name=row["name"], prefix=row["prefix"],
        key_hash=row["key_hash"], allowed_models=tuple(models) if models is not None else None,
        rpm=row["rpm"], tpm=row["tpm"], max_concurrent=row["max_concurrent"],
        budget_day_usd=row["budget_day_usd"], budget_month_usd=row["budget_month_usd"],
        budget_total_usd=row["budget_total_usd"], expires_at=row["expires_at"], revoked_at=row["revoked_at"],
        tags=orjson.loads(row["tags"]) if row["tags"] else {}, created_at=row["created_at"],
        rotated_from=row["rotated_from"], lineage=row["lineage"] if row["lineage"] is not None else row["id"],
    )  # fmt: skip


def _stored(policy: Mapping[str, object]) -> dict[str, object]:
    """Checked policy values as columns (JSON for the list and the tags)."""
    out = dict(policy)
    if "allowed_models" in out:
        models = out["allowed_models"]
        out["allowed_models"] = _json(list(models) if isinstance(models, tuple | list) else None)
    if "tags" in out:
        out["tags"] = _json(out["tags"]) if out["tags"] else None
    return out


class ClientStore(SqliteStore):
    """The ``clients`` and ``api_keys`` tables."""

    def _setup(self, db: sqlite_utils.Database) -> None:
        db.conn.executescript(_SCHEMA)
        db.conn.row_factory = sqlite3.Row

    # -- clients ---------------------------------------------------------------------

    def create_client(self, name: str, tags: Mapping[str, str] | None = None) -> JSONObject:
        if not isinstance(name, str) or not name.strip():
            raise ClientStoreError(400, "name: must be a non-empty string", "invalid_field")
        checked = check_policy({"tags": tags}) if tags is not None else {"tags": {}}
        now = time.time()
        with self._db() as db, db.conn as conn:
            try:
                cur = conn.execute("INSERT INTO clients (name, tags, created_at) VALUES (?, ?, ?)",
                                   (name.strip(), _json(checked["tags"] or None), now))
            except sqlite3.IntegrityError:
                raise ClientStoreError(409, f"a client named {name.strip()!r} already exists", "conflict") from None
        return {"id": cur.lastrowid, "name": name.strip(), "tags": checked["tags"], "created_at": iso(now)}

    def list_clients(self) -> list[JSONObject]:
        with self._db() as db:
            rows = db.conn.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM api_keys k WHERE k.client_id = c.id) AS keys "
                "FROM clients c ORDER BY c.id"
            ).fetchall()
        return [{"id": r["id"], "name": r["name"], "tags": orjson.loads(r["tags"]) if r["tags"] else {},
                 "keys": r["keys"], "created_at": iso(r["created_at"])} for r in rows]

    def client_id(self, name: str) -> int | None:
        with self._db() as db:
            row = db.conn.execute("SELECT id FROM clients WHERE name = ?", (name,)).fetchone()
        return row["id"] if row else None

    # -- keys ------------------------------------------------------------------------

    def create_key(
        self, name: str, client_id: int | None = None, policy: Mapping[str, object] | None = None
    ) -> tuple[str, ApiKey]:
        """A new key: returns the key itself (show it once, it is not kept) and its row."""
        if not isinstance(name, str) or not name.strip():
            raise ClientStoreError(400, "name: must be a non-empty string", "invalid_field")
        checked = check_policy(policy or {})
        key = generate_key()
        columns = {
            "client_id": client_id, "name": name.strip(), "prefix": key[:DISPLAY_CHARS],
            "key_hash": hash_key(key), "created_at": time.time(), **_stored(checked),
        }  # fmt: skip
        with self._db() as db, db.conn as conn:
            if client_id is not None and conn.execute("SELECT 1 FROM clients WHERE id = ?", (client_id,)).fetchone() is None:
                raise ClientStoreError(404, f"no client with id {client_id}", "not_found")
            kid = self._insert(conn, columns)
            conn.execute("UPDATE api_keys SET lineage = id WHERE id = ?", (kid,))
            conn.execute(_BUMP)
        return key, self.get_key(kid)

    def list_keys(self, client_id: int | None = None) -> list[ApiKey]:
        args: tuple[int, ...]
        sql, args = "SELECT * FROM api_keys", ()
        if client_id is not None:
            sql, args = sql + " WHERE client_id = ?", (client_id,)
        with self._db() as db:
            return [_row_to_key(r) for r in db.conn.execute(sql + " ORDER BY id", args)]

    def get_key(self, key_id: int) -> ApiKey:
        with self._db() as db:
            row = db.conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise ClientStoreError(404, f"no API key with id {key_id}", "not_found")
        return _row_to_key(row)

    def update_key(self, key_id: int, policy: Mapping[str, object]) -> ApiKey:
        checked = _stored(check_policy(policy))
        if not checked:
            return self.get_key(key_id)
        self._refuse_if_revoked(key_id)
        assignments = ", ".join(f"{name} = ?" for name in checked)
        with self._db() as db, db.conn as conn:
            conn.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*checked.values(), key_id))
            conn.execute(_BUMP)
        return self.get_key(key_id)

    def rotate_key(self, key_id: int, grace_seconds: float = 0.0) -> tuple[str, ApiKey]:
        """A new key with the old one's policy and lineage; the old one stops after ``grace_seconds``."""
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int | float) or not 0 <= grace_seconds <= 30 * 86400:
            raise ClientStoreError(400, "grace_seconds: must be between 0 and 2592000", "invalid_field")
        old = self._refuse_if_revoked(key_id)
        key = generate_key()
        now = time.time()
        columns = {
            "client_id": old.client_id, "name": old.name, "prefix": key[:DISPLAY_CHARS], "key_hash": hash_key(key),
            "created_at": now, "rotated_from": old.id, "lineage": old.lineage,
            **_stored({f: getattr(old, f) for f in POLICY_FIELDS}),
        }  # fmt: skip
        with self._db() as db, db.conn as conn:
            kid = self._insert(conn, columns)
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now + grace_seconds, old.id))
            conn.execute(_BUMP)
        return key, self.get_key(kid)

    def revoke_key(self, key_id: int) -> ApiKey:
        """Revoke now (a key already revoked stays revoked as of its first revocation)."""
        now = time.time()
        with self._db() as db, db.conn as conn:
            cur = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND (revoked_at IS NULL OR revoked_at > ?)",
                (now, key_id, now),
            )
            if cur.rowcount:
                conn.execute(_BUMP)
        return self.get_key(key_id)

    def usable_keys(self, now: float | None = None) -> list[ApiKey]:
        """Keys not revoked yet (expired ones included, so a client can be told it expired)."""
        now = time.time() if now is None else now
        with self._db() as db:
            rows = db.conn.execute("SELECT * FROM api_keys WHERE revoked_at IS NULL OR revoked_at > ?", (now,))
            return [_row_to_key(r) for r in rows]

    def key_count(self) -> int:
        with self._db() as db:
            return int(db.conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    def version(self) -> int:
        """Bumped by every change to a key, whichever process made it."""
        with self._db() as db:
            return int(db.conn.execute("SELECT version FROM api_keys_version WHERE id = 1").fetchone()[0])

    def _insert(self, conn: sqlite3.Connection, columns: Mapping[str, object]) -> int:
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        cur = conn.execute(f"INSERT INTO api_keys ({names}) VALUES ({marks})", tuple(columns.values()))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _refuse_if_revoked(self, key_id: int) -> ApiKey:
        key = self.get_key(key_id)
        if key.revoked_at is not None:
            raise ClientStoreError(409, f"API key {key_id} is revoked or being rotated out", "key_revoked")
        return key
