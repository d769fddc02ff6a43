"""The admin API's frame: a route table per area, one guard for who may call what.

Each area (users, keys, usage, ...) is a module exposing ``ROUTES: list[AdminRoute]``.
``build_admin_app`` mounts them behind one guard: the caller is authenticated (the
master key as a bearer token, or a session), a ``viewer`` may only read, and the answer
is JSON — errors in the same ``{"error": {...}}`` shape as the rest of the gateway.
What the routes work with is one ``AdminServices``, handed to ``build_admin_app`` and reached
with ``services(request)``: the runtime holder, the gateway's key index and spend ledger, and
the stores, made once per app and reached with ``store(request, StoreClass)``; every store
takes the database path, and its methods are called off the event loop (``in_thread``).

The guard, in order: ``public`` routes (login) skip it; otherwise no principal → 401; a
session (cookie) calling a state-changing method without the right ``x-csrf-token`` → 403
``csrf_failed`` (the master key travels in a header no other site can make a browser send,
so it needs none); a session whose user must change the password may only call routes
marked ``before_password_change`` → 403 ``password_change_required``; a viewer on an admin
route → 403 ``forbidden``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar, cast

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_proxy.access.key_lookup import DatabaseKeys
from llm_proxy.access.spend_ledger import SpendLedger
from llm_proxy.accounts.login_throttle import LoginThrottle
from llm_proxy.core.errors import error_body
from llm_proxy.runtime.holder import RuntimeHolder

__all__ = [
    "AdminError",
    "AdminRoute",
    "AdminServices",
    "Principal",
    "admin_route",
    "build_admin_app",
    "holder",
    "in_thread",
    "json_response",
    "master_key_only",
    "read_json",
    "services",
    "store",
]

Role = Literal["public", "viewer", "admin"]
Endpoint = Callable[[Request], Awaitable[Response]]
Authenticator = Callable[[Request], Awaitable["Principal | None"]]
T = TypeVar("T")
P = ParamSpec("P")

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"


class AdminRoute(NamedTuple):
    method: str
    path: str
    endpoint: Endpoint
    role: Role  # the least role that may call it; "public" needs no authentication
    before_password_change: bool = False  # callable while the user must still change the password


def admin_route(
    method: str, path: str, endpoint: Endpoint, role: Role = "admin", *, before_password_change: bool = False
) -> AdminRoute:
    return AdminRoute(method, path, endpoint, role, before_password_change)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the admin API. ``via`` is ``master_key`` or ``session``."""

    name: str
    role: Literal["viewer", "admin"]
    via: str
    user_id: int | None = None
    must_change_password: bool = False
    session_id: str | None = field(default=None, repr=False)
    csrf_token: str | None = field(default=None, repr=False)


class AdminError(Exception):
    """An admin failure rendered as ``{"error": {...}}`` with its status (and headers, e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class AdminServices:
    """What the admin routes work with, made once by the app that mounts them.

    ``client_keys`` and ``spend_ledger`` are the gateway's own (its key index, rebuilt after a
    key changes, and the spend budgets are checked against); None when the admin app runs
    without a gateway. ``stores`` holds the app's store instances by class; a store asked for
    that is not there is made on first use from the database path."""

    holder: RuntimeHolder
    stores: dict[type, object] = field(default_factory=dict)
    client_keys: DatabaseKeys | None = None
    spend_ledger: SpendLedger | None = None
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    overlay_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one overlay change at a time

    def store(self, cls: Callable[[str], T]) -> T:
        made = self.stores.get(cast(type, cls))
        if made is None:
            made = self.stores[cast(type, cls)] = cls(self.holder.current.config.database.path)
        return cast(T, made)


def services(request: Request) -> AdminServices:
    found = request.app.state.services
    assert isinstance(found, AdminServices)
    return found


def holder(request: Request) -> RuntimeHolder:
    return services(request).holder


def store(request: Request, cls: Callable[[str], T]) -> T:
    """The app's one instance of a store class, made on first use from the database path."""
    return services(request).store(cls)


async def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call (SQLite, password hashing) in a worker thread."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


async def read_json(request: Request, limit: int = 1 << 20) -> dict[str, Any]:
    """The request body as a JSON object (at most ``limit`` bytes), or a 4xx saying what is wrong."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise AdminError(413, f"The request body is larger than {limit} bytes.", "body_too_large")
    try:
        body = orjson.loads(bytes(raw)) if raw else None
    except orjson.JSONDecodeError:
        raise AdminError(400, "The request body is not valid JSON.", "invalid_json") from None
    if not isinstance(body, dict):
        raise AdminError(400, "The request body must be a JSON object.", "invalid_json")
    return body


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def master_key_only(request: Request) -> Principal | None:
    """The bearer master key, compared in constant time: automation's way in."""
    master = holder(request).current.config.auth.master_key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if master and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), master.encode()):
        return Principal(name="master", role="admin", via="master_key")
    return None


def _error(
    status: int, message: str, code: str | None, type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(error_body(message, type, code), status_code=status, media_type="application/json",
                    headers=headers)


def _refusal(route: AdminRoute, principal: Principal, request: Request) -> Response | None:
    if principal.via == "session" and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not principal.csrf_token or not hmac.compare_digest(sent.encode(), principal.csrf_token.encode()):
            return _error(403, "Missing or wrong CSRF token: send the csrf_token from login or GET /auth/me "
                          f"in the {CSRF_HEADER} header.", "csrf_failed", "permission_error")
    if principal.must_change_password and not route.before_password_change:
        return _error(403, "The password must be changed first (POST /auth/password).",
                      "password_change_required", "permission_error")
    if route.role == "admin" and principal.role != "admin":
        return _error(403, "This needs the admin role.", "forbidden", "permission_error")
    return None


def _guarded(route: AdminRoute, authenticate: Authenticator) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            if route.role != "public":
                principal = await authenticate(request)
                if principal is None:
                    return _error(401, "Authentication required.", "unauthenticated", "authentication_error")
                refused = _refusal(route, principal, request)
                if refused is not None:
                    return refused
                request.state.principal = principal
            response = await route.endpoint(request)
        except AdminError as exc:
            response = _error(exc.status, exc.message, exc.code, exc.type, exc.headers)
        response.headers.setdefault("cache-control", "no-store")  # answers carry tokens and account data
        return response

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), "unknown_url" if exc.status_code == 404 else None)


def build_admin_app(
    admin_services: AdminServices,
    tables: Sequence[Sequence[AdminRoute]],
    authenticate: Authenticator = master_key_only,
) -> Starlette:
    routes = [
        Route(r.path, _guarded(r, authenticate), methods=[r.method])
        for table in tables
        for r in table
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.services = admin_services
    return app
