"""Client-key lookup: key → identity, answered from memory on the hot path.

Keys are compared by their SHA-256 digest, so the table never holds a usable key and a
lookup is one dict probe. ``KeyLookup`` is the seam where a database-backed store
(with per-key limits and budgets) replaces the static one built from config.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from proxy.config import AuthConfig
from proxy.context import ClientIdentity

__all__ = ["KeyLookup", "StaticKeys", "key_id"]


def key_id(key: str) -> str:
    """A stable, non-secret identifier for a key (for logs and metrics)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyLookup(Protocol):
    @property
    def open(self) -> bool:
        """True when no key is configured at all (the gateway then serves loopback clients only)."""
        ...

    def lookup(self, key: str) -> ClientIdentity | None: ...


class StaticKeys:
    """Keys from ``auth.master_key`` and ``auth.keys`` in the config file."""

    def __init__(self, auth: AuthConfig) -> None:
        self._by_digest: dict[bytes, ClientIdentity] = {}
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
