"""Resolves the requested name to a concrete model, then to the targets that can serve it.

A model group (``dispatcher``, ``fast-flow``) is resolved fully first — heuristic rules,
conditions or a classifier, recursing through groups of groups — and the chain of steps,
each with its reason, goes to the request log and the ``x-llm-proxy-route`` header. A
concrete name is served by every enabled provider that lists it, in config order;
``provider/model`` pins one provider and passes any model name through.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy.core.context import RequestContext, Target, get_context
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.scope import header
from llm_proxy.routing.groups import facts_from
from llm_proxy.runtime.request_end import finish_request, price

__all__ = ["GroupRoutingMiddleware", "classify_via_gateway", "resolve_targets"]


def resolve_targets(ctx: RequestContext, model: str) -> list[Target]:
    """The enabled deployments of ``model``, narrowed to the routing mode's tag (local/cloud)."""
    runtime = ctx.runtime
    targets = runtime.targets(model, ctx.requested_model)
    mode = runtime.config.routing.mode
    if ctx.tags_header is not None or mode != "auto":
        wanted = _mode(ctx, mode)
        if wanted != "auto":
            targets = [t for t in targets if wanted in t.tags]
            if not targets:
                raise ProxyError(503, f"No {wanted} deployment serves `{model}` (routing mode {wanted}).",
                                 type="server_error", code="no_deployment_for_mode")
    return targets


def _mode(ctx: RequestContext, default: str) -> str:
    """A request may ask for a routing mode with the tag ``local``, ``cloud`` or ``auto``."""
    if ctx.tags_header:
        for tag in ctx.tags_header.decode("latin-1").lower().split(","):
            if tag.strip() in ("local", "cloud", "auto"):
                return tag.strip()
    return default


async def classify_via_gateway(ctx: RequestContext, model: str, prompt: str) -> str:
    """Ask ``model`` through the gateway's own dispatch, so any provider can classify.

    The call is a request of its own: one request-log row (endpoint ``classifier``) with
    its tokens and cost, sharing the client's request id as a prefix.
    """
    from llm_proxy.upstream.dispatch import complete_chat  # the dispatch step sits below the chain

    sub = RequestContext(ctx.request_id + ".classifier", ctx.runtime, "classifier")
    sub.client = ctx.client
    sub.body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0}
    sub.body_dirty = True
    sub.requested_model = sub.model = model
    try:
        sub.candidates = resolve_targets(sub, model)
        completion = await complete_chat(sub)
        sub.status = 200
        choices = completion.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content") or "")
    except ProxyError as exc:
        sub.fail(exc.status, exc.type, exc.message)
        raise
    except BaseException:
        sub.fail(499, "cancelled", "classifier call cancelled or failed")
        raise
    finally:
        sub.finished_at = time.perf_counter()
        sub.cost = price(sub)
        finish_request(sub)
        if sub.cost:  # the client's key pays for it too (charged by the rate-limit layer)
            ctx.metadata.setdefault("side_costs", []).append((sub.started_wall, sub.cost))


class GroupRoutingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or ctx.model is None:
            await self.app(scope, receive, send)
            return
        runtime = ctx.runtime
        ctx.tags_header = header(scope, b"x-llm-proxy-tags")
        if runtime.groups.is_group(ctx.model):
            ctx.group = ctx.model
            ctx.strategy = runtime.config.groups[ctx.model].deployment_strategy
            facts = facts_from(ctx.body or {}, ctx.tags_header)
            model, steps = await runtime.groups.resolve(
                ctx.model, facts, lambda selector, prompt: classify_via_gateway(ctx, selector, prompt)
            )
            ctx.route.extend(steps)
            while model in runtime.aliases:  # a group may name an alias
                ctx.route.append(f"alias {model} -> {runtime.aliases[model]}")
                model = runtime.aliases[model]
            ctx.model = model
        ctx.candidates = resolve_targets(ctx, ctx.model)
        # the dispatch step may add steps too (a context fallback, a deployment rule)
        if not ctx.route and ctx.model not in runtime.context_fallbacks and ctx.model not in runtime.deployment_rules:
            await self.app(scope, receive, send)
            return

        async def send_with_route(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and ctx.route:
                route = "; ".join(ctx.route).encode("latin-1", "replace")
                message["headers"] = [*message.get("headers", ()), (b"x-llm-proxy-route", route)]
            await send(message)

        await self.app(scope, receive, send_with_route)
