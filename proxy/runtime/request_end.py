"""The end of every request: one request-log row and its metrics, written exactly once.

Called by the outermost middleware in a ``finally``, so successes, upstream errors, bad
requests and client disconnects all land here through the same door.
"""

from __future__ import annotations

import re
import time

import orjson

from llm_proxy.core import metrics
from llm_proxy.core.context import RequestContext

__all__ = ["finish_request", "model_label", "price", "redact"]

# Upstreams sometimes echo (part of) a key in an error message; never let one reach the log.
_SECRET = re.compile(r"(sk-|key-|Bearer\s+)[A-Za-z0-9_\-\.]{6,}")


def redact(text: str | None) -> str | None:
    if not text:
        return text
    return _SECRET.sub(lambda m: m.group(1) + "***", text)[:500]


def price(ctx: RequestContext) -> float | None:
    """The request's cost at the serving provider's (or the model creator's) catalog price.

    A model without any price is billed at its group's price when the request came through
    a group that has one; a discount still running scales the result (checked here, per
    request, so an expiry needs no reload)."""
    if ctx.usage is None or ctx.target is None:
        return None
    runtime = ctx.runtime
    provider = runtime.providers[ctx.target.provider]
    cost = runtime.catalog.cost(ctx.target.model, provider.catalog_id, ctx.usage)
    group = ctx.group
    if cost is None and group is not None and group in provider.config.prices:
        cost = runtime.catalog.cost(group, provider.catalog_id, ctx.usage)
    if cost and runtime.discounts:
        discount = runtime.discounts.get(ctx.model or "") or (runtime.discounts.get(group) if group else None)
        if discount is not None and time.time() < discount[1]:
            cost *= discount[0]
    return cost


def model_label(ctx: RequestContext) -> str:
    """Bounded model label: only names the config knows, else ``unknown``."""
    known = ctx.runtime.known_labels
    for name in (ctx.model, ctx.requested_model):
        if name and name in known:
            return name
    if ctx.target is not None and ctx.model and 200 <= ctx.status < 400:
        return ctx.model  # provider/model the upstream actually served: bounded by what it serves
    return "unknown"


def finish_request(ctx: RequestContext) -> None:
    if ctx.deployment is not None:  # the serving deployment's in-flight count and latency
        ctx.deployment.finish(ctx)
    provider = ctx.target.provider if ctx.target is not None else "none"
    model = model_label(ctx)
    seconds = ctx.latency_ms / 1000.0
    status = ctx.status or 500
    labelled = metrics.series(ctx.endpoint, provider, model)
    labelled.count(status)
    labelled.duration.observe(seconds)
    if ctx.first_token_at is not None:
        labelled.ttft.observe(ctx.first_token_at - ctx.started)
    if ctx.overhead_ms is not None:
        metrics.observe_overhead(ctx.overhead_ms / 1000.0)
    usage = ctx.usage
    if usage is not None:
        tokens = labelled.tokens
        tokens[0] += usage.prompt_tokens
        tokens[1] += usage.completion_tokens
        tokens[2] += usage.reasoning_tokens
        tokens[3] += usage.cached_tokens
    if ctx.cost:
        labelled.cost += ctx.cost

    ctx.runtime.log_writer.submit((
        ctx.started_wall,
        ctx.request_id,
        ctx.endpoint,
        ctx.client.key_id if ctx.client is not None else None,
        ctx.requested_model,
        ctx.model,
        ctx.target.provider if ctx.target is not None else None,
        ctx.target.model if ctx.target is not None else None,
        status,
        ctx.error_type,
        redact(ctx.error_message),
        int(ctx.stream),
        usage.prompt_tokens if usage else None,
        usage.completion_tokens if usage else None,
        usage.reasoning_tokens if usage else None,
        usage.cached_tokens if usage else None,
        int(bool(ctx.metadata.get("usage_estimated"))),
        ctx.cost,
        round(ctx.latency_ms, 3),
        round(ctx.ttft_ms, 3) if ctx.ttft_ms is not None else None,
        round(ctx.overhead_ms, 3) if ctx.overhead_ms is not None else None,
        ctx.upstream_request_id,
        ctx.finish_reason,
        orjson.dumps(ctx.route).decode() if ctx.route else None,
        orjson.dumps(ctx.metadata["attempts"]).decode() if "attempts" in ctx.metadata else None,
        ctx.group,
        orjson.dumps(ctx.metadata["tags"]).decode() if ctx.metadata.get("tags") else None,
    ))
