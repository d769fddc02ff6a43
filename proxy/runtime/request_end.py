"""The end of every request: one request-log row and its metrics, written exactly once.

Called by the outermost middleware in a ``finally``, so successes, upstream errors, bad
requests and client disconnects all land here through the same door.
"""

from __future__ import annotations

import re

import orjson

from llm_proxy.core import metrics
from llm_proxy.core.context import RequestContext
from llm_proxy.runtime.snapshot import runtime_of
from llm_proxy.storage.request_log import LogRow

__all__ = ["finish_request", "model_label", "redact"]

# Upstreams sometimes echo (part of) a key in an error message; never let one reach the log.
_SECRET = re.compile(r"(sk-|key-|Bearer\s+)[A-Za-z0-9_\-\.]{6,}")


def redact(text: str | None) -> str | None:
    if not text:
        return text
    return _SECRET.sub(lambda m: m.group(1) + "***", text)[:500]


def model_label(ctx: RequestContext, known: frozenset[str]) -> str:
    """Bounded model label: only names the config knows (``known``), else ``unknown``."""
    for name in (ctx.model, ctx.requested_model):
        if name and name in known:
            return name
    if ctx.deployment is not None and ctx.model and 200 <= ctx.status < 400:
        return ctx.model  # provider/model the upstream actually served: bounded by what it serves
    return "unknown"


def finish_request(ctx: RequestContext) -> None:
    if ctx.serving is not None:  # the serving deployment's in-flight count and latency
        ctx.serving.finish(ctx)
    provider = ctx.deployment.provider if ctx.deployment is not None else "none"
    log = runtime_of(ctx).request_log
    model = model_label(ctx, log.known_labels)
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

    target = ctx.deployment
    log.writer.submit(LogRow(
        ts=ctx.started_wall,
        request_id=ctx.request_id,
        endpoint=ctx.endpoint,
        client_key_id=ctx.client.key_id if ctx.client is not None else None,
        requested_model=ctx.requested_model,
        resolved_model=ctx.model,
        provider=target.provider if target is not None else None,
        upstream_model=target.model if target is not None else None,
        status=status,
        error_type=ctx.error_type,
        error_message=redact(ctx.error_message),
        stream=int(ctx.stream),
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        usage_estimated=int(bool(ctx.metadata.get("usage_estimated"))),
        cost_usd=ctx.cost,
        latency_ms=round(ctx.latency_ms, 3),
        ttft_ms=round(ctx.ttft_ms, 3) if ctx.ttft_ms is not None else None,
        overhead_ms=round(ctx.overhead_ms, 3) if ctx.overhead_ms is not None else None,
        upstream_request_id=ctx.upstream_request_id,
        finish_reason=ctx.finish_reason,
        route=orjson.dumps(ctx.route).decode() if ctx.route else None,
        attempts=orjson.dumps(ctx.metadata["attempts"]).decode() if "attempts" in ctx.metadata else None,
        group_name=ctx.group,
        tags=orjson.dumps(ctx.metadata["tags"]).decode() if ctx.metadata.get("tags") else None,
    ))
