"""Graceful shutdown the way an orchestrator does it: ``llm-proxy serve`` as a process, long
streams in flight through the official SDKs, then SIGTERM with a 1 s ``server.shutdown_grace``.

Readiness turns false at once while the streams go on, new API requests are refused with a
503, and when the grace ends each stream gets an error event in its own API's format (the
SDKs raise their API error, not a connection error), a request still waiting for its upstream
gets a 503, every one is logged as 503 ``shutdown``, the process exits soon after, and nothing
prints a traceback. Every wait is bounded and the server is always killed (``serving``)."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from test_cli import clean_env, free_port, serving, write_config

from llm_proxy.testing.mock_upstream import MockUpstream

MASTER = "sk-shutdown-master-0123456789"
GRACE = 1.0
SLOW = "hi\n#mock chunks=200 chunk_ms=100"  # a 20 s stream: far longer than the grace
WAITING = "hi\n#mock latency_ms=20000"  # no answer for 20 s


def config(upstream_v1: str, db: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "log_level": "info", "shutdown_grace": GRACE},
        "database": {"path": str(db)},
        "auth": {"master_key": MASTER},
        "providers": {"mock": {"type": "openai", "base_url": upstream_v1, "api_key": "sk-upstream-shutdown",
                               "models": ["gpt-4o"], "timeouts": {"connect": 2, "read": 30, "total": 60}}},
    }


class Call(threading.Thread):
    """One client call in a thread: ``begun`` is set once its stream has shown output (or, for a
    non-stream call, once it is sent); ``outcome`` is the exception it raised, or its events."""

    def __init__(self, run: Callable[[Call], Any]) -> None:
        super().__init__(daemon=True)
        self._run = run
        self.begun = threading.Event()
        self.events: list[Any] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run(self)
        except BaseException as exc:  # recorded for the test to judge
            self.error = exc
        finally:
            self.begun.set()


def openai_chat(base: str) -> Callable[[Call], None]:
    def run(call: Call) -> None:
        with openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0, timeout=15) as client:
            stream = client.chat.completions.create(model="gpt-4o", stream=True,
                                                    messages=[{"role": "user", "content": SLOW}])
            for chunk in stream:
                call.events.append(chunk)
                if chunk.choices and chunk.choices[0].delta.content:
                    call.begun.set()
    return run


def openai_responses(base: str) -> Callable[[Call], None]:
    def run(call: Call) -> None:
        with openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0, timeout=15) as client:
            for event in client.responses.create(model="gpt-4o", input=SLOW, stream=True):
                call.events.append(event)
                if event.type == "response.output_text.delta":
                    call.begun.set()
    return run


def anthropic_messages(base: str) -> Callable[[Call], None]:
    def run(call: Call) -> None:
        with anthropic.Anthropic(base_url=base, api_key=MASTER, max_retries=0, timeout=15) as client:
            stream = client.messages.create(model="gpt-4o", max_tokens=1000, stream=True,
                                            messages=[{"role": "user", "content": SLOW}])
            for event in stream:
                call.events.append(event)
                if event.type == "content_block_delta":
                    call.begun.set()
    return run


def openai_waiting(base: str) -> Callable[[Call], None]:
    def run(call: Call) -> None:
        with openai.OpenAI(base_url=base + "/v1", api_key=MASTER, max_retries=0, timeout=15) as client:
            call.begun.set()
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": WAITING}])
    return run


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(
            "SELECT endpoint, stream, status, error_type, error_message FROM request_logs ORDER BY id")]


def test_sigterm_drains_then_ends_every_stream_with_an_error_event(mock: MockUpstream, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "llm_proxy.db"  # clean_env points LLM_PROXY__DATABASE__PATH here
    path = write_config(tmp_path, config(mock.base_url_v1, db))
    with serving(["--config", str(path), "--port", str(port)], clean_env(tmp_path), tmp_path) as server, \
            httpx.Client(trust_env=False, timeout=5) as probe:
        server.wait_live(port)
        assert probe.get(base + "/health").json()["ready"] is True
        calls = {"chat": Call(openai_chat(base)), "responses": Call(openai_responses(base)),
                 "messages": Call(anthropic_messages(base)), "waiting": Call(openai_waiting(base))}
        for call in calls.values():
            call.start()
        for name, call in calls.items():
            assert call.begun.wait(10), f"{name} never started"
            assert call.error is None, f"{name}: {call.error!r}"
        assert mock.wait_for(lambda: mock.in_flight == 4, timeout=5)

        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # 1. not ready at once (the socket still answers, for load balancers), new API requests refused
        while True:
            health = probe.get(base + "/health")
            if health.status_code == 503 or time.monotonic() - signalled > 0.5:
                break
            time.sleep(0.02)
        assert (health.status_code, health.json()["ready"], health.json()["status"]) == (503, False, "shutting_down")
        refused = probe.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER}"},
                             json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert time.monotonic() - signalled < GRACE  # all of that while the streams still run
        assert all(call.is_alive() for call in calls.values())

        # 2. the grace ends: each call ends with its API's own error, then the process exits
        for call in calls.values():
            call.join(GRACE + 10)
        server.finish(GRACE + 10)
        exited = time.monotonic() - signalled
    assert server.proc.returncode in (0, -signal.SIGTERM), server.output
    assert exited < GRACE + 5, server.output
    assert not any(call.is_alive() for call in calls.values())

    chat = calls["chat"].error
    assert isinstance(chat, openai.APIError) and not isinstance(chat, openai.APIConnectionError), repr(chat)
    assert "shutting down" in chat.message
    assert any(c.choices and c.choices[0].delta.content for c in calls["chat"].events)  # it was cut mid-way

    messages = calls["messages"].error
    assert isinstance(messages, anthropic.APIStatusError), repr(messages)  # the `event: error`, not a cut
    assert "shutting down" in str(messages)

    assert calls["responses"].error is None, repr(calls["responses"].error)  # the SDK yields response.failed
    last = calls["responses"].events[-1]
    assert last.type == "response.failed", last
    assert "shutting down" in last.response.error.message

    waiting = calls["waiting"].error
    assert isinstance(waiting, openai.InternalServerError) and waiting.status_code == 503, repr(waiting)
    assert waiting.code == "shutting_down"

    # 3. logged as cut by the shutdown, and no traceback anywhere
    logged = [(r["endpoint"], r["stream"], r["status"], r["error_type"]) for r in rows(db)]
    assert sorted(logged) == sorted([
        ("chat.completions", 1, 503, "shutdown"), ("responses", 1, 503, "shutdown"),
        ("messages", 1, 503, "shutdown"), ("chat.completions", 0, 503, "shutdown"),  # the one waiting
        ("chat.completions", 0, 503, "shutdown"),  # the one refused
    ]), logged
    assert "Traceback" not in server.output, server.output
    assert "CancelledError" not in server.output, server.output
    assert "timeout graceful shutdown exceeded" not in server.output, server.output


def test_a_second_sigterm_ends_the_grace_at_once(mock: MockUpstream, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    raw = config(mock.base_url_v1, tmp_path / "llm_proxy.db")
    raw["server"]["shutdown_grace"] = 60
    path = write_config(tmp_path, raw)
    with serving(["--config", str(path), "--port", str(port)], clean_env(tmp_path), tmp_path) as server:
        server.wait_live(port)
        call = Call(openai_chat(base))
        call.start()
        assert call.begun.wait(10) and call.error is None, repr(call.error)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert call.is_alive()  # the grace runs: the stream goes on
        server.proc.send_signal(signal.SIGTERM)
        call.join(10)
        server.finish(10)
        exited = time.monotonic() - signalled
    assert exited < 5, server.output
    assert isinstance(call.error, openai.APIError) and not isinstance(call.error, openai.APIConnectionError)
    assert "second signal" in server.output, server.output
    assert "Traceback" not in server.output, server.output


@pytest.mark.parametrize("grace", [-1, "soon"])
def test_shutdown_grace_is_checked(grace: Any, tmp_path: Path) -> None:
    from llm_proxy.core.config import ConfigError, load_config

    path = write_config(tmp_path, {"server": {"shutdown_grace": grace}})
    with pytest.raises(ConfigError, match="server.shutdown_grace"):
        load_config(path)
