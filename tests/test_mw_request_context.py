"""The outermost stage alone: request id, the context in the scope, errors in the surface's own
envelope (never a traceback), and exactly one request-end call per API request."""

from __future__ import annotations

import logging

import pytest
from starlette.types import Message, Receive, Scope, Send
from stubs import Recorder, Source, StubApp, call, make_scope, runtime

from llm_proxy.core.context import SCOPE_KEY
from llm_proxy.core.errors import ProxyError
from llm_proxy.middleware.request_context import RequestContextMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SNAPSHOT = runtime()


def stage(app: StubApp | None = None, *, finish: Recorder | None = None,
          source: Source | None = None) -> tuple[RequestContextMiddleware, StubApp, Recorder]:
    app = app if app is not None else StubApp()
    finish = finish if finish is not None else Recorder()
    return RequestContextMiddleware(app, holder=source or Source(SNAPSHOT), finish=finish), app, finish


async def test_a_valid_request_id_is_kept_on_the_context_and_the_response() -> None:
    mw, app, _ = stage()
    sent = await call(mw, make_scope(headers={"x-request-id": "client-42.a:b_c"}))
    assert app.ctx.request_id == "client-42.a:b_c"
    assert sent.headers["x-request-id"] == "client-42.a:b_c"


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "semi;colon"])
async def test_a_missing_or_unusable_request_id_is_replaced_by_a_fresh_one(given: str | None) -> None:
    mw, app, _ = stage()
    headers = {"x-request-id": given} if given is not None else {}
    first = await call(mw, make_scope(headers=headers))
    second = await call(mw, make_scope(headers=headers))
    ids = {first.headers["x-request-id"], second.headers["x-request-id"]}
    assert len(ids) == 2 and all(i.startswith("req_") for i in ids)
    assert app.ctx.request_id == second.headers["x-request-id"]


@pytest.mark.parametrize(("path", "endpoint"), [
    ("/v1/chat/completions", "chat.completions"), ("/chat/completions", "chat.completions"),
    ("/v1/messages", "messages"), ("/v1/no-such-api", "other"),
])
async def test_the_context_names_the_surface_and_carries_the_current_snapshot(path: str, endpoint: str) -> None:
    mw, app, _ = stage()
    await call(mw, make_scope(path))
    assert app.ctx.endpoint == endpoint and app.ctx.runtime is SNAPSHOT
    assert app.scopes[0]["state"][SCOPE_KEY] is app.ctx


async def test_a_mount_prefix_is_not_part_of_the_surface_path() -> None:
    mw, app, _ = stage()
    scope = make_scope("/llm/v1/chat/completions")
    scope["root_path"] = "/llm"
    await call(mw, scope)
    assert app.ctx.endpoint == "chat.completions"


async def test_mounted_without_a_lifespan_it_starts_the_source_on_first_use() -> None:
    serving = runtime()
    source = Source(SNAPSHOT, started=False, after_start=serving)
    mw, app, _ = stage(source=source)
    await call(mw, make_scope())
    await call(mw, make_scope())
    assert source.starts == 1
    assert app.ctx.runtime is serving


async def test_a_proxy_error_on_chat_is_an_openai_error_with_its_status_and_headers() -> None:
    error = ProxyError(429, "Slow down.", code="rate_limit_exceeded", headers={"Retry-After": "7"})
    mw, _, finish = stage(StubApp(raises=error))
    sent = await call(mw, make_scope())
    assert sent.status == 429
    assert sent.json() == {"error": {"message": "Slow down.", "type": "invalid_request_error", "param": None,
                                     "code": "rate_limit_exceeded"}}
    assert sent.headers["retry-after"] == "7"
    assert sent.headers["content-type"] == "application/json" and "x-request-id" in sent.headers
    (ctx,) = finish.ended
    assert (ctx.status, ctx.error_message) == (429, "Slow down.")


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_proxy_error_on_messages_is_in_anthropics_envelope(path: str) -> None:
    error = ProxyError(401, "Incorrect API key provided.", code="invalid_api_key", headers={"x-should-retry": "false"})
    mw, _, _ = stage(StubApp(raises=error))
    sent = await call(mw, make_scope(path))
    assert sent.status == 401
    assert sent.json() == {"type": "error",
                           "error": {"type": "authentication_error", "message": "Incorrect API key provided."}}
    assert sent.headers["x-should-retry"] == "false" and "x-request-id" in sent.headers


async def test_an_unhandled_exception_is_a_500_without_a_traceback_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    mw, _, finish = stage(StubApp(raises=KeyError("internal-detail-xyz")))
    with caplog.at_level(logging.ERROR, logger="llm_proxy"):
        sent = await call(mw, make_scope())
    assert sent.status == 500
    error = sent.json()["error"]
    assert error["type"] == "server_error" and error["message"]
    assert b"Traceback" not in sent.body and b"internal-detail-xyz" not in sent.body
    assert any(r.exc_info is not None for r in caplog.records)  # the traceback goes to the log instead
    assert finish.ended[0].status == 500


@pytest.mark.parametrize("error", [ProxyError(502, "upstream broke"), RuntimeError("boom")],
                         ids=["proxy-error", "unhandled"])
async def test_once_the_response_has_started_no_second_response_is_sent(
        error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    async def breaks_mid_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        raise error

    finish = Recorder()
    mw = RequestContextMiddleware(breaks_mid_stream, holder=Source(SNAPSHOT), finish=finish)
    with caplog.at_level(logging.CRITICAL, logger="llm_proxy"):
        sent = await call(mw, make_scope())
    assert len(sent.starts) == 1 and sent.status == 200
    assert sent.body == b"data: 1\n\n"
    assert len(finish.ended) == 1


@pytest.mark.parametrize("app", [StubApp(), StubApp(status=404), StubApp(raises=ProxyError(400, "bad")),
                                 StubApp(raises=ValueError("boom"))], ids=["ok", "404", "proxy-error", "unhandled"])
async def test_every_api_request_ends_exactly_once(app: StubApp, caplog: pytest.LogCaptureFixture) -> None:
    mw, _, finish = stage(app)
    with caplog.at_level(logging.CRITICAL, logger="llm_proxy"):
        await call(mw, make_scope())
    assert len(finish.ended) == 1
    ctx = finish.ended[0]
    assert ctx.status == (app.status if app.raises is None else getattr(app.raises, "status", 500))
    assert ctx.finished_at is not None


@pytest.mark.parametrize("path", ["/health", "/metrics", "/api/usage", "/static/index.html"])
async def test_paths_outside_the_api_are_served_but_not_recorded(path: str) -> None:
    mw, app, finish = stage()
    sent = await call(mw, make_scope(path, method="GET"))
    assert sent.status == 200 and app.called == 1
    assert finish.ended == []


async def test_a_failing_request_log_does_not_fail_the_request(caplog: pytest.LogCaptureFixture) -> None:
    mw, _, finish = stage(finish=Recorder(fails=True))
    with caplog.at_level(logging.CRITICAL, logger="llm_proxy"):
        sent = await call(mw, make_scope())
    assert sent.status == 200 and len(sent.starts) == 1
    assert len(finish.ended) == 1


async def test_lifespan_scopes_pass_through_untouched() -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent in this test")

    finish = Recorder()
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await RequestContextMiddleware(lifespan_app, holder=Source(SNAPSHOT), finish=finish)(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert "state" not in scope and finish.ended == []


async def test_an_unhandled_exception_on_messages_is_a_500_in_anthropics_envelope(
        caplog: pytest.LogCaptureFixture) -> None:
    mw, _, finish = stage(StubApp(raises=KeyError("internal-detail-xyz")))
    with caplog.at_level(logging.CRITICAL, logger="llm_proxy"):
        sent = await call(mw, make_scope("/v1/messages"))
    assert sent.status == 500
    assert sent.json() == {"type": "error", "error": {
        "type": "api_error", "message": "The server had an error while processing your request."}}
    assert b"internal-detail-xyz" not in sent.body and "x-request-id" in sent.headers
    assert finish.ended[0].status == 500


def too_many(count: int) -> list[tuple[str, str]]:
    return [(f"x-filler-{i}", "1") for i in range(count)]


@pytest.mark.parametrize(("headers", "words"), [
    (too_many(2000), "2001 header fields"),  # with the x-request-id
    ([("x-big", "a" * (1024 * 1024))], "at most 65536"),
    (too_many(60) + [("x-big", "a" * 65000)], "at most 65536"),  # under each count, over the total
], ids=["2000-headers", "1-MB-header", "many-adding-up"])
async def test_headers_over_the_limits_are_431_before_any_layer_below(headers: list[tuple[str, str]],
                                                                      words: str) -> None:
    mw, app, finish = stage()
    sent = await call(mw, make_scope(headers=[("x-request-id", "mine-1"), *headers]))
    assert sent.status == 431 and app.called == 0
    error = sent.json()["error"]
    assert (error["code"], error["type"]) == ("request_header_fields_too_large", "invalid_request_error")
    assert words in error["message"]
    assert sent.headers["x-request-id"].startswith("req_")  # the client's own is not read from such a head
    (ctx,) = finish.ended
    assert ctx.status == 431


async def test_the_header_limits_come_from_the_config_and_a_head_within_them_is_served() -> None:
    snapshot = runtime(server={"max_headers": 5, "max_header_kb": 1})
    mw, app, _ = stage(source=Source(snapshot))
    assert (await call(mw, make_scope(headers=too_many(5)))).status == 200
    assert (await call(mw, make_scope(headers=too_many(6)))).status == 431
    assert (await call(mw, make_scope(headers=[("x-big", "a" * 1000)]))).status == 200
    assert (await call(mw, make_scope(headers=[("x-big", "a" * 1100)]))).status == 431
    assert app.called == 2


async def test_headers_over_the_limits_on_messages_are_431_in_anthropics_envelope() -> None:
    mw, _, _ = stage()
    sent = await call(mw, make_scope("/v1/messages", headers=too_many(101)))
    assert sent.status == 431
    body = sent.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "101 header fields" in body["error"]["message"]


async def test_headers_over_the_limits_are_refused_outside_the_api_too() -> None:
    mw, app, finish = stage()
    sent = await call(mw, make_scope("/health", method="GET", headers=too_many(101)))
    assert sent.status == 431 and app.called == 0 and finish.ended == []
