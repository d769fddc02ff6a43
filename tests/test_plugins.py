"""Plugin registry, spec validation, chain semantics and the two built-in plugins."""

from __future__ import annotations

import asyncio
import copy
import importlib
import logging
from typing import Any

import orjson
import pytest

# Submodules, not the package: until the editable install is refreshed, ``plugins`` may resolve
# as a namespace package (it was installed while empty) and ``plugins/__init__.py`` won't run.
import llm_proxy.plugins.registry as registry_module
from llm_proxy.core.context import Deployment, RequestContext
from llm_proxy.core.errors import ProxyError
from llm_proxy.plugins.english_system_prompt import EnglishSystemPrompt
from llm_proxy.plugins.max_tokens_cap import MaxTokensCap
from llm_proxy.plugins.registry import Plugin, PluginChain, Registry, Reject, validate_specs

SECRET = "my-very-private-prompt-text"


def make_ctx(
    body: dict[str, Any] | None = None, *, provider: str = "deepseek", model: str = "deepseek-chat"
) -> RequestContext:
    ctx = RequestContext(request_id="req-123", runtime=None, endpoint="chat.completions")  # type: ignore[arg-type]
    ctx.body = (
        body if body is not None else {"model": model, "messages": [{"role": "user", "content": SECRET}]}
    )
    ctx.raw_body = orjson.dumps(ctx.body)
    ctx.deployment = Deployment(provider, model)
    ctx.model = model
    return ctx


def chain(specs: list[dict[str, Any]], reg: Registry = registry_module.default_registry) -> PluginChain:
    assert validate_specs(specs, reg) == []
    return PluginChain.from_specs(specs, reg)


# -- test-only plugins, in their own registry so the global one stays clean ------------------

test_registry = Registry()
calls: list[tuple[str, str]] = []


@test_registry.register
class Refuse(Plugin):
    name = "refuse"
    stages = frozenset({"before"})

    async def before(self, ctx: RequestContext) -> None:
        raise Reject("over budget", status=int(self.config.get("status", 402)), code=self.config.get("code"))


@test_registry.register
class Broken(Plugin):
    name = "broken"
    stages = frozenset({"before", "after", "error"})

    async def before(self, ctx: RequestContext) -> None:
        raise RuntimeError("boom")

    async def after(self, ctx: RequestContext) -> None:
        raise RuntimeError("boom after")

    async def on_error(self, ctx: RequestContext, error: BaseException) -> None:
        raise RuntimeError("boom error")


@test_registry.register
class Recorder(Plugin):
    name = "recorder"
    stages = frozenset({"before", "after", "error"})

    async def before(self, ctx: RequestContext) -> None:
        calls.append(("before", self.config.get("tag", "")))

    async def after(self, ctx: RequestContext) -> None:
        calls.append(("after", self.config.get("tag", "")))

    async def on_error(self, ctx: RequestContext, error: BaseException) -> None:
        calls.append(("error", repr(error)))


@test_registry.register
class Cancels(Plugin):
    name = "cancels"
    stages = frozenset({"before", "after"})

    async def before(self, ctx: RequestContext) -> None:
        raise asyncio.CancelledError

    async def after(self, ctx: RequestContext) -> None:
        raise asyncio.CancelledError


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


# -- registry ---------------------------------------------------------------------------------


def test_builtins_registered() -> None:
    assert registry_module.names() == ["english_system_prompt", "max_tokens_cap"]
    assert registry_module.get("max_tokens_cap") is MaxTokensCap


def test_package_exports_public_api() -> None:
    pkg = importlib.import_module("llm_proxy.plugins")
    assert set(pkg.__all__) >= {"Plugin", "PluginChain", "Reject", "register", "validate_specs"}
    assert pkg.PluginChain is PluginChain
    assert pkg.EnglishSystemPrompt is EnglishSystemPrompt
    assert pkg.registry is registry_module  # a re-export must not shadow the submodule


def test_duplicate_registration_refused() -> None:
    reg = Registry()

    @reg.register
    class A(Plugin):
        name = "same"
        stages = frozenset({"before"})

    class B(Plugin):
        name = "same"
        stages = frozenset({"after"})

    with pytest.raises(ValueError, match="already registered"):
        reg.register(B)
    assert reg.get("same") is A

    class Dup(Plugin):
        name = "english_system_prompt"
        stages = frozenset({"before"})

    with pytest.raises(ValueError, match="already registered"):
        registry_module.register(Dup)
    assert registry_module.get("english_system_prompt") is EnglishSystemPrompt


def test_register_checks_stages() -> None:
    class Bad(Plugin):
        name = "bad"
        stages = frozenset({"sometimes"})

    with pytest.raises(ValueError, match="stages"):
        Registry().register(Bad)


def test_reject_requires_4xx() -> None:
    with pytest.raises(ValueError):
        Reject("no", status=500)
    assert Reject("no").status == 400


# -- spec validation --------------------------------------------------------------------------


def test_validate_specs_reports_everything_with_paths() -> None:
    specs = [
        {"name": "english_system_prompt", "stage": "after", "config": {"providers": "deepseek"}},
        {"name": "foo"},
        {"name": "max_tokens_cap", "config": {"max_tokens": 0, "modles": ["x"]}, "extra": 1},
        {"name": "max_tokens_cap", "config": {"max_tokens": 10}, "enabled": "yes"},
        {"name": "max_tokens_cap", "config": {"max_tokens": 10}},
        {"name": "max_tokens_cap", "config": {"max_tokens": 20}},
        {"stage": "before"},
        "english_system_prompt",
    ]
    errors = validate_specs(specs)
    expected = [
        "plugins[0].stage: 'after' is not a valid stage (plugin 'english_system_prompt' has: before)",
        "plugins[0].config.providers: expected a non-empty list of strings",
        "plugins[1].name: unknown plugin 'foo' (known: english_system_prompt, max_tokens_cap)",
        "plugins[2].extra: unknown key (allowed: config, enabled, name, stage)",
        "plugins[2].config.modles: unknown key (allowed: max_tokens, models, set_when_missing)",
        "plugins[2].config.max_tokens: expected a positive integer, got 0",
        "plugins[3].enabled: expected true or false",
        "plugins[3]: duplicate of plugins[2] (plugin 'max_tokens_cap', stage 'before')",
        "plugins[4]: duplicate of plugins[2] (plugin 'max_tokens_cap', stage 'before')",
        "plugins[5]: duplicate of plugins[2] (plugin 'max_tokens_cap', stage 'before')",
        "plugins[6].name: required",
        "plugins[7]: expected a mapping with at least 'name'",
    ]
    assert errors == expected


def test_validate_specs_accepts_good_config() -> None:
    specs = [
        {
            "name": "english_system_prompt",
            "stage": "before",
            "config": {"providers": ["deepseek"]},
            "enabled": True,
        },
        {
            "name": "max_tokens_cap",
            "config": {"max_tokens": 4096, "models": ["deepseek-chat"], "set_when_missing": True},
        },
        {
            "name": "max_tokens_cap",
            "config": {"max_tokens": 1},
            "enabled": False,
        },  # disabled: not a duplicate
    ]
    assert validate_specs(specs) == []
    assert validate_specs(None) == []
    assert validate_specs({"name": "x"}) == ["plugins: expected a list of plugin specs"]
    assert validate_specs([{"name": "english_system_prompt", "config": {"text": ""}}]) == [
        "plugins[0].config.text: expected a non-empty string"
    ]
    assert validate_specs([{"name": "max_tokens_cap"}]) == ["plugins[0].config.max_tokens: required"]


def test_stage_restriction_and_disabled() -> None:
    c = chain(
        [
            {"name": "recorder", "stage": "after"},
            {"name": "broken", "enabled": False},
        ],
        test_registry,
    )
    assert (c.has_before, c.has_after, c.has_error) == (False, True, False)
    assert not PluginChain()
    assert not PluginChain.from_specs([])


# -- english_system_prompt --------------------------------------------------------------------


def test_english_prompt_inserted_for_configured_provider() -> None:
    ctx = make_ctx()
    c = chain([{"name": "english_system_prompt", "config": {"providers": ["deepseek"]}}])
    asyncio.run(c.run_before(ctx))
    assert ctx.body is not None
    assert ctx.body["messages"][0] == {"role": "system", "content": "Always respond in English."}
    assert ctx.body["messages"][1]["content"] == SECRET
    assert ctx.body_dirty is True
    assert ctx.metadata["plugins"] == ["english_system_prompt"]


def test_english_prompt_custom_text_and_all_providers() -> None:
    ctx = make_ctx(provider="openai")
    c = chain([{"name": "english_system_prompt", "config": {"text": "English only."}}])
    asyncio.run(c.run_before(ctx))
    assert ctx.body is not None and ctx.body["messages"][0]["content"] == "English only."


def test_english_prompt_skips_other_provider() -> None:
    ctx = make_ctx(provider="openai")
    before = copy.deepcopy(ctx.body)
    asyncio.run(
        chain([{"name": "english_system_prompt", "config": {"providers": ["deepseek"]}}]).run_before(ctx)
    )
    assert ctx.body == before
    assert ctx.body_dirty is False


@pytest.mark.parametrize("role", ["system", "developer"])
def test_english_prompt_keeps_client_prompt(role: str) -> None:
    own = {"role": role, "content": [{"type": "text", "text": "Réponds en français."}]}
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}, own]}
    ctx = make_ctx(body)
    raw = ctx.raw_body
    asyncio.run(chain([{"name": "english_system_prompt"}]).run_before(ctx))
    assert ctx.body_dirty is False
    assert orjson.dumps(ctx.body) == raw
    assert ctx.body is not None and ctx.body["messages"][1] is own


def test_english_prompt_ignores_non_chat_body() -> None:
    ctx = make_ctx({"model": "text-embedding-3-small", "input": "hello"})
    asyncio.run(chain([{"name": "english_system_prompt"}]).run_before(ctx))
    assert ctx.body == {"model": "text-embedding-3-small", "input": "hello"}
    assert ctx.body_dirty is False


# -- max_tokens_cap ---------------------------------------------------------------------------


def test_max_tokens_cap_clamps_both_fields() -> None:
    body = {"model": "deepseek-chat", "messages": [], "max_tokens": 5000, "max_completion_tokens": 9000}
    ctx = make_ctx(body)
    asyncio.run(chain([{"name": "max_tokens_cap", "config": {"max_tokens": 1000}}]).run_before(ctx))
    assert body["max_tokens"] == 1000 and body["max_completion_tokens"] == 1000
    assert ctx.body_dirty is True
    assert ctx.metadata["max_tokens_capped_from"] == 9000


def test_max_tokens_cap_leaves_small_values() -> None:
    body = {"model": "deepseek-chat", "messages": [], "max_tokens": 500}
    ctx = make_ctx(body)
    asyncio.run(
        chain(
            [{"name": "max_tokens_cap", "config": {"max_tokens": 1000, "set_when_missing": True}}]
        ).run_before(ctx)
    )
    assert body["max_tokens"] == 500
    assert ctx.body_dirty is False
    assert "max_tokens_capped_from" not in ctx.metadata


def test_max_tokens_cap_models_filter() -> None:
    spec = [{"name": "max_tokens_cap", "config": {"max_tokens": 100, "models": ["gpt-4o"]}}]
    other = make_ctx({"model": "deepseek-chat", "messages": [], "max_tokens": 5000})
    asyncio.run(chain(spec).run_before(other))
    assert other.body == {"model": "deepseek-chat", "messages": [], "max_tokens": 5000}
    assert other.body_dirty is False

    match = make_ctx(
        {"model": "gpt-4o", "messages": [], "max_tokens": 5000}, provider="openai", model="gpt-4o"
    )
    asyncio.run(chain(spec).run_before(match))
    assert match.body is not None and match.body["max_tokens"] == 100
    assert match.body_dirty is True


def test_max_tokens_cap_set_when_missing() -> None:
    without = make_ctx({"model": "deepseek-chat", "messages": []})
    asyncio.run(chain([{"name": "max_tokens_cap", "config": {"max_tokens": 256}}]).run_before(without))
    assert without.body is not None and "max_tokens" not in without.body
    assert without.body_dirty is False

    ctx = make_ctx({"model": "deepseek-chat", "messages": [], "max_tokens": None})
    spec = [{"name": "max_tokens_cap", "config": {"max_tokens": 256, "set_when_missing": True}}]
    asyncio.run(chain(spec).run_before(ctx))
    assert ctx.body is not None and ctx.body["max_tokens"] == 256
    assert ctx.body_dirty is True
    assert "max_tokens_capped_from" not in ctx.metadata

    embed = make_ctx({"model": "text-embedding-3-small", "input": "x"})
    asyncio.run(chain(spec).run_before(embed))
    assert embed.body == {"model": "text-embedding-3-small", "input": "x"}


# -- chain semantics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "type_", "want_code"),
    [
        (402, None, "insufficient_quota", "rejected_by_plugin"),
        (429, "budget", "rate_limit_error", "budget"),
        (400, None, "invalid_request_error", "rejected_by_plugin"),
    ],
)
def test_reject_becomes_4xx(status: int, code: str | None, type_: str, want_code: str) -> None:
    ctx = make_ctx()
    c = chain(
        [{"name": "refuse", "config": {"status": status, "code": code}}, {"name": "recorder"}],
        test_registry,
    )
    with pytest.raises(ProxyError) as info:
        asyncio.run(c.run_before(ctx))
    err = info.value
    assert (err.status, err.message, err.type, err.code) == (status, "over budget", type_, want_code)
    assert isinstance(err.__cause__, Reject)
    assert calls == []  # later plugins don't run
    assert ctx.metadata["plugins"] == ["refuse"]


def test_broken_before_plugin_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx()
    c = chain([{"name": "broken", "stage": "before"}, {"name": "recorder"}], test_registry)
    with caplog.at_level(logging.ERROR, logger="llm_proxy.plugins"), pytest.raises(ProxyError) as info:
        asyncio.run(c.run_before(ctx))
    err = info.value
    assert (err.status, err.message, err.type, err.code) == (
        500,
        "plugin 'broken' failed",
        "server_error",
        "plugin_error",
    )
    assert calls == []
    [record] = caplog.records
    assert record.name == "llm_proxy.plugins"
    assert record.exc_info is not None
    text = caplog.text
    assert "broken" in text and "req-123" in text and "boom" in text
    assert SECRET not in text


def test_after_and_error_fail_open(caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx()
    c = chain(
        [{"name": "broken", "stage": "after"}, {"name": "broken", "stage": "error"}, {"name": "recorder"}],
        test_registry,
    )
    failure = ProxyError(502, "upstream down", type="server_error")
    with caplog.at_level(logging.ERROR, logger="llm_proxy.plugins"):
        asyncio.run(c.run_after(ctx))
        asyncio.run(c.run_error(ctx, failure))
    assert calls == [("after", ""), ("error", repr(failure))]
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'broken' failed in stage 'after' (request req-123)",
        "plugin 'broken' failed in stage 'error' (request req-123)",
    ]
    assert SECRET not in caplog.text
    assert ctx.metadata["plugins"] == ["broken", "recorder"]


def test_run_error_receives_rejection() -> None:
    ctx = make_ctx()
    c = chain([{"name": "refuse"}, {"name": "recorder", "stage": "error"}], test_registry)

    async def request() -> None:
        try:
            await c.run_before(ctx)
        except ProxyError as exc:
            await c.run_error(ctx, exc)
            raise

    with pytest.raises(ProxyError) as info:
        asyncio.run(request())
    assert calls == [("error", repr(info.value))]
    assert info.value.status == 402


def test_plugins_run_in_order() -> None:
    ctx = make_ctx()
    c = chain(
        [{"name": "recorder", "config": {"tag": "a"}}, {"name": "refuse", "enabled": False}], test_registry
    )
    c2 = chain([{"name": "recorder", "config": {"tag": "b"}}], test_registry)
    asyncio.run(c.run_before(ctx))
    asyncio.run(c2.run_before(ctx))
    asyncio.run(c.run_after(ctx))
    assert calls == [("before", "a"), ("before", "b"), ("after", "a")]
    assert ctx.metadata["plugins"] == ["recorder"]


def test_cancellation_is_never_swallowed() -> None:
    c = chain([{"name": "cancels"}], test_registry)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(c.run_before(make_ctx()))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(c.run_after(make_ctx()))


def test_empty_chain_records_nothing() -> None:
    ctx = make_ctx()
    c = PluginChain.from_specs([])
    asyncio.run(c.run_before(ctx))
    asyncio.run(c.run_after(ctx))
    assert "plugins" not in ctx.metadata
