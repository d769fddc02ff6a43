"""Circuit breakers per deployment (provider + model), so a failing one stops costing every
request a failed attempt first.

closed → open after ``failures`` failures within ``window`` seconds; open → half-open once
its cooldown has passed, letting one probe through; the probe's success closes it, its
failure reopens it with the cooldown doubled (up to ``max_cooldown``). An authentication
failure opens it at once for ``max_cooldown``: a bad key will not fix itself. Rate limits
(429), client errors and disconnects never count: they say nothing about the deployment.
The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proxy import metrics

__all__ = ["Breaker", "BreakerSettings", "Breakers", "TRIPPING_STATUSES"]

# What a failing deployment looks like; 429 and 4xx client errors are not in it.
TRIPPING_STATUSES = frozenset({408, 500, 502, 503, 504, 529})
_AUTH_STATUSES = frozenset({401, 403})
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5
    window: float = 30.0
    cooldown: float = 5.0
    max_cooldown: float = 300.0


class Breaker:
    __slots__ = ("settings", "clock", "state", "_failures", "_cooldown", "_opened_at", "_probing", "_labels")

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float], labels: tuple[str, str]) -> None:
        self.settings = settings
        self.clock = clock
        self.state = "closed"
        self._failures: deque[float] = deque()
        self._cooldown = settings.cooldown
        self._opened_at = 0.0
        self._probing = False
        self._labels = labels

    @property
    def retry_at(self) -> float:
        """When an open breaker lets a probe through."""
        return self._opened_at + self._cooldown if self.state != "closed" else 0.0

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and self.clock() >= self.retry_at:
            self._set("half_open")
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record(self, status: int) -> None:
        """One attempt's outcome: its HTTP status, or the gateway's 502/504 for transport failures."""
        if status < 400:
            if self.state != "closed":
                self._failures.clear()
                self._cooldown = self.settings.cooldown
                self._set("closed")
            self._probing = False
            return
        if status in _AUTH_STATUSES:
            self._open(self.settings.max_cooldown)
        elif status in TRIPPING_STATUSES:
            if self.state == "half_open":
                self._open(min(self._cooldown * 2, self.settings.max_cooldown))
                return
            now = self.clock()
            failures = self._failures
            failures.append(now)
            while failures and failures[0] < now - self.settings.window:
                failures.popleft()
            if len(failures) >= self.settings.failures:
                self._open(self._cooldown)
        elif self.state == "half_open":
            self._probing = False  # the probe said nothing about the deployment: probe again

    def release(self) -> None:
        """An attempt ended without an answer about the deployment (cancelled): free the probe."""
        self._probing = False

    def _open(self, cooldown: float) -> None:
        self._cooldown = cooldown
        self._opened_at = self.clock()
        self._probing = False
        self._failures.clear()
        self._set("open")

    def _set(self, state: str) -> None:
        self.state = state
        metrics.BREAKER_STATE.labels(*self._labels).set(_STATE_VALUE[state])


class Breakers:
    """One breaker per (provider, model), made on first use."""

    def __init__(self, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BreakerSettings()
        self.clock = clock
        self._by_target: dict[tuple[str, str], Breaker] = {}

    def get(self, provider: str, model: str) -> Breaker:
        key = (provider, model)
        breaker = self._by_target.get(key)
        if breaker is None:
            breaker = self._by_target[key] = Breaker(self.settings, self.clock, key)
        return breaker

    def states(self, provider: str) -> dict[str, str]:
        """Models of ``provider`` whose breaker is not closed (for /health)."""
        return {m: b.state for (p, m), b in self._by_target.items() if p == provider and b.state != "closed"}
