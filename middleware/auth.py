"""Authenticates API requests by client key (``Authorization: Bearer``, ``x-api-key`` or ``api-key``).

With no key configured at all, the gateway is not an open proxy: it serves loopback
clients only (and the CLI binds 127.0.0.1). Only a loopback IP address counts (127.0.0.0/8,
``::1``, ``::ffff:127.x``), never a name such as ``localhost`` or Starlette's ``testclient``
that some servers report; a request with no client address (a Unix socket) counts only
with ``auth.trust_unix_socket``, since the socket's permissions then decide who connects.

Keys are looked up in memory through the snapshot's key lookup part (config keys, then
database keys), never logged, and never echoed back in an error. A revoked or unknown key is 401 ``invalid_api_key``; an expired
one is 401 ``api_key_expired``. A key's tags go to ``ctx.metadata["tags"]``, hence to the
request log.
"""

from __future__ import annotations

import ipaddress
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy.core.context import ClientIdentity, get_context
from llm_proxy.core.errors import ProxyError

__all__ = ["AuthMiddleware"]

_COMMON_LOOPBACK = frozenset({"127.0.0.1", "::1"})  # answered without parsing


def _presented_key(scope: Scope) -> str | None:
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name in (b"x-api-key", b"api-key") and value:
            return value.decode("latin-1").strip()
    return None


def _is_loopback_address(host: str) -> bool:
    """A loopback IP address (an IPv4 one mapped into IPv6 included); a host name is not one."""
    if host in _COMMON_LOOPBACK:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _is_local(scope: Scope, trust_unix_socket: bool) -> bool:
    client = scope.get("client")
    if client is None or not client[0]:  # no address: a Unix socket (or a server that does not say)
        return trust_unix_socket
    return _is_loopback_address(client[0])


def _check_validity(identity: ClientIdentity) -> None:
    """Refuse a database key past its expiry or a rotation's grace period."""
    now = time.time()
    if identity.revoked_at is not None and now >= identity.revoked_at:
        raise ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")
    if identity.expires_at is not None and now >= identity.expires_at:
        raise ProxyError(401, "This API key has expired. Ask the gateway's operator for a new one.",
                         code="api_key_expired")


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or not ctx.endpoint:
            await self.app(scope, receive, send)
            return
        keys = ctx.runtime.keys
        if keys.open:
            if not _is_local(scope, keys.trust_unix_socket):
                raise ProxyError(
                    401,
                    "This gateway has no client keys configured and only serves local clients.",
                    code="invalid_api_key",
                )
        else:
            key = _presented_key(scope)
            if key is None:
                raise ProxyError(
                    401,
                    "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                    code="missing_api_key",
                )
            identity = keys.lookup(key)
            if identity is None:
                raise ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")
            if identity.metered:
                if identity.expires_at is not None or identity.revoked_at is not None:
                    _check_validity(identity)
                if identity.tags:
                    ctx.metadata["tags"] = dict(identity.tags)
            ctx.client = identity
        await self.app(scope, receive, send)
