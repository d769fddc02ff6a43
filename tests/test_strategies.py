"""Deployment strategies on a real Runtime built from config: each orders the candidates
the way the README says, and only orders them (every candidate stays in the list)."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from llm_proxy.core.config import ConfigError, parse_config
from llm_proxy.core.context import ClientIdentity, RequestContext
from llm_proxy.routing.strategies import STRATEGIES, order
from llm_proxy.runtime.build import build_runtime
from llm_proxy.runtime.snapshot import Runtime


def runtime(models: dict[str, Any] | None = None, **providers: dict[str, Any]) -> Runtime:
    base = {name: {"base_url": f"https://{name}.example/v1", "api_key": "sk-upstream-000", **spec}
            for name, spec in (providers or {"a": {}, "b": {}, "c": {}}).items()}
    return build_runtime(parse_config({"providers": base, "models": models or {}}, {}))


def context(rt: Runtime, model: str = "m", body: dict[str, Any] | None = None, key: str = "key_1") -> RequestContext:
    ctx = RequestContext("req", rt, "chat.completions")
    ctx.model = model
    ctx.body = body or {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    ctx.client = ClientIdentity(key_id=key, name=key)
    ctx.candidates = rt.routes.targets(model)
    return ctx


def providers_of(targets: list[Any]) -> list[str]:
    return [t.provider for t in targets]


THREE = {"m": {"deployments": [{"provider": "a", "weight": 6, "priority": 2},
                               {"provider": "b", "weight": 3, "priority": 1},
                               {"provider": "c", "weight": 1, "priority": 1}]}}


def test_every_strategy_keeps_every_candidate() -> None:
    rt = runtime(THREE)
    for name in STRATEGIES:
        ctx = context(rt)
        assert sorted(providers_of(order(name, ctx, ctx.candidates, rt.routes.learned))) == ["a", "b", "c"], name


def test_priority_then_config_order() -> None:
    rt = runtime(THREE)
    ctx = context(rt)
    assert providers_of(order("priority", ctx, ctx.candidates, rt.routes.learned)) == ["b", "c", "a"]


def test_weighted_split_is_within_tolerance() -> None:
    rt = runtime(THREE)
    ctx = context(rt)
    firsts = collections.Counter(order("weighted", ctx, ctx.candidates, rt.routes.learned)[0].provider for _ in range(20_000))
    for provider, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(firsts[provider] / 20_000 - share) < 0.02, (provider, firsts)


def test_ab_split_is_sticky_per_key_and_follows_weights() -> None:
    rt = runtime(THREE)
    first = {key: order("ab", context(rt, key=key), context(rt).candidates, rt.routes.learned)[0].provider
             for key in (f"key_{i}" for i in range(4000))}
    again = {key: order("ab", context(rt, key=key), context(rt).candidates, rt.routes.learned)[0].provider for key in first}
    assert again == first  # sticky
    shares = collections.Counter(first.values())
    assert abs(shares["a"] / 4000 - 0.6) < 0.04 and abs(shares["c"] / 4000 - 0.1) < 0.03


def test_lowest_cost_uses_catalog_prices() -> None:
    rt = runtime({"chat": {"deployments": [{"provider": "openai", "model": "gpt-4o"},
                                           {"provider": "openai", "model": "gpt-4o-mini"},
                                           {"provider": "openai", "model": "no-such-model-anywhere"}]}},
                 openai={})
    ctx = context(rt, "chat")
    assert [t.model for t in order("lowest-cost", ctx, ctx.candidates, rt.routes.learned)] == [
        "gpt-4o-mini", "gpt-4o", "no-such-model-anywhere"]  # unknown price last


def test_least_busy_counts_requests_in_flight() -> None:
    rt = runtime(THREE)
    ctx = context(rt)
    by_provider = {t.provider: t for t in ctx.candidates}
    for provider, busy in (("a", 0), ("b", 2), ("c", 1)):
        for _ in range(busy):
            rt.routes.learned.deployment(by_provider[provider]).begin()
    assert providers_of(order("least-busy", ctx, ctx.candidates, rt.routes.learned)) == ["a", "c", "b"]


def test_least_latency_measures_unknown_deployments_first_then_prefers_the_fastest() -> None:
    rt = runtime(THREE)
    ctx = context(rt)
    by_provider = {t.provider: t for t in ctx.candidates}
    for provider, ms in (("a", 300.0), ("b", 40.0)):
        state = rt.routes.learned.deployment(by_provider[provider])
        state.begin()
        state.end(ms, None)
    assert providers_of(order("least-latency", ctx, ctx.candidates, rt.routes.learned)) == ["c", "b", "a"]
    state = rt.routes.learned.deployment(by_provider["c"])
    state.begin()
    state.end(100.0, None)
    assert providers_of(order("least-latency", ctx, ctx.candidates, rt.routes.learned)) == ["b", "c", "a"]


def test_round_robin_rotates_per_model() -> None:
    rt = runtime(THREE)
    seen = [order("round-robin", context(rt), context(rt).candidates, rt.routes.learned)[0].provider for _ in range(6)]
    assert seen == ["b", "c", "a", "b", "c", "a"]  # the deployments in priority order, rotated


def test_conditional_rules_pick_deployments_by_content_and_tags() -> None:
    models = {"m": {"strategy": "conditional",
                    "deployments": [{"provider": "a"}, {"provider": "b", "tags": ["gpu"]}, {"provider": "c"}],
                    "rules": [{"pattern": "\\bcode\\b", "use": "gpu"},
                              {"when": {"tools": True}, "use": "c"}]}}
    rt = runtime(models)
    ctx = context(rt, body={"messages": [{"role": "user", "content": "write code"}]})
    assert providers_of(order("conditional", ctx, ctx.candidates, rt.routes.learned))[0] == "b"
    assert ctx.route == ["deployment rule -> gpu"]
    ctx = context(rt, body={"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]})
    assert providers_of(order("conditional", ctx, ctx.candidates, rt.routes.learned))[0] == "c"
    ctx = context(rt)
    assert providers_of(order("conditional", ctx, ctx.candidates, rt.routes.learned)) == ["a", "b", "c"]


def test_provider_tags_default_to_where_the_server_is() -> None:
    rt = runtime(None, box={"base_url": "http://127.0.0.1:8000/v1", "models": ["m"]},
                 lan={"base_url": "http://192.168.1.20:11434/v1", "models": ["m"]},
                 far={"models": ["m"]})
    assert {t.provider: set(t.tags) for t in rt.routes.targets("m")} == {
        "box": {"local"}, "lan": {"local"}, "far": {"cloud"}}


def test_model_and_routing_config_errors_are_all_reported_at_load() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({
            "providers": {"a": {"base_url": "https://a.example/v1", "weight": 0}},
            "models": {"m": {"strategy": "fastest", "context_fallback": "nowhere",
                             "deployments": [{"provider": "zz", "weight": -1}],
                             "rules": [{"use": "nobody"}]}},
            "routing": {"mode": "edge", "retries": -1},
        }, {})
    text = str(err.value)
    for expected in ("providers.a.weight: must be greater than 0", "models.m.strategy: expected one of",
                     "models.m.context_fallback: unknown model 'nowhere'",
                     "models.m.deployments[0].provider: unknown provider 'zz'",
                     "models.m.deployments[0].weight: must not be negative",
                     "models.m.rules: rules are used by the conditional strategy only",
                     "models.m.rules[0].use: 'nobody' is neither a provider nor a deployment tag",
                     "models.m.rules[0]: a rule needs a pattern", "routing.mode: expected one of",
                     "routing.retries: must not be negative"):
        assert expected in text, expected
