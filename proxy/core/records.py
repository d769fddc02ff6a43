"""The small value types the request context and the runtime's parts share: who is calling,
one deployment a request may go to, and the tokens it used.

They sit below both ``context`` and ``parts`` so each of those can name them without
importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ClientIdentity", "Deployment", "Usage"]


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
class Deployment:
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
