"""What a build uses but does not own: made once per app, it outlives every reload.

``Learned`` holds what the gateway learned while serving: each deployment's breaker,
latency and capacity window, the provider key pools (``RoutingState``) and each provider's
last success and error (``ProviderHealth``). Every build takes it from the snapshot that
serves, for what kept its definition; the holder hands the new snapshot's state back with
``keep`` once it serves, so a build that is refused leaves nothing behind. ``Drain`` tracks
the API requests in flight, for a graceful shutdown (``core/drain.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_proxy.access.key_lookup import DatabaseKeys
from llm_proxy.core.drain import Drain
from llm_proxy.routing.learned import RoutingState
from llm_proxy.runtime.provider import Fingerprint, ProviderHealth
from llm_proxy.runtime.snapshot import Runtime

__all__ = ["Learned", "Services"]


class Learned:
    def __init__(self) -> None:
        self._routing: RoutingState | None = None
        self._health: dict[str, tuple[Fingerprint, ProviderHealth]] = {}

    def adopt(self, routing: RoutingState) -> None:
        """Give ``routing`` what the serving generation learned about deployments that did not change."""
        if self._routing is not None:
            routing.adopt(self._routing)

    def health(self, provider: str, fingerprint: Fingerprint) -> ProviderHealth:
        kept = self._health.get(provider)
        return kept[1] if kept is not None and kept[0] == fingerprint else ProviderHealth()

    def keep(self, runtime: Runtime) -> None:
        """``runtime`` serves now: the next build learns from it."""
        self._routing = runtime.routes.learned
        self._health = {n: (p.fingerprint, p.health) for n, p in runtime.upstreams.providers.items()}


@dataclass(frozen=True, slots=True)
class Services:
    learned: Learned = field(default_factory=Learned)
    database_keys: DatabaseKeys | None = None  # the database's client keys, behind the config's own
    drain: Drain = field(default_factory=Drain)  # requests in flight, and whether new ones are taken
