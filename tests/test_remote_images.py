"""llm_proxy.upstream.remote_images against a tiny HTTP server on 127.0.0.1: SSRF checks, limits, inlining.

Nothing here may reach an address other than 127.0.0.1: every fetcher's transport is wrapped in
a guard that fails the test if asked to connect anywhere else, and refused URLs are refused
before any connection is made (the server's hit log proves it for 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from llm_proxy.core.config import ImagesConfig
from llm_proxy.core.errors import ProxyError
from llm_proxy.upstream.remote_images import MAX_IMAGES, ImageFetcher, _Budget, _forbidden
from llm_proxy.upstream.transport import AiohttpTransport

# a real 1x1 transparent PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
BIG = b"\x89PNG" + b"\0" * 4000  # over max_mb=0.001 (1048 bytes)
SECRET = b"<html>SECRET-BODY</html>"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(
        self, status: int, body: bytes = b"", ctype: str = "", length: bool = True, **headers: str
    ) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("content-type", ctype)
        if length:
            self.send_header("content-length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        server: Server = self.server  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        with server.lock:
            server.hits.append(self.path)
        if path == "/x.png":
            self._send(200, PNG, "image/png; charset=binary")
        elif path == "/paced.png":  # counts how many are in flight at once
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            time.sleep(0.1)
            with server.lock:  # before answering: the client may start its next fetch right after
                server.in_flight -= 1
            self._send(200, PNG, "image/png")
        elif path == "/page.html":
            self._send(200, SECRET, "text/html")
        elif path == "/big.png":
            self._send(200, BIG, "image/png")
        elif path == "/big-unsized.png":  # HTTP/1.0, no content-length: close-delimited
            self._send(200, BIG, "image/png", length=False)
        elif path == "/slow.png":
            time.sleep(2)
            self._send(200, PNG, "image/png")
        elif path == "/gzip.png":
            self._send(200, PNG, "image/png", content_encoding="gzip")
        elif path == "/redirect":
            self._send(302, location="/x.png")
        elif path == "/redirect-meta":
            self._send(302, location="http://169.254.169.254/latest/meta-data")
        elif path == "/redirect-loop":
            self._send(302, location="/redirect-loop")
        else:
            self._send(404, SECRET, "text/html")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _clear_hits(server: Server) -> None:
    server.hits.clear()
    server.max_in_flight = 0


class Guard(httpx.AsyncBaseTransport):
    """Delegates only requests for 127.0.0.1; anything else fails the test."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport()
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        assert request.url.host == "127.0.0.1", f"test tried to reach {request.url.host}"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


ALLOW_LOCAL = ImagesConfig(allowed_hosts=("127.0.0.1",), fetch_timeout=0.3, max_mb=0.001)


def run(config: ImagesConfig, action: Any) -> Any:
    """Run ``action(fetcher)`` with a guarded fetcher, closing it afterwards."""

    async def main() -> Any:
        guard = Guard()
        fetcher = ImageFetcher(config, transport=guard)
        try:
            return await action(fetcher)
        finally:
            await fetcher.aclose()
            await guard.aclose()

    return asyncio.run(main())


def refused(config: ImagesConfig, url: str, code: str = "invalid_image_url") -> ProxyError:
    with pytest.raises(ProxyError) as info:
        run(config, lambda f: f.fetch(url))
    err = info.value
    assert (err.status, err.type, err.code) == (400, "invalid_request_error", code)
    assert "SECRET" not in err.message
    return err


# --- refused before connecting (default config) ------------------------------------------


def test_loopback_refused_by_default(server: Server) -> None:
    err = refused(ImagesConfig(), server.url("/x.png"))
    assert "127.0.0.1" in err.message and "loopback" in err.message
    assert server.hits == []


def test_localhost_name_refused(server: Server) -> None:
    port = server.server_address[1]
    err = refused(ImagesConfig(), f"http://localhost:{port}/x.png")
    assert "loopback" in err.message
    assert server.hits == []


def test_ipv4_mapped_loopback_refused(server: Server) -> None:
    port = server.server_address[1]
    err = refused(ImagesConfig(), f"http://[::ffff:127.0.0.1]:{port}/x.png")
    assert "loopback" in err.message
    assert server.hits == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1/a.png", "private"),
        ("http://172.16.5.4/a.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("https://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.1.1/", "non-public"),
    ],
)
def test_private_literals_refused_without_traffic(url: str, reason: str) -> None:
    started = time.monotonic()
    err = refused(ImagesConfig(), url)
    assert time.monotonic() - started < 0.5
    assert reason in err.message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://127.0.0.1/x.png", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http://user:pass@127.0.0.1/x.png", "credentials"),
        ("http://user@127.0.0.1/x.png", "credentials"),
    ],
)
def test_scheme_and_credentials_refused_even_if_allowed(url: str, words: str) -> None:
    assert words in refused(ALLOW_LOCAL, url).message


def test_forbidden_addresses() -> None:
    import ipaddress

    for bad in ("127.0.0.2", "::ffff:10.1.2.3", "64:ff9b::7f00:1", "2002:a00:1::", "240.0.0.1", "::"):
        assert _forbidden(ipaddress.ip_address(bad)), bad
    for good in ("8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"):
        assert _forbidden(ipaddress.ip_address(good)) is None, good


def test_name_resolving_to_any_private_address_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """One bad address among several is enough: the transport may connect to any of them."""
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.5"], "public.example": ["93.184.216.34"]}

    async def fake_getaddrinfo(self: Any, host: str, port: int, **kw: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_getaddrinfo)
    assert "private" in refused(ImagesConfig(), "https://mixed.example/a.png").message
    refused(ImagesConfig(), "https://nowhere.example/a.png", code="image_fetch_failed")
    # a public-only name passes the check (not fetched: that would leave 127.0.0.1)
    assert run(ImagesConfig(), lambda f: f._check(httpx.URL("https://public.example/a.png"))) is None


# --- fetching from an allowed 127.0.0.1 ---------------------------------------------------


def test_fetch_png_when_host_allowed(server: Server) -> None:
    mime, data = run(ALLOW_LOCAL, lambda f: f.fetch(server.url("/x.png")))
    assert (mime, data) == ("image/png", PNG)


def test_fetch_png_when_private_networks_allowed(server: Server) -> None:
    config = ImagesConfig(allow_private_networks=True)
    assert run(config, lambda f: f.fetch(server.url("/x.png"))) == ("image/png", PNG)


def test_own_transport_created_lazily_and_closed(server: Server) -> None:
    async def main() -> tuple[str, bytes]:
        fetcher = ImageFetcher(ALLOW_LOCAL)
        try:
            return await fetcher.fetch(server.url("/x.png"))
        finally:
            await fetcher.aclose()

    assert asyncio.run(main()) == ("image/png", PNG)


def test_html_refused(server: Server) -> None:
    assert "text/html" in refused(ALLOW_LOCAL, server.url("/page.html")).message


def test_error_status_refused(server: Server) -> None:
    assert "HTTP 404" in refused(ALLOW_LOCAL, server.url("/missing.png")).message


def test_content_encoding_refused(server: Server) -> None:
    assert "content-encoding" in refused(ALLOW_LOCAL, server.url("/gzip.png")).message


@pytest.mark.parametrize("path", ["/big.png", "/big-unsized.png"])
def test_too_big_refused(server: Server, path: str) -> None:
    assert "0.001 MB" in refused(ALLOW_LOCAL, server.url(path)).message


def test_slow_times_out(server: Server) -> None:
    started = time.monotonic()
    err = refused(ALLOW_LOCAL, server.url("/slow.png"), code="image_fetch_timeout")
    assert time.monotonic() - started < 1.0
    assert "0.3s" in err.message


def test_unreachable_port(server: Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(ALLOW_LOCAL, f"http://127.0.0.1:{port}/x.png", code="image_fetch_failed")


def test_redirect_followed(server: Server) -> None:
    assert run(ALLOW_LOCAL, lambda f: f.fetch(server.url("/redirect"))) == ("image/png", PNG)
    assert server.hits == ["/redirect", "/x.png"]


def test_redirect_to_metadata_refused(server: Server) -> None:
    err = refused(ALLOW_LOCAL, server.url("/redirect-meta"))
    assert "169.254.169.254" in err.message and "metadata" in err.message
    assert server.hits == ["/redirect-meta"]


def test_redirect_loop_capped(server: Server) -> None:
    assert "redirected more than 3" in refused(ALLOW_LOCAL, server.url("/redirect-loop")).message
    assert len(server.hits) == 4


# --- inline_images --------------------------------------------------------------------------


def _body(*parts: Any) -> dict[str, Any]:
    return {
        "model": "gemini-2.0-flash",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, *parts]},
        ],
    }


def test_inline_images_replaces_urls(server: Server) -> None:
    data_part = {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGODlh"}}
    body = _body(
        {"type": "image_url", "image_url": {"url": server.url("/x.png"), "detail": "low"}},
        {"type": "image_url", "image_url": server.url("/x.png")},  # plain string form, same URL
        data_part,
    )
    assert run(ALLOW_LOCAL, lambda f: f.inline_images(body)) == 2
    parts = body["messages"][1]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}}
    assert parts[2] == {"type": "image_url", "image_url": PNG_DATA_URL}
    assert parts[3] == {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGODlh"}}
    assert server.hits == ["/x.png"]  # one fetch for a repeated URL


def test_inline_images_nothing_to_do() -> None:
    body = _body({"type": "text", "text": "hi"})
    assert run(ImagesConfig(), lambda f: f.inline_images(body)) == 0
    assert run(ImagesConfig(), lambda f: f.inline_images({"messages": "nonsense"})) == 0


def test_inline_images_concurrency_bounded(server: Server) -> None:
    body = _body(*({"type": "image_url", "image_url": server.url(f"/paced.png?{i}")} for i in range(10)))
    assert run(ALLOW_LOCAL, lambda f: f.inline_images(body)) == 10
    assert 1 < server.max_in_flight <= 4


def test_concurrent_fetches_bounded_across_requests(server: Server) -> None:
    config = ImagesConfig(allowed_hosts=("127.0.0.1",), max_concurrent_fetches=2, fetch_timeout=5)

    async def two_requests(fetcher: ImageFetcher) -> list[int]:
        bodies = [_body(*({"type": "image_url", "image_url": server.url(f"/paced.png?{r}-{i}")} for i in range(4)))
                  for r in range(2)]
        return list(await asyncio.gather(*(fetcher.inline_images(b) for b in bodies)))

    assert run(config, two_requests) == [4, 4]
    assert server.max_in_flight == 2  # gateway-wide, though each request may run 4


def test_byte_budget_given_back(server: Server) -> None:
    config = ImagesConfig(allowed_hosts=("127.0.0.1",), max_total_mb=0.0001, max_inflight_mb=0.0001)

    async def sequential(fetcher: ImageFetcher) -> int:
        total = 0
        for r in range(3):  # each request takes the whole budget; it must be given back each time
            total += await fetcher.inline_images(_body({"type": "image_url", "image_url": server.url(f"/x.png?{r}")}))
        assert fetcher._budget.used == 0
        return total

    assert run(config, sequential) == 3


def test_budget_waits_in_order_and_survives_cancellation() -> None:
    async def main() -> None:
        budget = _Budget(10)
        await budget.take(8)
        first = asyncio.create_task(budget.take(5))
        second = asyncio.create_task(budget.take(1))  # would fit, but waits its turn behind first
        cancelled = asyncio.create_task(budget.take(2))
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        budget.give(8)
        await asyncio.wait_for(asyncio.gather(first, second), 1)
        assert budget.used == 6  # the cancelled taker holds nothing
        budget.give(6)
        assert budget.used == 0

    asyncio.run(main())


def test_total_cap_is_413(server: Server) -> None:
    config = ImagesConfig(allowed_hosts=("127.0.0.1",), max_total_mb=0.0001)  # 104 bytes: one 1x1 PNG
    body = _body(*({"type": "image_url", "image_url": server.url(f"/x.png?{i}")} for i in range(2)))
    with pytest.raises(ProxyError) as info:
        run(config, lambda f: f.inline_images(body))
    assert (info.value.status, info.value.code) == (413, "images_too_large")
    assert "images.max_total_mb" in info.value.message


def test_inline_images_failure_is_400(server: Server) -> None:
    body = _body({"type": "image_url", "image_url": {"url": server.url("/x.png")}})
    with pytest.raises(ProxyError) as info:
        run(ImagesConfig(), lambda f: f.inline_images(body))
    assert (info.value.status, info.value.code) == (400, "invalid_image_url")
    assert body["messages"][1]["content"][1]["image_url"]["url"] == server.url("/x.png")  # untouched


def test_inline_images_cap(server: Server) -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": server.url(f"/x.png?{i}")}} for i in range(MAX_IMAGES + 1)
    ]
    with pytest.raises(ProxyError) as info:
        run(ALLOW_LOCAL, lambda f: f.inline_images(_body(*parts)))
    assert (info.value.status, info.value.code) == (400, "too_many_images")
    assert str(MAX_IMAGES) in info.value.message
    assert server.hits == []


# --- data: URLs the client sent are checked like fetched images -----------------------------------


def data_refused(config: ImagesConfig, url: str, *, string_form: bool = False) -> ProxyError:
    part = {"type": "image_url", "image_url": url if string_form else {"url": url}}
    with pytest.raises(ProxyError) as info:
        run(config, lambda f: f.inline_images(_body(part)))
    err = info.value
    assert (err.status, err.type, err.code) == (400, "invalid_request_error", "invalid_image_url")
    where = "messages[1].content[1].image_url" + ("" if string_form else ".url")
    assert err.param == where and err.message.startswith(where + ": ")
    return err


@pytest.mark.parametrize(("url", "words"), [
    ("data:text/plain;base64,aGk=", "'text/plain', not an image"),
    ("data:,hi", "'text/plain', not an image"),  # no type: RFC 2397's default
    ("data:image/;base64,aGk=", "not an image"),
    ("data:image/png;base64", "no ','"),
    ("data:image/png;base64,", "no image data"),
    ("data:image/png;base64,aGk", "not valid base64"),  # unpadded
    ("data:image/png;base64,aG=k", "not valid base64"),  # padding inside
    ("data:image/png;base64,aGk=aGk=", "not valid base64"),
    ("data:image/png;base64,aG k=", "not valid base64"),
    ("data:image/png;base64,aGé=", "not valid base64"),
    ("data:image/png;base64,aGk_", "not valid base64"),  # the URL-safe alphabet is not base64 here
])
def test_a_bad_data_url_is_refused_naming_the_part(url: str, words: str) -> None:
    assert words in data_refused(ImagesConfig(), url).message


def test_a_bad_data_url_in_the_string_form_names_that_field() -> None:
    data_refused(ImagesConfig(), "data:text/html,<b>hi</b>", string_form=True)


def test_a_data_url_over_the_size_cap_is_refused() -> None:
    cap = int(ALLOW_LOCAL.max_mb * 1024 * 1024)
    exact = base64.b64encode(b"\0" * cap).decode()
    over = base64.b64encode(b"\0" * (cap + 1)).decode()
    assert run(ALLOW_LOCAL, lambda f: f.inline_images(_body(
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{exact}"}}))) == 0
    assert "0.001 MB limit" in data_refused(ALLOW_LOCAL, f"data:image/png;base64,{over}").message
    assert "0.001 MB limit" in data_refused(ALLOW_LOCAL, "data:image/svg+xml," + "a" * (cap + 1)).message


def test_good_data_urls_are_left_as_they_are() -> None:
    big = base64.b64encode(bytes(range(256)) * 1000).decode()  # several of the slices it is checked in
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in (
        PNG_DATA_URL, "data:IMAGE/PNG;name=x.png;base64," + PNG_DATA_URL.partition(",")[2],
        "data:image/svg+xml,%3Csvg%2F%3E", f"data:image/jpeg;base64,{big}")]
    body = _body(*parts)
    before = repr(body)
    assert run(ImagesConfig(), lambda f: f.inline_images(body)) == 0
    assert repr(body) == before


def test_a_data_url_bad_far_into_its_data_is_refused() -> None:
    big = base64.b64encode(bytes(range(256)) * 1000).decode()
    bad = big[:200_001] + "*" + big[200_002:]
    assert "not valid base64" in data_refused(ImagesConfig(), f"data:image/jpeg;base64,{bad}").message
