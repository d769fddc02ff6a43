"""A circuit breaker per deployment (provider + model), so a failing one stops costing every
request a failed attempt first.

closed → open after too many failures within a window; open → half-open once its cooldown
has passed, letting one probe through; the probe's success closes it, its failure reopens
it with the cooldown doubled (up to ``max_cooldown``). Transient overloads (502/503/529)
have a threshold of their own, higher by default: they pass by themselves. An
``auth`` outcome opens it at once for ``auth_cooldown``: a refused key will not fix itself.
The pipeline tells it so only for a single-key provider's 401/403 that it judged to be
about this (key, model) pair (``pipeline._refusal``); a deployment is one model of one
provider, so this never closes the provider's other models. Rate limits, client errors and
disconnects never count: they say nothing about the deployment. The clock is injectable
for tests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from llm_proxy.core import metrics
from llm_proxy.core.config import BreakerConfig

__all__ = ["Breaker", "Outcome"]

# What the pipeline tells a breaker about one attempt.
Outcome = str  # "ok" | "failure" | "transient" | "auth" | "neutral"
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class Breaker:
    __slots__ = ("settings", "clock", "state", "auth_failed", "_failures", "_transient", "_cooldown",
                 "_opened_at", "_probing", "_labels")

    def __init__(self, settings: BreakerConfig, clock: Callable[[], float], labels: tuple[str, str]) -> None:
        self.settings = settings
        self.clock = clock
        self.state = "closed"
        self.auth_failed = False  # open because the deployment refused our key
        self._failures: deque[float] = deque()
        self._transient: deque[float] = deque()
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

    def record(self, outcome: Outcome) -> None:
        if outcome == "ok":
            if self.state != "closed":
                self._failures.clear()
                self._transient.clear()
                self._cooldown = self.settings.cooldown
                self.auth_failed = False
                self._set("closed")
            self._probing = False
        elif outcome == "auth":
            self._open(self.settings.auth_cooldown)
            self.auth_failed = True
        elif outcome in ("failure", "transient"):
            if self.state == "half_open":
                self._open(min(self._cooldown * 2, self.settings.max_cooldown))
                return
            now = self.clock()
            window = self._failures if outcome == "failure" else self._transient
            limit = self.settings.failures if outcome == "failure" else self.settings.transient_failures
            window.append(now)
            while window and window[0] < now - self.settings.window:
                window.popleft()
            if len(window) >= limit:
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
        self._transient.clear()
        self.auth_failed = False
        self._set("open")

    def _set(self, state: str) -> None:
        self.state = state
        metrics.BREAKER_STATE.labels(*self._labels).set(_STATE_VALUE[state])
