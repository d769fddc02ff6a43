"""Cost metering: prices the usage a response reported and measures the gateway's own time.

``x-llm-proxy-overhead-ms`` on the response is the time from request arrival to response
start minus the time spent waiting on the upstream — what the gateway itself added. Cost
is computed once the response has ended (a stream's usage arrives last) by the snapshot's
pricing part: the serving provider's prices first, the model creator's after.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core.context import get_context

__all__ = ["MeteringMiddleware"]


class MeteringMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or not ctx.endpoint:
            await self.app(scope, receive, send)
            return

        async def send_with_overhead(message: Message) -> None:
            if message["type"] == "http.response.start":
                overhead = (time.perf_counter() - ctx.started) - ctx.upstream_elapsed
                ctx.overhead_ms = overhead * 1000.0
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-llm-proxy-overhead-ms", b"%.3f" % ctx.overhead_ms),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_overhead)
        finally:
            if ctx.cost is None:  # an endpoint may have priced the request itself (per image)
                ctx.cost = ctx.runtime.pricing.cost(ctx.deployment, ctx.usage, ctx.model, ctx.group)
