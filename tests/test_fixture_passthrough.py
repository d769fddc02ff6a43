"""Real provider traffic, relayed: recorded fixture bytes in, the same bytes out, usage metered.

A tiny upstream (raw ASGI under uvicorn) answers every chat completion with the bytes of a
fixture file chosen by the model name, cut into pieces that ignore event boundaries. The
gateway reaches it as provider ``fx``, pinned by ``fx/<fixture>`` model names.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CLIENT_KEY, FIXTURES, Gateway, gateway_config, read_body, serve_asgi

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}

STREAMS = {
    # fixture: (prompt, completion, reasoning, cached, finish_reason)
    "openai_chat/stream_basic_with_usage.sse": (14, 30, 0, 0, "stop"),
    "openai_chat/stream_tool_call.sse": (44, 16, 0, 0, "tool_calls"),
    "openai_chat/stream_finish_length.sse": (79, 1, 0, 0, "length"),
    "deepseek/stream_reasoning.sse": (18, 219, 205, 0, "stop"),
    "deepseek/stream_text.sse": (13, 400, 0, 0, "length"),
    # the fixtures above all report 0 cached tokens; these copies say otherwise
    "cached/openai_stream.sse": (14, 30, 0, 8, "stop"),
}
BODIES = {
    "openai_chat/response_basic.json": (19, 10, 0, 0, "stop"),
    "openai_chat/response_tools.json": (82, 17, 0, 0, "tool_calls"),
    "deepseek/response_reasoning.json": (18, 345, 315, 0, "stop"),
    "cached/deepseek_response.json": (18, 345, 315, 12, "stop"),
}


def load_fixtures() -> dict[str, bytes]:
    files = {name: (FIXTURES / name).read_bytes() for name in [*STREAMS, *BODIES] if not name.startswith("cached/")}
    basic = files["openai_chat/stream_basic_with_usage.sse"]
    usage = b'"total_tokens":44,'
    assert basic.count(usage) == 1
    files["cached/openai_stream.sse"] = basic.replace(usage, usage + b'"prompt_tokens_details":{"cached_tokens":8},')
    reasoning = files["deepseek/response_reasoning.json"]
    hit, miss = b'"prompt_cache_hit_tokens": 0,', b'"prompt_cache_miss_tokens": 18'
    assert reasoning.count(hit) == 1 and reasoning.count(miss) == 1
    files["cached/deepseek_response.json"] = reasoning.replace(hit, b'"prompt_cache_hit_tokens": 12,').replace(
        miss, b'"prompt_cache_miss_tokens": 6'
    )
    return files


class FixtureUpstream:
    """Raw ASGI app: ``POST /v1/chat/completions`` answered with the fixture named by ``model``."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.piece = 997  # bytes per body message: deliberately not aligned with events
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        raw = await read_body(receive)
        body = json.loads(raw)
        self.requests.append(body)
        data = self.files.get(body.get("model"))
        if scope["path"] != "/v1/chat/completions" or data is None:
            error = json.dumps({"error": {"message": "no such fixture", "type": "invalid_request_error"}}).encode()
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": error})
            return
        rid = b"req_fixture_%d" % len(self.requests)
        if body["model"].endswith(".json"):
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                (b"x-request-id", rid)]})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"x-request-id", rid)]})
        piece = self.piece
        for start in range(0, len(data), piece):
            await send({"type": "http.response.body", "body": data[start:start + piece], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture(scope="module")
def fixture_upstream() -> Iterator[tuple[FixtureUpstream, str]]:
    app = FixtureUpstream(load_fixtures())
    with serve_asgi(app) as url:
        yield app, url + "/v1"


@pytest.fixture(scope="module")
def fx_gateway(fixture_upstream: tuple[FixtureUpstream, str], tmp_path_factory: Any) -> Iterator[Gateway]:
    _, base_url = fixture_upstream
    providers = {"fx": {"type": "openai", "base_url": base_url, "api_key": "sk-fixture-upstream",
                        "timeouts": {"connect": 2, "read": 5, "total": 20}}}
    config = gateway_config(base_url, tmp_path_factory.mktemp("fx") / "fx.db", providers=providers, aliases={})
    gw = Gateway(config).start()
    yield gw
    gw.stop()


@pytest.fixture
def upstream_app(fixture_upstream: tuple[FixtureUpstream, str]) -> Iterator[FixtureUpstream]:
    app = fixture_upstream[0]
    app.requests.clear()
    yield app
    app.piece = 997


def row_for(gw: Gateway, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        rows = [r for r in gw.rows() if r["request_id"] == request_id]
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.02)


def frames(data: bytes) -> list[bytes]:
    """The stream's events, each with its own framing (``data: ...\\n\\n``)."""
    assert data.endswith(b"\n\n")
    return [f + b"\n\n" for f in data[:-2].split(b"\n\n")]


def is_usage_only(frame: bytes) -> bool:
    payload = frame[len(b"data: "):].strip()
    if payload == b"[DONE]":
        return False
    obj = json.loads(payload)
    return obj.get("choices") == [] and bool(obj.get("usage"))


def post(gw: Gateway, body: dict[str, Any], request_id: str) -> httpx.Response:
    headers = {**AUTH, "x-request-id": request_id}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def check_row(row: dict[str, Any], expected: tuple[int, int, int, int, str], *, stream: bool) -> None:
    prompt, completion, reasoning, cached, finish = expected
    assert row["status"] == 200 and row["error_type"] is None
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"], row["cached_tokens"]) == (
        prompt, completion, reasoning, cached)
    assert row["finish_reason"] == finish
    assert row["usage_estimated"] == 0
    assert row["stream"] == int(stream)
    assert row["provider"] == "fx"
    assert row["upstream_request_id"].startswith("req_fixture_")
    if stream:
        assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no_usage"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_stream_fixture_relayed_byte_for_byte(
    fx_gateway: Gateway, upstream_app: FixtureUpstream, name: str, include_usage: bool
) -> None:
    fixture = upstream_app.files[name]
    body: dict[str, Any] = {"model": f"fx/{name}", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    rid = f"fx-{os.urandom(6).hex()}"
    r = post(fx_gateway, body, rid)

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    forwarded = upstream_app.requests[-1]
    assert forwarded["model"] == name
    assert forwarded["stream_options"] == {"include_usage": True}  # the gateway always meters
    if include_usage:
        assert r.content == fixture
    else:
        expected = [f for f in frames(fixture) if not is_usage_only(f)]
        dropped = len(frames(fixture)) - len(expected)
        assert dropped == (1 if name.startswith(("openai_chat/", "cached/")) else 0)  # DeepSeek: usage rides the last choice
        assert frames(r.content) == expected
    check_row(row_for(fx_gateway, rid), STREAMS[name], stream=True)


def test_stream_relay_survives_one_byte_reads(fx_gateway: Gateway, upstream_app: FixtureUpstream) -> None:
    upstream_app.piece = 1
    name = "openai_chat/stream_tool_call.sse"
    body = {"model": f"fx/{name}", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "weather?"}]}
    r = post(fx_gateway, body, "fx-one-byte")
    assert r.content == upstream_app.files[name]
    check_row(row_for(fx_gateway, "fx-one-byte"), STREAMS[name], stream=True)


def test_tool_call_arguments_reassemble(fx_gateway: Gateway, upstream_app: FixtureUpstream) -> None:
    name = "openai_chat/stream_tool_call.sse"

    def arguments(data: bytes) -> tuple[str, str]:
        ident, args = "", ""
        for frame in frames(data):
            payload = frame[6:].strip()
            if payload == b"[DONE]":
                continue
            for choice in json.loads(payload)["choices"]:
                for call in choice["delta"].get("tool_calls") or []:
                    assert call["index"] == 0
                    ident = call.get("id", ident)
                    args += call["function"].get("arguments", "")
        return ident, args

    body = {"model": f"fx/{name}", "stream": True, "messages": [{"role": "user", "content": "weather in NYC?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}
    r = post(fx_gateway, body, "fx-tools")
    assert r.status_code == 200
    ident, args = arguments(r.content)
    assert (ident, args) == arguments(upstream_app.files[name])
    assert ident == "call_4XzlGBLtUe9dy3GVNV4jhq7h"
    assert json.loads(args) == {"city": "New York City"}
    assert row_for(fx_gateway, "fx-tools")["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("name", list(BODIES))
def test_non_stream_fixture_relayed_byte_for_byte(
    fx_gateway: Gateway, upstream_app: FixtureUpstream, name: str
) -> None:
    rid = f"fx-{os.urandom(6).hex()}"
    r = post(fx_gateway, {"model": f"fx/{name}", "messages": [{"role": "user", "content": "hi"}]}, rid)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == upstream_app.files[name]
    assert "stream_options" not in upstream_app.requests[-1]
    check_row(row_for(fx_gateway, rid), BODIES[name], stream=False)


def test_relayed_fixture_files_exist() -> None:
    """Guard against a moved fixture tree silently shrinking this module to nothing."""
    for name in [*STREAMS, *BODIES]:
        if not name.startswith("cached/"):
            assert Path(FIXTURES / name).stat().st_size > 0, name


def indexed_fixtures(index: str) -> set[str]:
    """``folder/file`` for every table row of INDEX.md; a table's heading names its folder."""
    listed: set[str] = set()
    folder = None
    for line in index.splitlines():
        if line.startswith("## "):
            head = line[3:]
            folder = head[1:].split("/`", 1)[0] if head.startswith("`") and "/`" in head else None
        elif folder and line.startswith("| `"):
            listed.add(f"{folder}/{line[3:].split('`', 1)[0]}")
    return listed


def test_fixture_files_are_indexed_copies() -> None:
    """Each recorded file has its provenance row in INDEX.md and each row its file: the suite reads
    only what is in the repository, and says where each file came from."""
    on_disk = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*")
               if p.is_file() and p.parent != FIXTURES}
    listed = indexed_fixtures((FIXTURES / "INDEX.md").read_text())
    assert len(on_disk) > 50
    assert sorted(on_disk - listed) == [], "fixture files without a row in tests/fixtures/INDEX.md"
    assert sorted(listed - on_disk) == [], "INDEX.md rows without a file"
