"""An ``httpx`` transport backed by one shared ``aiohttp.ClientSession``.

The gateway speaks httpx (requests, responses, exception types), but httpx's own pool costs
several times aiohttp's CPU per proxied request. This keeps the httpx API over aiohttp's pool
and parser with as little glue as possible: request headers cross once, response headers stay
``raw`` byte pairs, body chunks are handed over as they arrive.

* Bodies pass through undecoded (``auto_decompress=False``), as httpx requires of a transport:
  ``httpx.Response`` decodes ``Content-Encoding`` itself in ``aread()``/``aiter_bytes()``, while
  ``aiter_raw()``/``.stream`` stay raw. aiohttp adds no ``Accept``/``Accept-Encoding``/
  ``User-Agent``/``Content-Type`` of its own: the ``httpx.Request`` is what goes upstream. The
  gateway parses usage out of bodies, so it should send ``accept-encoding: identity``.
* Timeouts come only from ``request.extensions["timeout"]`` (as set by ``httpx.AsyncClient``);
  a missing one means no limit, as in httpcore. Never a total timeout, so a long generation is
  only cut by ``read``: idle time between received bytes (``sock_read``). ``connect`` bounds
  each TCP/TLS connect (``sock_connect``); ``pool`` is the extra time a request may wait for a
  free slot (aiohttp ``connect`` = pool + connect, DNS included). ``write`` is not supported.
* Upstream cookies are never stored or sent: one session serves every gateway user.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx

__all__ = ["AiohttpByteStream", "AiohttpTransport"]

_TimeoutKey = tuple[float | None, float | None, float | None]
_TIMEOUTS: dict[_TimeoutKey, aiohttp.ClientTimeout] = {}
# closed before/while answering, truncated or malformed response
_BROKEN = (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)
_ERRORS: tuple[tuple[type | tuple[type, ...], type[httpx.TransportError]], ...] = (
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),  # sock_read: SocketTimeoutError
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake/certificate
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (_BROKEN, httpx.RemoteProtocolError),
)


def _client_timeout(key: _TimeoutKey) -> aiohttp.ClientTimeout:
    """httpx (connect, read, pool) -> aiohttp, cached: configs repeat, requests are many."""
    connect, read, pool = (None if t is None else max(t, 1e-6) for t in key)  # aiohttp: 0 = no limit
    budget = pool + connect if pool is not None and connect is not None else pool
    if len(_TIMEOUTS) > 256:
        _TIMEOUTS.clear()
    _TIMEOUTS[key] = t = aiohttp.ClientTimeout(
        total=None, connect=budget, sock_connect=connect, sock_read=read, ceil_threshold=float("inf")
    )
    return t


def _map_error(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    for aio, hx in _ERRORS:
        if isinstance(exc, aio):
            return hx(str(exc) or type(exc).__name__, request=request)
    return httpx.ReadError(str(exc) or type(exc).__name__, request=request)  # resets, other OS errors


_AUTO_HEADERS = frozenset({"accept", "accept-encoding", "user-agent", "content-type"})


class AiohttpByteStream(httpx.AsyncByteStream):
    """The response body as aiohttp hands it over: each chunk as soon as it is received."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._response.content.readany
        try:
            while chunk := await read():
                yield chunk
        except aiohttp.ClientError as exc:
            raise _map_error(exc, self._request) from exc

    async def aclose(self) -> None:
        # close(), not release(): a half-read connection must not go back to the pool. A fully
        # read body has already released its connection, so this then only marks it closed.
        self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send ``httpx.Request``s through one lazily created, shared ``aiohttp.ClientSession``.

    ``limit`` caps open connections (0: no cap), ``limit_per_host`` per upstream host.
    ``keepalive_expiry`` is how long an idle connection stays pooled: keep it below the
    upstreams' own idle timeout, because aiohttp does not retry a POST that lands on a
    connection the upstream has just closed.
    """

    def __init__(
        self,
        *,
        limit: int = 1024,
        limit_per_host: int = 0,
        keepalive_expiry: float = 15.0,
        ssl: _ssl.SSLContext | bool = True,
    ) -> None:
        def connector() -> aiohttp.TCPConnector:
            return aiohttp.TCPConnector(
                limit=limit, limit_per_host=limit_per_host, keepalive_timeout=keepalive_expiry, ssl=ssl
            )

        self._connector = connector
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created here, not in __init__: aiohttp binds the session to the running event loop.
        self._session = aiohttp.ClientSession(
            connector=self._connector(),
            timeout=aiohttp.ClientTimeout(),  # the per-request one replaces it; never a total
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        t = request.extensions.get("timeout")
        key = (t.get("connect"), t.get("read"), t.get("pool")) if t else (None, None, None)
        timeout = _TIMEOUTS.get(key) or _client_timeout(key)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        # aiohttp adds these unless told to skip them, and telling it costs a header-set copy per
        # request: only ask for what this request does not set itself (the gateway sets all).
        skip = _AUTO_HEADERS.difference(k.lower() for k, _ in headers) or None
        try:
            data: bytes | httpx.AsyncByteStream | None = request.content or None
        except httpx.RequestNotRead:  # streaming upload: aiohttp frames it and sets the header itself
            data = request.stream  # type: ignore[assignment]
            headers = [kv for kv in headers if kv[0].lower() != "transfer-encoding"]
        clock = asyncio.get_running_loop().time  # the clock aiohttp's timers run on
        started = clock()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=skip,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            # aiohttp raises the same error for both timers. Its pool timer ("connect" = pool +
            # connect) cannot fire before the budget is spent, and the connect timer only fires
            # that late if the wait for a slot already used up the pool timeout (5 ms: timer slack).
            waited = timeout.connect is not None and clock() - started >= timeout.connect - 0.005
            cls = httpx.PoolTimeout if waited or timeout.sock_connect is None else httpx.ConnectTimeout
            raise cls(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise _map_error(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpByteStream(response, request),
            request=request,
        )

    async def aclose(self) -> None:
        """Close the session and its pooled connections; a later request opens a new one."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
