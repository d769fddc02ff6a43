"""Login throttling: too many failed logins per username or per client address → wait.

In memory, per process: enough to make online password guessing slow (5 tries per name
per 5 minutes), without a table written on every failure. A restart forgets the counts;
several workers each count on their own. The per-address limit is higher because a
whole office may share one address. An attempt counts as failed when it starts and is
forgiven when it succeeds, so parallel guesses cannot slip past the limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(
        self,
        *,
        per_user: int = 5,
        per_address: int = 20,
        window: float = 300.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_user, self.per_address, self.window = per_user, per_address, window
        self.max_keys, self.clock = max_keys, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def _keys(self, username: str, address: str) -> tuple[tuple[tuple[str, str], int], ...]:
        return (("user", username.lower()), self.per_user), (("addr", address), self.per_address)

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another attempt, or None if one may be made now."""
        now = self.clock()
        wait = 0.0
        for key, limit in self._keys(username, address):
            times = self._recent(key, now)
            if len(times) >= limit:
                wait = max(wait, times[len(times) - limit] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def attempt(self, username: str, address: str) -> None:
        """Count an attempt as failed until ``succeeded`` says otherwise."""
        now = self.clock()
        if len(self._failures) >= self.max_keys:
            self._prune(now)
        for key, _ in self._keys(username, address):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str, address: str) -> None:
        self._failures.pop(("user", username.lower()), None)
        times = self._failures.get(("addr", address))
        if times:
            times.pop()

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        while len(self._failures) >= self.max_keys:  # still full: forget the oldest-tracked keys
            del self._failures[next(iter(self._failures))]
