"""The metering stage alone: the gateway's own time on ``x-llm-proxy-overhead-ms`` (arrival to
response start, less the upstream's time), and the cost priced from the usage once the response
has ended, unless the endpoint priced the request itself."""

from __future__ import annotations

import time

import pytest
from starlette.types import Receive, Scope, Send
from stubs import UNREACHABLE, StubApp, call, context, make_scope, runtime

from llm_proxy.core.context import Deployment, RequestContext, Usage, get_context
from llm_proxy.middleware.metering import MeteringMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# $2 in / $10 out per 1M tokens on the serving provider: 1000 in + 500 out = $0.007
SNAPSHOT = runtime(providers={"openai": {"base_url": UNREACHABLE, "api_key": "sk-upstream-never-sent",
                                         "models": ["gpt-4o"], "prices": {"gpt-4o": {"input": 2.0, "output": 10.0}}}})
SERVED = Deployment("openai", "gpt-4o")


def served(ctx: RequestContext) -> None:
    """What an endpoint notes down: where it went and what the upstream reported."""
    ctx.deployment = SERVED
    ctx.usage = Usage(prompt_tokens=1000, completion_tokens=500)


async def metered(app: StubApp, path: str = "/v1/chat/completions") -> tuple[RequestContext, dict[str, str]]:
    ctx = context(SNAPSHOT, path, model="gpt-4o")
    sent = await call(MeteringMiddleware(app), make_scope(path, ctx=ctx))
    return ctx, sent.headers


async def test_the_overhead_header_is_the_time_to_response_start_less_the_upstreams() -> None:
    def half_a_second_ago(ctx: RequestContext) -> None:  # arrived 500 ms ago, 400 of them upstream
        ctx.started = time.perf_counter() - 0.5
        ctx.upstream_elapsed = 0.4

    ctx, headers = await metered(StubApp(effect=half_a_second_ago))
    overhead = float(headers["x-llm-proxy-overhead-ms"])
    assert 100.0 <= overhead < 150.0
    assert ctx.overhead_ms == pytest.approx(overhead, abs=0.001)


async def test_a_request_without_upstream_time_reports_all_of_it_as_overhead() -> None:
    _, headers = await metered(StubApp(effect=lambda c: setattr(c, "started", time.perf_counter() - 0.02)))
    assert 20.0 <= float(headers["x-llm-proxy-overhead-ms"]) < 70.0


async def test_the_cost_is_priced_from_the_usage_and_the_serving_deployment() -> None:
    ctx, _ = await metered(StubApp(effect=served))
    assert ctx.cost == pytest.approx(0.007)


async def test_the_cost_is_priced_only_after_the_response_has_ended() -> None:
    """A stream's usage arrives with its last chunk, after the response started."""
    costs_at_start: list[float | None] = []

    async def streams(scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        assert ctx is not None
        ctx.deployment = SERVED
        await send({"type": "http.response.start", "status": 200, "headers": []})
        costs_at_start.append(ctx.cost)
        ctx.usage = Usage(prompt_tokens=1000, completion_tokens=500)  # the last chunk's usage
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    ctx = context(SNAPSHOT, model="gpt-4o")
    await call(MeteringMiddleware(streams), make_scope(ctx=ctx))
    assert costs_at_start == [None]
    assert ctx.cost == pytest.approx(0.007)


async def test_a_cost_the_endpoint_set_itself_is_kept() -> None:
    def priced_per_image(ctx: RequestContext) -> None:
        served(ctx)
        ctx.cost = 0.04

    ctx, _ = await metered(StubApp(effect=priced_per_image), "/v1/images/generations")
    assert ctx.cost == 0.04


async def test_a_failed_request_is_still_priced_for_what_it_used() -> None:
    ctx = context(SNAPSHOT, model="gpt-4o")
    with pytest.raises(RuntimeError):
        await call(MeteringMiddleware(StubApp(effect=served, raises=RuntimeError("stream broke"))),
                   make_scope(ctx=ctx))
    assert ctx.cost == pytest.approx(0.007)


async def test_no_usage_or_no_deployment_is_no_cost() -> None:
    ctx, headers = await metered(StubApp(effect=lambda c: setattr(c, "deployment", SERVED)))
    assert ctx.cost is None and "x-llm-proxy-overhead-ms" in headers


async def test_paths_outside_the_api_get_no_overhead_header() -> None:
    app = StubApp()
    sent = await call(MeteringMiddleware(app), make_scope("/health", method="GET", ctx=context(SNAPSHOT, "/health")))
    assert sent.status == 200 and "x-llm-proxy-overhead-ms" not in sent.headers
