"""Reading and parsing a request body exactly once, with a size cap."""

from __future__ import annotations

import orjson
from starlette.types import Message, Receive, Scope

from llm_proxy.core.errors import ProxyError, bad_request
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.scope import header

__all__ = ["parse_json_object", "read_body", "replay"]


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, f"Request body is larger than the {limit} bytes this gateway accepts.", code="request_too_large"
    )


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProxyError(499, "Client closed the request.", code="client_closed_request")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_json_object(raw: bytes) -> JSONObject:
    if not raw:
        raise bad_request("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to anyone below, then the real channel
    (which is how a disconnect is seen)."""
    sent = False

    async def wrapped() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return wrapped
