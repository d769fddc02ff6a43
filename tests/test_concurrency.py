"""Many requests at once, a slow disk, and shutdown: every request answered, every row written once."""

from __future__ import annotations

import asyncio
import json
import resource
import threading
import time
from typing import Any

import httpx
from conftest import CLIENT_KEY, Gateway

from llm_proxy.testing.mock_upstream import MockUpstream
from llm_proxy.upstream.transport import AiohttpTransport

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def payload(i: int, *, stream: bool, text: str = "") -> dict[str, Any]:
    return {
        "model": ("gpt-4o", "gpt-4o-mini", "gpt4", "deepseek-chat")[i % 4],
        "stream": stream,
        "messages": [{"role": "user", "content": f"request number {i} {text}"}],
    }


async def one(client: httpx.AsyncClient, url: str, i: int, text: str = "") -> tuple[int, str, bytes]:
    stream = i % 2 == 1
    async with client.stream("POST", f"{url}/v1/chat/completions", json=payload(i, stream=stream, text=text),
                             headers=AUTH) as r:
        body = await r.aread()
    return r.status_code, r.headers["x-request-id"], body


def big_pool_client(connections: int) -> httpx.AsyncClient:
    """One httpx client with room for every request at once. Its pool is aiohttp's (the
    gateway's own transport): httpcore's pool scans every connection for every request, which
    makes 500 parallel requests take ~7 s of pure client CPU instead of ~1 s."""
    return httpx.AsyncClient(transport=AiohttpTransport(limit=connections), timeout=60)


async def fire(url: str, count: int, text: str = "") -> list[tuple[int, str, bytes]]:
    async with big_pool_client(count + 50) as client:
        return await asyncio.gather(*(one(client, url, i, text) for i in range(count)))


def ensure_open_files(needed: int) -> None:
    """Client, gateway and mock share this process: 500 requests hold ~2,000 sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        assert target >= needed, f"this test needs {needed} open files; the hard limit is {hard}"


def test_500_concurrent_requests_all_answered_and_logged_once(mock: MockUpstream, gateway: Gateway) -> None:
    ensure_open_files(4096)
    results = asyncio.run(fire(gateway.url, 500))

    statuses = [status for status, _, _ in results]
    assert statuses == [200] * 500, {s: statuses.count(s) for s in set(statuses)}
    for i, (_, _, body) in enumerate(results):
        if i % 2:
            assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
        else:
            assert json.loads(body)["choices"][0]["message"]["content"]
    ids = [rid for _, rid, _ in results]
    assert len(set(ids)) == 500

    rows = gateway.rows(500, timeout=15)
    assert len(rows) == 500
    time.sleep(0.1)
    assert len(gateway.rows()) == 500  # not one more
    assert {r["request_id"] for r in rows} == set(ids)
    assert all(r["status"] == 200 and r["error_type"] is None for r in rows)
    assert sum(r["stream"] for r in rows) == 250
    assert all(r["completion_tokens"] == 5 and r["usage_estimated"] == 0 for r in rows)
    assert len(mock.requests) == 500


def test_slow_log_writer_never_delays_requests(mock: MockUpstream, gateway: Gateway) -> None:
    writer = gateway.runtime.request_log.writer
    entered, release = threading.Event(), threading.Event()
    real_write = writer._write

    def stuck_write(conn: Any, batch: list[Any]) -> None:
        entered.set()
        release.wait(10)
        real_write(conn, batch)

    writer._write = stuck_write
    try:
        first = asyncio.run(fire(gateway.url, 1))
        assert first[0][0] == 200
        assert entered.wait(5)  # the writer is now stuck on the disk
        started = time.monotonic()
        results = asyncio.run(fire(gateway.url, 40))
        elapsed = time.monotonic() - started
        assert [s for s, _, _ in results] == [200] * 40
        assert elapsed < 3, elapsed
        assert writer.queued == 40
        assert gateway.rows() == []
    finally:
        release.set()
    assert len(gateway.rows(41)) == 41


def test_stopping_the_gateway_drains_the_log_queue(mock: MockUpstream, make_gateway: Any) -> None:
    gw = make_gateway(request_log={"batch_size": 1})
    writer = gw.runtime.request_log.writer
    release = threading.Event()
    real_write = writer._write

    def slow_write(conn: Any, batch: list[Any]) -> None:
        release.wait(10)
        time.sleep(0.005)  # a slow disk: ~5 ms per one-row transaction
        real_write(conn, batch)

    writer._write = slow_write

    async def scenario() -> list[tuple[int, str, bytes]]:
        # 60 quick requests that are answered before the stop, and 6 slow streams still
        # running when the server is told to stop (graceful shutdown lets them finish)
        quick = await fire(gw.url, 60)
        async with big_pool_client(10) as client:
            slow = [asyncio.ensure_future(one(client, gw.url, i, "\n#mock chunks=5 chunk_ms=100"))
                    for i in range(1, 12, 2)]
            assert await mock.wait_for_async(lambda: mock.streams_started >= 30 + 6)
            assert gw.rows() == []  # nothing written yet: all 60 rows are queued
            release.set()
            stopper = threading.Thread(target=gw.stop)
            stopper.start()
            done = await asyncio.gather(*slow)
            await asyncio.to_thread(stopper.join, 15)
            return quick + list(done)

    results = asyncio.run(scenario())
    assert [s for s, _, _ in results] == [200] * 66
    assert all(body.endswith(b"data: [DONE]\n\n") for _, _, body in results[60:])
    assert not gw._thread.is_alive()
    assert writer._thread is None  # closed, and it wrote what was queued first
    rows = gw.rows()
    assert len(rows) == 66
    assert {r["request_id"] for r in rows} == {rid for _, rid, _ in results}
    assert writer.written == 66
