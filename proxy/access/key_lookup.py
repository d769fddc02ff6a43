"""Client-key lookup: key → identity, answered from memory on the hot path.

Keys are compared by their SHA-256 digest, so the tables never hold a usable key and a
lookup is one dict probe. Two sources sit behind a snapshot's key lookup (the auth stage's
part, ``llm_proxy.core.parts.KeyLookup``; here ``CombinedKeys``): the config file's keys
(``StaticKeys``, rebuilt with each snapshot, so they follow a config reload) and the
database's keys (``DatabaseKeys``, made once per app, so they survive a reload). Config keys are probed first: the master key cannot be
shadowed or locked out by a database edit.

The database index is rebuilt (off the event loop) after every change made through this
process, and a background task notices changes made by other processes (the CLI) by
reading one version number every ~2 s. No request ever waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from llm_proxy.accounts.client_keys import ApiKey, ClientStore
from llm_proxy.core.config import AuthConfig
from llm_proxy.core.context import ClientIdentity

__all__ = ["CombinedKeys", "DatabaseKeys", "StaticKeys", "identity_of", "key_id"]

logger = logging.getLogger("llm_proxy")

WATCH_INTERVAL = 2.0


def key_id(key: str) -> str:
    """A stable, non-secret identifier for a config key (for logs and metrics)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class StaticKeys:
    """Keys from ``auth.master_key`` and ``auth.keys`` in the config file."""

    def __init__(self, auth: AuthConfig) -> None:
        self._by_digest: dict[bytes, ClientIdentity] = {}
        self.trust_unix_socket = auth.trust_unix_socket
        if auth.master_key:
            self._add(auth.master_key, "master", is_master=True)
        for entry in auth.keys:
            self._add(entry.key, entry.name)

    def _add(self, key: str, name: str, *, is_master: bool = False) -> None:
        kid = key_id(key)
        self._by_digest[hashlib.sha256(key.encode()).digest()] = ClientIdentity(
            key_id=kid, name=name or kid, is_master=is_master
        )

    @property
    def open(self) -> bool:
        return not self._by_digest

    def lookup(self, key: str) -> ClientIdentity | None:
        return self._by_digest.get(hashlib.sha256(key.encode()).digest())

    def by_digest(self, digest: bytes) -> ClientIdentity | None:
        return self._by_digest.get(digest)


def identity_of(key: ApiKey) -> ClientIdentity:
    """A database key's identity: its policy, read once per index rebuild."""
    return ClientIdentity(
        key_id=key.log_id,
        name=key.name,
        metered=True,
        allowed_models=frozenset(key.allowed_models) if key.allowed_models is not None else None,
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrent=key.max_concurrent,
        budget_day_usd=key.budget_day_usd,
        budget_month_usd=key.budget_month_usd,
        budget_total_usd=key.budget_total_usd,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        tags=tuple(sorted(key.tags.items())),
    )


class DatabaseKeys:
    """The database's keys by digest, in memory; made once per app, so it outlives reloads."""

    def __init__(self, store: ClientStore) -> None:
        self.store = store
        self._by_digest: dict[bytes, ClientIdentity] = {}
        self.any = False  # any database key ever made, revoked ones included
        self._version = -1
        self._lock: asyncio.Lock | None = None

    def lookup(self, key: str) -> ClientIdentity | None:
        return self._by_digest.get(hashlib.sha256(key.encode()).digest())

    def by_digest(self, digest: bytes) -> ClientIdentity | None:
        return self._by_digest.get(digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def reload(self) -> None:
        """Rebuild from the database (blocking: call from a thread, or at startup)."""
        version = self.store.version()  # read first: a change racing the rebuild is picked up next time
        keys = self.store.usable_keys()
        self.any = self.store.key_count() > 0
        self._by_digest = {bytes.fromhex(k.key_hash): identity_of(k) for k in keys}  # one atomic swap
        self._version = version

    async def refresh(self) -> None:
        """Rebuild off the event loop; one rebuild at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await asyncio.to_thread(self.reload)

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Pick up changes made by other processes: one version read every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await asyncio.to_thread(self.store.version) != self._version:
                    await self.refresh()
            except Exception:  # a locked or missing database must not end the watch
                logger.exception("client keys: could not check the database for changes")


class CombinedKeys:
    """A runtime's config keys in front of the app's database keys.

    Each runtime (rebuilt on a config reload) gets its own, around its own config keys and
    the one ``DatabaseKeys`` of the app. A secret present in both resolves to the config key.
    ``open`` turns False as soon as any database key exists (a revoked one included: revoking
    the last key must not reopen the gateway to unauthenticated local clients).
    """

    def __init__(self, static: StaticKeys, database: DatabaseKeys) -> None:
        self.static = static
        self.database = database

    @property
    def open(self) -> bool:
        return self.static.open and not self.database.any

    @property
    def trust_unix_socket(self) -> bool:
        return self.static.trust_unix_socket

    def lookup(self, key: str) -> ClientIdentity | None:
        digest = hashlib.sha256(key.encode()).digest()  # once, for both tables
        identity = self.static.by_digest(digest)
        return identity if identity is not None else self.database.by_digest(digest)
