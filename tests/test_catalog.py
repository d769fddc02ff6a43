"""Catalog lookup order, normalisation, overrides and cost arithmetic.

Expected numbers are literals copied from proxy/data/models.json (models.dev snapshot
f3fc692, 2026-07-02); each test says which entry they come from, so a data refresh that
changes a price fails loudly here instead of silently mispricing.
"""

from __future__ import annotations

import json

import pytest

from llm_proxy.core.catalog import CREATOR_PRIORITY, Catalog, Price
from llm_proxy.core.context import Usage


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_loads_every_model_and_known_creators(catalog: Catalog) -> None:
    assert len(catalog) == 5276  # README: 147 providers, 5276 models
    assert all(p in catalog for p in CREATOR_PRIORITY)
    # identical prices are one shared object, not one per entry
    assert catalog.find("gpt-4o-mini", "openai").price is catalog.find("gpt-4o-mini", "azure").price


# -- lookup order -----------------------------------------------------------------------------


def test_serving_provider_entry_wins(catalog: Catalog) -> None:
    # deepseek-chat: deepseek 0.14/0.28, 302ai 0.29/0.43, nano-gpt 0.25/0.7
    assert catalog.find("deepseek-chat", "deepseek").price.input == 0.14
    assert catalog.find("deepseek-chat", "302ai").price.input == 0.29
    assert catalog.find("deepseek-chat", "nano-gpt").price.output == 0.7


def test_falls_back_to_creator_never_reseller(catalog: Catalog) -> None:
    # openai has no deepseek-chat; resellers 302ai/nano-gpt list it, but the creator prices it
    info = catalog.find("deepseek-chat", "openai")
    assert (info.provider, info.price.input, info.price.output) == ("deepseek", 0.14, 0.28)
    # openrouter lists this exact id at 0.098/0.196; togetherai (serving) has no entry
    info = catalog.find("deepseek/deepseek-v4-flash", "togetherai")
    assert (info.provider, info.model, info.price.input) == ("deepseek", "deepseek-v4-flash", 0.14)
    assert catalog.find("gpt-5.4-nano", None).provider == "openai"


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("LiquidAI/LFM2-24B-A2B", "openai"),  # only togetherai lists it
        ("LiquidAI/LFM2-24B-A2B", None),
        ("anthropic/claude-sonnet-4.5", "deepseek"),  # only openrouter (anthropic says claude-sonnet-4-5)
    ],
)
def test_reseller_only_model_is_unknown_elsewhere(catalog: Catalog, model: str, provider: str | None) -> None:
    assert catalog.find(model, provider) is None
    assert catalog.cost(model, provider, Usage(prompt_tokens=10, completion_tokens=10)) is None


def test_reseller_as_serving_provider_uses_its_own_entry(catalog: Catalog) -> None:
    assert catalog.find("LiquidAI/LFM2-24B-A2B", "togetherai").price == Price(input=0.03, output=0.12)


def test_unknown_model(catalog: Catalog) -> None:
    assert catalog.find("no-such-model-xyz", "openai") is None
    assert catalog.limits("no-such-model-xyz", "openai") is None
    assert catalog.cost("no-such-model-xyz", "openai", Usage(prompt_tokens=1)) is None


def test_unpriced_serving_entry_keeps_limits_but_bills_at_creator_price(catalog: Catalog) -> None:
    # ollama-cloud deepseek-v4-flash: no cost, limit 1048576/1048576; deepseek: 0.14/0.28, 1000000/384000
    assert catalog.find("deepseek-v4-flash", "ollama-cloud").price is None
    assert catalog.limits("deepseek-v4-flash", "ollama-cloud") == (1048576, 1048576)
    assert catalog.pricing("deepseek-v4-flash", "ollama-cloud").provider == "deepseek"
    assert catalog.cost("deepseek-v4-flash", "ollama-cloud", Usage(1_000_000, 1_000_000)) == 0.42


# -- normalisation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the id OpenAI echoes back in responses
        ("gpt-4o-mini-20240718", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("GPT-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # an exact dated entry beats the stripped one
    ],
)
def test_normalisation(catalog: Catalog, model: str, expected: str) -> None:
    assert catalog.find(model, "openai").model == expected


def test_dated_entry_keeps_its_own_price(catalog: Catalog) -> None:
    # openai gpt-4o-2024-05-13: 5.0/15.0 vs gpt-4o: 2.5/10.0
    assert catalog.find("gpt-4o-2024-05-13", "openai").price.input == 5.0
    assert catalog.find("gpt-4o-2024-08-07", "openai").price.input == 2.5  # unknown snapshot → base


def test_limits(catalog: Catalog) -> None:
    assert catalog.limits("kimi-k2.6", "moonshotai") == (262144, 262144)
    assert catalog.limits("gpt-5.4-mini", "openai") == (400000, 128000)


# -- overrides --------------------------------------------------------------------------------


def test_override_wins_and_only_for_that_provider(catalog: Catalog) -> None:
    cat = catalog.with_overrides(
        {("deepseek", "deepseek-chat"): {"input": 1.0, "output": 2.0, "cache_write": None}}
    )
    usage = Usage(prompt_tokens=1000, completion_tokens=1000, cached_tokens=500)
    # cache_read 0.0028 kept from the catalog: 500*1 + 500*0.0028 + 1000*2 = 2501.4 per 1M
    assert cat.cost("deepseek-chat", "deepseek", usage) == 0.0025014
    assert cat.find("deepseek-chat", "deepseek").price == Price(1.0, 2.0, 0.0028)
    # another serving provider still falls back to the catalog's creator price
    assert cat.cost("deepseek-chat", "openai", Usage(1_000_000, 0)) == 0.14
    assert catalog.find("deepseek-chat", "deepseek").price.input == 0.14  # the original is untouched


def test_override_makes_unknown_model_priceable(catalog: Catalog) -> None:
    cat = catalog.with_overrides({("local", "my-model"): {"input": 0.5, "output": 1.5}})
    assert cat.cost("my-model", "local", Usage(prompt_tokens=2000, completion_tokens=1000)) == 0.0025
    assert (
        cat.cost("my-model-2025-01-01", "local", Usage(prompt_tokens=2000, completion_tokens=1000)) == 0.0025
    )
    assert cat.limits("my-model", "local") is None
    assert cat.cost("my-model", "other", Usage(prompt_tokens=1)) is None


def test_override_of_base_price_drops_catalog_tiers(catalog: Catalog) -> None:
    cat = catalog.with_overrides({("xai", "grok-4.3"): {"input": 1.0, "output": 1.0}})
    assert cat.cost("grok-4.3", "xai", Usage(prompt_tokens=300_000)) == 0.3


def test_override_rejects_unknown_fields(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="cached_input"):
        catalog.with_overrides({("openai", "gpt-4o"): {"cached_input": 1.0}})


# -- cost -------------------------------------------------------------------------------------


def test_cost_with_cached_tokens(catalog: Catalog) -> None:
    # openai gpt-4o-mini: input 0.15, output 0.6, cache_read 0.075
    usage = Usage(prompt_tokens=10_000, completion_tokens=2_000, cached_tokens=4_000)
    assert catalog.cost("gpt-4o-mini", "openai", usage) == 0.0024  # 6000*.15 + 4000*.075 + 2000*.6 = 2400


def test_cost_with_cache_write(catalog: Catalog) -> None:
    # anthropic claude-sonnet-4-5: input 3.0, output 15.0, cache_read 0.3, cache_write 3.75
    usage = Usage(
        prompt_tokens=10_000, completion_tokens=1_000, cached_tokens=6_000, cache_write_tokens=2_000
    )
    # 2000*3 + 6000*0.3 + 2000*3.75 + 1000*15 = 30300
    assert catalog.cost("claude-sonnet-4-5", "anthropic", usage) == 0.0303
    # gpt-4o-mini publishes no cache_write: written tokens bill at input
    assert (
        catalog.cost("gpt-4o-mini", "openai", Usage(prompt_tokens=1000, cache_write_tokens=1000)) == 0.00015
    )


def test_cost_is_exact_not_float_accumulated(catalog: Catalog) -> None:
    # deepseek deepseek-v4-pro: input 0.435, output 0.87, cache_read 0.003625
    # 1522224*0.435 + 60902*0.003625 + 69158*0.87 = 722555.66975 per 1M; summing in binary floats
    # (whole or per term) gives 0.7225556697499999, and round(x, 10) would give 0.7225556697
    usage = Usage(prompt_tokens=1_583_126, completion_tokens=69_158, cached_tokens=60_902)
    assert catalog.cost("deepseek-v4-pro", "deepseek", usage) == 0.72255566975


def test_cost_with_reasoning_price(catalog: Catalog) -> None:
    # alibaba qwen3-32b: input 0.7, output 2.8, reasoning 8.4
    usage = Usage(prompt_tokens=1_000, completion_tokens=500, reasoning_tokens=300)
    assert catalog.cost("qwen3-32b", "alibaba", usage) == 0.00378  # 1000*.7 + 200*2.8 + 300*8.4 = 3780


def test_reasoning_tokens_bill_at_output_without_reasoning_price(catalog: Catalog) -> None:
    # deepseek deepseek-reasoner: input 0.14, output 0.28, no reasoning price
    usage = Usage(prompt_tokens=1_000, completion_tokens=500, reasoning_tokens=300)
    assert catalog.cost("deepseek-reasoner", "deepseek", usage) == 0.00028  # 1000*.14 + 500*.28 = 280


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # xai grok-4.3: 1.25/2.5, cache_read 0.2; tier size 200000: 2.5/5, cache_read 0.4
        (200_000, 0.2225),  # not above the threshold: 150000*1.25 + 50000*0.2 + 10000*2.5 = 222500
        (200_001, 0.4450025),  # above it: 150001*2.5 + 50000*0.4 + 10000*5 = 445002.5
    ],
)
def test_context_tier(catalog: Catalog, prompt: int, expected: float) -> None:
    usage = Usage(prompt_tokens=prompt, completion_tokens=10_000, cached_tokens=50_000)
    assert catalog.cost("grok-4.3", "xai", usage) == expected


def test_load_from_path_keeps_only_context_tiers(tmp_path) -> None:
    model = {
        "name": "M",
        "limit": {"context": 1000, "output": 100},
        "modalities": {"input": ["text"]},
        "reasoning": True,
        "tool_call": False,
        "cost": {
            "input": 1,
            "output": 2,
            "tiers": [
                {"tier": {"size": 500}, "input": 3, "output": 4},
                {"tier": {"type": "context", "size": 100}, "input": 5, "output": 6},
                {"tier": {"type": "batch", "size": 10}, "input": 7, "output": 8},
            ],
        },
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"units": {"limit": "tokens"}, "providers": {"p": {"models": {"m": model}}}}))
    info = Catalog.load(path).find("m", "p")
    assert [t.size for t in info.tiers] == [100, 500]
    assert (info.context, info.output, info.reasoning, info.tool_call) == (1000, 100, True, False)
    assert info.input_modalities == ("text",)
    assert info.price_for(100) == Price(1.0, 2.0) and info.price_for(501) == Price(3.0, 4.0)
