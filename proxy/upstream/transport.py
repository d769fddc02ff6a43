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
* Idle pooled connections expire after ``keepalive_expiry`` (4 s: under the 5 s that uvicorn,
  node and Apache close theirs at), sooner when an upstream's ``Keep-Alive: timeout=N`` says
  it closes earlier. A request that a *reused* connection fails before any response arrives
  (reset, closed: the upstream dropped it while idle) is sent once more on a new connection
  (``retry_stale``), which may send it twice: docs/decisions.md, "Keep-alive".
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl as _ssl
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from weakref import WeakKeyDictionary

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.hdrs import KEEP_ALIVE
from aiohttp.tracing import Trace

__all__ = ["AiohttpByteStream", "AiohttpTransport"]

logger = logging.getLogger("llm_proxy")

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


def _unanswered(exc: aiohttp.ClientError) -> bool:
    """Reset, broken pipe or closed before a response head: what a connection the upstream
    dropped while it idled in the pool gives (not a timeout, not a connect failure)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return isinstance(exc.message, str)  # else the partial response it did receive
    return isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError)


_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[\s,;])timeout\s*=\s*\"?(\d+(?:\.\d*)?)", re.IGNORECASE)


def _idle_limit(keep_alive: str, expiry: float) -> float | None:
    """How long a connection whose response said ``Keep-Alive: keep_alive`` may idle, when that
    is shorter than ``expiry``: a second less than the upstream's timeout (half, under 2 s),
    since the two clocks start a network trip apart."""
    match = _KEEP_ALIVE_TIMEOUT.search(keep_alive)
    if match is None:
        return None
    seconds = float(match.group(1))
    limit = seconds - 1 if seconds >= 2 else seconds / 2
    return limit if limit < expiry else None


# This task's connection for the request being sent: (its protocol, taken from the pool?).
_PICKED: ContextVar[tuple[ResponseHandler, bool] | None] = ContextVar("llm_proxy_picked", default=None)


class _Pool(aiohttp.TCPConnector):
    """aiohttp's pool, also telling the transport whether a connection was reused, and
    dropping one whose upstream announced a shorter idle timeout than the pool's."""

    def __init__(self, *, limit: int, limit_per_host: int, keepalive_timeout: float,
                 ssl: _ssl.SSLContext | bool) -> None:
        super().__init__(limit=limit, limit_per_host=limit_per_host, keepalive_timeout=keepalive_timeout, ssl=ssl)
        # protocol -> monotonic time after which it must not be reused (inf: the pool's own expiry)
        self.deadlines: WeakKeyDictionary[ResponseHandler, float] = WeakKeyDictionary()

    async def connect(self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout) -> Connection:
        while True:
            conn = await super().connect(req, traces, timeout)
            proto = conn.protocol
            if proto is None:
                return conn
            deadline = self.deadlines.get(proto)
            if deadline is None:  # a new connection
                self.deadlines[proto] = math.inf
                _PICKED.set((proto, False))
                return conn
            if deadline == math.inf or deadline > time.monotonic():
                if deadline != math.inf:
                    self.deadlines[proto] = math.inf  # until this response says otherwise
                _PICKED.set((proto, True))
                return conn
            conn.close()  # the upstream has closed it, or is about to

    def expire(self, proto: ResponseHandler, conn: Connection | None, limit: float) -> None:
        """Reuse ``proto`` only within ``limit`` seconds of its release (now, if released)."""
        deadlines = self.deadlines
        if conn is None:
            deadlines[proto] = time.monotonic() + limit
        else:
            conn.add_callback(lambda: deadlines.__setitem__(proto, time.monotonic() + limit))


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
    upstreams' own idle timeout (or let them say theirs with ``Keep-Alive: timeout=N``).
    ``retry_stale``: send a request once more, on a new connection, when the reused one it
    went out on fails before any response (it may then reach the upstream twice).
    """

    def __init__(
        self,
        *,
        limit: int = 1024,
        limit_per_host: int = 0,
        keepalive_expiry: float = 4.0,
        retry_stale: bool = True,
        ssl: _ssl.SSLContext | bool = True,
    ) -> None:
        self._limits = (limit, limit_per_host)
        self._ssl = ssl
        self._expiry = keepalive_expiry
        self._retry_stale = retry_stale
        self._session: aiohttp.ClientSession | None = None
        self._pool: _Pool | None = None
        self._fresh: aiohttp.ClientSession | None = None  # the retries' own: a new connection each

    def _new_session(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        # Created on first use, not in __init__: aiohttp binds a session to the running event loop.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(),  # the per-request one replaces it; never a total
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _open(self) -> aiohttp.ClientSession:
        limit, per_host = self._limits
        self._pool = _Pool(limit=limit, limit_per_host=per_host, keepalive_timeout=self._expiry, ssl=self._ssl)
        self._session = self._new_session(self._pool)
        return self._session

    def _open_fresh(self) -> aiohttp.ClientSession:
        limit, per_host = self._limits
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=per_host, force_close=True, ssl=self._ssl)
        self._fresh = self._new_session(connector)
        return self._fresh

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
        _PICKED.set(None)
        try:
            response = await _send(session, request, headers, data, timeout, skip)
        except aiohttp.ClientError as exc:
            picked = _PICKED.get()
            if not (self._retry_stale and picked is not None and picked[1] and isinstance(data, bytes)
                    and _unanswered(exc)):
                raise _map_error(exc, request) from exc
            logger.debug("%s %s: a reused connection failed before answering (%r); once more on a new one",
                         request.method, request.url, exc)
            try:
                response = await _send(self._fresh or self._open_fresh(), request, headers, data, timeout, skip)
            except aiohttp.ClientError as again:
                raise _map_error(again, request) from again
        else:
            keep_alive = response.headers.get(KEEP_ALIVE)
            if keep_alive is not None and self._pool is not None and (picked := _PICKED.get()) is not None:
                limit = _idle_limit(keep_alive, self._expiry)
                if limit is not None:
                    self._pool.expire(picked[0], response.connection, limit)
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpByteStream(response, request),
            request=request,
        )

    async def aclose(self) -> None:
        """Close the sessions and their pooled connections; a later request opens new ones."""
        sessions = (self._session, self._fresh)
        self._session = self._fresh = self._pool = None
        for session in sessions:
            if session is not None:
                await session.close()


async def _send(
    session: aiohttp.ClientSession,
    request: httpx.Request,
    headers: list[tuple[str, str]],
    data: bytes | httpx.AsyncByteStream | None,
    timeout: aiohttp.ClientTimeout,
    skip: frozenset[str] | None,
) -> aiohttp.ClientResponse:
    """One aiohttp request; its connect and pool timeouts told apart, other errors left to the caller."""
    clock = asyncio.get_running_loop().time  # the clock aiohttp's timers run on
    started = clock()
    try:
        return await session.request(
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
