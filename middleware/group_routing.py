"""Resolves the (alias-resolved) model name to the concrete targets that can serve it.

A name is served by every enabled provider that lists it, in config order; ``provider/model``
pins one provider and passes any model name through to it (for self-hosted servers whose
models are not listed). Model groups (heuristic, classifier, groups of groups) resolve here
too once they exist: a group resolves to a concrete model first, then to targets.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.context import RequestContext, Target, get_context
from proxy.errors import ProxyError, not_found_model

__all__ = ["GroupRoutingMiddleware", "resolve_targets"]


def resolve_targets(ctx: RequestContext, model: str) -> list[Target]:
    runtime = ctx.runtime
    targets = runtime.models.get(model)
    if targets is None:
        provider, sep, rest = model.partition("/")
        if sep and rest and provider in runtime.providers:
            targets = [Target(provider, rest)]
        else:
            raise not_found_model(ctx.requested_model or model)
    enabled = [t for t in targets if runtime.providers[t.provider].enabled]
    if not enabled:
        reasons = "; ".join(
            f"{t.provider}: {runtime.providers[t.provider].disabled_reason}" for t in targets
        )
        raise ProxyError(
            503, f"No enabled provider serves `{model}` ({reasons}).", type="server_error", code="provider_disabled"
        )
    return enabled


class GroupRoutingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is not None and ctx.model is not None:
            ctx.candidates = resolve_targets(ctx, ctx.model)
        await self.app(scope, receive, send)
