"""Resolves the requested name to a concrete model, then to the targets that can serve it.

A model group (``dispatcher``, ``fast-flow``) is resolved fully first — heuristic rules,
conditions or a classifier, recursing through groups of groups — and the chain of steps,
each with its reason, goes to the request log and the ``x-llm-proxy-route`` header. A
concrete name is served by every enabled provider that lists it, in config order;
``provider/model`` pins one provider and passes any model name through. The stage reads the
snapshot's routing table; a classifier group's question goes through ``classify``, which the
app hands in (it is a request of its own, dispatched below the chain).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core.chain import Classify
from llm_proxy.core.context import get_context
from llm_proxy.core.scope import header

__all__ = ["GroupRoutingMiddleware"]


class GroupRoutingMiddleware:
    def __init__(self, app: ASGIApp, *, classify: Classify) -> None:
        self.app = app
        self.classify = classify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or ctx.model is None:
            await self.app(scope, receive, send)
            return
        routes = ctx.runtime.routes
        ctx.tags_header = header(scope, b"x-llm-proxy-tags")
        if routes.is_group(ctx.model):
            ctx.group = ctx.model
            ctx.strategy = routes.group_strategy(ctx.model)
            classify = self.classify
            model, steps = await routes.resolve_group(
                ctx.model, ctx.body or {}, ctx.tags_header, lambda selector, prompt: classify(ctx, selector, prompt)
            )
            ctx.route.extend(steps)
            ctx.model = model
        ctx.candidates = routes.candidates(ctx.model, ctx.requested_model, ctx.tags_header)
        if not ctx.route and not routes.may_add_steps(ctx.model):
            await self.app(scope, receive, send)
            return

        async def send_with_route(message: Message) -> None:
            if message["type"] == "http.response.start" and ctx.route:
                route = "; ".join(ctx.route).encode("latin-1", "replace")
                message["headers"] = [*message.get("headers", ()), (b"x-llm-proxy-route", route)]
            await send(message)

        await self.app(scope, receive, send_with_route)
