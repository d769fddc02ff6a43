"""Group resolution engine: request facts, rules, classifier buckets/fallbacks/cache, validation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_proxy.core.conditions import RequestFacts, facts_from
from llm_proxy.core.config import GroupConfig, RuleConfig
from llm_proxy.core.tokens import estimate_prompt_tokens
from llm_proxy.routing.groups import (
    MAX_DEPTH,
    GroupResolutionError,
    GroupResolver,
    bucket_index,
    validate_groups,
)

TARGETS = ("small", "medium", "large")
MODELS = {"small", "medium", "large", "deepseek-v4-pro", "qwen-fast", "selector"}


def facts(text: str = "hello", **kw: Any) -> RequestFacts:
    base: dict[str, Any] = dict(
        last_user_text=text,
        tags=frozenset(),
        prompt_tokens=10,
        multimodal=False,
        reasoning=False,
        tools=False,
        stream=False,
    )
    base.update(kw)
    return RequestFacts(**base)


class Classify:
    """A fake selector: returns a fixed reply (or raises / sleeps) and records calls."""

    def __init__(self, reply: Any = "5", *, delay: float = 0.0):
        self.reply = reply
        self.delay = delay
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, model: str, prompt: str) -> str:
        self.calls.append((model, prompt))
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply


def resolve(
    resolver: GroupResolver, name: str, f: RequestFacts, classify: Any = None
) -> tuple[str, list[str]]:
    return asyncio.run(resolver.resolve(name, f, classify or Classify()))


def classifier(**kw: Any) -> GroupConfig:
    kw.setdefault("targets", TARGETS)
    return GroupConfig(strategy="classifier", selector_model="selector", **kw)


# --- facts_from -------------------------------------------------------------------------------


def test_facts_from_plain_body() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second question"},
        ]
    }
    f = facts_from(body, None)
    assert f.last_user_text == "second question"
    assert f.tags == frozenset()
    assert f.prompt_tokens == estimate_prompt_tokens(body) > 0
    assert (f.multimodal, f.reasoning, f.tools, f.stream) == (False, False, False, False)


def test_facts_from_parts_tags_and_flags() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look at"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "text", "text": "this"},
                ],
            },
        ],
        "metadata": {"tags": ["Code", "urgent", 3]},
        "reasoning_effort": "high",
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "stream": True,
    }
    f = facts_from(body, b"billing, code ,,")
    assert f.last_user_text == "look at\nthis"
    assert f.tags == {"code", "urgent", "billing"}
    assert f.multimodal and f.reasoning and f.tools and f.stream


@pytest.mark.parametrize("part_type", ["input_audio", "file"])
def test_facts_multimodal_kinds(part_type: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": part_type, part_type: {}}]}]}
    assert facts_from(body, None).multimodal


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "low"}, True),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
        ({"thinking": {"type": "disabled"}}, False),
        ({"tools": []}, None),
        ({"stream": "yes"}, None),
    ],
)
def test_facts_reasoning_variants(extra: dict[str, Any], expected: bool | None) -> None:
    f = facts_from({"messages": [{"role": "user", "content": "x"}], **extra}, None)
    assert f.reasoning is bool(expected)
    assert not f.tools and not f.stream


def test_facts_from_degenerate_body() -> None:
    f = facts_from({"messages": "nope", "metadata": {"tags": "x"}}, None)
    assert f.last_user_text == "" and f.tags == frozenset() and f.prompt_tokens == 0


# --- heuristic --------------------------------------------------------------------------------


def test_heuristic_pattern_rule_and_case_sensitivity() -> None:
    group = GroupConfig(
        targets=TARGETS,
        rules=(
            RuleConfig(target="medium", pattern=r"SQL", case_sensitive=True),
            RuleConfig(target="large", pattern=r"\bdebug\b"),
        ),
    )
    r = GroupResolver({"g": group})
    assert resolve(r, "g", facts("write SQL")) == ("medium", ["g -> medium (rule 1: pattern 'SQL')"])
    # case-sensitive rule 1 misses on lowercase; rule 2 is case-insensitive
    assert resolve(r, "g", facts("sql please DEBUG it")) == (
        "large",
        ["g -> large (rule 2: pattern '\\\\bdebug\\\\b')"],
    )


def test_heuristic_conditions_all_any_and_first_match_wins() -> None:
    group = GroupConfig(
        targets=TARGETS,
        rules=(
            RuleConfig(target="large", when={"all": [{"tag": "code"}, {"prompt_tokens_above": 8000}]}),
            RuleConfig(target="medium", when={"any": [{"multimodal": True}, {"tools": True}]}),
            RuleConfig(target="small", pattern="hi", when={"prompt_tokens_below": 500}),
            RuleConfig(target="large", pattern="hi"),
        ),
    )
    r = GroupResolver({"g": group})
    big_code = facts("hi", tags=frozenset({"code"}), prompt_tokens=9000, tools=True)
    assert resolve(r, "g", big_code) == ("large", ["g -> large (rule 1: conditions)"])
    small_code = facts("hi", tags=frozenset({"code"}), prompt_tokens=100, tools=True)
    assert resolve(r, "g", small_code) == ("medium", ["g -> medium (rule 2: conditions)"])
    assert resolve(r, "g", facts("hi", prompt_tokens=100)) == (
        "small",
        ["g -> small (rule 3: pattern 'hi' + conditions)"],
    )
    assert resolve(r, "g", facts("hi", prompt_tokens=600))[1] == ["g -> large (rule 4: pattern 'hi')"]
    nested = GroupConfig(
        targets=TARGETS,
        rules=(
            RuleConfig(target="medium", when={"any": [{"stream": True}, {"all": [{"reasoning": True}]}]}),
        ),
    )
    r2 = GroupResolver({"g": nested})
    assert resolve(r2, "g", facts("x", reasoning=True))[0] == "medium"
    assert resolve(r2, "g", facts("x", stream=True))[0] == "medium"
    assert resolve(r2, "g", facts("x", stream=False))[0] == "small"


@pytest.mark.parametrize(
    "text",
    [
        "Explain step by step",
        "please DEBUG this",
        "implement a parser",
        "refactoring help",
        "prove it",
        "analyze x",
        "analyse y",
        "the architecture",
        "optimize loop",
        "an algorithm",
        "complex one",
        "describe in detail",
    ],
)
def test_complexity_indicators_pick_last_target(text: str) -> None:
    r = GroupResolver({"g": GroupConfig(targets=TARGETS)})
    assert resolve(r, "g", facts(text)) == ("large", ["g -> large (heuristic: complexity indicators)"])


def test_default_picks_first_target() -> None:
    r = GroupResolver({"g": GroupConfig(targets=TARGETS)})
    assert resolve(r, "g", facts("how do I improve my tea?")) == (
        "small",
        ["g -> small (heuristic: default)"],
    )
    assert resolve(r, "not-a-group", facts()) == ("not-a-group", [])
    assert r.is_group("g") and not r.is_group("small")


# --- classifier -------------------------------------------------------------------------------

EXPECTED_3_OF_10 = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1, 8: 2, 9: 2, 10: 2}


@pytest.mark.parametrize("rating", range(1, 11))
def test_classifier_buckets_three_targets(rating: int) -> None:
    r = GroupResolver({"g": classifier()})
    cls = Classify(f"{rating}")
    target, chain = resolve(r, "g", facts("what?"), cls)
    assert target == TARGETS[EXPECTED_3_OF_10[rating]]
    assert chain == [f"g -> {target} (classifier: {rating}/10)"]
    model, prompt = cls.calls[0]
    assert model == "selector" and "what?" in prompt and "1" in prompt and "10" in prompt


def test_bucket_index_is_proportional() -> None:
    assert [bucket_index(r, 10, 3) for r in range(1, 11)] == [EXPECTED_3_OF_10[r] for r in range(1, 11)]
    assert [bucket_index(r, 5, 2) for r in range(1, 6)] == [0, 0, 1, 1, 1]
    assert [bucket_index(r, 4, 4) for r in range(1, 5)] == [0, 1, 2, 3]
    assert [bucket_index(r, 10, 2) for r in range(1, 11)] == [0] * 5 + [1] * 5
    assert [bucket_index(r, 3, 1) for r in range(1, 4)] == [0, 0, 0]
    for threshold in range(1, 13):
        for n in range(1, threshold + 1):
            idxs = [bucket_index(r, threshold, n) for r in range(1, threshold + 1)]
            assert idxs == sorted(idxs) and set(idxs) == set(range(n))  # monotone, every target reachable


def test_classifier_other_shape_through_resolver() -> None:
    r = GroupResolver({"g": classifier(targets=("small", "large"), complexity_threshold=5)})
    assert resolve(r, "g", facts("a"), Classify("Rating: 2 of 5"))[0] == "small"
    assert resolve(r, "g", facts("b"), Classify("3"))[0] == "large"


def test_classifier_prompt_truncates_long_text() -> None:
    cls = Classify("1")
    resolve(GroupResolver({"g": classifier(primary_use="coding")}), "g", facts("x" * 10_000), cls)
    prompt = cls.calls[0][1]
    assert "x" * 4000 in prompt and "x" * 4001 not in prompt and "coding" in prompt


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("no idea", "garbage"),
        ("11", "garbage"),
        ("0", "garbage"),
        ("-3", "garbage"),
        (None, "garbage"),
        (RuntimeError("boom"), "error"),
        (TimeoutError(), "timeout"),
    ],
)
def test_classifier_fallback_to_heuristic(reply: Any, why: str) -> None:
    r = GroupResolver({"g": classifier()})
    cls = Classify(reply)
    assert resolve(r, "g", facts("just hi"), cls) == (
        "small",
        [f"g -> small (classifier fallback: {why}; heuristic: default)"],
    )
    assert resolve(r, "g", facts("debug this"), cls) == (
        "large",
        [f"g -> large (classifier fallback: {why}; heuristic: complexity indicators)"],
    )
    assert len(cls.calls) == 2  # fallbacks are not cached


def test_classifier_timeout_falls_back() -> None:
    r = GroupResolver({"g": classifier(classifier_timeout=0.01)})
    cls = Classify("10", delay=1.0)
    assert resolve(r, "g", facts("refactor it"), cls) == (
        "large",
        ["g -> large (classifier fallback: timeout; heuristic: complexity indicators)"],
    )


def test_classifier_cancellation_propagates() -> None:
    r = GroupResolver({"g": classifier()})

    async def main() -> None:
        task = asyncio.create_task(r.resolve("g", facts(), Classify("1", delay=5.0)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_rules_precede_classifier() -> None:
    r = GroupResolver({"g": classifier(rules=(RuleConfig(target="medium", pattern="sql"),))})
    cls = Classify("10")
    assert resolve(r, "g", facts("SQL please"), cls) == ("medium", ["g -> medium (rule 1: pattern 'sql')"])
    assert cls.calls == []


def test_classifier_cache_hit_and_expiry() -> None:
    now = [1000.0]
    r = GroupResolver({"g": classifier(cache_ttl=60)}, clock=lambda: now[0])
    cls = Classify("9")
    assert resolve(r, "g", facts("same"), cls) == ("large", ["g -> large (classifier: 9/10)"])
    cls.reply = "1"
    assert resolve(r, "g", facts("same"), cls) == ("large", ["g -> large (classifier: 9/10 (cached))"])
    assert len(cls.calls) == 1
    assert resolve(r, "g", facts("different"), cls)[0] == "small"
    assert len(cls.calls) == 2
    now[0] += 61
    assert resolve(r, "g", facts("same"), cls) == ("small", ["g -> small (classifier: 1/10)"])
    assert len(cls.calls) == 3


def test_classifier_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import llm_proxy.routing.groups as groups_mod

    monkeypatch.setattr(groups_mod, "CACHE_MAX_ENTRIES", 3)
    r = GroupResolver({"g": classifier()}, clock=lambda: 0.0)
    cls = Classify("5")
    for text in ("a", "b", "c", "d"):
        resolve(r, "g", facts(text), cls)
    assert len(cls.calls) == 4
    resolve(r, "g", facts("d"), cls)  # newest kept
    assert len(cls.calls) == 4
    resolve(r, "g", facts("a"), cls)  # oldest evicted
    assert len(cls.calls) == 5


# --- groups of groups -------------------------------------------------------------------------


def test_groups_of_groups_full_chain() -> None:
    groups = {
        "dispatcher": classifier(targets=("fast-flow", "heavy-logic")),
        "heavy-logic": GroupConfig(targets=("qwen-fast", "deepseek-v4-pro")),
        "fast-flow": GroupConfig(targets=("qwen-fast",)),
    }
    assert validate_groups(groups, MODELS) == []
    r = GroupResolver(groups)
    assert resolve(r, "dispatcher", facts("debug my race condition"), Classify("9")) == (
        "deepseek-v4-pro",
        [
            "dispatcher -> heavy-logic (classifier: 9/10)",
            "heavy-logic -> deepseek-v4-pro (heuristic: complexity indicators)",
        ],
    )
    assert resolve(r, "dispatcher", facts("hi"), Classify("2")) == (
        "qwen-fast",
        ["dispatcher -> fast-flow (classifier: 2/10)", "fast-flow -> qwen-fast (heuristic: default)"],
    )


def test_resolver_safety_net_for_unvalidated_configs() -> None:
    cyc = GroupResolver({"a": GroupConfig(targets=("b",)), "b": GroupConfig(targets=("a",))})
    with pytest.raises(GroupResolutionError, match="a -> b -> a"):
        resolve(cyc, "a", facts())
    deep = {f"g{i}": GroupConfig(targets=(f"g{i + 1}",)) for i in range(MAX_DEPTH + 1)}
    with pytest.raises(GroupResolutionError, match="deeper"):
        resolve(GroupResolver(deep), "g0", facts())
    ok = {f"g{i}": GroupConfig(targets=(f"g{i + 1}",)) for i in range(MAX_DEPTH - 1)}
    ok[f"g{MAX_DEPTH - 1}"] = GroupConfig(targets=("small",))
    model, chain = resolve(GroupResolver(ok), "g0", facts())
    assert model == "small" and len(chain) == MAX_DEPTH


# --- validation -------------------------------------------------------------------------------


def test_validate_reports_everything_at_once_with_paths() -> None:
    groups = {
        "dispatcher": GroupConfig(
            targets=("small", "medium", "nope"),
            strategy="classifier",
            complexity_threshold=2,
            logic_level=11,
            rules=(
                RuleConfig(target="large", pattern="("),
                RuleConfig(target="small", when={"tag": 3}),
                RuleConfig(
                    target="small", when={"all": [{"colour": "red"}, {"prompt_tokens_above": "many"}]}
                ),
                RuleConfig(target="small", when={"any": []}),
                RuleConfig(target="small", when={"tag": "a", "stream": True}),
                RuleConfig(target="small", when={"stream": "yes"}),
            ),
        ),
        "empty": GroupConfig(targets=()),
        "small": GroupConfig(targets=("medium",)),
        "sel": GroupConfig(targets=("small",), strategy="classifier", selector_model="ghost"),
    }
    errors = validate_groups(groups, MODELS)
    paths = [e.split(":", 1)[0] for e in errors]
    expected = {
        "groups.dispatcher.targets[2]",
        "groups.dispatcher.rules[0].target",
        "groups.dispatcher.rules[0].pattern",
        "groups.dispatcher.rules[1].when.tag",
        "groups.dispatcher.rules[2].when.all[0]",
        "groups.dispatcher.rules[2].when.all[1].prompt_tokens_above",
        "groups.dispatcher.rules[3].when.any",
        "groups.dispatcher.rules[4].when",
        "groups.dispatcher.rules[5].when.stream",
        "groups.dispatcher.selector_model",
        "groups.dispatcher.complexity_threshold",
        "groups.dispatcher.logic_level",
        "groups.empty.targets",
        "groups.small",
        "groups.sel.selector_model",
    }
    assert set(paths) == expected, errors
    assert len(paths) == len(expected)
    assert any("'nope'" in e for e in errors)
    assert any("colour" in e for e in errors)


def test_validate_cycles_reported_once_with_path() -> None:
    groups = {
        "a": GroupConfig(targets=("small", "b")),
        "b": GroupConfig(targets=("c",)),
        "c": GroupConfig(targets=("a", "medium")),
        "self": GroupConfig(targets=("self",)),
        "d": GroupConfig(targets=("a",)),
    }
    errors = validate_groups(groups, MODELS)
    assert sorted(errors) == [
        "groups.a.targets[1]: group cycle a -> b -> c -> a",
        "groups.self.targets[0]: group cycle self -> self",
    ]


def test_validate_depth_over_limit() -> None:
    def chain(n: int) -> dict[str, GroupConfig]:
        groups = {f"g{i}": GroupConfig(targets=(f"g{i + 1}",)) for i in range(n - 1)}
        groups[f"g{n - 1}"] = GroupConfig(targets=("small",))
        return groups

    assert validate_groups(chain(MAX_DEPTH), MODELS) == []
    errors = validate_groups(chain(MAX_DEPTH + 2), MODELS)
    assert len(errors) == 1
    assert errors[0].startswith("groups.g0: nesting 12 groups deep exceeds 10 (g0 -> g1 -> ")
    assert errors[0].endswith("g11)")


def test_validate_accepts_good_config() -> None:
    groups = {
        "fast-flow": GroupConfig(
            targets=("small", "medium"),
            rules=(
                RuleConfig(
                    target="medium", pattern=r"\bsql\b", when={"any": [{"tag": "db"}, {"tools": True}]}
                ),
            ),
            logic_level=3,
        ),
        "dispatcher": classifier(targets=("fast-flow", "large")),
    }
    assert validate_groups(groups, MODELS) == []
