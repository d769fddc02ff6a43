"""Fetch remote ``image_url`` parts and inline them as ``data:`` URLs.

Gemini and Ollama's native API want image bytes in the request, while OpenAI-style clients send
http(s) URLs, so the gateway fetches them itself. That makes any client able to point the gateway
at an address of its choosing (SSRF), so every hop is checked before connecting: only http(s), no
credentials, and no host resolving to loopback, private, link-local, multicast, reserved or cloud
metadata addresses unless the operator allowed it (``allow_private_networks``/``allowed_hosts``).

Every failure is a 400 (``invalid_request_error``): the client sent a URL the gateway could not
use, timeouts included (a 504 would blame an upstream and invite a retry of the same URL); a
request whose images together pass ``max_total_mb`` is a 413. Messages name the reason (and
the limit), never the response body or the address a name resolved to.

Memory: an image is base64-encoded as its chunks arrive (a multiple of 3 bytes at a time) into
pieces joined once into the ``data:`` URL, so its raw bytes are never held whole. What one
request may hold is capped (``max_per_request``, ``max_total_mb``, checked against
Content-Length before reading and against the bytes as they arrive), and what all requests
fetch at once is bounded gateway-wide (``max_concurrent_fetches``, ``max_inflight_mb``): a
fetch waits for room, within its ``fetch_timeout``.

A ``data:`` URL the client sent inline is held to the same rules as a fetched image before it
is forwarded: an ``image/*`` type, a body within ``images.max_mb``, and, when it says
``;base64``, valid base64 (RFC 4648: the standard alphabet, padded). The 400 names the part.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import ctypes.util
import ipaddress
import socket
from collections import deque
from collections.abc import Callable

import httpx

from llm_proxy.core.config import ImagesConfig
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject

__all__ = ["MAX_IMAGES", "MAX_REDIRECTS", "BudgetExhausted", "ImageFetcher"]

MAX_IMAGES = ImagesConfig().max_per_request  # the default per-request count cap
MAX_REDIRECTS = 3
CONCURRENCY = 4  # fetches in flight per request
_BASE64_SLICE = 1 << 16  # characters of a data: URL decoded at a time to check it (a multiple of 4)

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HEADERS = {"accept": "image/*", "accept-encoding": "identity", "user-agent": "llm-proxy-image-fetch"}


def _error(message: str, code: str = "invalid_image_url", status: int = 400) -> ProxyError:
    return ProxyError(status, message, type="invalid_request_error", code=code)


class BudgetExhausted(ProxyError):
    """The gateway-wide image budget stayed full for a whole ``fetch_timeout``: not the client's
    URL, not the deployment's fault (dispatch lets another deployment try)."""


class _Budget:
    """Bytes of fetched image data held gateway-wide; takers wait, first come first served.

    ``give`` is synchronous so a cancelled request still returns what it held."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, n: int) -> None:
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(n)  # granted just as it was cancelled
            else:
                self._waiters.remove((n, waiter))
                self._wake()
            raise

    def give(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, waiter = self._waiters[0]
            if not waiter.done():
                if self.used + n > self.limit:
                    return
                self.used += n
                waiter.set_result(None)
            self._waiters.popleft()


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


_malloc_trim = _load_trim()


class _Tally:
    """One request's image bytes: counted against ``max_total_mb``, held from the budget."""

    __slots__ = ("held", "total", "waiting")

    def __init__(self) -> None:
        self.total = 0  # bytes read (or announced by Content-Length) for this request
        self.held = 0  # bytes taken from the gateway budget, given back when inlining ends
        # fetches (tasks) of this request waiting on the gateway's limits: a timeout there is the
        # gateway's, not the URL's
        self.waiting: set[asyncio.Task[object] | None] = set()


def _forbidden(ip: _Address) -> str | None:
    """Why ``ip`` must not be fetched from, or None. IPv4 embedded in IPv6 is checked as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
    if ip in _METADATA:
        return "a cloud metadata address"
    for reason in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{reason}"):
            return f"a {reason.replace('_', '-')} address"
    if not ip.is_global:  # e.g. 100.64.0.0/10 shared address space
        return "a non-public address"
    return None


def _base64_size(payload: str) -> int | None:
    """The decoded size of standard, padded base64, or None when it is not that. Decoded a slice
    at a time and thrown away: checking a large image must not hold a second copy of it."""
    if len(payload) % 4 or payload.find("=", 0, len(payload) - 2) != -1:  # padding only at the end
        return None
    size = 0
    try:
        for start in range(0, len(payload), _BASE64_SLICE):
            size += len(binascii.a2b_base64(payload[start:start + _BASE64_SLICE], strict_mode=True))
    except ValueError:  # binascii.Error, or a character outside ASCII
        return None
    return size


def _check_data_url(url: str, max_bytes: int, max_mb: float, where: str) -> None:
    """Refuse a ``data:`` image URL that is not an image, is too large, or is not valid base64."""
    header, sep, payload = url[5:].partition(",")
    params = header.split(";")
    mime = params[0].strip().lower()
    is_base64 = len(params) > 1 and params[-1].strip().lower() == "base64"

    def refuse(reason: str) -> ProxyError:
        return ProxyError(400, f"{where}: {reason}", code="invalid_image_url", param=where)

    if not sep:
        raise refuse("data: URL has no ',' before its data")
    if not mime.startswith("image/") or mime == "image/":
        raise refuse(f"data: URL has content type {mime or 'text/plain'!r}, not an image")
    if not payload:
        raise refuse("data: URL holds no image data")
    too_big = f"image is larger than the {max_mb:g} MB limit"
    # the decoded size, from the length alone, before anything is decoded
    if is_base64:
        if len(payload) // 4 * 3 - 2 > max_bytes:
            raise refuse(too_big)
        size = _base64_size(payload)
        if size is None:
            raise refuse("data: URL is not valid base64")
    else:  # percent-encoded bytes
        size = len(payload) - 2 * payload.count("%")
    if size > max_bytes:
        raise refuse(too_big)


class ImageFetcher:
    """Fetches images for one gateway; shares one transport across requests."""

    def __init__(self, config: ImagesConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._transport = transport
        self._owns_transport = transport is None
        self._allowed = frozenset(h.lower().rstrip(".") for h in config.allowed_hosts)
        self._max_bytes = int(config.max_mb * 1024 * 1024)
        self._max_total = int(config.max_total_mb * 1024 * 1024)
        self._timeouts = httpx.Timeout(config.fetch_timeout).as_dict()
        # shared by every request on this fetcher; never smaller than what one request may hold
        self._fetches = asyncio.Semaphore(max(1, config.max_concurrent_fetches))
        self._budget = _Budget(max(int(config.max_inflight_mb * 1024 * 1024), self._max_total, 1))
        self._trim: asyncio.TimerHandle | None = None

    async def aclose(self) -> None:
        """Close the transport if this fetcher created it."""
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        transport, self._transport = self._transport, None
        if transport is not None and self._owns_transport:
            await transport.aclose()

    def _get_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:  # lazily: aiohttp binds its session to the running loop
            from llm_proxy.upstream.transport import AiohttpTransport

            self._transport = AiohttpTransport(limit=64)
            self._owns_transport = True
        return self._transport

    async def _check(self, url: httpx.URL) -> None:
        """Refuse a URL before any connection is made to it.

        DNS rebinding caveat: the name is resolved here and again by the transport when it
        connects, so a hostile DNS server could answer differently the second time. Closing that
        window means connecting to the checked IP (and handling SNI/Host ourselves); the operator
        can instead put the gateway behind an egress proxy or firewall. Kept simple on purpose.
        """
        if url.scheme not in ("http", "https"):
            raise _error("image URL must use http or https")
        if url.userinfo:
            raise _error("image URL must not contain credentials")
        host = url.host.lower().rstrip(".")
        if not host:
            raise _error("image URL has no host")
        if self.config.allow_private_networks or host in self._allowed:
            return
        try:
            addresses: list[_Address] = [ipaddress.ip_address(host)]
        except ValueError:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM
                )
            except (OSError, UnicodeError):
                raise _error(f"image host {host} could not be resolved", "image_fetch_failed") from None
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for ip in addresses:  # ANY bad address refuses: the transport may connect to any of them
            if reason := _forbidden(ip):
                raise _error(f"image URL host {host} points to {reason}, which is not allowed")

    async def fetch(self, url: str) -> tuple[str, bytes]:
        """GET an image: (mime type, bytes). Tools and tests; inlining uses ``fetch_data_url``."""
        tally = _Tally()
        try:
            data_url = await self.fetch_data_url(url, tally)
        finally:
            self._budget.give(tally.held)
        header, _, payload = data_url.partition(",")
        return header[5:].split(";", 1)[0], base64.b64decode(payload)

    async def fetch_data_url(self, url: str, tally: _Tally) -> str:
        """GET an image, following at most ``MAX_REDIRECTS`` checked redirects, as a ``data:`` URL.

        Bytes it reads are added to ``tally`` and taken from the gateway budget; the caller
        gives ``tally.held`` back."""
        task = asyncio.current_task()
        try:
            async with asyncio.timeout(self.config.fetch_timeout):
                tally.waiting.add(task)
                async with self._fetches:
                    tally.waiting.discard(task)
                    return await self._fetch(url, tally)
        except (TimeoutError, httpx.TimeoutException):
            if task in tally.waiting:
                raise BudgetExhausted(
                    503, f"the gateway is fetching too many images at once (images.max_concurrent_fetches="
                    f"{self.config.max_concurrent_fetches}, images.max_inflight_mb={self.config.max_inflight_mb:g});"
                    " retry shortly", type="server_error", code="image_budget_exhausted",
                    headers={"retry-after": "1"},
                ) from None
            raise _error(
                f"image URL timed out after {self.config.fetch_timeout:g}s", "image_fetch_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise _error(
                f"image URL could not be fetched ({type(exc).__name__})", "image_fetch_failed"
            ) from None

    async def _fetch(self, raw_url: str, tally: _Tally) -> str:
        try:
            url = httpx.URL(raw_url)
        except httpx.InvalidURL:
            raise _error("image URL is not a valid URL") from None
        transport = self._get_transport()
        for _hop in range(MAX_REDIRECTS + 1):
            await self._check(url)
            request = httpx.Request("GET", url, headers=_HEADERS, extensions={"timeout": self._timeouts})
            response = await transport.handle_async_request(request)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    try:
                        url = url.join(location)
                    except httpx.InvalidURL:
                        raise _error("image URL redirected to an invalid URL") from None
                    continue
                return await self._read(response, tally)
            finally:
                await response.aclose()
        raise _error(f"image URL redirected more than {MAX_REDIRECTS} times")

    async def _read(self, response: httpx.Response, tally: _Tally) -> str:
        if not 200 <= response.status_code < 300:
            raise _error(f"image URL answered HTTP {response.status_code}")
        mime = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not mime.startswith("image/"):
            raise _error(f"image URL returned content type {mime or 'none'!r}, not an image")
        # we asked for identity; decoding here would let a small gzip body blow past the cap
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise _error("image URL returned a compressed (content-encoding) body")
        too_big = _error(f"image is larger than the {self.config.max_mb:g} MB limit (images.max_mb)")
        length = response.headers.get("content-length", "")
        announced = int(length) if length.isdigit() else 0
        if announced > self._max_bytes:
            raise too_big
        self._count(tally, announced)  # refused before reading when it cannot fit
        pieces = [f"data:{mime};base64,"]
        carry = b""  # < 3 bytes left over: base64 is encoded 3 bytes at a time
        size = 0
        async for chunk in response.stream:  # type: ignore[union-attr]
            size += len(chunk)
            if size > self._max_bytes:
                raise too_big  # the caller's aclose() drops the half-read connection
            if size > announced:
                self._count(tally, min(len(chunk), size - announced))
            await self._hold(tally, len(chunk))
            data = carry + chunk if carry else chunk
            cut = len(data) - len(data) % 3
            if cut:
                pieces.append(binascii.b2a_base64(memoryview(data)[:cut], newline=False).decode("ascii"))
            carry = data[cut:]
        if not size:
            raise _error("image URL returned an empty body")
        if carry:
            pieces.append(binascii.b2a_base64(carry, newline=False).decode("ascii"))
        return "".join(pieces)  # the one copy of the whole image kept; the pieces go now

    def _count(self, tally: _Tally, n: int) -> None:
        tally.total += n
        if tally.total > self._max_total:
            raise _error(
                f"the request's images add up to more than the {self.config.max_total_mb:g} MB limit"
                " per request (images.max_total_mb)", "images_too_large", 413,
            )

    async def _hold(self, tally: _Tally, n: int) -> None:
        """Take ``n`` bytes from the gateway budget: what is read and encoded is held (x 4/3 as
        base64) until the request's inlining ends."""
        task = asyncio.current_task()
        tally.waiting.add(task)
        await self._budget.take(n)
        tally.waiting.discard(task)
        tally.held += n

    def _trim_later(self) -> None:
        """Give freed heap pages back to the OS once image requests have gone quiet for a second.

        Megabytes of base64 pass through the body, its translation and its serialisation;
        glibc keeps what they freed inside its heap (fragmented between live blocks), so RSS
        would stay at the peak. ``malloc_trim`` releases those pages; it runs only after
        requests that inlined images, a second after the last one (a few ms of work)."""
        if _malloc_trim is None:
            return
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(1.0, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        if _malloc_trim is not None:
            _malloc_trim(0)

    async def inline_images(self, body: JSONObject) -> int:
        """Replace every http(s) ``image_url`` in ``body["messages"]`` with a ``data:`` URL, and
        check every ``data:`` URL the client sent (an image, valid base64, within the size cap).

        Returns how many parts were inlined. Same URL twice is fetched once. Up to
        ``CONCURRENCY`` fetches run at once (and ``max_concurrent_fetches`` across requests);
        more than ``max_per_request`` remote images is a 400, more than ``max_total_mb`` a 413.
        """
        parts: list[tuple[JSONObject, str]] = []  # (part, url)
        messages = body.get("messages")
        for m, message in enumerate(messages if isinstance(messages, list) else ()):
            content = message.get("content") if isinstance(message, dict) else None
            for i, part in enumerate(content if isinstance(content, list) else ()):
                if not isinstance(part, dict) or part.get("type") != "image_url":
                    continue
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if not isinstance(url, str):
                    continue
                if url[:8].lower().startswith(("http://", "https://")):
                    parts.append((part, url))
                elif url[:5].lower() == "data:":
                    where = f"messages[{m}].content[{i}].image_url" + (".url" if isinstance(image, dict) else "")
                    _check_data_url(url, self._max_bytes, self.config.max_mb, where)
        if not parts:
            return 0
        most = self.config.max_per_request
        if len(parts) > most:
            raise _error(
                f"{len(parts)} remote images; at most {most} per request (images.max_per_request)", "too_many_images"
            )
        limit = asyncio.Semaphore(CONCURRENCY)
        tally = _Tally()

        async def one(url: str) -> str:
            async with limit:
                return await self.fetch_data_url(url, tally)

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                tasks = {url: group.create_task(one(url)) for url in dict.fromkeys(u for _, u in parts)}
        except* ProxyError as failed:
            raise failed.exceptions[0] from None
        finally:
            self._budget.give(tally.held)
            if tally.held:
                self._trim_later()
        for part, url in parts:
            data_url = tasks[url].result()
            if isinstance(part["image_url"], dict):
                part["image_url"]["url"] = data_url
            else:
                part["image_url"] = data_url
        return len(parts)
