"""The mock upstream: OpenAI shapes over real HTTP, misbehaviour on request, honest counters.

Gateway tests trust its counters (above all ``streams_aborted_by_client``) and its token
rule, so both are pinned here against a real socket, not an in-process transport.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_proxy.testing.mock_upstream import MockUpstream

CHAT = "/chat/completions"


@pytest.fixture(scope="module")
def server() -> Iterator[MockUpstream]:
    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture
def mock(server: MockUpstream) -> MockUpstream:
    """The shared server, back to default behaviour and zero counters for each test."""
    server.reset()
    return server


@pytest.fixture
def client(mock: MockUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.base_url_v1, timeout=5.0) as http:
        yield http


def chat(text: str = "hi there", model: str = "mock-gpt", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def events(body: str) -> list[Any]:
    """The SSE ``data:`` payloads, JSON-decoded except ``[DONE]``."""
    frames = [f for f in body.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[6:] if f[6:] == "[DONE]" else json.loads(f[6:]) for f in frames]


def test_non_stream_completion_shape_and_token_rule(mock: MockUpstream, client: httpx.Client) -> None:
    payload = {
        "model": "mock-gpt",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two three"}]},
        ],
    }
    r = client.post(CHAT, json=payload, headers={"Authorization": "Bearer sk-test"})

    assert r.status_code == 200
    assert re.fullmatch(r"req_mock_\d+", r.headers["x-request-id"])
    body = r.json()
    assert body["id"].startswith("chatcmpl-mock")
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock-gpt"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello from the mock upstream."}
    assert choice["finish_reason"] == "stop"
    # (3 + 2) + (3 + 3) prompt tokens; one completion token per piece.
    assert body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    seen = mock.requests[-1]
    assert (seen.method, seen.path, seen.body) == ("POST", "/v1/chat/completions", payload)
    assert seen.headers["authorization"] == "Bearer sk-test"


def test_stream_without_include_usage(mock: MockUpstream, client: httpx.Client) -> None:
    r = client.post(CHAT, json=chat(stream=True))

    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = events(r.text)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        "Hello from the mock upstream."
    )
    assert len(chunks) == 1 + 5 + 1
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all("usage" not in c and c["object"] == "chat.completion.chunk" for c in chunks)
    assert (mock.streams_started, mock.streams_completed) == (1, 1)


def test_stream_usage_chunk_only_when_asked(mock: MockUpstream, client: httpx.Client) -> None:
    mock.cached_tokens = 4
    r = client.post(CHAT, json=chat("#mock chunks=8", stream=True, stream_options={"include_usage": True}))

    chunks = events(r.text)
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    # "#mock chunks=8" is 2 words: 3 + 2 prompt tokens, of which min(4, 5) cached.
    assert usage_chunk["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 8,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert all(c["usage"] is None for c in chunks[:-2])
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"


def test_tool_call_stream_reassembles_to_valid_json(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    chunks = events(client.post(CHAT, json=chat(stream=True, tools=tools)).text)[:-1]

    calls = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls", [])]
    first = calls[0]
    assert first == {
        "index": 0,
        "id": "call_mock_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert 2 <= len(calls) - 1 <= 3
    arguments = "".join(t["function"]["arguments"] for t in calls)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    message = client.post(CHAT, json=chat(tools=tools)).json()["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["tool_calls"] == [
        {"id": "call_mock_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    ]


def test_reasoner_emits_reasoning_content(client: httpx.Client) -> None:
    body = client.post(CHAT, json=chat(model="deepseek-reasoner")).json()
    reasoning = body["choices"][0]["message"]["reasoning_content"]
    assert reasoning
    assert body["choices"][0]["message"]["content"] == "Hello from the mock upstream."
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    assert body["usage"]["completion_tokens"] == 5 + 3

    stream = client.post(CHAT, json=chat(model="deepseek-reasoner", stream=True))
    deltas = [c["choices"][0]["delta"] for c in events(stream.text)[:-1]]
    order = [key for d in deltas for key in ("reasoning_content", "content") if d.get(key)]
    assert order == ["reasoning_content"] * 3 + ["content"] * 5
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == reasoning


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", "invalid_api_key"),
        (500, "server_error", None),
        (503, "server_error", None),
    ],
)
def test_error_statuses_use_openai_envelope(
    client: httpx.Client, status: int, type_: str, code: str | None
) -> None:
    r = client.post(CHAT, json=chat(f"#mock status={status}", stream=True))
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (type_, code, None)
    assert error["message"]


def test_rate_limit_with_retry_after(mock: MockUpstream, client: httpx.Client) -> None:
    r = client.post(CHAT, json=chat("please\n#mock status=429 retry_after=7"))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert mock.streams_started == 0


def test_non_json_error_body(client: httpx.Client) -> None:
    html = client.post(CHAT, json=chat("#mock body=html"))
    assert html.status_code == 502
    assert html.headers["content-type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in html.text
    text = client.post(CHAT, json=chat("#mock status=503 body=text"))
    assert (text.status_code, text.headers["content-type"]) == (503, "text/plain; charset=utf-8")


def test_directive_only_read_from_last_user_message(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "#mock status=500"}, {"role": "user", "content": "hi"}]
    assert client.post(CHAT, json={"model": "m", "messages": messages}).status_code == 200
    bad = client.post(CHAT, json=chat("#mock stauts=500"))
    assert bad.status_code == 400
    assert "stauts" in bad.json()["error"]["message"]


def test_reset_restores_constructor_defaults() -> None:
    upstream = MockUpstream(chunks=3)
    upstream.chunks, upstream.chunk_ms, upstream.streams_cut = 9, 40, 2
    upstream.reset()
    assert (upstream.chunks, upstream.chunk_ms, upstream.streams_cut) == (3, 0, 0)


def test_models_list(client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["object"] == "list"
    assert [m["object"] for m in body["data"]] == ["model"] * 3
    assert "mock-reasoner" in {m["id"] for m in body["data"]}


def test_latency_delays_the_headers(client: httpx.Client) -> None:
    started = time.monotonic()
    assert client.post(CHAT, json=chat("#mock latency_ms=150")).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_cut_after_breaks_the_body(mock: MockUpstream, client: httpx.Client) -> None:
    received: list[str] = []
    with client.stream("POST", CHAT, json=chat("#mock cut_after=3", stream=True)) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(line for line in r.iter_lines() if line)
    assert 0 < len(received) <= 4  # role chunk + 3 pieces, whatever arrived before the cut
    assert "[DONE]" not in "".join(received)
    assert (mock.streams_started, mock.streams_cut, mock.streams_completed) == (1, 1, 0)
    # The server survives the cut: the next request is served normally.
    assert client.post(CHAT, json=chat()).status_code == 200


def test_error_event_after_ends_the_stream_with_an_error(mock: MockUpstream, client: httpx.Client) -> None:
    chunks = events(client.post(CHAT, json=chat("#mock error_event_after=2", stream=True)).text)
    assert len(chunks) == 1 + 2 + 1
    assert chunks[-1]["error"]["type"] == "server_error"
    assert mock.streams_cut == 1


def test_client_leaving_mid_stream_is_counted(mock: MockUpstream, client: httpx.Client) -> None:
    with client.stream("POST", CHAT, json=chat("#mock chunks=50 chunk_ms=20", stream=True)) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    assert mock.wait_for(lambda: mock.streams_aborted_by_client == 1)
    assert mock.wait_for(lambda: mock.in_flight == 0)
    assert (mock.streams_started, mock.streams_completed, mock.requests_aborted_by_client) == (1, 0, 1)


def test_hang_releases_on_client_timeout_and_on_stop() -> None:
    upstream = MockUpstream().start()
    try:
        with httpx.Client(base_url=upstream.base_url_v1, timeout=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                http.post(CHAT, json=chat("#mock hang=1", stream=True))
        assert upstream.wait_for(lambda: upstream.streams_aborted_by_client == 1)
        assert upstream.wait_for(lambda: upstream.in_flight == 0)

        outcome: list[Any] = []

        def hang_forever() -> None:
            with httpx.Client(base_url=upstream.base_url_v1, timeout=10.0) as http:
                try:
                    outcome.append(http.post(CHAT, json=chat("#mock hang=1")).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(exc)

        waiter = threading.Thread(target=hang_forever)
        waiter.start()
        assert upstream.wait_for(lambda: upstream.in_flight == 1)
    finally:
        started = time.monotonic()
        upstream.stop()
        stopped_in = time.monotonic() - started
    waiter.join(5)
    assert stopped_in < 1.5
    assert outcome == [503]


def test_stop_cuts_a_running_stream_quickly() -> None:
    upstream = MockUpstream(chunk_ms=50, chunks=100).start()
    errors: list[Exception] = []

    def read_stream() -> None:
        with httpx.Client(base_url=upstream.base_url_v1, timeout=10.0) as http:
            try:
                with http.stream("POST", CHAT, json=chat(stream=True)) as r:
                    for _ in r.iter_lines():
                        pass
            except httpx.HTTPError as exc:
                errors.append(exc)

    reader = threading.Thread(target=read_stream)
    reader.start()
    try:
        assert upstream.wait_for(lambda: upstream.streams_started == 1)
    finally:
        started = time.monotonic()
        upstream.stop()
        stopped_in = time.monotonic() - started
    reader.join(5)
    assert stopped_in < 1.5
    assert [type(e) for e in errors] == [httpx.RemoteProtocolError]
    assert (upstream.streams_cut, upstream.streams_completed, upstream.streams_aborted_by_client) == (1, 0, 0)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _open_stream(port: int, text: str) -> socket.socket:
    """A raw HTTP/1.1 stream request on a socket with a small receive buffer (a slow reader)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    body = json.dumps(chat(text, stream=True)).encode()
    head = f"POST /v1{CHAT} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    sock.sendall(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_a_long_stream_to_slow_readers_keeps_the_mock_small(tmp_path: Path) -> None:
    # 150,000 chunks of ~225 bytes: ~34 MB per stream. Held whole, four of them were ~200 MB.
    log = (tmp_path / "mock.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_proxy.testing.mock_upstream", "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    sockets: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        port: int | None = None
        while port is None:
            found = re.search(r"Mock upstream on http://127\.0\.0\.1:(\d+)/v1", (tmp_path / "mock.log").read_text())
            if found:
                port = int(found[1])
            else:
                assert proc.poll() is None and time.monotonic() < deadline, "the mock did not start"
                time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=5) as http:  # warm up
            assert http.post(CHAT, json=chat(stream=True)).text.endswith("data: [DONE]\n\n")
        baseline = _rss_kb(proc.pid)

        sockets = [_open_stream(port, "#mock chunks=150000") for _ in range(4)]
        received = [0] * len(sockets)
        peak = baseline
        ends = time.monotonic() + 2.0
        while time.monotonic() < ends:  # 4 KiB per reader every 20 ms: far slower than the mock writes
            for i, sock in enumerate(sockets):
                received[i] += len(sock.recv(4096))
            peak = max(peak, _rss_kb(proc.pid))
            time.sleep(0.02)

        assert all(n > 50_000 for n in received), received  # every stream is flowing
        grown_mb = (peak - baseline) / 1024
        assert grown_mb < 25, f"the mock grew by {grown_mb:.0f} MB serving 4 slow streams"
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
