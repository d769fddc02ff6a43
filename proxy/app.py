"""Builds the ASGI app: the middleware chain, the routes and the lifespan, in one visible place."""

from __future__ import annotations

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

from middleware.alias import AliasMiddleware
from middleware.auth import AuthMiddleware
from middleware.group_routing import GroupRoutingMiddleware
from middleware.metering import MeteringMiddleware
from middleware.rate_limit import rate_limit
from middleware.request_context import RequestContextMiddleware
from middleware.stream_wrap import StreamWrapMiddleware
from proxy.admin.routes import admin_app
from proxy.config import Config
from proxy.context import get_context
from proxy.endpoints.chat import chat_completions
from proxy.endpoints.embeddings import create_embeddings
from proxy.endpoints.images import generate_images
from proxy.endpoints.info import health, list_models, metrics_endpoint
from proxy.endpoints.messages import count_tokens, messages
from proxy.endpoints.responses import responses
from proxy.errors import error_body
from proxy.runtime import Runtime, RuntimeHolder, check_config

__all__ = ["create_app", "middleware_stack"]

ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


def middleware_stack(holder: RuntimeHolder) -> list[Middleware]:
    """The path every request takes, outermost first."""
    return [
        Middleware(RequestContextMiddleware, holder=holder),  # request id, error shaping, request log
        Middleware(AuthMiddleware),  # client key → identity
        Middleware(AliasMiddleware),  # body parsed once; alias → model
        Middleware(GroupRoutingMiddleware),  # model (or group) → candidate targets
        Middleware(rate_limit),  # slot: not installed until limits exist
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
    if ctx is not None:  # rendered here, not by the outer layer: record the failure for the request log
        ctx.fail(exc.status_code, "invalid_request_error", message)
    return Response(error_body(message, "invalid_request_error", "unknown_url" if exc.status_code == 404 else None),
                    status_code=exc.status_code, media_type="application/json", headers=exc.headers)


def create_app(config: str | Path | Config | None = None) -> Starlette:
    """An ASGI app from a config path (default ``config.yaml``) or a Config object.

    Mount it anywhere (``Mount("/llm", app=create_app())``); pass its lifespan to the host
    app so upstream clients and the log writer start and stop with it (see README).
    """
    cfg = config if isinstance(config, Config) else check_config(config)
    holder = RuntimeHolder(Runtime.build(cfg))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = holder.current
        await runtime.start()
        try:
            yield
        finally:
            await runtime.aclose()

    chat = _Endpoint(chat_completions)
    models = _Endpoint(list_models)
    embeddings = _Endpoint(create_embeddings)
    images = _Endpoint(generate_images)
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/images/generations", images, methods=["POST"]),
        *(Route(prefix + path, _Endpoint(handler), methods=["POST"])
          for prefix in ("/v1", "")
          for path, handler in (("/messages", messages), ("/messages/count_tokens", count_tokens),
                                ("/responses", responses))),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/health", _Endpoint(health(holder)), methods=["GET"]),
        Route("/health/live", _Endpoint(_live), methods=["GET"]),
        Route("/metrics", _Endpoint(metrics_endpoint), methods=["GET"]),
        Mount("/api", app=admin_app(holder)),  # the JSON admin API (proxy/admin)
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware_stack(holder),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.runtime_holder = holder
    return app
