"""Config reload and the routing state the gateway has learned (breakers, latency, load)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.admin.api import AdminError, AdminRoute, admin_route, holder
from llm_proxy.core.config import ConfigError

__all__ = ["ROUTES"]


def _json(data: object) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


async def reload_config(request: Request) -> Response:
    """Re-read the config file and swap it in; requests in flight finish on the old snapshot."""
    try:
        runtime = await holder(request).reload()
    except ConfigError as exc:
        raise AdminError(400, str(exc), "invalid_config") from None
    return _json({"reloaded": True, "providers": len(runtime.upstreams.providers),
                  "models": len(runtime.routes.models),
                  "groups": len(runtime.config.groups)})


async def routing_state(request: Request) -> Response:
    """Every deployment with what the strategies and breakers see right now."""
    runtime = holder(request).current
    state = runtime.routes.learned
    deployments = []
    for model, targets in sorted(runtime.routes.models.items()):
        for t in targets:
            d = state.known(t)  # a deployment never used has no state yet: closed, idle, unmeasured
            deployments.append({
                "model": model, "provider": t.provider, "upstream_model": t.model, "weight": t.weight,
                "priority": t.priority, "tags": sorted(t.tags), "rpm": t.rpm, "tpm": t.tpm,
                "breaker": d.breaker.state if d else "closed", "in_flight": d.in_flight if d else 0,
                "latency_ms": None if d is None or d.latency_ms is None else round(d.latency_ms, 2),
                "ttft_ms": None if d is None or d.ttft_ms is None else round(d.ttft_ms, 2),
            })
    return _json({"mode": runtime.config.routing.mode, "strategy": runtime.config.routing.strategy,
                  "deployments": deployments})


ROUTES: list[AdminRoute] = [
    admin_route("POST", "/config/reload", reload_config, role="admin"),
    admin_route("GET", "/routing", routing_state, role="viewer"),
]
