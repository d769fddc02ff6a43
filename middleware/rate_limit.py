"""Admission per database key: allowed models, budgets, concurrency, requests and tokens per minute.

Sits after group routing, so the requested name, the group and the resolved model are known.
Config keys carry no policy and pass with one attribute check (``client.metered``), which
keeps the gateway's throughput where it was. For a database key, every check and every
reservation happens without an ``await`` in between (exact under concurrency: see the
limiter the app hands in, ``llm_proxy.access.rate_windows``); when the response has ended —
stream finished, client gone or upstream failed — the ``finally`` below corrects the token
reservation to the real usage and charges the key's ledger with ``ctx.cost``, which the
metering layer (inside this one) has set by then, partial streams included.

A model is allowed when the key has no list, or when the list names the requested model
or alias, the group it named, or the concrete model it resolved to (``provider/model``
pins must be listed as written).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core.context import ClientIdentity, RequestContext, get_context
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.parts import Ledger, Limiter
from llm_proxy.core.tokens import token_estimate

__all__ = ["RateLimitMiddleware", "model_allowed"]


def model_allowed(ctx: RequestContext, allowed: frozenset[str]) -> bool:
    return ctx.requested_model in allowed or ctx.group in allowed or ctx.model in allowed


def _cost_estimate(ctx: RequestContext, prompt: int, completion: int) -> float:
    """What the request would cost at its first candidate's price, if it used its whole cap."""
    if not ctx.candidates:
        return 0.0
    return ctx.runtime.pricing.estimate(ctx.candidates[0], prompt, completion)


def _budgeted(client: ClientIdentity) -> bool:
    return (client.budget_day_usd is not None or client.budget_month_usd is not None
            or client.budget_total_usd is not None)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limiter: Limiter, ledger: Ledger) -> None:
        self.app = app
        self.limiter = limiter
        self.ledger = ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or ctx.client is None or not ctx.client.metered or ctx.model is None:
            await self.app(scope, receive, send)
            return
        client = ctx.client
        if not self.ledger.loaded:  # mounted without the lifespan: rebuild on first use
            await self.ledger.ensure_loaded()
        if client.allowed_models is not None and not model_allowed(ctx, client.allowed_models):
            raise ProxyError(403, f"This API key is not allowed to use the model `{ctx.requested_model}`.",
                             code="model_not_allowed", param="model")

        # From here to the try: no await, so the checks and the reservations are one step.
        budgeted = _budgeted(client)
        limited = client.rpm is not None or client.tpm is not None or client.max_concurrent is not None
        prompt, completion = token_estimate(ctx) if budgeted or client.tpm is not None else (0, 0)
        reserved = _cost_estimate(ctx, prompt, completion) if budgeted else 0.0
        if budgeted:
            self.ledger.check(client)
        admission = self.limiter.admit(client, prompt + completion) if limited else None
        self.ledger.reserve(client.key_id, reserved)
        headers = admission.headers if admission is not None else None

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *(headers or ())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits if headers else send)
        finally:
            if admission is not None:
                admission.release(ctx.usage.total_tokens if ctx.usage is not None else 0)
            if ctx.cost is None and ctx.usage is not None:  # metering not in the chain: price it here
                ctx.cost = ctx.runtime.pricing.cost(ctx.deployment, ctx.usage, ctx.model, ctx.group)
            self.ledger.settle(client.key_id, ctx.started_wall, reserved, ctx.cost)
            for started_wall, cost in ctx.metadata.get("side_costs", ()):  # a group's classifier call
                self.ledger.settle(client.key_id, started_wall, 0.0, cost)
