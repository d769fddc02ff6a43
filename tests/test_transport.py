"""llm_proxy.upstream.transport against a tiny local HTTP/1.1 server: wire format, streaming, timeouts, errors.

The server is a raw asyncio one so each test controls exactly what goes on the wire (pauses,
truncation, missing responses) and sees what the client sent and from which connection.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from llm_proxy.upstream.transport import AiohttpTransport, _client_timeout


@dataclass
class Seen:
    """One request as the server received it."""

    peer_port: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


# a route answers one request; returning True closes the connection afterwards
Route = Callable[[Seen, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool | None]]


@dataclass
class Server:
    routes: dict[str, Route]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer_port = writer.get_extra_info("peername")[1]
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, path, _ = line.split(" ")
                headers = [(k, v.strip()) for k, v in (h.split(":", 1) for h in lines)]
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                body = await reader.readexactly(length)
                self.seen.append(seen := Seen(peer_port, method, path, headers, body))
                if await self.routes[path](seen, reader, writer):
                    return
        finally:
            writer.close()


@asynccontextmanager
async def serve(routes: dict[str, Route]) -> AsyncIterator[Server]:
    server = Server(routes)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await server._handle(reader, writer)
        finally:
            tasks.discard(task)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await srv.wait_closed()


def respond(status: int, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def timeouts(connect: float | None = 5.0, read: float | None = 5.0, pool: float | None = 5.0) -> dict:
    return {"timeout": httpx.Timeout(connect=connect, read=read, write=None, pool=pool).as_dict()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_post_round_trip_sends_exactly_the_request_headers() -> None:
    async def echo(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(201, b"got:" + req.body, "X-Echo: yes"))

    async def main() -> None:
        transport = AiohttpTransport()
        async with serve({"/echo": echo}) as srv:
            headers = [("Content-Type", "application/json"), ("X-Dup", "1"), ("X-Dup", "2")]
            for _ in range(2):  # the second request reuses the kept-alive connection
                request = httpx.Request(
                    "POST", srv.url("/echo"), headers=headers, content=b'{"a":1}', extensions=timeouts()
                )
                response = await transport.handle_async_request(request)
                assert response.status_code == 201
                assert response.headers["x-echo"] == "yes"
                assert await response.aread() == b'got:{"a":1}'
                await response.aclose()
        await transport.aclose()
        first, second = srv.seen
        assert first.peer_port == second.peer_port
        assert (first.method, first.path, first.body) == ("POST", "/echo", b'{"a":1}')
        names = [k.lower() for k, _ in second.headers]
        # what httpx.Request carried, nothing added by aiohttp (no Accept-Encoding, User-Agent, ...)
        assert sorted(names) == ["content-length", "content-type", "host", "x-dup", "x-dup"]
        assert [v for k, v in second.headers if k.lower() == "x-dup"] == ["1", "2"]

    asyncio.run(main())


def test_upstream_cookies_are_not_replayed_to_later_requests() -> None:
    # one session serves every gateway user: a cookie set for one must never reach another
    async def set_cookie(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(200, b"ok", "Set-Cookie: session=user-a; Path=/"))

    async def main() -> None:
        async with serve({"/": set_cookie}) as srv, AiohttpTransport() as transport:
            for _ in range(2):  # a host name, not an IP: aiohttp's default jar would keep this cookie
                url = f"http://localhost:{srv.port}/"
                response = await transport.handle_async_request(httpx.Request("GET", url))
                await response.aread()
                await response.aclose()
            assert all(k.lower() != "cookie" for seen in srv.seen for k, _ in seen.headers)

    asyncio.run(main())


def test_streamed_response_arrives_chunk_by_chunk_through_async_client() -> None:
    async def sse(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD)
        for part in (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"):
            writer.write(chunk(part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with serve({"/sse": sse}) as srv, httpx.AsyncClient(transport=AiohttpTransport()) as client:
            response = await client.send(
                client.build_request("POST", srv.url("/sse"), content=b"{}"), stream=True
            )
            try:
                assert response.headers["content-type"] == "text/event-stream"
                chunks = [part async for part in response.aiter_raw()]
            finally:
                await response.aclose()
        assert chunks == [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]

    asyncio.run(main())


def test_read_timeout_between_chunks() -> None:
    async def stall(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD + chunk(b"first"))
        await writer.drain()
        await asyncio.sleep(2)

    async def main() -> None:
        transport = AiohttpTransport()
        async with serve({"/stall": stall}) as srv:
            request = httpx.Request("GET", srv.url("/stall"), extensions=timeouts(read=0.2))
            response = await transport.handle_async_request(request)
            stream = response.aiter_raw()
            assert await stream.__anext__() == b"first"
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout) as info:
                await stream.__anext__()
            assert 0.15 < time.monotonic() - started < 1.0
            assert info.value.request is request
            await response.aclose()
        await transport.aclose()

    asyncio.run(main())


def test_connect_and_read_timeouts_are_independent_and_there_is_no_total() -> None:
    async def slow(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD)
        await writer.drain()
        await asyncio.sleep(1.5)  # 3x the connect timeout, with no read timeout: must not be cut
        writer.write(chunk(b"late") + b"0\r\n\r\n")

    async def main() -> None:
        transport = AiohttpTransport()
        async with serve({"/slow": slow}) as srv:
            request = httpx.Request(
                "GET", srv.url("/slow"), extensions=timeouts(connect=0.5, read=None, pool=0.5)
            )
            started = time.monotonic()
            response = await transport.handle_async_request(request)
            assert await response.aread() == b"late"
            assert time.monotonic() - started >= 1.4
            await response.aclose()
        await transport.aclose()

    asyncio.run(main())
    # and the mapping never sets aiohttp's total timeout, whatever httpx asks for
    assert _client_timeout((None, None, None)).total is None
    assert _client_timeout((5.0, 600.0, 1.0)).total is None


def test_connection_refused_is_connect_error() -> None:
    async def main() -> None:
        async with AiohttpTransport() as transport:
            request = httpx.Request("GET", f"http://127.0.0.1:{free_port()}/", extensions=timeouts())
            with pytest.raises(httpx.ConnectError) as info:
                await transport.handle_async_request(request)
            assert info.value.request is request

    asyncio.run(main())


def test_connect_timeout() -> None:
    # A listener whose accept queue is full drops new SYNs, so connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for s in fillers:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        try:
            time.sleep(0.05)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                pytest.skip("this network stack does not make connects hang on a full backlog")
            except TimeoutError:
                pass

            async def main() -> None:
                async with AiohttpTransport() as transport:
                    request = httpx.Request(
                        "GET", f"http://127.0.0.1:{port}/", extensions=timeouts(connect=0.2, pool=2.0)
                    )
                    with pytest.raises(httpx.ConnectTimeout):
                        await transport.handle_async_request(request)

            asyncio.run(main())
        finally:
            for s in fillers:
                s.close()


def test_pool_timeout_when_all_connections_are_busy() -> None:
    async def hold(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED_HEAD + chunk(b"x"))
        await writer.drain()
        await asyncio.sleep(2)

    async def main() -> None:
        async with serve({"/hold": hold}) as srv, AiohttpTransport(limit=1) as transport:
            busy = await transport.handle_async_request(httpx.Request("GET", srv.url("/hold")))
            request = httpx.Request("GET", srv.url("/hold"), extensions=timeouts(connect=0.1, pool=0.2))
            with pytest.raises(httpx.PoolTimeout):
                await transport.handle_async_request(request)
            await busy.aclose()

    asyncio.run(main())


def test_closing_early_closes_the_connection_instead_of_pooling_it() -> None:
    gone = asyncio.Event()

    async def endless(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(CHUNKED_HEAD + chunk(b"tick"))
        await writer.drain()
        if await reader.read(1) == b"":  # EOF: the client closed its end
            gone.set()
        return True

    async def small(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(200, b"ok"))

    async def main() -> None:
        async with serve({"/endless": endless, "/small": small}) as srv, AiohttpTransport() as transport:
            response = await transport.handle_async_request(httpx.Request("GET", srv.url("/endless")))
            assert await response.aiter_raw().__anext__() == b"tick"
            await response.aclose()
            await asyncio.wait_for(gone.wait(), 2)
            for _ in range(2):
                response = await transport.handle_async_request(httpx.Request("GET", srv.url("/small")))
                assert await response.aread() == b"ok"
                await response.aclose()
            half_read, after, reused = srv.seen
            assert after.peer_port != half_read.peer_port  # a fresh connection, not the half-read one
            assert reused.peer_port == after.peer_port  # fully read ones are kept alive

    asyncio.run(main())


def test_broken_responses_are_remote_protocol_errors() -> None:
    async def hang_up(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        return True

    async def truncated(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        return True

    async def main() -> None:
        async with serve({"/hang-up": hang_up, "/truncated": truncated}) as srv, AiohttpTransport() as t:
            with pytest.raises(httpx.RemoteProtocolError):
                await t.handle_async_request(httpx.Request("GET", srv.url("/hang-up")))
            response = await t.handle_async_request(httpx.Request("GET", srv.url("/truncated")))
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()
            await response.aclose()

    asyncio.run(main())


def test_compressed_bodies_pass_through_raw_and_httpx_decodes_them() -> None:
    payload = b'{"usage": {"total_tokens": 3}}'

    async def gz(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(200, gzip.compress(payload), "Content-Encoding: gzip"))

    async def main() -> None:
        async with serve({"/gz": gz}) as srv, AiohttpTransport() as transport:
            raw = await transport.handle_async_request(httpx.Request("GET", srv.url("/gz")))
            assert gzip.decompress(b"".join([part async for part in raw.aiter_raw()])) == payload
            await raw.aclose()
            decoded = await transport.handle_async_request(httpx.Request("GET", srv.url("/gz")))
            assert await decoded.aread() == payload
            await decoded.aclose()

    asyncio.run(main())


def test_transport_built_outside_a_loop_works_in_each_loop_it_is_used_in() -> None:
    transport = AiohttpTransport()  # no running loop here: the session is created on first use

    async def ok(req: Seen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(respond(200, b"ok"))

    async def main() -> None:
        async with serve({"/": ok}) as srv:
            response = await transport.handle_async_request(httpx.Request("GET", srv.url("/")))
            assert await response.aread() == b"ok"
            await response.aclose()
        await transport.aclose()

    asyncio.run(main())
    asyncio.run(main())  # aclose() left it reusable, bound to the new loop
