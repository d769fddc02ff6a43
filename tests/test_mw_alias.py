"""The alias stage alone: the body read once (size-capped) and parsed into the context, the
``model`` and ``stream`` checks every later layer relies on, and alias chains resolved."""

from __future__ import annotations

import orjson
import pytest
from stubs import Receiver, StubApp, call, context, make_scope, runtime

from llm_proxy.core.errors import ProxyError
from llm_proxy.middleware.alias import AliasMiddleware
from llm_proxy.runtime.snapshot import Runtime

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


SNAPSHOT = runtime(aliases={"smart": "best", "best": "gpt-4o", "gpt4": "gpt-4o"})
LIMIT = 1024
SMALL = runtime(server={"max_body_mb": LIMIT / (1024 * 1024)})


async def through(raw: bytes, *, path: str = "/v1/chat/completions", snapshot: Runtime = SNAPSHOT,
                  chunks: int = 1, headers: dict[str, str] | None = None) -> tuple[StubApp, Receiver]:
    app = StubApp(read_body=True)
    receive = Receiver(raw, chunks=chunks)
    ctx = context(snapshot, path)
    sent = await call(AliasMiddleware(app), make_scope(path, headers=headers or {}, ctx=ctx), receive)
    assert sent.status == 200
    return app, receive


async def refused(raw: bytes, *, snapshot: Runtime = SNAPSHOT, chunks: int = 1) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        await through(raw, snapshot=snapshot, chunks=chunks)
    return caught.value


async def test_the_body_is_read_once_parsed_into_the_context_and_replayed_byte_for_byte() -> None:
    raw = b'{"model": "gpt-4o",  "messages": [{"role": "user", "content": "h\\u00e9"}], "temperature": 0.5}'
    app, receive = await through(raw, chunks=3)
    assert receive.calls == 3  # each chunk once, nothing more
    assert app.bodies == [raw]
    ctx = app.ctx
    assert ctx.raw_body == raw and ctx.body == orjson.loads(raw)
    assert (ctx.requested_model, ctx.model, ctx.stream, ctx.route) == ("gpt-4o", "gpt-4o", False, [])


async def test_alias_chains_are_followed_and_each_hop_is_a_route_step() -> None:
    app, _ = await through(b'{"model": "smart"}')
    ctx = app.ctx
    assert (ctx.requested_model, ctx.model) == ("smart", "gpt-4o")
    assert ctx.route == ["alias smart -> best", "alias best -> gpt-4o"]


@pytest.mark.parametrize("raw", [b'{"messages": []}', b'{"model": ""}', b'{"model": null}'])
async def test_a_missing_model_is_400_naming_the_model_param(raw: bytes) -> None:
    error = await refused(raw)
    assert (error.status, error.param) == (400, "model")
    assert error.message == "you must provide a model parameter"


@pytest.mark.parametrize("raw", [b'{"model": 4}', b'{"model": ["gpt-4o"]}', b'{"model": {"id": "x"}}'])
async def test_a_model_that_is_not_a_string_is_400_invalid_type(raw: bytes) -> None:
    error = await refused(raw)
    assert (error.status, error.param, error.code) == (400, "model", "invalid_type")


@pytest.mark.parametrize("stream", [b'"true"', b"1", b"{}"])
async def test_stream_must_be_a_boolean(stream: bytes) -> None:
    error = await refused(b'{"model": "gpt-4o", "stream": ' + stream + b"}")
    assert (error.status, error.param, error.code) == (400, "stream", "invalid_type")


@pytest.mark.parametrize(("stream", "expected"), [(b"true", True), (b"false", False), (b"null", False)])
async def test_stream_is_noted_on_the_context(stream: bytes, expected: bool) -> None:
    app, _ = await through(b'{"model": "gpt-4o", "stream": ' + stream + b"}")
    assert app.ctx.stream is expected


@pytest.mark.parametrize("raw", [b"", b"{not json", b'["model"]', b'"gpt-4o"'])
async def test_a_body_that_is_not_a_json_object_is_400(raw: bytes) -> None:
    error = await refused(raw)
    assert error.status == 400 and error.type == "invalid_request_error"


async def test_a_body_over_the_limit_is_413_before_it_is_read_when_declared() -> None:
    raw = b'{"model": "gpt-4o", "pad": "' + b"x" * LIMIT + b'"}'
    app = StubApp()
    receive = Receiver(raw)
    scope = make_scope(headers={"content-length": str(len(raw))}, ctx=context(SMALL))
    with pytest.raises(ProxyError) as caught:
        await call(AliasMiddleware(app), scope, receive)
    assert (caught.value.status, caught.value.code) == (413, "request_too_large")
    assert receive.calls == 0 and app.called == 0


async def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_passes_it() -> None:
    raw = b'{"model": "gpt-4o", "pad": "' + b"x" * (4 * LIMIT) + b'"}'
    error = await refused(raw, snapshot=SMALL, chunks=8)
    assert (error.status, error.code) == (413, "request_too_large")


async def test_a_body_at_the_limit_is_accepted() -> None:
    head, tail = b'{"model": "gpt-4o", "pad": "', b'"}'
    raw = head + b"x" * (LIMIT - len(head) - len(tail)) + tail
    assert len(raw) == LIMIT
    app, _ = await through(raw, snapshot=SMALL, chunks=2)
    assert app.bodies == [raw]


async def test_a_client_gone_while_sending_the_body_is_499() -> None:
    receive = Receiver(b'{"model": "gpt-4o",', chunks=1)
    receive.pending[0]["more_body"] = True  # more was announced, then the client left
    receive.disconnect = True
    with pytest.raises(ProxyError) as caught:
        await call(AliasMiddleware(StubApp()), make_scope(ctx=context(SNAPSHOT)), receive)
    assert caught.value.status == 499


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("GET", "/v1/chat/completions"),
                                              ("POST", "/v1/no-such-api"), ("GET", "/health")])
async def test_requests_that_name_no_model_are_untouched(method: str, path: str) -> None:
    app = StubApp()
    receive = Receiver(b"not json at all")
    sent = await call(AliasMiddleware(app), make_scope(path, method=method, ctx=context(SNAPSHOT, path)), receive)
    assert sent.status == 200
    assert app.receives == [receive] and receive.calls == 0
    assert app.ctx.body is None and app.ctx.model is None
