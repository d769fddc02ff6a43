"""Model groups end to end: the official SDK names a group, the gateway resolves it through
a classifier and a heuristic to a concrete model, and says how in a header and the log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import CLIENT_KEY, Gateway, gateway_config, read_body, serve_asgi

from llm_proxy.core.config import ConfigError
from llm_proxy.routing.validation import parse_config  # every check: groups too
from llm_proxy.testing.mock_upstream import MockUpstream


class Judge:
    """An OpenAI-compatible selector model that answers every rating request with ``rating``."""

    def __init__(self) -> None:
        self.rating = "9"
        self.prompts: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        self.prompts.append(json.loads(raw)["messages"][-1]["content"])
        body = json.dumps({
            "id": "chatcmpl-judge", "object": "chat.completion", "created": 1, "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.rating}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
        }).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def judge() -> Iterator[tuple[Judge, str]]:
    app = Judge()
    with serve_asgi(app) as url:
        yield app, url + "/v1"


GROUPS = {
    "small": {"targets": ["gpt-4o-mini", "deepseek-chat"], "logic_level": 2, "primary_use": "quick answers"},
    "big": {"targets": ["gpt-4o", "deepseek-reasoner"], "logic_level": 9,
            "rules": [{"when": {"tag": "vision"}, "target": "gpt-4o"}]},
    "dispatcher": {"strategy": "classifier", "selector_model": "judge-1", "complexity_threshold": 10,
                   "targets": ["small", "big"]},
}


@pytest.fixture
def gw(mock: MockUpstream, judge: tuple[Judge, str], tmp_path: Any) -> Iterator[Gateway]:
    judge[0].rating, judge[0].prompts[:] = "9", []
    config = gateway_config(mock.base_url_v1, tmp_path / "groups.db", groups=GROUPS)
    config["providers"]["judge"] = {"type": "openai", "base_url": judge[1], "api_key": "sk-judge-upstream",
                                    "models": ["judge-1"]}
    gateway = Gateway(config).start()
    yield gateway
    gateway.stop()


def sdk(gw: Gateway) -> openai.OpenAI:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    gw.clients.append(client)
    return client


def test_dispatcher_reaches_a_concrete_model_via_two_levels(gw: Gateway, mock: MockUpstream,
                                                            judge: tuple[Judge, str]) -> None:
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model="dispatcher", messages=[{"role": "user", "content": "Please debug this race condition"}])
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from the mock upstream."
    assert mock.requests[-1].body["model"] == "deepseek-reasoner"
    route = raw.headers["x-llm-proxy-route"]
    assert "dispatcher -> big" in route and "big -> deepseek-reasoner" in route
    assert "Please debug this race condition" in judge[0].prompts[-1]
    rows = gw.rows(2)
    client_row = next(r for r in rows if r["endpoint"] == "chat.completions")
    classifier_row = next(r for r in rows if r["endpoint"] == "classifier")
    assert (client_row["requested_model"], client_row["resolved_model"], client_row["provider"]) == (
        "dispatcher", "deepseek-reasoner", "deepseek")
    steps = json.loads(client_row["route"])
    assert len(steps) == 2 and steps[0].startswith("dispatcher -> big") and "classifier" in steps[0]
    assert steps[1].startswith("big -> deepseek-reasoner")
    # the classifier's own call is a logged request with its tokens, tied to the client's request id
    assert classifier_row["request_id"].startswith(client_row["request_id"])
    assert (classifier_row["requested_model"], classifier_row["prompt_tokens"]) == ("judge-1", 50)


def test_low_rating_and_classifier_garbage(gw: Gateway, mock: MockUpstream, judge: tuple[Judge, str]) -> None:
    judge[0].rating = "2"
    sdk(gw).chat.completions.create(model="dispatcher", messages=[{"role": "user", "content": "hi there"}])
    assert mock.requests[-1].body["model"] == "gpt-4o-mini"  # small, heuristic default: first target
    judge[0].rating = "no idea"
    raw = sdk(gw).chat.completions.with_raw_response.create(
        model="dispatcher", messages=[{"role": "user", "content": "what is the capital of France"}])
    assert "fallback" in raw.headers["x-llm-proxy-route"]


def test_conditions_on_tags(gw: Gateway, mock: MockUpstream) -> None:
    sdk(gw).chat.completions.create(model="big", messages=[{"role": "user", "content": "debug it"}],
                                    extra_headers={"x-llm-proxy-tags": "vision, urgent"})
    assert mock.requests[-1].body["model"] == "gpt-4o"  # the tag rule beats the complexity indicator


def test_models_list_includes_groups(gw: Gateway) -> None:
    models = {m.id: m for m in sdk(gw).models.list()}
    assert models["dispatcher"].owned_by == "llm-proxy"
    assert (models["small"].model_extra or {}).get("logic_level") == 2
    assert (models["small"].model_extra or {}).get("primary_use") == "quick answers"


def test_cycles_and_depth_are_load_errors(tmp_path: Any) -> None:
    base = gateway_config("http://127.0.0.1:9/v1", tmp_path / "x.db")
    cyclic = {**base, "groups": {"a": {"targets": ["b"]}, "b": {"targets": ["a"]}}}
    with pytest.raises(ConfigError) as info:
        parse_config(cyclic, {})
    assert any("cycle" in e for e in info.value.errors)
    chain = {f"g{i}": {"targets": [f"g{i + 1}"]} for i in range(12)}
    chain["g12"] = {"targets": ["gpt-4o"]}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "groups": chain}, {})
    assert any("deep exceeds 10" in e for e in info.value.errors)
