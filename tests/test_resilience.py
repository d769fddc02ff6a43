"""The resilience pipeline end to end: retries honouring Retry-After, backoff, failover of a
stream that dies before its first byte, no retry once content was sent, provider key
rotation, capacity, the all-open 503, context-length fallback, routing modes, config
reload keeping breaker state — and the acceptance run: 1,000 requests through the
official SDK with one of three deployments answering 500, all succeed, its breaker opens.

Upstreams are real HTTP servers on 127.0.0.1: the shared mock, and ``Scripted`` below,
which answers each request with the next step of a script (then succeeds).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml
from conftest import CLIENT_KEY, MASTER_KEY, Gateway, free_port, read_body, serve_asgi

from llm_proxy.testing.mock_upstream import MockUpstream

TIMEOUTS = {"connect": 1, "read": 5, "total": 10}


class Scripted:
    """An OpenAI-compatible upstream that plays ``script`` (one step per request), then answers 200.

    A step is ``(status, headers)`` for an error, ``"empty_stream"`` for a 200 event stream
    that ends before any event, or ``"ok"``. Every request's bearer key, model and arrival
    time are recorded."""

    def __init__(self, script: list[Any] | None = None, *, always: Any = None) -> None:
        self.script = list(script or [])
        self.always = always
        self.seen: list[tuple[str, str, float]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = orjson.loads(await read_body(receive))
        headers = dict(scope["headers"])
        self.seen.append((headers.get(b"authorization", b"").decode()[7:], body.get("model"), time.monotonic()))
        step = self.always if self.always is not None else (self.script.pop(0) if self.script else "ok")
        if step == "empty_stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if step != "ok":
            status, extra = step
            error = {"error": {"message": extra.pop("message", f"scripted {status}"), "type": "server_error",
                               "code": extra.pop("code", None), "param": None}}
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    *((k.encode(), str(v).encode()) for k, v in extra.items())]})
            await send({"type": "http.response.body", "body": orjson.dumps(error)})
            return
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if body.get("stream"):
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "scripted"},
                                  "finish_reason": "stop"}], "usage": usage}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body",
                        "body": b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"})
            return
        reply = {"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "scripted"},
                              "finish_reason": "stop"}], "usage": usage}
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(reply)})


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Start Scripted upstreams on demand: ``url, upstream = scripted([...])``."""
    stack: list[Any] = []

    def start(script: list[Any] | None = None, **kwargs: Any) -> tuple[str, Scripted]:
        upstream = Scripted(script, **kwargs)
        cm = serve_asgi(upstream)
        stack.append(cm)
        return cm.__enter__() + "/v1", upstream

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def provider(url: str, models: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "api_key": "sk-upstream-key-1", "models": models,
            "timeouts": TIMEOUTS, **extra}


def sdk(gw: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    return client


def chat(gw: Gateway, model: str = "gpt-4o", text: str = "hi", **kwargs: Any) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}], **kwargs})


def attempts(row: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(row["attempts"] or "[]")


# -- retries ------------------------------------------------------------------------------------

def test_a_short_retry_after_is_waited_for_then_the_retry_succeeds(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted([(429, {"retry-after": "1"})])
    gw = make_gateway(providers={"only": provider(url, ["gpt-4o"])})
    reply = sdk(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "scripted"
    assert len(up.seen) == 2 and up.seen[1][2] - up.seen[0][2] >= 0.95  # Retry-After: 1 honoured
    (row,) = gw.rows(1)
    steps = attempts(row)
    assert [s.get("status") for s in steps] == [429, None, 200] and steps[1]["wait_ms"] >= 1000


def test_a_long_retry_after_goes_back_to_the_client_at_once(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted(always=(429, {"retry-after": "60"}))
    gw = make_gateway(providers={"only": provider(url, ["gpt-4o"])})
    started = time.monotonic()
    r = chat(gw)
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    assert time.monotonic() - started < 2 and len(up.seen) == 1


def test_server_errors_are_retried_with_backoff(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted([(500, {}), (503, {})])
    gw = make_gateway(providers={"only": provider(url, ["gpt-4o"])}, routing={"retry_backoff": 0.05})
    assert chat(gw).status_code == 200
    assert len(up.seen) == 3  # two retry rounds (the default)
    (row,) = gw.rows(1)
    assert [s.get("outcome") for s in attempts(row) if "outcome" in s] == ["server", "overloaded", "ok"]


def test_retries_zero_returns_the_first_failure(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted(always=(500, {}))
    gw = make_gateway(providers={"only": provider(url, ["gpt-4o"])}, routing={"retries": 0})
    assert chat(gw).status_code == 500 and len(up.seen) == 1


# -- streams -------------------------------------------------------------------------------------

def test_a_stream_that_dies_before_its_first_byte_fails_over(make_gateway: Any, scripted: Any) -> None:
    dead_url, _ = scripted(always="empty_stream")
    live_url, _ = scripted()
    gw = make_gateway(providers={"first": provider(dead_url, ["gpt-4o"]), "second": provider(live_url, ["gpt-4o"])})
    stream = sdk(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                             stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "scripted"
    (row,) = gw.rows(1)
    assert row["provider"] == "second"
    assert [(a["provider"], a["status"]) for a in attempts(row)] == [("first", 502), ("second", 200)]


def test_no_retry_once_content_was_sent(make_gateway: Any, mock: MockUpstream) -> None:
    providers = {name: provider(mock.base_url_v1, ["gpt-4o"]) for name in ("first", "second")}
    gw = make_gateway(providers=providers)
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": "gpt-4o", "stream": True,
                            "messages": [{"role": "user", "content": "x\n#mock cut_after=2"}]}) as r:
        text = "".join(r.iter_text())
    assert r.status_code == 200 and "stream_interrupted" in text
    assert len(mock.requests) == 1  # the cut was not retried: content had reached the client
    (row,) = gw.rows(1)
    assert row["status"] == 502 and row["provider"] == "first"


# -- keys, capacity, nothing to try ------------------------------------------------------------

def test_several_keys_rotate_and_a_refused_key_rests(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted([(401, {"message": "bad key"})])
    keys = ["sk-upstream-key-1", "sk-upstream-key-2", "sk-upstream-key-3"]
    gw = make_gateway(providers={"only": provider(url, ["gpt-4o"], api_keys=keys[1:])})
    for _ in range(6):
        assert chat(gw).status_code == 200
    used = [seen[0] for seen in up.seen]
    assert used[0] == keys[0] and used[1] == keys[1]  # the 401 moved the same request on to the next key
    assert keys[0] not in used[1:]  # then the refused key rests
    assert set(used[1:]) == set(keys[1:]) and used[2] != used[1]  # and the others take turns
    assert gw.rows(6)[0]["status"] == 200


def test_deployment_capacity_spills_over_then_nothing_can_be_tried(make_gateway: Any, scripted: Any) -> None:
    url_a, up_a = scripted()
    url_b, up_b = scripted()
    gw = make_gateway(
        providers={"a": provider(url_a, []), "b": provider(url_b, [])},
        models={"gpt-4o": {"deployments": [{"provider": "a", "rpm": 2}, {"provider": "b", "rpm": 1}]}},
    )
    statuses = [chat(gw).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 503]
    assert (len(up_a.seen), len(up_b.seen)) == (2, 1)
    r = chat(gw)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_deployment_available"
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_an_auth_failure_opens_the_breaker_and_then_nothing_is_tried(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted(always=(401, {"message": "invalid key"}))
    gw = make_gateway(providers={"only": provider(url, ["gpt-4o"])})
    assert chat(gw).status_code == 401  # the upstream's own answer, once
    r = chat(gw)
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 200  # the auth cooldown
    assert len(up.seen) == 1
    assert httpx.get(gw.url + "/health").json()["providers"]["only"]["breakers"] == {"gpt-4o": "open"}


def test_when_every_breaker_is_open_the_soonest_to_reopen_is_still_tried(make_gateway: Any, scripted: Any) -> None:
    url_a, up_a = scripted(always=(500, {}))
    url_b, up_b = scripted(always=(500, {}))
    gw = make_gateway(providers={"a": provider(url_a, ["gpt-4o"]), "b": provider(url_b, ["gpt-4o"])},
                      routing={"retries": 0, "breaker": {"failures": 2, "cooldown": 60}})
    assert [chat(gw).status_code for _ in range(2)] == [500, 500]  # each tried twice: both open
    health = httpx.get(gw.url + "/health").json()["providers"]
    assert health["a"]["breakers"] == health["b"]["breakers"] == {"gpt-4o": "open"}
    up_a.always = up_b.always = "ok"  # both recover within their cooldown
    r = chat(gw)
    assert r.status_code == 200  # not failed blind: the one that opened first was tried
    assert (len(up_a.seen), len(up_b.seen)) == (3, 2)


def test_a_connection_reset_before_any_answer_fails_over(make_gateway: Any, mock: MockUpstream) -> None:
    import socket
    import struct
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def reset_every_connection() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST, not FIN

    threading.Thread(target=reset_every_connection, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        gw = make_gateway(providers={"resets": provider(url, ["gpt-4o"]),
                                     "works": provider(mock.base_url_v1, ["gpt-4o"])})
        assert chat(gw).status_code == 200
        stream = sdk(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        for row in gw.rows(2):
            assert row["provider"] == "works"
            assert [(a["provider"], a["outcome"]) for a in attempts(row)] == [("resets", "connection"), ("works", "ok")]
    finally:
        listener.close()


# -- context length, routing modes ----------------------------------------------------------------

def test_context_length_exceeded_falls_back_to_the_larger_model(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted([(400, {"code": "context_length_exceeded",
                               "message": "This model's maximum context length is 8192 tokens."})])
    gw = make_gateway(providers={"p": provider(url, ["small-model", "big-model"])},
                      models={"small-model": {"context_fallback": "big-model"}})
    r = chat(gw, model="small-model")
    assert r.status_code == 200
    assert "context fallback small-model -> big-model" in r.headers["x-llm-proxy-route"]
    assert [seen[1] for seen in up.seen] == ["small-model", "big-model"]
    (row,) = gw.rows(1)
    assert row["resolved_model"] == "big-model"


def test_without_a_fallback_context_length_errors_are_returned(make_gateway: Any, scripted: Any) -> None:
    url, up = scripted(always=(400, {"code": "context_length_exceeded", "message": "too long"}))
    gw = make_gateway(providers={"p": provider(url, ["small-model"]), "q": provider(url, ["small-model"])})
    assert chat(gw, model="small-model").status_code == 400 and len(up.seen) == 1


def test_routing_mode_filters_deployments_by_tag(make_gateway: Any, scripted: Any) -> None:
    local_url, local = scripted()
    cloud_url, cloud = scripted()
    providers = {"box": provider(local_url, ["gpt-4o"]), "far": provider(cloud_url, ["gpt-4o"], tags=["cloud"])}
    gw = make_gateway(providers=providers)
    assert chat(gw).status_code == 200 and len(local.seen) == 1  # priority: config order, box (127.0.0.1: local)
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}",
                                                            "x-llm-proxy-tags": "cloud"},
                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and len(cloud.seen) == 1
    only_local = make_gateway(providers={"far": provider(cloud_url, ["gpt-4o"], tags=["cloud"])},
                              routing={"mode": "local"})
    r = chat(only_local)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_deployment_for_mode"


# -- strategies through the gateway ---------------------------------------------------------------

def test_least_latency_prefers_the_fast_deployment(make_gateway: Any, mock: MockUpstream) -> None:
    slow = MockUpstream(latency_ms=60)
    slow.start()
    try:
        gw = make_gateway(providers={"slow": provider(slow.base_url_v1, ["gpt-4o"]),
                                     "fast": provider(mock.base_url_v1, ["gpt-4o"])},
                          routing={"strategy": "least-latency"})
        for _ in range(30):
            assert chat(gw).status_code == 200
        served = [r["provider"] for r in gw.rows(30)]
        assert served[:2] == ["slow", "fast"]  # each measured once, unknown first
        assert served[2:].count("fast") == 28
    finally:
        slow.stop()


def test_round_robin_alternates_through_the_gateway(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway(providers={n: provider(mock.base_url_v1, ["gpt-4o"]) for n in ("a", "b", "c")},
                      models={"gpt-4o": {"strategy": "round-robin"}})
    for _ in range(6):
        assert chat(gw).status_code == 200
    assert [r["provider"] for r in gw.rows(6)] == ["a", "b", "c", "a", "b", "c"]


def test_routing_off_is_a_plain_proxy_to_the_first_deployment(make_gateway: Any, scripted: Any) -> None:
    url_a, up_a = scripted(always=(500, {}))
    url_b, up_b = scripted()
    gw = make_gateway(providers={"a": provider(url_a, ["gpt-4o"]), "b": provider(url_b, ["gpt-4o"])},
                      routing={"enabled": False})
    assert [chat(gw).status_code for _ in range(3)] == [500, 500, 500]  # no failover, no retry
    assert (len(up_a.seen), len(up_b.seen)) == (3, 0)
    assert "breakers" not in httpx.get(gw.url + "/health").json()["providers"]["a"]


def test_routing_state_shows_breakers_load_and_latency(make_gateway: Any, mock: MockUpstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gw = make_gateway(providers={"dead": provider(dead, ["gpt-4o"]),
                                 "alive": provider(mock.base_url_v1, ["gpt-4o", "gpt-4o-mini"])})
    for _ in range(6):
        assert chat(gw).status_code == 200
    r = httpx.get(gw.url + "/api/routing", headers={"authorization": f"Bearer {MASTER_KEY}"})
    assert r.status_code == 200
    state = {(d["model"], d["provider"]): d for d in r.json()["deployments"]}
    assert state[("gpt-4o", "dead")]["breaker"] == "open"
    alive = state[("gpt-4o", "alive")]
    assert alive["breaker"] == "closed" and alive["in_flight"] == 0 and alive["latency_ms"] > 0
    unused = state[("gpt-4o-mini", "alive")]  # never asked for: reported idle, no state made for it
    assert (unused["breaker"], unused["in_flight"], unused["latency_ms"]) == ("closed", 0, None)
    assert gw.runtime.routes.learned.known(gw.runtime.routes.models["gpt-4o-mini"][0]) is None


# -- reload ---------------------------------------------------------------------------------------

def test_reload_keeps_breakers_of_unchanged_deployments(make_gateway: Any, mock: MockUpstream,
                                                       tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = {"dead": provider(dead, ["gpt-4o"]), "alive": provider(mock.base_url_v1, ["gpt-4o"])}
    gw = make_gateway(providers=providers)
    for _ in range(6):
        assert chat(gw).status_code == 200
    health = lambda: httpx.get(gw.url + "/health").json()["providers"]  # noqa: E731
    assert health()["dead"]["breakers"] == {"gpt-4o": "open"}

    config = {**gw.config_source, "aliases": {"fourO": "gpt-4o"}}
    path = tmp_path / "reloaded.yaml"
    path.write_text(yaml.safe_dump(config))
    gw.app.state.runtime_holder.source = path
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    r = httpx.post(gw.url + "/api/config/reload", headers=admin)
    assert r.status_code == 200, r.text
    assert chat(gw, model="fourO").status_code == 200  # the new snapshot serves
    assert health()["dead"]["breakers"] == {"gpt-4o": "open"}  # and remembers the dead deployment

    config["providers"]["dead"]["timeouts"] = {**TIMEOUTS, "read": 6}  # the deployment changed
    path.write_text(yaml.safe_dump(config))
    assert httpx.post(gw.url + "/api/config/reload", headers=admin).status_code == 200
    assert "breakers" not in health()["dead"]

    path.write_text("providers: {broken: {base_url: nope}}\n")
    r = httpx.post(gw.url + "/api/config/reload", headers=admin)
    assert r.status_code == 400 and "base_url" in r.json()["error"]["message"]
    assert chat(gw, model="fourO").status_code == 200  # a bad file leaves the running config alone


# -- acceptance -----------------------------------------------------------------------------------

def test_a_thousand_requests_with_one_deployment_failing(make_gateway: Any, mock: MockUpstream,
                                                        scripted: Any) -> None:
    failing_url, failing = scripted(always=(500, {"message": "internal error"}))
    providers = {"failing": provider(failing_url, ["gpt-4o"]), "one": provider(mock.base_url_v1, ["gpt-4o"]),
                 "two": provider(mock.base_url_v1, ["gpt-4o"])}
    gw = make_gateway(providers=providers, routing={"strategy": "round-robin"})

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
        try:
            async def one(i: int) -> str:
                reply = await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": f"q{i}"}])
                return reply.choices[0].message.content or ""
            answers: list[str] = []
            for start in range(0, 1000, 50):
                answers += await asyncio.gather(*(one(i) for i in range(start, start + 50)))
            return answers
        finally:
            await client.close()

    answers = asyncio.run(run())
    assert len(answers) == 1000 and all(a == "Hello from the mock upstream." for a in answers)
    assert httpx.get(gw.url + "/health").json()["providers"]["failing"]["breakers"] == {"gpt-4o": "open"}
    assert 'llm_proxy_breaker_state{model="gpt-4o",provider="failing"} 2.0' in httpx.get(gw.url + "/metrics").text
    assert len(failing.seen) < 50  # once open it is only probed
    rows = gw.rows(1000)
    assert len(rows) == 1000 and all(r["status"] == 200 and r["provider"] in ("one", "two") for r in rows)
