"""The group-routing stage alone: a concrete model to its deployments in priority order, pins,
unknown models, groups resolved with their reasons (context and ``x-llm-proxy-route``), a
classifier group asking through the callable it is handed, and the local/cloud routing mode."""

from __future__ import annotations

import pytest
from stubs import UNREACHABLE, StubApp, call, context, make_scope, runtime

from llm_proxy.core.context import Deployment, RequestContext
from llm_proxy.core.errors import ProxyError
from llm_proxy.middleware.group_routing import GroupRoutingMiddleware
from llm_proxy.runtime.snapshot import Runtime

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def provider(base_url: str, models: list[str], **extra: object) -> dict[str, object]:
    return {"base_url": base_url, "api_key": "sk-upstream-never-sent", "models": models, **extra}


SNAPSHOT = runtime(
    providers={
        "cloud-a": provider("https://api.cloud-a.example/v1", ["gpt-4o", "gpt-4o-mini"], priority=1),
        "cloud-b": provider("https://api.cloud-b.example/v1", ["gpt-4o", "cloud-only"]),
        "local": provider(UNREACHABLE, ["gpt-4o", "llama3"]),
        "off": provider("https://api.off.example/v1", ["retired"], enabled=False),
    },
    groups={
        "smart": {"targets": ["gpt-4o-mini", "gpt-4o"], "rules": [{"target": "gpt-4o", "pattern": r"\bprove\b"}],
                  "deployment_strategy": "least-latency"},
        "router": {"strategy": "classifier", "selector_model": "gpt-4o-mini", "targets": ["gpt-4o-mini", "gpt-4o"]},
    },
)


class Classifier:
    """The classify callable the app hands in: answers a fixed rating and notes each question."""

    def __init__(self, reply: str = "10") -> None:
        self.reply = reply
        self.asked: list[tuple[RequestContext, str, str]] = []

    async def __call__(self, ctx: RequestContext, selector: str, prompt: str) -> str:
        self.asked.append((ctx, selector, prompt))
        return self.reply


def chat(text: str = "hello") -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


async def route(model: str, *, text: str = "hello", tags: str | None = None, snapshot: Runtime = SNAPSHOT,
                classify: Classifier | None = None,
                prior_steps: tuple[str, ...] = ()) -> tuple[RequestContext, dict[str, str]]:
    app = StubApp()
    ctx = context(snapshot, body={"model": model, **chat(text)}, requested_model=model, model=model,
                  route=list(prior_steps))
    headers = {"x-llm-proxy-tags": tags} if tags is not None else {}
    mw = GroupRoutingMiddleware(app, classify=classify or Classifier())
    sent = await call(mw, make_scope(headers=headers, ctx=ctx))
    assert sent.status == 200 and app.called == 1
    return app.ctx, sent.headers


async def refused(model: str, *, tags: str | None = None) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        await route(model, tags=tags)
    return caught.value


def providers(ctx: RequestContext) -> list[str]:
    return [t.provider for t in ctx.candidates]


async def test_a_concrete_model_gets_its_enabled_deployments_in_priority_order() -> None:
    ctx, headers = await route("gpt-4o")
    assert providers(ctx) == ["cloud-b", "local", "cloud-a"]  # priority 0 in config order, then priority 1
    assert all(t.model == "gpt-4o" for t in ctx.candidates)
    assert ctx.group is None and ctx.route == []
    assert "x-llm-proxy-route" not in headers


async def test_provider_slash_model_pins_one_provider_and_passes_any_model_name() -> None:
    ctx, _ = await route("cloud-a/brand-new-model")
    assert ctx.candidates == [Deployment("cloud-a", "brand-new-model")]


@pytest.mark.parametrize("model", ["no-such-model", "nobody/gpt-4o"])
async def test_an_unknown_model_is_404_model_not_found_naming_what_was_asked(model: str) -> None:
    error = await refused(model)
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert f"`{model}`" in error.message


@pytest.mark.parametrize("model", ["retired", "off/anything"])
async def test_a_model_served_only_by_a_disabled_provider_is_503(model: str) -> None:
    error = await refused(model)
    assert (error.status, error.code) == (503, "provider_disabled")


async def test_a_heuristic_rule_resolves_a_group_and_says_why() -> None:
    ctx, headers = await route("smart", text="please prove this lemma")
    assert (ctx.group, ctx.model, ctx.strategy) == ("smart", "gpt-4o", "least-latency")
    assert ctx.route == ["smart -> gpt-4o (rule 1: pattern '\\\\bprove\\\\b')"]
    assert headers["x-llm-proxy-route"] == ctx.route[0]
    assert providers(ctx) == ["cloud-b", "local", "cloud-a"]


async def test_a_group_without_a_matching_rule_falls_to_its_heuristic() -> None:
    ctx, headers = await route("smart", text="hi there")
    assert ctx.model == "gpt-4o-mini" and providers(ctx) == ["cloud-a"]
    assert headers["x-llm-proxy-route"] == "smart -> gpt-4o-mini (heuristic: default)"


async def test_earlier_route_steps_go_into_the_route_header_too() -> None:
    _, headers = await route("gpt-4o", prior_steps=("alias gpt4 -> gpt-4o",))
    assert headers["x-llm-proxy-route"] == "alias gpt4 -> gpt-4o"


async def test_a_classifier_group_asks_the_selector_through_the_handed_in_callable() -> None:
    classify = Classifier(reply="10")
    ctx, headers = await route("router", text="design a distributed database", classify=classify)
    ((asked_ctx, selector, prompt),) = classify.asked
    assert asked_ctx is ctx and selector == "gpt-4o-mini"
    assert "design a distributed database" in prompt
    assert ctx.model == "gpt-4o" and ctx.route == ["router -> gpt-4o (classifier: 10/10)"]
    assert headers["x-llm-proxy-route"] == ctx.route[0]


@pytest.mark.parametrize(("tags", "expected"), [
    ("local", ["local"]), ("cloud", ["cloud-b", "cloud-a"]), ("team-x, LOCAL", ["local"]),
    ("auto", ["cloud-b", "local", "cloud-a"]), ("team-x", ["cloud-b", "local", "cloud-a"]),
])
async def test_the_tags_header_picks_the_routing_mode(tags: str, expected: list[str]) -> None:
    ctx, _ = await route("gpt-4o", tags=tags)
    assert providers(ctx) == expected
    assert ctx.tags_header == tags.encode()


@pytest.mark.parametrize(("model", "tags"), [("cloud-only", "local"), ("llama3", "cloud")])
async def test_no_deployment_in_the_requested_mode_is_503(model: str, tags: str) -> None:
    error = await refused(model, tags=tags)
    assert (error.status, error.code) == (503, "no_deployment_for_mode")


async def test_the_configured_routing_mode_applies_without_a_header() -> None:
    local_only = runtime(providers={"cloud": provider("https://api.example/v1", ["gpt-4o"]),
                                    "local": provider(UNREACHABLE, ["gpt-4o"])},
                         routing={"mode": "local"})
    ctx, _ = await route("gpt-4o", snapshot=local_only)
    assert providers(ctx) == ["local"]
    ctx, _ = await route("gpt-4o", snapshot=local_only, tags="cloud")  # a request may still ask otherwise
    assert providers(ctx) == ["cloud"]


async def test_a_request_without_a_model_passes_untouched() -> None:
    app = StubApp()
    ctx = context(SNAPSHOT, "/v1/models")
    classify = Classifier()
    sent = await call(GroupRoutingMiddleware(app, classify=classify), make_scope("/v1/models", method="GET", ctx=ctx))
    assert sent.status == 200 and "x-llm-proxy-route" not in sent.headers
    assert app.ctx.candidates == [] and app.ctx.tags_header is None and classify.asked == []
