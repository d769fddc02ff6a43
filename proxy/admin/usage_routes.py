"""``/usage/*``: read-only usage analytics for viewers — summary, time series, breakdowns, the log.

Parameters are checked strictly: an unknown or repeated one is a 400 rather than silently
ignored (a misspelt filter would otherwise answer for everything). Times are unix seconds
or ISO-8601 (UTC unless an offset is given); an empty filter value means "no filter", as
forms send them. Every query runs in a worker thread on the usage store's own connections.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.admin.api import AdminError, AdminRoute, admin_route, in_thread, json_response, store
from llm_proxy.storage.usage_queries import BREAKDOWNS, Filters, QueryError, UsageStore

__all__ = ["ROUTES", "parse_status", "parse_time"]

_DIMENSIONS = ("endpoint", "provider", "model", "group", "client")
_COMMON = ("since", "until", *_DIMENSIONS)
_MAX_TIME = 1e11  # year 5138: beyond it a number is a typo (milliseconds?), not a time


def _bad(message: str, code: str = "invalid_parameter") -> AdminError:
    return AdminError(400, message, code)


def _params(request: Request, *extra: str) -> dict[str, str]:
    allowed = (*_COMMON, *extra)
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise _bad(f"Unknown parameter {name!r}; this endpoint takes {', '.join(allowed)}.", "unknown_parameter")
        if name in params:
            raise _bad(f"Parameter {name!r} is given more than once.")
        params[name] = value.strip()
    return params


def parse_time(name: str, value: str | None) -> float | None:
    """Unix seconds or an ISO-8601 date/time; a naive one is UTC."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise _bad(f"{name} must be unix seconds or an ISO-8601 time such as 2026-11-01T00:00:00Z.") from None
        seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not (math.isfinite(seconds) and 0 <= seconds < _MAX_TIME):
        raise _bad(f"{name} must be a time after 1970 in unix seconds (not milliseconds).")
    return seconds


def parse_status(value: str) -> tuple[int, int]:
    """``429``, a class like ``4xx``, or ``error`` (any status from 400): a [low, high) range."""
    text = value.lower()
    if text == "error":
        return 400, 1000
    if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
        low = int(text[0]) * 100
        return low, low + 100
    if text.isdigit() and 100 <= int(text) <= 599:
        return int(text), int(text) + 1
    raise _bad("status must be a code (429), a class (4xx) or 'error'.")


def _int(params: dict[str, str], name: str, default: int, high: int) -> int:
    value = params.get(name)
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= high:
        raise _bad(f"{name} must be a whole number from 1 to {high}.")
    return int(value)


def _filters(params: dict[str, str], now: float) -> Filters:
    since, until = parse_time("since", params.get("since")), parse_time("until", params.get("until"))
    if since is not None and since >= (until if until is not None else now):
        raise _bad("since must be before until (which defaults to now).")
    return Filters(since=since, until=until, **{d: params[d] for d in _DIMENSIONS if params.get(d)})


async def _answer(fn: Callable[..., object], *args: object, **kwargs: object) -> Response:
    try:
        return json_response(await in_thread(fn, *args, **kwargs))
    except QueryError as exc:  # a request the query refuses, e.g. too many points
        raise _bad(str(exc), "range_too_large") from None


async def usage_summary(request: Request) -> Response:
    now = time.time()
    filters = _filters(_params(request), now)
    return await _answer(store(request, UsageStore).summary, filters, now=now)


async def usage_timeseries(request: Request) -> Response:
    now = time.time()
    params = _params(request, "bucket")
    bucket = params.get("bucket") or "hour"
    if bucket not in ("hour", "day"):
        raise _bad("bucket must be hour or day.")
    return await _answer(store(request, UsageStore).timeseries, _filters(params, now), bucket, now=now)


async def usage_breakdown(request: Request) -> Response:
    now = time.time()
    params = _params(request, "by", "limit")
    by = params.get("by", "")
    if by not in BREAKDOWNS:
        raise _bad(f"by must be one of {', '.join(BREAKDOWNS)}.")
    limit = _int(params, "limit", 100, 1000)
    return await _answer(store(request, UsageStore).breakdown, _filters(params, now), by, now=now, limit=limit)


async def usage_logs(request: Request) -> Response:
    params = _params(request, "status", "request_id", "cursor", "limit")
    cursor = params.get("cursor")
    if cursor and not cursor.isdigit():
        raise _bad("cursor must be the next_cursor of a previous page.", "invalid_cursor")
    return await _answer(
        store(request, UsageStore).logs,
        _filters(params, time.time()),
        status=parse_status(params["status"]) if params.get("status") else None,
        request_id=params.get("request_id") or None,
        cursor=int(cursor) if cursor else None,
        limit=_int(params, "limit", 50, 500),
    )


ROUTES: list[AdminRoute] = [
    admin_route("GET", "/usage/summary", usage_summary, role="viewer"),
    admin_route("GET", "/usage/timeseries", usage_timeseries, role="viewer"),
    admin_route("GET", "/usage/breakdown", usage_breakdown, role="viewer"),
    admin_route("GET", "/usage/logs", usage_logs, role="viewer"),
]
