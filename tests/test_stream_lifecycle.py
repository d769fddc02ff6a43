"""A stream's life end to end: client disconnects, timeouts between and across chunks.

Everything runs over real sockets (mock upstream and gateway under uvicorn), because
disconnects and idle timeouts only happen for real there.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import httpx
from conftest import CLIENT_KEY, Gateway, gateway_config

from llm_proxy.testing.mock_upstream import MockUpstream

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def chat(text: str, *, model: str = "gpt-4o", stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}], **extra}


def providers_with_timeouts(mock: MockUpstream, **timeouts: float) -> dict[str, Any]:
    """The default test providers, with the openai provider's timeouts replaced."""
    providers = copy.deepcopy(gateway_config(mock.base_url_v1, "unused.db")["providers"])
    providers["openai"]["timeouts"] = {"connect": 2, **timeouts}
    return providers


def sse_payloads(body: bytes) -> list[Any]:
    frames = [f for f in body.split(b"\n\n") if f]
    assert all(f.startswith(b"data: ") for f in frames), frames
    return [f[6:].decode() if f[6:] == b"[DONE]" else json.loads(f[6:]) for f in frames]


def only_row(gw: Gateway) -> dict[str, Any]:
    rows = gw.rows(1)
    time.sleep(0.2)  # a second (wrong) row would be written by now
    rows = gw.rows()
    assert len(rows) == 1, rows
    return rows[0]


def test_client_disconnect_mid_stream_closes_upstream_and_logs_499(
    mock: MockUpstream, gateway: Gateway
) -> None:
    payload = chat("tell me a long story\n#mock chunks=200 chunk_ms=20")
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{gateway.url}/v1/chat/completions", json=payload, headers=AUTH) as r:
            assert r.status_code == 200
            received = b""
            for piece in r.iter_raw():
                received += piece
                if received.count(b"\n\n") >= 3:  # the role chunk and two content chunks
                    break
        # leaving the block closes the half-read response: the connection is dropped

    assert mock.wait_for(lambda: mock.streams_aborted_by_client == 1, timeout=5), (
        "the gateway kept reading the upstream after the client left",
        mock.streams_started, mock.streams_completed, mock.streams_aborted_by_client, mock.streams_cut,
    )
    assert mock.streams_completed == 0

    row = only_row(gateway)
    assert row["status"] == 499
    assert row["error_type"] == "client_disconnected"
    assert row["stream"] == 1
    assert row["usage_estimated"] == 1
    assert row["prompt_tokens"] > 0
    assert 0 < row["completion_tokens"] < 200  # partial: what was relayed before the client left
    assert row["provider"] == "openai"
    assert row["latency_ms"] > 0


def test_stream_headers_ttft_and_complete_row(mock: MockUpstream, gateway: Gateway) -> None:
    payload = chat("hello\n#mock chunks=5 chunk_ms=30")
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{gateway.url}/v1/chat/completions", json=payload, headers=AUTH) as r:
            body = r.read()
    assert r.status_code == 200
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-request-id"]
    events = sse_payloads(body)
    assert events[-1] == "[DONE]"
    # the client did not ask for usage: the gateway's own usage request is invisible to it
    assert all(e == "[DONE]" or e["choices"] for e in events)
    assert mock.requests[-1].body["stream_options"] == {"include_usage": True}

    row = only_row(gateway)
    assert row["request_id"] == r.headers["x-request-id"]
    assert row["status"] == 200 and row["error_type"] is None
    assert row["usage_estimated"] == 0
    assert row["completion_tokens"] == 5
    assert row["finish_reason"] == "stop"
    assert row["ttft_ms"] is not None
    # the first token came after at least one chunk_ms gap, and before the end
    assert 25 <= row["ttft_ms"] < row["latency_ms"]
    assert row["latency_ms"] >= 5 * 30 * 0.9


def test_idle_gap_longer_than_read_timeout_ends_stream_with_error_event(
    mock: MockUpstream, make_gateway: Any
) -> None:
    gw = make_gateway(providers=providers_with_timeouts(mock, read=0.3, total=20))
    payload = chat("slow\n#mock chunks=3 chunk_ms=2000")
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        r = client.post(f"{gw.url}/v1/chat/completions", json=payload, headers=AUTH)
    elapsed = time.monotonic() - started
    assert r.status_code == 200  # the stream had started: only an error event can say what went wrong
    assert 0.3 <= elapsed < 1.5, elapsed  # cut after 0.3 s of silence, not after the 2 s gap
    events = sse_payloads(r.content)
    assert events[-1] != "[DONE]"
    error = events[-1]["error"]
    assert error["code"] == "stream_interrupted"
    assert "Timed out" in error["message"]

    row = only_row(gw)
    assert row["status"] == 502
    assert row["error_type"] == "upstream_stream_interrupted"
    assert row["usage_estimated"] == 1
    assert mock.wait_for(lambda: mock.streams_aborted_by_client == 1)  # upstream connection closed


def test_total_timeout_ends_stream_with_error_event(mock: MockUpstream, make_gateway: Any) -> None:
    gw = make_gateway(providers=providers_with_timeouts(mock, read=5, total=0.5))
    payload = chat("slow\n#mock chunks=20 chunk_ms=100")
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        r = client.post(f"{gw.url}/v1/chat/completions", json=payload, headers=AUTH)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert 0.4 < elapsed < 1.5, elapsed
    events = sse_payloads(r.content)
    assert any(e != "[DONE]" and e.get("choices") for e in events)  # some content made it
    error = events[-1]["error"]
    assert error["code"] == "stream_interrupted"
    assert "Timed out" in error["message"]

    row = only_row(gw)
    assert row["status"] == 502
    assert row["error_type"] == "upstream_stream_interrupted"
    assert 0 < row["completion_tokens"] < 20
    assert mock.wait_for(lambda: mock.streams_aborted_by_client == 1)


def test_long_generation_with_short_gaps_is_not_cut(mock: MockUpstream, make_gateway: Any) -> None:
    """Longer than httpx's 5 s default timeout overall, but never idle for long: must complete."""
    gw = make_gateway(providers=providers_with_timeouts(mock, read=2, total=30))
    provider = gw.runtime.upstreams.providers["openai"]
    assert (provider.timeout.connect, provider.timeout.read) == (2, 2)  # the config's, not httpx's 5 s
    assert provider.extensions["timeout"]["read"] == 2  # what each upstream request carries
    payload = chat("long\n#mock chunks=51 chunk_ms=100")
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{gw.url}/v1/chat/completions", json=payload, headers=AUTH)
    elapsed = time.monotonic() - started
    assert elapsed > 5.0, elapsed
    assert r.status_code == 200
    events = sse_payloads(r.content)
    assert events[-1] == "[DONE]"
    assert not any(e != "[DONE]" and "error" in e for e in events)
    assert mock.streams_completed == 1

    row = only_row(gw)
    assert row["status"] == 200
    assert row["completion_tokens"] == 51
    assert row["usage_estimated"] == 0
    assert row["finish_reason"] == "stop"
