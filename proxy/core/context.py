"""The per-request context: parsed once, carried in ``scope["state"]``, annotated by each layer.

Every middleware reads and writes this one object instead of re-parsing the body or
passing data through module globals. The outermost layer creates it and writes the
request-log row from it when the request ends, so every field here is a column or
feeds one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from starlette.types import Scope

from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.parts import Snapshot
from llm_proxy.core.records import ClientIdentity, Deployment, Usage
from llm_proxy.core.surfaces import Surface

__all__ = ["SCOPE_KEY", "ClientIdentity", "Deployment", "RequestContext", "Serving", "Usage", "get_context"]

SCOPE_KEY = "llm_proxy"


class Serving(Protocol):
    """The serving deployment's live state as the context holds it (routing's ``DeploymentState``)."""

    def finish(self, ctx: RequestContext) -> None:
        """Settle its in-flight count and latency; called once, when the request ends."""
        ...


@dataclass(slots=True)
class RequestContext:
    request_id: str
    runtime: Snapshot  # the parts the chain reads; code below it gets the whole snapshot (runtime_of)
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    surface: Surface | None = None  # the API surface the path names (None for internal calls)

    # auth
    client: ClientIdentity | None = None

    # the request body, parsed once; ``body_dirty`` means it must be re-serialised before forwarding
    raw_body: bytes = b""
    body: JSONObject | None = None
    body_dirty: bool = False
    stream: bool = False
    client_wants_usage: bool = False

    # routing: what was asked for, how it was resolved, where it may go
    requested_model: str | None = None
    model: str | None = None
    group: str | None = None
    route: list[str] = field(default_factory=list)
    candidates: list[Deployment] = field(default_factory=list)
    deployment: Deployment | None = None  # the candidate being tried, then the one that answered
    strategy: str | None = None  # the named group's deployment strategy, if it sets one
    tags_header: bytes | None = None  # x-llm-proxy-tags, for rules that test tags
    key_index: int = 0  # which of the provider's keys this attempt uses
    serving: Serving | None = None  # the serving deployment's learned state: settled when the request ends

    # outcome
    status: int = 0
    error_type: str | None = None
    error_message: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    upstream_request_id: str | None = None
    response_started: bool = False  # set by the outermost layer as the response's head goes out
    disconnected: bool = False
    shut_down: bool = False  # still in flight when the shutdown grace ended: cut on purpose (core/drain.py)
    task: asyncio.Task[object] | None = None  # the task serving it: what a disconnect or the shutdown cancels

    # timings (perf_counter seconds)
    upstream_started: float | None = None
    upstream_headers_at: float | None = None
    upstream_elapsed: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    overhead_ms: float | None = None

    # free-form annotations for plugins and later layers
    metadata: JSONObject = field(default_factory=dict)

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


def get_context(scope: Scope) -> RequestContext | None:
    """The request's context, or None (lifespan scopes, paths outside the gateway's chain)."""
    state = scope.get("state")
    ctx: RequestContext | None = state.get(SCOPE_KEY) if state is not None else None
    return ctx
