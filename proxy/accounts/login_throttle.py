"""Login throttling: failed logins slow further attempts, per username and per client address.

Per username, a backoff rather than a lockout: the first ``free_failures`` failures cost
nothing, then each further attempt waits a delay that doubles with every failure, from
``base_delay`` up to ``max_delay`` (1 s, 2 s, 4 s … 60 s). Guessing one user's password
slows to a try a minute, yet the real user waits at most ``max_delay`` before the right
password gets in — an attacker cannot keep them out for longer. Names of existing users
are tracked apart from other names: the first are bounded by the users table and never
evicted, the second by ``max_names`` (the least recently failed forgotten first), so a
flood of made-up names cannot reset a real user's backoff. Both behave alike, so a 429
does not tell which names exist.

Per address, a window: ``per_address`` failures per ``window`` (higher than per user: an
office may share one address), IPv6 counted per /64 (one host usually holds a whole /64),
at most ``max_addresses`` tracked. The address is the connecting peer, or the one the
server in front of the app vouches for (``server.forwarded_allow_ips``).

In memory, per process: no table written on every failure; a restart forgets, and each
worker counts on its own. An attempt counts as failed when it starts and is forgiven when
it succeeds, so parallel guesses cannot slip past. Throttling is logged as a warning,
naming the user only if it exists (an unknown "name" may be a password typed in the
wrong field).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["LoginThrottle"]

logger = logging.getLogger("llm_proxy.accounts")
_V = TypeVar("_V")


@dataclass(slots=True)
class _Backoff:
    failures: int
    last: float  # when the latest failed (or still running) attempt started


def _address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        per_address: int = 20,
        window: float = 300.0,
        max_names: int = 10_000,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures, self.base_delay, self.max_delay = free_failures, base_delay, max_delay
        self.per_address, self.window = per_address, window
        self.max_names, self.max_addresses, self.clock = max_names, max_addresses, clock
        # each dict is in least-recently-failed order (a failure moves its key to the end)
        self._users: dict[str, _Backoff] = {}  # existing users: bounded by the users table
        self._names: dict[str, _Backoff] = {}  # any other name: at most max_names
        self._addresses: dict[str, deque[float]] = {}  # at most max_addresses

    def _delay(self, failures: int) -> float:
        over = failures - self.free_failures
        return 0.0 if over < 0 else min(self.base_delay * 2.0 ** min(over, 64), self.max_delay)

    def _backoff(self, name: str, now: float) -> float:
        wait = 0.0
        for table in (self._users, self._names):  # a name tracked before its user was created may be in both
            entry = table.get(name)
            if entry is not None:
                wait = max(wait, entry.last + self._delay(entry.failures) - now)
        return wait

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._addresses.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another attempt, or None if one may be made now."""
        now = self.clock()
        wait = self._backoff(username.lower(), now)
        times = self._recent(_address_key(address), now)
        if len(times) >= self.per_address:
            wait = max(wait, times[len(times) - self.per_address] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def attempt(self, username: str, address: str, *, known: bool) -> None:
        """Count an attempt as failed until ``succeeded`` says otherwise; ``known``: the user exists."""
        now = self.clock()
        name, table = username.lower(), self._users if known else self._names
        entry = table.pop(name, None)
        if entry is None or now - entry.last >= self.window:  # a quiet window forgives the past
            entry = _Backoff(0, now)
        entry.failures, entry.last = entry.failures + 1, now
        self._make_room(table, None if known else self.max_names, now, lambda e: e.last)
        table[name] = entry
        key = _address_key(address)
        times = self._addresses.pop(key, None)
        self._make_room(self._addresses, self.max_addresses, now, lambda t: t[-1] if t else -math.inf)
        self._addresses[key] = times if times is not None else deque()
        self._addresses[key].append(now)

    def failed(self, username: str, address: str, *, known: bool) -> None:
        """The attempt failed: log it if it throttles the name or the address (never the password)."""
        now = self.clock()
        entry = (self._users if known else self._names).get(username.lower())
        if entry is not None and entry.failures >= self.free_failures:
            who = f"user {username!r}" if known else "an unknown user name"
            logger.warning("login throttled: %d failed attempts for %s, the latest from %s; next attempt in %d s",
                           entry.failures, who, address, math.ceil(self._delay(entry.failures)))
        key = _address_key(address)
        times = self._recent(key, now)
        if len(times) >= self.per_address:
            logger.warning("login throttled: %d failed attempts from %s in %d s", len(times), key, self.window)

    def succeeded(self, username: str, address: str) -> None:
        name = username.lower()
        self._users.pop(name, None)
        self._names.pop(name, None)
        times = self._addresses.get(_address_key(address))
        if times:
            times.pop()

    def _make_room(self, table: dict[str, _V], limit: int | None, now: float, last: Callable[[_V], float]) -> None:
        """Forget entries quiet for a window (oldest first), then, if ``limit`` is still reached, the oldest."""
        while table:
            oldest = next(iter(table))
            if last(table[oldest]) > now - self.window and (limit is None or len(table) < limit):
                return
            del table[oldest]
