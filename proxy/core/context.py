"""The per-request context: parsed once, carried in ``scope["state"]``, annotated by each layer.

Every middleware reads and writes this one object instead of re-parsing the body or
passing data through module globals. The outermost layer creates it and writes the
request-log row from it when the request ends, so every field here is a column or
feeds one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_proxy.core.surfaces import Surface

if TYPE_CHECKING:
    from llm_proxy.runtime.snapshot import Runtime

__all__ = ["SCOPE_KEY", "ClientIdentity", "RequestContext", "Target", "Usage", "get_context"]

SCOPE_KEY = "llm_proxy"


@dataclass(slots=True, frozen=True)
class ClientIdentity:
    """Who is calling, and the policy their key carries.

    ``key_id`` is a non-secret identifier (the request log's ``client_key_id``); the key itself
    is never stored here. Config keys carry no policy. Database keys set ``metered``: their
    spend is kept in the ledger and the rate-limit layer checks whatever limits are set, so
    a key without it costs that layer one attribute check.
    """

    key_id: str
    name: str
    is_master: bool = False
    metered: bool = False
    allowed_models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_day_usd: float | None = None
    budget_month_usd: float | None = None
    budget_total_usd: float | None = None
    expires_at: float | None = None  # epoch seconds
    revoked_at: float | None = None  # a revocation due later (a rotated key's grace period)
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True, frozen=True)
class Target:
    """One deployment: a provider and the model name it knows, with what strategies weigh.

    Equality and hashing are by (provider, model) only: the knobs describe the same place."""

    provider: str
    model: str
    weight: float = field(default=1.0, compare=False)
    priority: int = field(default=0, compare=False)
    tags: frozenset[str] = field(default=frozenset(), compare=False)
    rpm: int | None = field(default=None, compare=False)
    tpm: int | None = field(default=None, compare=False)


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them, normalised to OpenAI's meaning.

    ``cached_tokens`` are part of ``prompt_tokens`` and ``reasoning_tokens`` part of
    ``completion_tokens``, as in OpenAI's usage object.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RequestContext:
    request_id: str
    runtime: Runtime
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    surface: Surface | None = None  # the API surface the path names (None for internal calls)

    # auth
    client: ClientIdentity | None = None

    # the request body, parsed once; ``body_dirty`` means it must be re-serialised before forwarding
    raw_body: bytes = b""
    body: dict[str, Any] | None = None
    body_dirty: bool = False
    stream: bool = False
    client_wants_usage: bool = False

    # routing: what was asked for, how it was resolved, where it may go
    requested_model: str | None = None
    model: str | None = None
    group: str | None = None
    route: list[str] = field(default_factory=list)
    candidates: list[Target] = field(default_factory=list)
    target: Target | None = None
    strategy: str | None = None  # the named group's deployment strategy, if it sets one
    tags_header: bytes | None = None  # x-llm-proxy-tags, for rules that test tags
    key_index: int = 0  # which of the provider's keys this attempt uses
    deployment: Any = None  # the serving deployment's state: settled when the request ends

    # outcome
    status: int = 0
    error_type: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    upstream_request_id: str | None = None
    disconnected: bool = False

    # timings (perf_counter seconds)
    upstream_started: float | None = None
    upstream_headers_at: float | None = None
    upstream_elapsed: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    overhead_ms: float | None = None

    # free-form annotations for plugins and later layers
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started) * 1000.0

    @property
    def latency_ms(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return (end - self.started) * 1000.0

    def fail(self, status: int, error_type: str, message: str) -> None:
        self.status = status
        self.error_type = error_type
        self.error_message = message


def get_context(scope: dict[str, Any]) -> RequestContext | None:
    """The request's context, or None (lifespan scopes, paths outside the gateway's chain)."""
    state = scope.get("state")
    return state.get(SCOPE_KEY) if state is not None else None
