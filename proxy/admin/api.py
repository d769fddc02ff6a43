"""The admin API's frame: a route table per area, one guard for who may call what.

Each area (users, keys, usage, ...) is a module exposing ``ROUTES: list[AdminRoute]``.
``build_admin_app`` mounts them behind one guard: the caller is authenticated (the
master key as a bearer token, or a session), a ``viewer`` may only read, and the answer
is JSON — errors in the same ``{"error": {...}}`` shape as the rest of the gateway.
Stores are made once per app and reached with ``store(request, StoreClass)``; every
store takes the database path, and its methods are called off the event loop.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.errors import error_body
from proxy.runtime import RuntimeHolder

__all__ = ["AdminError", "AdminRoute", "Principal", "admin_route", "build_admin_app", "holder", "store"]

Role = Literal["viewer", "admin"]
Endpoint = Callable[[Request], Awaitable[Response]]
Authenticator = Callable[[Request], Awaitable["Principal | None"]]
T = TypeVar("T")


class AdminRoute(NamedTuple):
    method: str
    path: str
    endpoint: Endpoint
    role: Role  # the least role that may call it


def admin_route(method: str, path: str, endpoint: Endpoint, role: Role = "admin") -> AdminRoute:
    return AdminRoute(method, path, endpoint, role)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the admin API. ``via`` is ``master_key`` or ``session``."""

    name: str
    role: Role
    via: str
    user_id: int | None = None
    must_change_password: bool = False


class AdminError(Exception):
    """An admin failure rendered as ``{"error": {...}}`` with its status."""

    def __init__(self, status: int, message: str, code: str | None = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type


def holder(request: Request) -> RuntimeHolder:
    return request.app.state.holder


def store(request: Request, cls: Callable[[str], T]) -> T:
    """The app's one instance of a store class, made on first use from the database path."""
    stores: dict[Any, Any] = request.app.state.stores
    made = stores.get(cls)
    if made is None:
        made = stores[cls] = cls(holder(request).current.config.database.path)
    return made


async def master_key_only(request: Request) -> Principal | None:
    """The bearer master key, compared in constant time: automation's way in."""
    master = holder(request).current.config.auth.master_key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if master and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), master.encode()):
        return Principal(name="master", role="admin", via="master_key")
    return None


def _error(status: int, message: str, code: str | None, type: str = "invalid_request_error") -> Response:
    return Response(error_body(message, type, code), status_code=status, media_type="application/json")


def _guarded(route: AdminRoute, authenticate: Authenticator) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        principal = await authenticate(request)
        if principal is None:
            return _error(401, "Authentication required.", "unauthenticated", "authentication_error")
        if route.role == "admin" and principal.role != "admin":
            return _error(403, "This needs the admin role.", "forbidden", "permission_error")
        request.state.principal = principal
        try:
            return await route.endpoint(request)
        except AdminError as exc:
            return _error(exc.status, exc.message, exc.code, exc.type)

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), "unknown_url" if exc.status_code == 404 else None)


def build_admin_app(
    runtime_holder: RuntimeHolder,
    tables: Sequence[Sequence[AdminRoute]],
    authenticate: Authenticator = master_key_only,
) -> Starlette:
    routes = [
        Route(r.path, _guarded(r, authenticate), methods=[r.method])
        for table in tables
        for r in table
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.holder = runtime_holder
    app.state.stores = {}
    return app
