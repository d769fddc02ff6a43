"""Dashboard users: who may log in, with which role, and whether they must change their password.

The first time the table is opened with no user at all, ``admin``/``admin123`` is created
with ``must_change_password`` set, so a fresh install can be logged into and the default
password cannot stay in use. ``session_version`` is bumped whenever a user's existing
sessions must stop working (password changed or reset, account disabled): a session
remembers the version it was issued under.

Methods are synchronous (SQLite and scrypt): call them from a worker thread.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlite_utils

from llm_proxy.accounts.passwords import (
    DEFAULT_COST,
    ScryptCost,
    hash_password,
    needs_rehash,
    verify_password,
)
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.storage.sqlite import SqliteStore

__all__ = [
    "DEFAULT_ADMIN",
    "DEFAULT_ADMIN_PASSWORD",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "ROLES",
    "AccountError",
    "User",
    "UserStore",
    "check_new_password",
    "ensure_users_table",
]

logger = logging.getLogger("llm_proxy.accounts")

Role = Literal["viewer", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "admin")
DEFAULT_ADMIN = "admin"
DEFAULT_ADMIN_PASSWORD = "admin123"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale session must not fit a new user
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    must_change_password INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    session_version INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_login_at REAL
)
"""
_COLUMNS = ("id, username, role, must_change_password, disabled, session_version, "
            "created_at, updated_at, last_login_at")


class AccountError(Exception):
    """A refused account change; ``code`` names the reason (the API maps it to a status)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: Role
    must_change_password: bool
    disabled: bool
    session_version: int
    created_at: float
    updated_at: float
    last_login_at: float | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> User:
        uid, name, role, must, disabled, version, created, updated, last = row
        return cls(uid, name, role, bool(must), bool(disabled), version, created, updated, last)

    def public(self) -> JSONObject:
        """What the API shows: never the hash, nor the session version."""
        return {
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "must_change_password": self.must_change_password,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_login_at": self.last_login_at,
        }


def check_new_password(password: object) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise AccountError(f"The password must be at least {MIN_PASSWORD} characters.", "weak_password")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"The password must be at most {MAX_PASSWORD} characters.", "weak_password")
    if password == DEFAULT_ADMIN_PASSWORD:
        raise AccountError("The default password cannot be used; choose another.", "weak_password")
    return password


def _check_role(role: object) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise AccountError(f"role must be one of {', '.join(ROLES)}.", "invalid_role")


def ensure_users_table(db: sqlite_utils.Database, cost: ScryptCost = DEFAULT_COST) -> None:
    """Create the table, and the default admin when there is no user at all."""
    db.execute(_SCHEMA)
    if db.execute("SELECT 1 FROM users LIMIT 1").fetchone():
        return
    now = time.time()
    with db.conn:  # one statement: two processes starting at once make one admin
        created = db.execute(
            "INSERT INTO users (username, password_hash, role, must_change_password, created_at, updated_at) "
            "SELECT ?, ?, 'admin', 1, ?, ? WHERE NOT EXISTS (SELECT 1 FROM users)",
            [DEFAULT_ADMIN, hash_password(DEFAULT_ADMIN_PASSWORD, cost), now, now],
        ).rowcount
    if created:
        logger.warning("created the default admin user 'admin' with the default password: "
                       "log in to the admin API and change it (it must be changed at first login)")


class UserStore(SqliteStore):
    """The ``users`` table. ``cost`` is the scrypt cost for new hashes (lower only in tests)."""

    def __init__(self, path: str | Path, *, cost: ScryptCost = DEFAULT_COST) -> None:
        super().__init__(path)
        self.cost = cost
        self._dummy_hash: str | None = None

    def _setup(self, db: sqlite_utils.Database) -> None:
        ensure_users_table(db, self.cost)

    def _fetch(self, where: str, args: list[object]) -> User | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM users WHERE {where}", args).fetchone()
        return User.from_row(row) if row else None

    def get(self, user_id: int) -> User | None:
        return self._fetch("id = ?", [user_id])

    def by_name(self, username: str) -> User | None:
        return self._fetch("username = ?", [username])

    def list_users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM users ORDER BY id").fetchall()
        return [User.from_row(r) for r in rows]

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches (disabled users too: the caller decides), else None.

        An unknown name still costs one hash, so response time does not tell which names exist.
        """
        with self._db() as db:
            row = db.execute("SELECT id, password_hash FROM users WHERE username = ?", [username]).fetchone()
        if row is None:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password("not a password", self.cost)
            verify_password(password, self._dummy_hash)
            return None
        uid, encoded = row
        if not verify_password(password, encoded):
            return None
        if needs_rehash(encoded, self.cost):
            self._set_hash(uid, password)
        return self.get(uid)

    def _set_hash(self, user_id: int, password: str) -> None:
        encoded = hash_password(password, self.cost)
        with self._db() as db, db.conn:
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [encoded, user_id])

    def create(self, username: object, password: object, role: object = "viewer",
               must_change_password: bool = True) -> User:
        if not isinstance(username, str) or not _USERNAME.fullmatch(username):
            raise AccountError("username must be 1-64 letters, digits or . _ @ - (starting with a letter or digit).",
                               "invalid_username")
        role = _check_role(role)
        encoded = hash_password(check_new_password(password), self.cost)
        now = time.time()
        with self._db() as db, db.conn:
            if db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
                raise AccountError(f"A user named {username!r} already exists.", "username_taken")
            uid = db.execute(
                "INSERT INTO users (username, password_hash, role, must_change_password, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [username, encoded, role, int(must_change_password), now, now],
            ).lastrowid
        assert uid is not None  # an INSERT always sets it
        user = self.get(uid)
        assert user is not None
        return user

    def _other_active_admins(self, db: sqlite_utils.Database, user_id: int) -> int:
        count: int = db.execute(
            "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?", [user_id]
        ).fetchone()[0]
        return count

    def update(
        self,
        user_id: int,
        *,
        role: object = None,
        password: object = None,
        disabled: bool | None = None,
        must_change_password: bool | None = None,
    ) -> User:
        """Change what is given. A new password or disabling signs the user's sessions out."""
        sets: dict[str, object] = {}
        if role is not None:
            sets["role"] = _check_role(role)
        if disabled is not None:
            sets["disabled"] = int(disabled)
        if password is not None:
            sets["password_hash"] = hash_password(check_new_password(password), self.cost)
        if must_change_password is not None:
            sets["must_change_password"] = int(must_change_password)
        with self._db() as db, db.conn:
            current = db.execute("SELECT role, disabled FROM users WHERE id = ?", [user_id]).fetchone()
            if current is None:
                raise AccountError("No such user.", "user_not_found")
            was_admin = current[0] == "admin" and not current[1]
            stays_admin = sets.get("role", current[0]) == "admin" and not sets.get("disabled", current[1])
            if was_admin and not stays_admin and not self._other_active_admins(db, user_id):
                raise AccountError("This is the last active admin; make another admin first.", "last_admin")
            if sets:
                bump = ", session_version = session_version + 1" if "password_hash" in sets or disabled else ""
                assignments = ", ".join(f"{column} = ?" for column in sets)
                db.execute(f"UPDATE users SET {assignments}, updated_at = ?{bump} WHERE id = ?",
                           [*sets.values(), time.time(), user_id])
        user = self.get(user_id)
        assert user is not None
        return user

    def delete(self, user_id: int) -> None:
        with self._db() as db, db.conn:
            current = db.execute("SELECT role, disabled FROM users WHERE id = ?", [user_id]).fetchone()
            if current is None:
                raise AccountError("No such user.", "user_not_found")
            if current[0] == "admin" and not current[1] and not self._other_active_admins(db, user_id):
                raise AccountError("This is the last active admin; make another admin first.", "last_admin")
            db.execute("DELETE FROM users WHERE id = ?", [user_id])

    def change_password(self, user_id: int, current: object, new: object) -> User:
        """The user's own change: needs the current password; clears must_change, ends other sessions."""
        user = self.get(user_id)
        if user is None:
            raise AccountError("No such user.", "user_not_found")
        if not isinstance(current, str) or self.authenticate(user.username, current) is None:
            raise AccountError("The current password is wrong.", "wrong_password")
        if new == current:
            raise AccountError("The new password must differ from the current one.", "weak_password")
        encoded = hash_password(check_new_password(new), self.cost)
        with self._db() as db, db.conn:
            db.execute(
                "UPDATE users SET password_hash = ?, must_change_password = 0, "
                "session_version = session_version + 1, updated_at = ? WHERE id = ?",
                [encoded, time.time(), user_id],
            )
        changed = self.get(user_id)
        assert changed is not None
        return changed

    def record_login(self, user_id: int) -> None:
        with self._db() as db, db.conn:
            db.execute("UPDATE users SET last_login_at = ? WHERE id = ?", [time.time(), user_id])

    def reset_admin(self) -> str:
        """Put ``admin`` back to the default password (must change), enabled, role admin,
        with its sessions signed out; recreate it if it was deleted. Says what it did."""
        encoded = hash_password(DEFAULT_ADMIN_PASSWORD, self.cost)
        now = time.time()
        with self._db() as db, db.conn:
            changed = db.execute(
                "UPDATE users SET password_hash = ?, role = 'admin', disabled = 0, must_change_password = 1, "
                "session_version = session_version + 1, updated_at = ? WHERE username = ?",
                [encoded, now, DEFAULT_ADMIN],
            ).rowcount
            if not changed:
                db.execute(
                    "INSERT INTO users (username, password_hash, role, must_change_password, created_at, updated_at) "
                    "VALUES (?, ?, 'admin', 1, ?, ?)",
                    [DEFAULT_ADMIN, encoded, now, now],
                )
        return "reset" if changed else "created"
