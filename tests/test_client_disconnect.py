"""A client that leaves before the first byte: the upstream call is cut at once and the request
is logged once as 499, never as a 200 billed in full.

Real sockets on both sides: the mock upstream is told to take seconds before its answer
(``#mock latency_ms``) and counts the gateway closing the connection on it while it waits
(``requests_aborted_by_client``); the client gives up after 0.3 s, as ``curl -m`` does.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
from conftest import CLIENT_KEY, Gateway

from llm_proxy.testing.mock_upstream import MockUpstream

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
SLOW = 3000  # ms the mock waits before its answer; the gateway's read timeout in the tests is 5 s


def chat(text: str, *, stream: bool) -> dict[str, Any]:
    return {"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": text}]}


def only_row(gw: Gateway) -> dict[str, Any]:
    rows = gw.rows(1)
    time.sleep(0.2)  # a second (wrong) row would be written by now
    rows = gw.rows()
    assert len(rows) == 1, rows
    return rows[0]


def assert_cut_and_logged_499(mock: MockUpstream, gw: Gateway, left_at: float, *, stream: bool) -> None:
    # The mock answers after 3 s; it must see the gateway hang up long before.
    assert mock.wait_for(lambda: mock.requests_aborted_by_client == 1, timeout=1.5), (
        "the gateway kept waiting for the upstream after the client left"
    )
    assert time.monotonic() - left_at < 1.5
    assert mock.wait_for(lambda: mock.in_flight == 0)
    assert mock.streams_aborted_by_client == int(stream)
    assert mock.streams_completed == 0

    row = only_row(gw)
    assert (row["status"], row["error_type"]) == (499, "client_disconnected")
    assert row["stream"] == int(stream)
    assert row["provider"] == "openai"
    # What is known: the prompt was sent (estimated, flagged); nothing was generated for anyone.
    assert row["completion_tokens"] == 0
    assert row["prompt_tokens"] > 0 and row["usage_estimated"] == 1
    assert row["finish_reason"] is None
    assert row["latency_ms"] < 1500

    # The cut connection did not go back to the pool: the next request is served normally.
    with httpx.Client(timeout=10) as client:
        r = client.post(f"{gw.url}/v1/chat/completions", json=chat("hi", stream=False), headers=AUTH)
    assert r.status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_a_client_timing_out_before_the_first_byte_cuts_the_upstream(
    mock: MockUpstream, gateway: Gateway, stream: bool
) -> None:
    payload = chat(f"a slow answer\n#mock latency_ms={SLOW}", stream=stream)
    with httpx.Client(timeout=httpx.Timeout(10, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{gateway.url}/v1/chat/completions", json=payload, headers=AUTH)
    assert_cut_and_logged_499(mock, gateway, time.monotonic(), stream=stream)


def test_a_socket_closed_before_the_answer_on_messages_cuts_the_upstream(
    mock: MockUpstream, gateway: Gateway
) -> None:
    """Another surface (Anthropic Messages, translated to chat), and a client that just closes."""
    body = json.dumps({"model": "gpt-4o", "max_tokens": 50,
                       "messages": [{"role": "user", "content": f"slow\n#mock latency_ms={SLOW}"}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"x-api-key: " + CLIENT_KEY.encode() + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )
        assert mock.wait_for(lambda: mock.in_flight == 1)  # the upstream has the request
    row_left_at = time.monotonic()
    assert mock.wait_for(lambda: mock.requests_aborted_by_client == 1, timeout=1.5)
    assert time.monotonic() - row_left_at < 1.5
    row = only_row(gateway)
    assert (row["status"], row["error_type"], row["endpoint"]) == (499, "client_disconnected", "messages")
    assert row["completion_tokens"] == 0
