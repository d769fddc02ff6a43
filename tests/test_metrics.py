"""``/metrics``: the series an operator alerts on, bounded labels, and a clean ``promtool`` lint.

The Prometheus registry is process-wide, so every check compares a scrape taken before the
test's requests with one taken after, instead of trusting absolute values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Any

import httpx
from conftest import CLIENT_KEY, Gateway
from prometheus_client.parser import text_string_to_metric_families

from llm_proxy.testing.mock_upstream import MockUpstream

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: Gateway) -> tuple[str, Samples]:
    r = httpx.get(f"{gw.url}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def post_chat(gw: Gateway, text: str, model: str = "gpt-4o", **extra: Any) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=payload, headers=AUTH, timeout=10)


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
    if path is None:
        raise AssertionError(
            "promtool is required by this test and was not found on PATH. Install Prometheus' "
            "promtool (Debian/Ubuntu: `apt-get install prometheus`, or the `promtool` binary "
            "from a Prometheus release tarball)."
        )
    return path


def test_metrics_after_success_unknown_model_and_upstream_error(mock: MockUpstream, gateway: Gateway) -> None:
    _, before = scrape(gateway)
    unknown = "no-such-model-" + os.urandom(6).hex()

    ok = post_chat(gateway, "hello there")
    streamed = post_chat(gateway, "stream please\n#mock chunk_ms=5", stream=True)
    missing = post_chat(gateway, "hi", model=unknown)
    failed = post_chat(gateway, "boom\n#mock status=500")
    assert (ok.status_code, streamed.status_code, missing.status_code, failed.status_code) == (200, 200, 404, 500)
    rows = gateway.rows(4)
    assert len(rows) == 4
    text, after = scrape(gateway)

    chat = {"endpoint": "chat.completions"}
    gpt = {"provider": "openai", "model": "gpt-4o"}
    assert delta(before, after, "llm_proxy_requests_total", **chat, **gpt, status="200") == 2
    assert delta(before, after, "llm_proxy_requests_total", **chat, **gpt, status="500") == 1
    assert delta(before, after, "llm_proxy_requests_total", **chat, provider="none", model="unknown",
                 status="404") == 1
    # a client inventing model names cannot create series
    assert unknown not in text

    prompt = sum(r["prompt_tokens"] for r in rows if r["status"] == 200)
    completion = sum(r["completion_tokens"] for r in rows if r["status"] == 200)
    assert prompt > 0 and completion > 0
    assert delta(before, after, "llm_proxy_tokens_total", **gpt, type="prompt") == prompt
    assert delta(before, after, "llm_proxy_tokens_total", **gpt, type="completion") == completion
    cost = sum(r["cost_usd"] for r in rows if r["cost_usd"])
    assert cost > 0
    assert abs(delta(before, after, "llm_proxy_cost_usd_total", **gpt) - cost) < 1e-9

    # per attempt: the failing request was tried three times (two retry rounds by default)
    assert delta(before, after, "llm_proxy_upstream_errors_total", provider="openai", type="http_5xx") == 3

    # histograms: duration per endpoint/provider/model, TTFT for the stream; buckets reach minutes
    assert delta(before, after, "llm_proxy_request_duration_seconds_count", **chat, **gpt) == 3
    assert delta(before, after, "llm_proxy_request_duration_seconds_count", **chat, provider="none",
                 model="unknown") == 1
    assert delta(before, after, "llm_proxy_time_to_first_token_seconds_count", **gpt) == 1
    for name, labels in (("llm_proxy_request_duration_seconds_bucket", {**chat, **gpt}),
                         ("llm_proxy_time_to_first_token_seconds_bucket", gpt)):
        bounds = {float(dict(key)["le"]) for sample, key in after if sample == name
                  and all(dict(key).get(k) == v for k, v in labels.items())}
        assert max(b for b in bounds if b != float("inf")) >= 60, (name, sorted(bounds))
        assert float("inf") in bounds
    assert delta(before, after, "llm_proxy_gateway_overhead_seconds_count") >= 2  # the two 200s

    assert ("llm_proxy_requests_in_flight", frozenset()) in after
    assert ("llm_proxy_log_queue_depth", frozenset()) in after
    assert ("llm_proxy_log_dropped_total", frozenset()) in after


def test_in_flight_gauge_counts_open_streams(mock: MockUpstream, gateway: Gateway) -> None:
    _, before = scrape(gateway)
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(post_chat(gateway, "slow\n#mock chunks=10 chunk_ms=60", stream=True).status_code)
    )
    thread.start()
    assert mock.wait_for(lambda: mock.streams_started == 1)
    _, during = scrape(gateway)
    thread.join(5)
    assert results == [200]
    _, after = scrape(gateway)
    assert delta(before, during, "llm_proxy_requests_in_flight") == 1
    assert delta(before, after, "llm_proxy_requests_in_flight") == 0


def test_log_queue_depth_and_drops(mock: MockUpstream, make_gateway: Any) -> None:
    gw = make_gateway(request_log={"queue_size": 1, "batch_size": 1})
    writer = gw.runtime.request_log.writer
    entered, release = threading.Event(), threading.Event()
    real_write = writer._write

    def stuck_write(conn: Any, batch: list[Any]) -> None:
        entered.set()
        release.wait(10)
        real_write(conn, batch)

    writer._write = stuck_write  # the disk "hangs" on the first batch
    try:
        _, before = scrape(gw)
        assert post_chat(gw, "one").status_code == 200
        assert entered.wait(5) and writer.queued == 0  # row 1 is being written (stuck)
        for text in ("two", "three", "four"):
            assert post_chat(gw, text).status_code == 200  # a full log never fails a request
        _, during = scrape(gw)
        assert value(during, "llm_proxy_log_queue_depth") == 1  # row 2 waits
        assert delta(before, during, "llm_proxy_log_dropped_total") == 2  # rows 3 and 4 had no room
    finally:
        release.set()
    rows = gw.rows(2)
    assert [r["status"] for r in rows] == [200, 200]
    time.sleep(0.1)
    assert len(gw.rows()) == 2


def test_promtool_check_metrics_is_clean(mock: MockUpstream, gateway: Gateway) -> None:
    tool = promtool()
    # populate every family, including labelled ones and an upstream error
    post_chat(gateway, "hello")
    post_chat(gateway, "stream\n#mock chunk_ms=1", stream=True)
    post_chat(gateway, "hi", model="nope-" + os.urandom(4).hex())
    post_chat(gateway, "boom\n#mock status=503")
    gateway.rows(4)
    text, _ = scrape(gateway)
    assert "llm_proxy_upstream_errors_total{" in text

    result = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and not problems, (result.returncode, problems)
