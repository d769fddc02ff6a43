"""Builds the ASGI app: the middleware chain, the routes and the lifespan, in one visible place."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from llm_proxy.access.key_lookup import DatabaseKeys
from llm_proxy.access.rate_windows import RateLimiter
from llm_proxy.access.spend_ledger import SpendLedger
from llm_proxy.accounts.client_keys import ClientStore
from llm_proxy.accounts.provider_secrets import ProviderSecretStore
from llm_proxy.admin.api import AdminServices
from llm_proxy.admin.routes import admin_app
from llm_proxy.core.chain import Classify, RequestEnd
from llm_proxy.core.config import Config, ConfigError, default_config_path
from llm_proxy.core.context import get_context
from llm_proxy.core.errors import error_body
from llm_proxy.core.parts import Ledger, Limiter, SnapshotSource
from llm_proxy.core.surfaces import SURFACES
from llm_proxy.endpoints.info import health, metrics_endpoint
from llm_proxy.endpoints.registry import HANDLERS
from llm_proxy.middleware.alias import AliasMiddleware
from llm_proxy.middleware.auth import AuthMiddleware
from llm_proxy.middleware.group_routing import GroupRoutingMiddleware
from llm_proxy.middleware.metering import MeteringMiddleware
from llm_proxy.middleware.rate_limit import RateLimitMiddleware
from llm_proxy.middleware.request_context import RequestContextMiddleware
from llm_proxy.middleware.stream_wrap import StreamWrapMiddleware
from llm_proxy.runtime.build import check_config
from llm_proxy.runtime.classifier import classify_via_gateway
from llm_proxy.runtime.holder import RuntimeHolder
from llm_proxy.runtime.overlay import OverlaySource, OverlayStore
from llm_proxy.runtime.request_end import finish_request
from llm_proxy.runtime.services import Services

__all__ = ["create_app", "middleware_stack"]

logger = logging.getLogger("llm_proxy")

ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


def middleware_stack(
    holder: RuntimeHolder, *, limiter: RateLimiter | None = None, ledger: SpendLedger | None = None
) -> list[Middleware]:
    """The path every request takes, outermost first. ``limiter`` and ``ledger`` hold state that
    must outlive a config reload (rate-limit windows, spend): made here when not given."""
    # What each stage is handed, typed as the core Protocol it expects (Middleware's kwargs are not checked).
    snapshots: SnapshotSource = holder
    finish: RequestEnd = finish_request
    classify: Classify = classify_via_gateway
    limits: Limiter = limiter if limiter is not None else RateLimiter()
    spend: Ledger = ledger if ledger is not None else SpendLedger(holder.current.config.database.path)
    return [
        Middleware(RequestContextMiddleware, holder=snapshots, finish=finish,  # request id, errors, request log
                   drain=holder.services.drain),  # and the requests in flight, for a graceful shutdown
        Middleware(AuthMiddleware),  # client key → identity
        Middleware(AliasMiddleware),  # body parsed once; alias → model
        Middleware(GroupRoutingMiddleware, classify=classify),  # model (or group) → candidate targets
        Middleware(RateLimitMiddleware, limiter=limits, ledger=spend),  # per-key models, limits, budgets
        Middleware(MeteringMiddleware),  # overhead header, cost
        Middleware(StreamWrapMiddleware),  # usage for streams, disconnects
    ]


class _Endpoint:
    """Marks a plain ASGI callable as such for Starlette's router (it would wrap a function)."""

    def __init__(self, handler: ASGIHandler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


async def _live(scope: Scope, receive: Receive, send: Send) -> None:
    response = Response(b'{"status":"ok"}', media_type="application/json")
    await response(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    else:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    ctx = get_context(request.scope)
    render = ctx.surface.error_body if ctx is not None and ctx.surface is not None else None
    if ctx is not None:  # rendered here, not by the outer layer: record the failure for the request log
        ctx.fail(exc.status_code, "invalid_request_error", message)
    body = (render(exc.status_code, message) if render is not None  # the surface's envelope (Anthropic's)
            else error_body(message, "invalid_request_error", "unknown_url" if exc.status_code == 404 else None))
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)


def _watch_sighup(holder: RuntimeHolder) -> Callable[[], None]:
    """``kill -HUP`` reloads the source file (standalone: only the main thread can take signals).

    Returns what stops watching. Each reload runs as a task kept referenced until it is done."""
    loop = asyncio.get_running_loop()
    if holder.source is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await holder.reload()
        except ConfigError as exc:
            logger.error("reload refused, the running configuration stays: %s", exc)
        except Exception:
            logger.exception("reload failed, the running configuration stays")

    def on_signal() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_signal)
    except (NotImplementedError, RuntimeError, AttributeError):  # no SIGHUP on this platform/loop
        return lambda: None
    return stop


def create_app(config: str | Path | Config | None = None, *, source: str | Path | None = None) -> Starlette:
    """An ASGI app serving ``config``: a Config, or the file to read it from (default
    ``$LLM_PROXY_CONFIG``, else ``config.yaml``).

    ``source`` is where a reload (SIGHUP, ``POST /api/config/reload``) reads the config from:
    by default the file ``config`` was read from. A Config given without a source is reloaded
    as it was given, with the database's overlay laid over it again.

    Mount it anywhere (``Mount("/llm", app=create_app())``); pass its lifespan to the host
    app so upstream clients and the log writer start and stop with it (see README).
    """
    if isinstance(config, Config):
        file_config = check_config(config=config)
    else:
        path = Path(config) if config is not None else default_config_path()
        file_config = check_config(path)
        source = source if source is not None else path
    db = file_config.database.path

    # Made once, outliving config reloads: database keys, rate-limit windows, the spend ledger.
    clients = ClientStore(db)
    database_keys = DatabaseKeys(clients)
    database_keys.reload()  # at build time, so `keys.open` is right before anything serves
    limiter, ledger = RateLimiter(), SpendLedger(db)
    # what the admin API stored (switches, prices, groups, provider keys) is laid over the file on every
    # build; read synchronously here, before anything serves, and off the loop on every reload
    overlays = OverlaySource(db)
    holder = RuntimeHolder.build(file_config, source=source, services=Services(database_keys=database_keys),
                                 overlays=overlays)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop_watching = _watch_sighup(holder)
        await holder.start()
        await ledger.ensure_loaded()  # spend rebuilt from the request log, off the loop
        watcher = asyncio.create_task(database_keys.watch())  # keys changed by other processes
        try:
            yield
        finally:
            stop_watching()
            watcher.cancel()
            await holder.aclose()
            await asyncio.to_thread(clients.close)
            await asyncio.to_thread(overlays.close)

    admin = admin_app(AdminServices(
        holder,
        stores={ClientStore: clients, OverlayStore: overlays.overlays, ProviderSecretStore: overlays.secrets},
        client_keys=database_keys,
        spend_ledger=ledger,
    ))

    routes = [
        *(Route(path, _Endpoint(HANDLERS[surface.name]), methods=[surface.method])
          for surface in SURFACES for path in surface.paths),
        Route("/health", _Endpoint(health(holder)), methods=["GET"]),
        Route("/health/live", _Endpoint(_live), methods=["GET"]),
        Route("/metrics", _Endpoint(metrics_endpoint), methods=["GET"]),
        Mount("/api", app=admin),  # the JSON admin API (proxy/admin)
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware_stack(holder, limiter=limiter, ledger=ledger),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.runtime_holder = holder
    app.state.drain = holder.services.drain  # what `llm-proxy serve` drains on SIGTERM (core/drain.py)
    app.state.client_keys, app.state.rate_limiter, app.state.spend_ledger = database_keys, limiter, ledger
    return app
