"""Image inlining's memory, measured on a real ``llm-proxy serve`` process (issue 10 item 9).

A small chat request naming many image URLs made the gateway fetch them all and build the base64
body in memory, with no cap on the request's total. Here the gateway runs as a subprocess in
front of an image server and a mock Gemini upstream on 127.0.0.1; its VmRSS/VmHWM are read from
/proc. Images are 2 MB each and the request caps 8 MB, so the test moves a few tens of MB.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CLIENT_KEY, FIXTURES, MASTER_KEY, read_body, serve_asgi
from test_cli import clean_env, free_port, serving, write_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MB = 1024 * 1024
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (2 * MB // 256 - 1)  # ~2 MB, not all zeros
BIG = IMAGE + IMAGE[: MB]  # ~3 MB: two fit an 8 MB cap, a third does not
ANSWER = (FIXTURES / "gemini" / "generate_basic.response.json").read_bytes()


class Servers:
    """Counts the image server's hits and the largest body the mock Gemini received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.image_hits = 0
        self.largest_upstream_body = 0

    async def images(self, scope: Any, receive: Any, send: Any) -> None:
        with self.lock:
            self.image_hits += 1
        image = BIG if scope["path"].startswith("/big/") else IMAGE
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"image/png"), (b"content-length", str(len(image)).encode())]})
        step = 256 * 1024
        for i in range(0, len(image), step):
            piece = image[i:i + step]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def gemini(self, scope: Any, receive: Any, send: Any) -> None:
        body = await read_body(receive)
        with self.lock:
            self.largest_upstream_body = max(self.largest_upstream_body, len(body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": ANSWER})


@dataclass(frozen=True)
class Setup:
    base: str  # the gateway
    pid: int  # its process
    servers: Servers
    images: str  # the image server


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0), so earlier tests' peaks do not count."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    servers = Servers()
    tmp = tmp_path_factory.mktemp("image-memory")

    async def images(scope: Any, receive: Any, send: Any) -> None:  # a function: uvicorn sniffs ASGI 3
        await servers.images(scope, receive, send)

    async def gemini(scope: Any, receive: Any, send: Any) -> None:
        await servers.gemini(scope, receive, send)

    with serve_asgi(images) as images_url, serve_asgi(gemini) as gemini_url:
        port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
            "database": {"path": str(tmp / "llm_proxy.db")},
            "auth": {"master_key": MASTER_KEY, "keys": [{"key": CLIENT_KEY, "name": "team-a"}]},
            "providers": {"gem": {"type": "gemini", "base_url": gemini_url, "api_key": "gem-key",
                                  "models": ["gemini-2.5-flash"]}},
            "images": {"allowed_hosts": ["127.0.0.1"], "max_mb": 4, "max_per_request": 8, "max_total_mb": 8,
                       "max_concurrent_fetches": 8, "max_inflight_mb": 16},
        }
        path = write_config(tmp, config)
        with serving(["--config", str(path)], clean_env(tmp), tmp) as server:
            server.wait_live(port)
            yield Setup(f"http://127.0.0.1:{port}", server.proc.pid, servers, images_url)


def chat(base: str, image_base: str, n: int, tag: str) -> httpx.Response:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "what are these?"}]
    parts += [{"type": "image_url", "image_url": {"url": f"{image_base}/{tag}/{i}.png"}} for i in range(n)]
    body = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": parts}]}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {CLIENT_KEY}"})


def test_request_over_the_total_cap_is_413_before_fetching_everything(setup: Setup) -> None:
    base, servers, images_url = setup.base, setup.servers, setup.images
    before = servers.image_hits
    response = chat(base, images_url, 8, "big")  # 8 x 3 MB against an 8 MB cap
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "images_too_large" and "images.max_total_mb" in error["message"]
    # the third image's Content-Length passes the cap: the fetches in flight (4 per request) are
    # cut there and the rest never start
    assert servers.image_hits - before < 8


def test_too_many_images_is_400_without_fetching(setup: Setup) -> None:
    base, servers, images_url = setup.base, setup.servers, setup.images
    before = servers.image_hits
    response = chat(base, images_url, 9, "many")
    assert response.status_code == 400, response.text
    assert "images.max_per_request" in response.json()["error"]["message"]
    assert servers.image_hits == before


def test_peak_memory_bounded_and_returned(setup: Setup) -> None:
    base, pid, servers, images_url = setup.base, setup.pid, setup.servers, setup.images
    assert chat(base, images_url, 1, "warm").status_code == 200  # imports, pools, first allocations
    reset_peak(pid)
    start = memory(pid)
    for round_ in range(3):
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda tag=f"r{round_}-{i}", out=results: out.append(
            chat(base, images_url, 3, tag))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
    assert servers.largest_upstream_body > 3 * len(IMAGE)  # the images did reach Gemini inline
    time.sleep(3)  # the gateway gives freed pages back a second after image requests
    end = memory(pid)
    peak_growth = end["VmHWM"] - start["VmRSS"]
    kept = end["VmRSS"] - start["VmRSS"]
    print(f"start {start}, end {end}: peak +{peak_growth / MB:.0f} MB, kept +{kept / MB:.0f} MB")
    # three requests of 6 MB at once, each cap 8 MB: base64 (x4/3) in the body, the translated
    # body and the serialised one, send buffers; before the caps one request could hold 16 x 20 MB
    assert peak_growth < 3 * 8 * MB * 6
    # freed heap pages go back to the OS a second after the last image request (malloc_trim);
    # without that this stayed at 66-103 MB here, with it 38-63 MB
    assert kept < 80 * MB
