"""Fetch remote ``image_url`` parts and inline them as ``data:`` URLs.

Gemini and Ollama's native API want image bytes in the request, while OpenAI-style clients send
http(s) URLs, so the gateway fetches them itself. That makes any client able to point the gateway
at an address of its choosing (SSRF), so every hop is checked before connecting: only http(s), no
credentials, and no host resolving to loopback, private, link-local, multicast, reserved or cloud
metadata addresses unless the operator allowed it (``allow_private_networks``/``allowed_hosts``).

Every failure is a 400 (``invalid_request_error``): the client sent a URL the gateway could not
use, timeouts included (a 504 would blame an upstream and invite a retry of the same URL).
Messages name the reason, never the response body or the address a name resolved to.

A ``data:`` URL the client sent inline is held to the same rules as a fetched image before it
is forwarded: an ``image/*`` type, a body within ``images.max_mb``, and, when it says
``;base64``, valid base64 (RFC 4648: the standard alphabet, padded). The 400 names the part.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket

import httpx

from llm_proxy.core.config import ImagesConfig
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject

__all__ = ["MAX_IMAGES", "MAX_REDIRECTS", "ImageFetcher"]

MAX_IMAGES = 16  # remote images per request
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


def _error(message: str, code: str = "invalid_image_url") -> ProxyError:
    return ProxyError(400, message, type="invalid_request_error", code=code)


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
        self._timeouts = httpx.Timeout(config.fetch_timeout).as_dict()

    async def aclose(self) -> None:
        """Close the transport if this fetcher created it."""
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
        """GET an image, following at most ``MAX_REDIRECTS`` checked redirects: (mime type, bytes)."""
        try:
            async with asyncio.timeout(self.config.fetch_timeout):
                return await self._fetch(url)
        except (TimeoutError, httpx.TimeoutException):
            raise _error(
                f"image URL timed out after {self.config.fetch_timeout:g}s", "image_fetch_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise _error(
                f"image URL could not be fetched ({type(exc).__name__})", "image_fetch_failed"
            ) from None

    async def _fetch(self, raw_url: str) -> tuple[str, bytes]:
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
                return await self._read(response)
            finally:
                await response.aclose()
        raise _error(f"image URL redirected more than {MAX_REDIRECTS} times")

    async def _read(self, response: httpx.Response) -> tuple[str, bytes]:
        if not 200 <= response.status_code < 300:
            raise _error(f"image URL answered HTTP {response.status_code}")
        mime = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not mime.startswith("image/"):
            raise _error(f"image URL returned content type {mime or 'none'!r}, not an image")
        # we asked for identity; decoding here would let a small gzip body blow past the cap
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise _error("image URL returned a compressed (content-encoding) body")
        too_big = _error(f"image is larger than the {self.config.max_mb:g} MB limit")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.stream:  # type: ignore[union-attr]
            size += len(chunk)
            if size > self._max_bytes:
                raise too_big  # the caller's aclose() drops the half-read connection
            chunks.append(chunk)
        if not size:
            raise _error("image URL returned an empty body")
        return mime, b"".join(chunks)

    async def inline_images(self, body: JSONObject) -> int:
        """Replace every http(s) ``image_url`` in ``body["messages"]`` with a ``data:`` URL, and
        check every ``data:`` URL the client sent (an image, valid base64, within the size cap).

        Returns how many parts were inlined. Same URL twice is fetched once. Up to
        ``CONCURRENCY`` fetches run at once; more than ``MAX_IMAGES`` remote images is a 400.
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
        if len(parts) > MAX_IMAGES:
            raise _error(f"{len(parts)} remote images; at most {MAX_IMAGES} per request", "too_many_images")
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(url: str) -> str:
            async with limit:
                mime, data = await self.fetch(url)
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                tasks = {url: group.create_task(one(url)) for url in dict.fromkeys(u for _, u in parts)}
        except* ProxyError as failed:
            raise failed.exceptions[0] from None
        for part, url in parts:
            data_url = tasks[url].result()
            if isinstance(part["image_url"], dict):
                part["image_url"]["url"] = data_url
            else:
                part["image_url"] = data_url
        return len(parts)
