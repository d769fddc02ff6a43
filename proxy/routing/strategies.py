"""Strategies: each only orders a request's candidate deployments; the pipeline does the rest.

Every strategy returns all the candidates (the ones it prefers first), so failover always
has somewhere to go. Ties keep the configured order.

- ``priority``: lowest ``priority`` first, then config order (the default).
- ``weighted``: a weighted random order (each position drawn by weight, without replacement).
- ``round-robin``: the deployments in priority order, rotated by one on every request for this model.
- ``least-latency``: lowest EWMA latency first (time to first token for streams); a
  deployment with no sample yet goes first, so each one gets measured.
- ``lowest-cost``: cheapest catalog price first (input + output per 1M tokens); unknown last.
- ``least-busy``: fewest requests in flight first.
- ``ab``: an A/B split by weight, sticky per client key: the same key always lands on the
  same deployment (while the set does not change); the rest follow by priority.
- ``conditional``: the model's rules, as for groups (pattern in the last user message and/or
  conditions), put the deployments they ``use`` (provider name or tag) first.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_proxy.core.conditions import facts_from, holds
from llm_proxy.runtime.snapshot import runtime_of

if TYPE_CHECKING:
    from llm_proxy.core.context import Deployment, RequestContext
    from llm_proxy.routing.learned import RoutingState

__all__ = ["STRATEGIES", "order"]

Strategy = Callable[["RequestContext", list["Deployment"], "RoutingState"], list["Deployment"]]


def _priority(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    return sorted(targets, key=lambda t: t.priority)


def _weighted(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    # Efraimidis–Spirakis: sorting by u ** (1 / w) draws each position in proportion to weight.
    return sorted(targets, key=lambda t: random.random() ** (1.0 / t.weight), reverse=True)


def _round_robin(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    name = ctx.model or ""
    turn = state.counters.get(name, 0)
    state.counters[name] = turn + 1
    start = turn % len(targets)
    return targets[start:] + targets[:start]


def _least_latency(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    def score(t: Deployment) -> float:
        d = state.deployment(t)
        value = d.ttft_ms if ctx.stream and d.ttft_ms is not None else d.latency_ms
        return -1.0 if value is None else value

    return sorted(targets, key=score)


def _lowest_cost(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    pricing = runtime_of(ctx).pricing

    def cost(t: Deployment) -> float:
        info = pricing.catalog.pricing(t.model, pricing.catalog_ids[t.provider])
        price = info.price if info is not None else None
        if price is None or price.input is None or price.output is None:
            return float("inf")
        return price.input + price.output

    return sorted(targets, key=cost)


def _least_busy(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    return sorted(targets, key=lambda t: (state.deployment(t).in_flight, t.priority))


def _ab(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    who = ctx.client.key_id if ctx.client is not None else "anonymous"
    point = zlib.crc32(f"{who}\0{ctx.model}".encode()) / 2**32 * sum(t.weight for t in targets)
    chosen = targets[-1]
    for t in targets:
        point -= t.weight
        if point < 0:
            chosen = t
            break
    return [chosen, *sorted((t for t in targets if t is not chosen), key=lambda t: t.priority)]


def _conditional(ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    rules = runtime_of(ctx).routes.deployment_rules.get(ctx.model or "")
    if rules:
        facts = facts_from(ctx.body or {}, ctx.tags_header)
        for use, pattern, when in rules:
            if (pattern is None or pattern.search(facts.last_user_text)) and (when is None or holds(when, facts)):
                first = [t for t in targets if t.provider == use or use in t.tags]
                if first:
                    ctx.route.append(f"deployment rule -> {use}")
                    return sorted(first, key=lambda t: t.priority) + _priority(
                        ctx, [t for t in targets if t not in first], state)
    return _priority(ctx, targets, state)


STRATEGIES: dict[str, Strategy] = {
    "priority": _priority,
    "weighted": _weighted,
    "round-robin": _round_robin,
    "least-latency": _least_latency,
    "lowest-cost": _lowest_cost,
    "least-busy": _least_busy,
    "ab": _ab,
    "conditional": _conditional,
}


def order(name: str, ctx: RequestContext, targets: list[Deployment], state: RoutingState) -> list[Deployment]:
    return STRATEGIES[name](ctx, targets, state)
