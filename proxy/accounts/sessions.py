"""Admin sessions: a signed cookie naming a server-side session row.

The cookie is ``itsdangerous``-signed and time-stamped, so a tampered or older-than-max-age
cookie is refused before the database is asked. It carries only a random session id; the
row (stored under the id's SHA-256, so a copy of the database does not hold live ids)
gives the user, an absolute expiry, and the user's ``session_version`` at login — bumping
that version (password change, reset, disable) ends every session of the user at once,
while logout or a new login ends one. The CSRF token is an HMAC of the session id, so it
needs no storage and changes whenever the session does.

The signing secret is made once and kept in the ``settings`` table: sessions survive a
restart, and every process on the database agrees on it. Deleting that row signs everyone
out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils
from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from llm_proxy.accounts.passwords import DEFAULT_COST, ScryptCost
from llm_proxy.accounts.users import User, ensure_users_table
from llm_proxy.storage.sqlite import SqliteStore

__all__ = ["COOKIE_NAME", "SESSION_MAX_AGE", "Session", "SessionStore", "session_secret"]

COOKIE_NAME = "llm_proxy_session"
SESSION_MAX_AGE = 12 * 3600  # absolute, from login: a stolen cookie is worth half a day at most
_SALT = "llm-proxy.admin-session"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL,
        session_version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id)",
)


@dataclass(frozen=True, slots=True)
class Session:
    """A live session. ``cookie`` is set only when just issued (for ``Set-Cookie``)."""

    id: str = field(repr=False)
    user: User
    csrf_token: str = field(repr=False)
    expires_at: float
    cookie: str | None = field(default=None, repr=False)


def session_secret(db: sqlite_utils.Database) -> str:
    """The signing secret kept in ``settings``; made on first use (first writer wins)."""
    with db.conn:
        db.execute("INSERT OR IGNORE INTO settings (name, value) VALUES ('session_secret', ?)",
                   [secrets.token_hex(32)])
    secret: str = db.execute("SELECT value FROM settings WHERE name = 'session_secret'").fetchone()[0]
    return secret


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore(SqliteStore):
    """Issues, resolves and revokes sessions. ``clock`` (seconds) is injectable for tests."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_age: int = SESSION_MAX_AGE,
        clock: Callable[[], float] = time.time,
        cost: ScryptCost = DEFAULT_COST,
    ) -> None:
        super().__init__(path)
        self.max_age, self.clock, self.cost = max_age, clock, cost
        self._serializer: URLSafeTimedSerializer | None = None
        self._secret = b""

    def _setup(self, db: sqlite_utils.Database) -> None:
        ensure_users_table(db, self.cost)
        for statement in _SCHEMA:
            db.execute(statement)
        self._secret = session_secret(db).encode()
        clock = self.clock

        class Signer(TimestampSigner):  # itsdangerous's own clock is time.time; tests move ours
            def get_timestamp(self) -> int:
                return int(clock())

        self._serializer = URLSafeTimedSerializer(self._secret, salt=_SALT, signer=Signer)

    def _csrf(self, session_id: str) -> str:
        return hmac.new(self._secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()

    def issue(self, user: User) -> Session:
        """A new session (new id: logging in rotates it) for ``user`` as it is now."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + self.max_age
        with self._db() as db, db.conn:
            db.execute("DELETE FROM sessions WHERE expires_at <= ?", [now])
            db.execute(
                "INSERT INTO sessions (id, user_id, session_version, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                [_digest(session_id), user.id, user.session_version, now, expires],
            )
            assert self._serializer is not None
            cookie = self._serializer.dumps({"sid": session_id})
        return Session(session_id, user, self._csrf(session_id), expires, cookie)

    def _session_id(self, cookie: str) -> str | None:
        assert self._serializer is not None
        try:
            payload: object = self._serializer.loads(cookie, max_age=self.max_age)
        except BadData:  # bad signature, expired, or not our payload
            return None
        sid = payload.get("sid") if isinstance(payload, dict) else None
        return sid if isinstance(sid, str) else None

    def resolve(self, cookie: str) -> Session | None:
        """The live session a cookie names, or None (tampered, expired, revoked, user gone/disabled)."""
        with self._db() as db:
            session_id = self._session_id(cookie)
            if session_id is None:
                return None
            row = db.execute(
                "SELECT s.session_version, s.expires_at, u.id, u.username, u.role, u.must_change_password, "
                "u.disabled, u.session_version, u.created_at, u.updated_at, u.last_login_at "
                "FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?",
                [_digest(session_id)],
            ).fetchone()
        if row is None:
            return None
        version, expires, *user_row = row
        user = User.from_row(tuple(user_row))
        if expires <= self.clock() or version != user.session_version or user.disabled:
            return None
        return Session(session_id, user, self._csrf(session_id), expires)

    def revoke(self, session_id: str) -> None:
        with self._db() as db, db.conn:
            db.execute("DELETE FROM sessions WHERE id = ?", [_digest(session_id)])
