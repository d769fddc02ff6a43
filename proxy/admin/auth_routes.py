"""``/auth``: log in and out, who am I, change my password — and ``authenticate``, the admin
API's way of knowing the caller (the master key as a bearer token, or a session cookie).

The session cookie is HttpOnly, SameSite=Strict, Secure over https, scoped to the admin
API's path, and lives ``SESSION_MAX_AGE`` (12 h) from login. Login starts a new session
(the one the request came with, if any, ends); a password change ends every session of the
user and starts a new one. Failed logins are throttled (``LoginThrottle``: a growing backoff per
user name, a window per client address — the address the server vouches for, see
``server.forwarded_allow_ips``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.accounts.login_throttle import LoginThrottle
from llm_proxy.accounts.sessions import COOKIE_NAME, Session, SessionStore
from llm_proxy.accounts.users import MAX_PASSWORD, AccountError, User, UserStore
from llm_proxy.admin.api import (
    AdminError,
    AdminRoute,
    Principal,
    admin_route,
    in_thread,
    json_response,
    master_key_only,
    read_json,
    services,
    store,
)
from llm_proxy.admin.users_routes import admin_error

__all__ = ["ROUTES", "authenticate"]


async def authenticate(request: Request) -> Principal | None:
    """A bearer token must be the master key; otherwise a live session cookie is needed."""
    if "authorization" in request.headers:
        return await master_key_only(request)
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie:
        return None
    session = await in_thread(store(request, SessionStore).resolve, cookie)
    if session is None:
        return None
    user = session.user
    return Principal(name=user.username, role=user.role, via="session", user_id=user.id,
                     must_change_password=user.must_change_password, session_id=session.id,
                     csrf_token=session.csrf_token)


def _throttle(request: Request) -> LoginThrottle:
    return services(request).login_throttle


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refuse_if_waiting(request: Request, username: str) -> LoginThrottle:
    """429 while the name or the address must wait."""
    throttle = _throttle(request)
    wait = throttle.retry_after(username, _address(request))
    if wait is not None:
        raise AdminError(429, f"Too many failed logins; try again in {wait} s.", "too_many_attempts",
                         "rate_limit_error", headers={"Retry-After": str(wait)})
    return throttle


def _check_throttle(request: Request, username: str, *, known: bool) -> LoginThrottle:
    """429 while the name or the address must wait; else the attempt is counted, with no await in
    between, so parallel attempts cannot all pass the check first."""
    throttle = _refuse_if_waiting(request, username)
    throttle.attempt(username, _address(request), known=known)
    return throttle


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path") or "/"  # where the admin API is mounted (/api)


def _answer(request: Request, session: Session, user: User) -> Response:
    """The login/password-change answer: the user, the CSRF token and the new cookie."""
    response = json_response({"user": user.public(), "csrf_token": session.csrf_token,
                              "must_change_password": user.must_change_password,
                              "expires_at": session.expires_at})
    assert session.cookie is not None
    response.set_cookie(COOKIE_NAME, session.cookie, max_age=store(request, SessionStore).max_age,
                        path=_cookie_path(request), secure=request.url.scheme == "https",
                        httponly=True, samesite="strict")
    return response


def _credentials(body: dict[str, Any], *names: str) -> list[str]:
    values = [body.get(n) for n in names]
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_PASSWORD for v in values):
        raise AdminError(400, f"Send {' and '.join(names)} as strings of at most {MAX_PASSWORD} characters.",
                         "invalid_value")
    return values  # type: ignore[return-value]


def _start_session(sessions: SessionStore, users: UserStore, user: User, old_cookie: str | None) -> Session:
    if old_cookie:  # rotation: the session the browser had before this login ends
        old = sessions.resolve(old_cookie)
        if old is not None:
            sessions.revoke(old.id)
    users.record_login(user.id)
    return sessions.issue(users.get(user.id) or user)


async def login(request: Request) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise AdminError(415, "Send the login as JSON (Content-Type: application/json).", "unsupported_media_type")
    username, password = _credentials(await read_json(request), "username", "password")
    users = store(request, UserStore)
    _refuse_if_waiting(request, username)  # before any database work: a flood of refusals stays cheap
    known = await in_thread(users.by_name, username) is not None  # which throttle table the name goes in
    throttle = _check_throttle(request, username, known=known)
    user = await in_thread(users.authenticate, username, password)
    if user is None:
        throttle.failed(username, _address(request), known=known)
        raise AdminError(401, "Invalid username or password.", "invalid_credentials", "authentication_error")
    throttle.succeeded(username, _address(request))
    if user.disabled:
        raise AdminError(403, "This account is disabled.", "account_disabled", "permission_error")
    session = await in_thread(_start_session, store(request, SessionStore), users, user,
                              request.cookies.get(COOKIE_NAME))
    return _answer(request, session, session.user)


async def logout(request: Request) -> Response:
    principal: Principal = request.state.principal
    if principal.session_id is not None:
        await in_thread(store(request, SessionStore).revoke, principal.session_id)
    response = json_response({"ok": True})
    response.delete_cookie(COOKIE_NAME, path=_cookie_path(request), secure=request.url.scheme == "https",
                           httponly=True, samesite="strict")
    return response


async def me(request: Request) -> Response:
    principal: Principal = request.state.principal
    if principal.user_id is None:
        user: dict[str, Any] = {"username": principal.name, "role": principal.role}
    else:
        found = await in_thread(store(request, UserStore).get, principal.user_id)
        if found is None:
            raise AdminError(401, "Authentication required.", "unauthenticated", "authentication_error")
        user = found.public()
    return json_response({"user": user, "via": principal.via, "csrf_token": principal.csrf_token,
                          "must_change_password": principal.must_change_password})


async def change_password(request: Request) -> Response:
    principal: Principal = request.state.principal
    if principal.user_id is None or principal.session_id is None:
        raise AdminError(400, "The master key has no password; log in as a user to change one.", "not_a_user")
    current, new = _credentials(await read_json(request), "current_password", "new_password")
    # a stolen session must not guess the password
    throttle = _check_throttle(request, principal.name, known=True)
    users, sessions = store(request, UserStore), store(request, SessionStore)
    try:
        user = await in_thread(users.change_password, principal.user_id, current, new)
    except AccountError as exc:
        if exc.code == "wrong_password":
            throttle.failed(principal.name, _address(request), known=True)
        else:
            throttle.succeeded(principal.name, _address(request))
        raise admin_error(exc) from None
    throttle.succeeded(principal.name, _address(request))
    await in_thread(sessions.revoke, principal.session_id)
    session = await in_thread(sessions.issue, user)
    return _answer(request, session, user)


ROUTES: list[AdminRoute] = [
    admin_route("POST", "/auth/login", login, "public"),
    admin_route("POST", "/auth/logout", logout, "viewer", before_password_change=True),
    admin_route("GET", "/auth/me", me, "viewer", before_password_change=True),
    admin_route("POST", "/auth/password", change_password, "viewer", before_password_change=True),
]
