"""What the request chain reads of the runtime snapshot, one Protocol per stage.

A middleware imports only the core, so it sees the snapshot through these interfaces; the
classes that implement them live in ``llm_proxy.runtime`` (built once per config) and
``llm_proxy.access`` (rate windows and spend, made once per app). Each stage reads one part:
auth the key lookup, alias the intake rules, group routing the routing table, metering and
admission the pricing. Code below the chain (endpoints, dispatch, the pipeline) gets the
whole concrete snapshot through ``llm_proxy.runtime.snapshot.runtime_of``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.records import ClientIdentity, Deployment, Usage

__all__ = [
    "Admission",
    "Intake",
    "KeyLookup",
    "Ledger",
    "Limiter",
    "Pricing",
    "Routes",
    "SelectorCall",
    "Snapshot",
    "SnapshotSource",
]

# (selector model, prompt) -> the model's answer: how a classifier group asks a model for its rating
SelectorCall = Callable[[str, str], Awaitable[str]]


class KeyLookup(Protocol):
    """The auth stage's part: is any key configured, and whose is this one."""

    @property
    def open(self) -> bool:
        """True when no key is configured at all (the gateway then serves loopback clients only)."""
        ...

    @property
    def trust_unix_socket(self) -> bool:
        """Whether, while ``open``, a request with no client address (a Unix socket) counts as local."""
        ...

    def lookup(self, key: str) -> ClientIdentity | None: ...


class Intake(Protocol):
    """How large a request may be (its head, read by the outermost stage; its body, by the alias
    stage), and which names are aliases of others."""

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def max_header_bytes(self) -> int:
        """The request headers' names and values, summed."""
        ...

    @property
    def max_headers(self) -> int: ...

    @property
    def aliases(self) -> Mapping[str, str]: ...


class Routes(Protocol):
    """The group-routing stage's part: names to concrete models, models to their deployments."""

    def is_group(self, name: str) -> bool: ...

    def group_strategy(self, name: str) -> str | None:
        """The group's own deployment strategy, if it sets one."""
        ...

    async def resolve_group(self, name: str, body: JSONObject, tags_header: bytes | None,
                            ask: SelectorCall) -> tuple[str, list[str]]:
        """The concrete model a group resolves to (aliases it names followed), with each step's reason."""
        ...

    def candidates(self, model: str, requested: str | None, tags_header: bytes | None) -> list[Deployment]:
        """The enabled deployments of ``model``, narrowed to the routing mode (config, or a request tag)."""
        ...

    def may_add_steps(self, model: str) -> bool:
        """Whether dispatch may add route steps for ``model`` later (a context fallback, a deployment rule)."""
        ...


class Pricing(Protocol):
    """The metering and admission stages' part: what a request cost, what it may cost."""

    def cost(self, deployment: Deployment | None, usage: Usage | None, model: str | None,
             group: str | None) -> float | None:
        """The cost of ``usage`` on ``deployment`` (None without either, or without a price)."""
        ...

    def estimate(self, deployment: Deployment, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of that many tokens on ``deployment`` at its price (0.0 when it has none)."""
        ...


class Snapshot(Protocol):
    """The parts of the runtime snapshot the chain reads; frozen for as long as a request runs."""

    @property
    def keys(self) -> KeyLookup: ...

    @property
    def intake(self) -> Intake: ...

    @property
    def routes(self) -> Routes: ...

    @property
    def pricing(self) -> Pricing: ...


class SnapshotSource(Protocol):
    """Where the outermost stage takes each request's snapshot from (the runtime holder)."""

    @property
    def current(self) -> Snapshot: ...

    @property
    def started(self) -> bool: ...

    async def ensure_started(self) -> None:
        """Start on first use when no lifespan did (a host app that mounts without it)."""
        ...


class Admission(Protocol):
    """One admitted request's hold on its key's limits, given back when the response has ended."""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The ``x-ratelimit-*`` headers to send with the response."""
        ...

    def release(self, used_tokens: int) -> None: ...


class Limiter(Protocol):
    """Per-key requests and tokens per minute and concurrency; state that outlives a reload."""

    def admit(self, client: ClientIdentity, tokens: int) -> Admission:
        """Check every limit, then reserve against all of them, with no await in between (429 if one is full)."""
        ...


class Ledger(Protocol):
    """Per-key spend against budgets; state that outlives a reload."""

    @property
    def loaded(self) -> bool: ...

    async def ensure_loaded(self) -> None: ...

    def check(self, client: ClientIdentity) -> None:
        """Raise a 429 when one of the key's budgets is used up or committed in flight."""
        ...

    def reserve(self, key_id: str, usd: float) -> None: ...

    def settle(self, key_id: str, started_wall: float, reserved: float, cost: float | None) -> None: ...
