"""Admin API for clients and their API keys (mounted at ``/api``).

A key is returned once, by the call that made it (create or rotate), with
``cache-control: no-store``; every other answer shows its display prefix only. After a
change the gateway's in-memory key index is rebuilt before the answer is sent, so the
next request already sees it. Spend comes from the in-memory ledger (what budgets are
checked against), never from a fresh sum over the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.accounts.client_keys import ApiKey, ClientStore, ClientStoreError
from llm_proxy.admin.api import AdminError, AdminRoute, admin_route, services, store

__all__ = ["ROUTES"]

T = TypeVar("T")


def _json(data: Any, status: int = 200, *, secret: bool = False) -> Response:
    headers = {"cache-control": "no-store"} if secret else None
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminError(400, "The body is not valid JSON.", "invalid_json") from None
    if not isinstance(data, dict):
        raise AdminError(400, "The body must be a JSON object.", "invalid_json")
    return data


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A store call off the event loop, its failures as admin errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except ClientStoreError as exc:
        raise AdminError(exc.status, exc.message, exc.code) from None


async def _changed(request: Request) -> None:
    """Rebuild the gateway's key index now (absent when the admin app runs on its own)."""
    keys = services(request).client_keys
    if keys is not None:
        await keys.refresh()


def _id(request: Request) -> int:
    return int(request.path_params["id"])


def _listed(items: list[Any]) -> Response:
    return _json({"object": "list", "data": items})


async def list_clients(request: Request) -> Response:
    return _listed(await _run(store(request, ClientStore).list_clients))


async def create_client(request: Request) -> Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"name", "tags"})
    if unknown:
        raise AdminError(400, f"Unknown field(s): {', '.join(unknown)}.", "invalid_field")
    client = await _run(store(request, ClientStore).create_client, body.get("name"), body.get("tags"))
    return _json(client, 201)


async def list_keys(request: Request) -> Response:
    client = request.query_params.get("client_id")
    if client is not None and not client.isdigit():
        raise AdminError(400, "client_id must be an integer.", "invalid_field")
    keys: list[ApiKey] = await _run(store(request, ClientStore).list_keys, int(client) if client else None)
    return _listed([k.public() for k in keys])


async def create_key(request: Request) -> Response:
    body = await _body(request)
    name, client_id = body.pop("name", None), body.pop("client_id", None)
    if client_id is not None and (isinstance(client_id, bool) or not isinstance(client_id, int)):
        raise AdminError(400, "client_id: must be an integer.", "invalid_field")
    secret, key = await _run(store(request, ClientStore).create_key, name, client_id, body)
    await _changed(request)
    return _json({**key.public(), "key": secret}, 201, secret=True)


async def update_key(request: Request) -> Response:
    body = await _body(request)
    key = await _run(store(request, ClientStore).update_key, _id(request), body)
    await _changed(request)
    return _json(key.public())


async def rotate_key(request: Request) -> Response:
    body = await _body(request)
    unknown = sorted(set(body) - {"grace_seconds"})
    if unknown:
        raise AdminError(400, f"Unknown field(s): {', '.join(unknown)}.", "invalid_field")
    secret, key = await _run(store(request, ClientStore).rotate_key, _id(request), body.get("grace_seconds", 0))
    await _changed(request)
    return _json({**key.public(), "key": secret}, 201, secret=True)


async def revoke_key(request: Request) -> Response:
    key = await _run(store(request, ClientStore).revoke_key, _id(request))
    await _changed(request)
    return _json(key.public())


async def key_spend(request: Request) -> Response:
    key: ApiKey = await _run(store(request, ClientStore).get_key, _id(request))
    ledger = services(request).spend_ledger
    if ledger is None:
        raise AdminError(503, "Spend is only known inside the gateway.", "unavailable", "server_error")
    await ledger.ensure_loaded()
    day, month, total = ledger.spent(key.log_id)
    budgets = {"day": key.budget_day_usd, "month": key.budget_month_usd, "total": key.budget_total_usd}
    spent = {"day": day, "month": month, "total": total}
    return _json({
        "id": key.id,
        "log_key_id": key.log_id,
        "spend_usd": spent,
        "budget_usd": budgets,
        "remaining_usd": {p: (None if b is None else max(b - spent[p], 0.0)) for p, b in budgets.items()},
        "in_flight_usd": ledger.reserved(key.log_id),
    })


ROUTES: list[AdminRoute] = [
    admin_route("GET", "/clients", list_clients, "viewer"),
    admin_route("POST", "/clients", create_client),
    admin_route("GET", "/keys", list_keys, "viewer"),
    admin_route("POST", "/keys", create_key),
    admin_route("PATCH", "/keys/{id:int}", update_key),
    admin_route("POST", "/keys/{id:int}/rotate", rotate_key),
    admin_route("POST", "/keys/{id:int}/revoke", revoke_key),
    admin_route("GET", "/keys/{id:int}/spend", key_spend, "viewer"),
]
