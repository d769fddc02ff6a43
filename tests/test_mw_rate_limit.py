"""The admission stage alone, with the real limiter and spend ledger: config keys untouched,
allowed models, requests per minute with their headers, concurrency given back however the
response ends, token reservations corrected to the real usage, and budgets."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from stubs import UNREACHABLE, StubApp, call, context, make_scope, runtime

from llm_proxy.access.rate_windows import PERIOD, RateLimiter
from llm_proxy.access.spend_ledger import SpendLedger
from llm_proxy.core.context import ClientIdentity, RequestContext, Usage, get_context
from llm_proxy.core.errors import ProxyError
from llm_proxy.middleware.rate_limit import RateLimitMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# $1000 per 1M tokens each way: one token costs a tenth of a cent, so estimates are easy to reason about
SNAPSHOT = runtime(
    providers={"openai": {"base_url": UNREACHABLE, "api_key": "sk-upstream-never-sent",
                          "models": ["gpt-4o", "gpt-4o-mini"],
                          "prices": {"gpt-4o": {"input": 1000.0, "output": 1000.0}}}},
    aliases={"gpt4": "gpt-4o"},
    groups={"smart": {"targets": ["gpt-4o-mini", "gpt-4o"]}},
)
KID = "ck_test01"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Admission:
    """One stage with its own limiter (on a fake clock) and ledger (nothing to rebuild from)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.limiter = RateLimiter(self.clock)
        self.ledger = SpendLedger(":memory:")
        self.ledger.load()  # what the lifespan does at start (here: nothing to rebuild from)

    def stage(self, app: ASGIApp) -> RateLimitMiddleware:
        return RateLimitMiddleware(app, limiter=self.limiter, ledger=self.ledger)

    async def send(self, client: ClientIdentity | None, app: StubApp | None = None, *, requested: str = "gpt-4o",
                   model: str = "gpt-4o", group: str | None = None, max_tokens: int = 100) -> dict[str, str]:
        app = app if app is not None else StubApp()
        sent = await call(self.stage(app), make_scope(ctx=request(client, requested, model, group, max_tokens)))
        return sent.headers


def request(client: ClientIdentity | None, requested: str = "gpt-4o", model: str = "gpt-4o",
            group: str | None = None, max_tokens: int = 100) -> RequestContext:
    """The context as group routing leaves it."""
    body = {"model": requested, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    return context(SNAPSHOT, body=body, client=client, requested_model=requested, model=model, group=group,
                   candidates=SNAPSHOT.routes.candidates(model, requested, None))


def metered(*, allowed_models: frozenset[str] | None = None, rpm: int | None = None, tpm: int | None = None,
            max_concurrent: int | None = None, budget_day_usd: float | None = None,
            budget_total_usd: float | None = None) -> ClientIdentity:
    """A database key's identity with the given policy."""
    return ClientIdentity(KID, "db-key", metered=True, allowed_models=allowed_models, rpm=rpm, tpm=tpm,
                          max_concurrent=max_concurrent, budget_day_usd=budget_day_usd,
                          budget_total_usd=budget_total_usd)


async def refused(admission: Admission, client: ClientIdentity, *, requested: str = "gpt-4o",
                  model: str = "gpt-4o", group: str | None = None) -> ProxyError:
    app = StubApp()
    with pytest.raises(ProxyError) as caught:
        await admission.send(client, app, requested=requested, model=model, group=group)
    assert app.called == 0
    return caught.value


async def test_config_keys_and_anonymous_requests_pass_untouched() -> None:
    admission = Admission()
    config_key = ClientIdentity("key_abc", "team-a", rpm=1, budget_total_usd=0.0)  # policy ignored: not metered
    for client in (config_key, config_key, None):
        headers = await admission.send(client, StubApp(effect=lambda ctx: setattr(ctx, "cost", 5.0)))
        assert not any(name.startswith("x-ratelimit") for name in headers)
    assert admission.limiter.requests_used("key_abc") == 0
    assert admission.ledger.spent("key_abc") == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(("requested", "model", "group"), [
    ("gpt-4o-mini", "gpt-4o-mini", None), ("openai/gpt-4o", "openai/gpt-4o", None),
    ("smart", "gpt-4o-mini", "smart"),
])
async def test_a_model_outside_the_keys_list_is_403_model_not_allowed(requested: str, model: str,
                                                                     group: str | None) -> None:
    error = await refused(Admission(), metered(allowed_models=frozenset({"gpt-4o"})), requested=requested,
                          model=model, group=group)
    assert (error.status, error.code, error.param) == (403, "model_not_allowed", "model")
    assert f"`{requested}`" in error.message


@pytest.mark.parametrize(("allowed", "requested", "model", "group"), [
    ("gpt-4o", "gpt4", "gpt-4o", None),  # the model an alias resolves to
    ("gpt4", "gpt4", "gpt-4o", None),  # the alias itself
    ("smart", "smart", "gpt-4o-mini", "smart"),  # the group it named
])
async def test_a_listed_alias_group_or_resolved_model_is_allowed(allowed: str, requested: str, model: str,
                                                                group: str | None) -> None:
    app = StubApp()
    await Admission().send(metered(allowed_models=frozenset({allowed})), app, requested=requested, model=model,
                           group=group)
    assert app.called == 1


async def test_requests_per_minute_are_counted_in_headers_then_refused_with_retry_after() -> None:
    admission = Admission()
    client = metered(rpm=2)
    first = await admission.send(client)
    admission.clock.now += 10
    second = await admission.send(client)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert (first["x-ratelimit-remaining-requests"], second["x-ratelimit-remaining-requests"]) == ("1", "0")
    assert first["x-ratelimit-reset-requests"].endswith("s")

    error = await refused(admission, client)
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert error.headers["retry-after"] == "50"  # when the first request leaves the 60 s window
    assert error.headers["x-ratelimit-remaining-requests"] == "0"

    admission.clock.now += PERIOD - 10
    assert (await admission.send(client))["x-ratelimit-remaining-requests"] == "0"  # the first one left


async def test_concurrency_is_held_while_the_response_runs_and_given_back_after() -> None:
    admission = Admission()
    client = metered(max_concurrent=1)
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()

    busy = asyncio.create_task(call(admission.stage(slow), make_scope(ctx=request(client))))
    await asyncio.sleep(0)
    assert admission.limiter.active(KID) == 1
    error = await refused(admission, client)
    assert (error.status, error.code) == (429, "concurrency_limit_exceeded")
    assert "retry-after" in error.headers
    release.set()
    await busy
    assert admission.limiter.active(KID) == 0
    await admission.send(client)


async def test_concurrency_is_given_back_when_the_app_raises() -> None:
    admission = Admission()
    client = metered(max_concurrent=1)
    with pytest.raises(RuntimeError):
        await admission.send(client, StubApp(raises=RuntimeError("upstream exploded")))
    assert admission.limiter.active(KID) == 0
    await admission.send(client)


async def test_a_token_reservation_is_corrected_to_the_real_usage() -> None:
    admission = Admission()
    held: list[int] = []

    def served(ctx: RequestContext) -> None:
        held.append(admission.limiter.tokens_used(KID))
        ctx.usage = Usage(prompt_tokens=40, completion_tokens=2)

    await admission.send(metered(tpm=100_000), StubApp(effect=served), max_tokens=500)
    assert held[0] >= 500  # the prompt estimate plus max_tokens, while the request runs
    assert admission.limiter.tokens_used(KID) == 42


async def test_mounted_without_a_lifespan_the_ledger_is_rebuilt_on_first_use() -> None:
    admission = Admission()
    admission.ledger = SpendLedger(":memory:")
    await admission.send(metered(budget_total_usd=1.0))
    assert admission.ledger.loaded


async def test_a_spent_budget_is_429_insufficient_quota() -> None:
    admission = Admission()
    admission.ledger.load()
    admission.ledger.settle(KID, time.time(), 0.0, 0.75)
    error = await refused(admission, metered(budget_total_usd=0.5))
    assert (error.status, error.code, error.type) == (429, "insufficient_quota", "insufficient_quota")
    assert error.headers["x-should-retry"] == "false"
    daily = await refused(admission, metered(budget_day_usd=0.5))
    assert int(daily.headers["retry-after"]) > 0  # a daily budget says when it resets


async def test_a_budget_committed_to_a_request_in_flight_refuses_the_next_until_it_ends() -> None:
    admission = Admission()
    client = metered(budget_total_usd=0.05)  # the first request's estimate (>100 tokens) holds more than that
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        ctx = get_context(scope)
        assert ctx is not None
        ctx.cost = 0.001

    busy = asyncio.create_task(call(admission.stage(slow), make_scope(ctx=request(client))))
    await asyncio.sleep(0)
    assert admission.ledger.reserved(KID) > 0.05
    error = await refused(admission, client)
    assert (error.status, error.code, error.headers["retry-after"]) == (429, "insufficient_quota", "1")
    release.set()
    await busy
    assert admission.ledger.reserved(KID) == 0.0
    assert admission.ledger.spent(KID)[2] == pytest.approx(0.001)
    await admission.send(client)


async def test_the_key_is_charged_its_cost_and_its_classifier_calls() -> None:
    admission = Admission()

    def priced(ctx: RequestContext) -> None:
        ctx.cost = 0.125
        ctx.metadata["side_costs"] = [(ctx.started_wall, 0.5)]

    await admission.send(metered(), StubApp(effect=priced))
    assert admission.ledger.spent(KID)[2] == pytest.approx(0.625)


async def test_without_metering_in_the_chain_the_stage_prices_the_usage_itself() -> None:
    admission = Admission()
    seen: list[RequestContext] = []

    def served(ctx: RequestContext) -> None:
        ctx.deployment = ctx.candidates[0]
        ctx.usage = Usage(prompt_tokens=1000, completion_tokens=1000)
        seen.append(ctx)

    await admission.send(metered(), StubApp(effect=served))
    assert seen[0].cost == pytest.approx(2.0)
    assert admission.ledger.spent(KID)[2] == pytest.approx(2.0)
