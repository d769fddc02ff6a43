"""``/users``: list (viewer), create, change and delete dashboard users (admin).

Answers never carry a password hash. Deleting, demoting or disabling the last active admin
is refused, so the dashboard can always be administered (``llm-proxy reset-admin`` is the
way back in when its password is lost).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.accounts.users import AccountError, UserStore
from llm_proxy.admin.api import (
    AdminError,
    AdminRoute,
    admin_route,
    in_thread,
    json_response,
    read_json,
    store,
)

__all__ = ["ROUTES", "admin_error"]

_STATUS = {"user_not_found": 404, "username_taken": 409, "last_admin": 409}
_PATCHABLE = ("role", "password", "disabled", "must_change_password")


def admin_error(exc: AccountError) -> AdminError:
    """An account refusal as an API error (400 unless it is a conflict or a missing user)."""
    return AdminError(_STATUS.get(exc.code, 400), exc.message, exc.code)


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise AdminError(400, f"{name} must be true or false.", "invalid_value")
    return value


async def list_users(request: Request) -> Response:
    users = await in_thread(store(request, UserStore).list_users)
    return json_response({"data": [u.public() for u in users]})


async def get_user(request: Request) -> Response:
    user = await in_thread(store(request, UserStore).get, request.path_params["user_id"])
    if user is None:
        raise AdminError(404, "No such user.", "user_not_found")
    return json_response(user.public())


async def create_user(request: Request) -> Response:
    body = await read_json(request)
    must_change = _flag(body, "must_change_password")
    try:
        user = await in_thread(
            store(request, UserStore).create, body.get("username"), body.get("password"),
            body.get("role", "viewer"), True if must_change is None else must_change,
        )
    except AccountError as exc:
        raise admin_error(exc) from None
    return json_response(user.public(), status=201)


async def update_user(request: Request) -> Response:
    body = await read_json(request)
    unknown = sorted(set(body) - set(_PATCHABLE))
    if unknown:
        raise AdminError(400, f"Unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_PATCHABLE)}.",
                         "unknown_field")
    disabled, must_change = _flag(body, "disabled"), _flag(body, "must_change_password")
    if body.get("password") is not None and must_change is None:
        must_change = True  # a password set by an admin is known to the admin: the user picks their own
    try:
        user = await in_thread(
            store(request, UserStore).update, request.path_params["user_id"], role=body.get("role"),
            password=body.get("password"), disabled=disabled, must_change_password=must_change,
        )
    except AccountError as exc:
        raise admin_error(exc) from None
    return json_response(user.public())


async def delete_user(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    try:
        await in_thread(store(request, UserStore).delete, user_id)
    except AccountError as exc:
        raise admin_error(exc) from None
    return json_response({"id": user_id, "deleted": True})


ROUTES: list[AdminRoute] = [
    admin_route("GET", "/users", list_users, "viewer"),
    admin_route("POST", "/users", create_user),
    admin_route("GET", "/users/{user_id:int}", get_user, "viewer"),
    admin_route("PATCH", "/users/{user_id:int}", update_user),
    admin_route("DELETE", "/users/{user_id:int}", delete_user),
]
