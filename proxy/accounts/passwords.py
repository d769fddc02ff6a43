"""Password hashing with scrypt (memory-hard, in the standard library).

A hash is stored as a self-describing string, ``scrypt$n=16384,r=8,p=1$<salt>$<digest>``
(base64 without padding), so the cost can be raised later: old hashes still verify with
the parameters they carry, and ``needs_rehash`` says when to store a new one. Each hash
costs ~16 MiB and tens of milliseconds of CPU on purpose: call these from a worker
thread, never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = ["DEFAULT_COST", "ScryptCost", "hash_password", "needs_rehash", "verify_password"]


@dataclass(frozen=True, slots=True)
class ScryptCost:
    """scrypt's work factors: ``n`` (CPU/memory, a power of two), block size ``r``, parallelism ``p``."""

    n: int = 2**14
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        # scrypt needs 128·r·n bytes (plus a little); OpenSSL refuses above its 32 MiB default
        return 128 * self.r * (self.n + self.p + 2) + 1024 * 1024


DEFAULT_COST = ScryptCost()
_SALT_BYTES = 16
_DIGEST_BYTES = 32
_SCHEME = "scrypt"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, cost: ScryptCost, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=cost.n, r=cost.r, p=cost.p, maxmem=cost.maxmem, dklen=length
    )


def hash_password(password: str, cost: ScryptCost = DEFAULT_COST) -> str:
    """A new salted hash of ``password`` in the self-describing format."""
    salt = os.urandom(_SALT_BYTES)
    digest = _derive(password, salt, cost, _DIGEST_BYTES)
    return f"{_SCHEME}$n={cost.n},r={cost.r},p={cost.p}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[ScryptCost, bytes, bytes] | None:
    try:
        scheme, params, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return None
        values = dict(item.split("=", 1) for item in params.split(","))
        cost = ScryptCost(n=int(values["n"]), r=int(values["r"]), p=int(values["p"]))
        return cost, _unb64(salt), _unb64(digest)
    except (ValueError, KeyError):
        return None


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``; the digests are compared in constant time."""
    parsed = _parse(encoded)
    if parsed is None:
        return False
    cost, salt, digest = parsed
    try:
        candidate = _derive(password, salt, cost, len(digest))
    except (ValueError, MemoryError):  # parameters this build of OpenSSL refuses
        return False
    return hmac.compare_digest(candidate, digest)


def needs_rehash(encoded: str, cost: ScryptCost = DEFAULT_COST) -> bool:
    """True when ``encoded`` was made with other parameters than ``cost`` (rehash at next login)."""
    parsed = _parse(encoded)
    return parsed is None or parsed[0] != cost
