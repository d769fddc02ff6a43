"""Read-only endpoints: ``/v1/models``, ``/health`` and ``/metrics``."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy.core.context import SCOPE_KEY, RequestContext
from llm_proxy.core.errors import send_json
from llm_proxy.runtime.holder import RuntimeHolder
from llm_proxy.runtime.snapshot import runtime_of

__all__ = ["health", "list_models", "metrics_endpoint"]

_CREATED = int(time.time())


async def list_models(scope: Scope, receive: Receive, send: Send) -> None:
    """OpenAI's list shape; ``owned_by`` names the provider that serves the model."""
    ctx: RequestContext = scope["state"][SCOPE_KEY]
    runtime = runtime_of(ctx)
    aliases, providers = runtime.routes.aliases, runtime.upstreams.providers
    data = []
    seen: set[str] = set()
    for name, targets in runtime.routes.models.items():
        enabled = [t for t in targets if providers[t.provider].enabled]
        if enabled and name not in seen:
            seen.add(name)
            data.append({"id": name, "object": "model", "created": _CREATED, "owned_by": enabled[0].provider})
    for alias, target in aliases.items():
        final = target
        while final in aliases:
            final = aliases[final]
        if final in seen and alias not in seen:
            seen.add(alias)
            owner = next(d["owned_by"] for d in data if d["id"] == final)
            data.append({"id": alias, "object": "model", "created": _CREATED, "owned_by": owner})
    for name, group in runtime.config.groups.items():  # groups are models a client can name
        entry: dict[str, object] = {"id": name, "object": "model", "created": _CREATED, "owned_by": "llm-proxy"}
        if group.logic_level is not None:
            entry["logic_level"] = group.logic_level
        if group.primary_use:
            entry["primary_use"] = group.primary_use
        data.append(entry)
    allowed = ctx.client.allowed_models if ctx.client is not None else None
    if allowed is not None:  # a key limited to some models sees those (and aliases of them) only
        data = [d for d in data if d["id"] in allowed or _final(aliases, str(d["id"])) in allowed]
    ctx.status = 200
    await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))


def _final(aliases: Mapping[str, str], name: str) -> str:
    while name in aliases:
        name = aliases[name]
    return name


def health(holder: RuntimeHolder) -> ASGIApp:
    """``/health``: liveness and readiness in one answer; 503 when no provider is usable, and as
    soon as a shutdown begins (load balancers stop sending while the streams in flight finish).

    It needs no key, so it shows states only (a provider enabled or disabled, breakers not
    closed), never an error's text or a reason: those may carry what an upstream said about
    another client's request, and are on the admin API's ``GET /api/providers``."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        runtime = holder.current
        log = runtime.request_log.writer
        providers = {name: p.status() for name, p in runtime.upstreams.providers.items()}
        for name, info in providers.items():
            open_breakers = runtime.routes.learned.breaker_states(name)
            if open_breakers:
                info["breakers"] = open_breakers
        draining = holder.services.drain.draining
        ready = holder.started and not draining and any(p.enabled for p in runtime.upstreams.providers.values())
        body = {
            "status": "ok" if ready else "shutting_down" if draining else "unavailable",
            "live": True,
            "ready": ready,
            "providers": providers,
            "request_log": {"queued": log.queued, "written": log.written},
        }
        await send_json(send, 200 if ready else 503, orjson.dumps(body))

    return endpoint


async def metrics_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    body = generate_latest(REGISTRY)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
