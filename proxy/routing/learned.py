"""What the gateway learns about its deployments while it runs, kept across config reloads.

One ``DeploymentState`` per (provider, model): its breaker, its latency (EWMA of total
latency and of time to first token), its in-flight count and, when it declares a capacity,
a sliding one-minute window of requests and tokens. Provider key pools and round-robin
counters live here too. A reload builds a new ``RoutingState`` that adopts the old
objects whose definition (the provider's connection settings and the deployment's own)
did not change, so a reload neither forgets a dead deployment nor resets latency.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_proxy.core.config import RoutingConfig
from llm_proxy.routing.breaker import Breaker
from llm_proxy.routing.key_pool import KeyPool

if TYPE_CHECKING:
    from llm_proxy.core.context import Deployment, RequestContext

__all__ = ["DeploymentState", "RoutingState"]

_ALPHA = 0.3  # EWMA weight of the newest sample: recent enough to follow a slowdown within ~5 requests
_MINUTE = 60.0


class DeploymentState:
    __slots__ = ("breaker", "latency_ms", "ttft_ms", "in_flight", "clock", "_window", "_tokens")

    def __init__(self, breaker: Breaker, clock: Callable[[], float]) -> None:
        self.breaker = breaker
        self.latency_ms: float | None = None
        self.ttft_ms: float | None = None
        self.in_flight = 0
        self.clock = clock
        self._window: deque[tuple[float, int]] = deque()  # (admitted at, tokens) for rpm/tpm capacity
        self._tokens = 0

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, latency_ms: float | None, ttft_ms: float | None) -> None:
        """One attempt or request is over; a latency of None (a failure) teaches nothing."""
        self.in_flight -= 1
        if latency_ms is not None:
            last = self.latency_ms
            self.latency_ms = latency_ms if last is None else last + _ALPHA * (latency_ms - last)
        if ttft_ms is not None:
            last = self.ttft_ms
            self.ttft_ms = ttft_ms if last is None else last + _ALPHA * (ttft_ms - last)

    def finish(self, ctx: RequestContext) -> None:
        """The request this deployment served has ended (called once, from the request log)."""
        ok = 200 <= ctx.status < 400
        ttft = ctx.first_token_at - ctx.upstream_started if ok and ctx.first_token_at and ctx.upstream_started else None
        self.end(ctx.upstream_elapsed * 1000.0 if ok else None, ttft * 1000.0 if ttft is not None else None)

    def admit(self, target: Deployment, tokens: int) -> float:
        """Take one request of ``tokens`` into the capacity window: 0.0, or seconds until it fits."""
        now = self.clock()
        window = self._window
        while window and window[0][0] <= now - _MINUTE:
            self._tokens -= window.popleft()[1]
        if (target.rpm is not None and len(window) >= target.rpm) or (
            target.tpm is not None and window and self._tokens + tokens > target.tpm
        ):
            return max(window[0][0] + _MINUTE - now, 0.001)
        window.append((now, tokens))
        self._tokens += tokens
        return 0.0


class RoutingState:
    def __init__(self, settings: RoutingConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._deployments: dict[tuple[str, str], DeploymentState] = {}
        self.key_pools: dict[str, KeyPool] = {}
        self.counters: dict[str, int] = {}  # round-robin position per model
        # what each deployment and provider is, to tell on reload which ones did not change
        self.definitions: dict[tuple[str, str], object] = {}
        self.providers: dict[str, object] = {}

    def deployment(self, target: Deployment) -> DeploymentState:
        key = (target.provider, target.model)
        state = self._deployments.get(key)
        if state is None:
            breaker = Breaker(self.settings.breaker, self.clock, key)
            state = self._deployments[key] = DeploymentState(breaker, self.clock)
        return state

    def known(self, target: Deployment) -> DeploymentState | None:
        """A deployment's state if it has served or been ordered; None, without making one."""
        return self._deployments.get((target.provider, target.model))

    def key_pool(self, provider: str, keys: tuple[str, ...]) -> KeyPool:
        pool = self.key_pools.get(provider)
        if pool is None or pool.keys != keys:
            pool = self.key_pools[provider] = KeyPool(keys, self.clock)
        return pool

    def breaker_states(self, provider: str) -> dict[str, str]:
        """Models of ``provider`` whose breaker is not closed (for /health)."""
        return {m: d.breaker.state for (p, m), d in self._deployments.items()
                if p == provider and d.breaker.state != "closed"}

    def adopt(self, old: RoutingState) -> None:
        """Keep what ``old`` learned about deployments and keys whose definition is unchanged."""
        for key, state in old._deployments.items():
            new, before = self.definitions.get(key), old.definitions.get(key)
            if new is None and before is None:  # an ad-hoc provider/model target: the provider decides
                same = key[0] in self.providers and old.providers.get(key[0]) == self.providers[key[0]]
            else:
                same = new == before
            if same:
                state.breaker.settings = self.settings.breaker
                self._deployments[key] = state
        for provider, pool in old.key_pools.items():
            if provider in self.providers and old.providers.get(provider) == self.providers[provider]:
                self.key_pools[provider] = pool
        self.counters.update(old.counters)
