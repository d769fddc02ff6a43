"""Every failure a client can meet: right status, OpenAI error shape, SDK exception, one log row.

SDK calls use ``max_retries=0`` so each failure is exactly one request. Each test runs on its
own gateway, so "exactly one row" is checked after stopping it (shutdown drains the writer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import CLIENT_KEY, MASTER_KEY, UPSTREAM_KEY, Gateway, free_port

from llm_proxy.testing.mock_upstream import MockUpstream

CHAT = "/v1/chat/completions"
TRACEBACK_MARKERS = ("Traceback", 'File "', "most recent call last")


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_openai_error(
    status: int,
    text: str,
    expected_status: int,
    *,
    type: str | None = None,
    code: str | None | object = ...,
) -> dict[str, Any]:
    """Status, and the exact envelope ``{"error": {"message", "type", "param", "code"}}``."""
    assert status == expected_status, text
    for marker in TRACEBACK_MARKERS:
        assert marker not in text
    body = json.loads(text)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if type is not None:
        assert error["type"] == type, error
    if code is not ...:
        assert error["code"] == code, error
    return error


def check_response(r: httpx.Response, expected_status: int, **kw: Any) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers.get("x-request-id")
    return assert_openai_error(r.status_code, r.text, expected_status, **kw)


def check_sdk_error(exc: openai.APIStatusError, expected_status: int, **kw: Any) -> dict[str, Any]:
    assert exc.status_code == expected_status
    exc.response.read()
    return check_response(exc.response, expected_status, **kw)


def final_rows(gateway: Gateway, expected: int) -> list[dict[str, Any]]:
    """Stop the gateway (draining the log writer), then read every row it wrote."""
    gateway.rows(expected)
    gateway.stop()
    rows = gateway.rows()
    assert len(rows) == expected, rows
    return rows


def assert_logged(row: dict[str, Any], status: int, error_type: str | None = None) -> None:
    assert row["status"] == status, row
    assert row["error_type"], row
    if error_type is not None:
        assert row["error_type"] == error_type, row
    for marker in TRACEBACK_MARKERS:
        assert marker not in (row["error_message"] or "")


@pytest.fixture
def gateway(make_gateway: Any) -> Gateway:
    """These tests are about how one upstream error reaches the client: no retry rounds
    (retries and their backoff are tested in test_resilience.py)."""
    return make_gateway(routing={"retries": 0})


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=10
    ) as client:
        yield client


def sdk(gateway: Gateway, key: str = CLIENT_KEY, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=timeout)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with sdk(gateway) as c:
        yield c


# -- requests the gateway refuses itself -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message_part"),
    [
        (b'{"model": "gpt-4o", "messages": [', "parse"),
        (b"", "empty"),
        (b"[1, 2, 3]", "object"),
        (b'"gpt-4o"', "object"),
        (b"\xff\xfe not utf-8", "parse"),
    ],
    ids=["truncated", "empty", "array", "string", "binary"],
)
def test_unparseable_body_is_400(
    http: httpx.Client, gateway: Gateway, mock: MockUpstream, content: bytes, message_part: str
) -> None:
    r = http.post(CHAT, content=content, headers={"content-type": "application/json"})
    error = check_response(r, 400, type="invalid_request_error")
    assert message_part in error["message"].lower()
    assert mock.requests == []
    assert_logged(final_rows(gateway, 1)[0], 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": user("hi")}, "model"),
        ({"model": "", "messages": user("hi")}, "model"),
        ({"model": 42, "messages": user("hi")}, "model"),
        ({"model": "gpt-4o", "messages": user("hi"), "stream": "yes"}, "stream"),
    ],
    ids=["missing", "empty", "not-a-string", "bad-stream"],
)
def test_bad_model_or_stream_field_is_400(
    http: httpx.Client, gateway: Gateway, mock: MockUpstream, payload: dict[str, Any], param: str
) -> None:
    error = check_response(http.post(CHAT, json=payload), 400, type="invalid_request_error")
    assert error["param"] == param
    assert mock.requests == []
    assert_logged(final_rows(gateway, 1)[0], 400)


def test_missing_model_through_sdk(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="", messages=user("hi"))
    error = check_sdk_error(info.value, 400, type="invalid_request_error")
    assert error["param"] == "model"
    assert info.value.param == "model"
    assert_logged(final_rows(gateway, 1)[0], 400)


def test_unknown_model_is_404(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=user("hi"))
    error = check_sdk_error(info.value, 404, type="invalid_request_error", code="model_not_found")
    assert error["param"] == "model"
    assert "no-such-model" in error["message"]
    assert info.value.code == "model_not_found"
    # an unknown provider prefix is not a pin
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nowhere/gpt-4o", messages=user("hi"), stream=True)
    check_sdk_error(info.value, 404, code="model_not_found")
    assert mock.requests == []
    rows = final_rows(gateway, 2)
    for row in rows:
        assert_logged(row, 404, "invalid_request_error")
    assert [r["requested_model"] for r in rows] == ["no-such-model", "nowhere/gpt-4o"]


def _small_body_gateway(make_gateway: Any) -> Gateway:
    server = {"host": "127.0.0.1", "port": 0, "log_level": "warning", "max_body_mb": 0.001}  # 1048 bytes
    return make_gateway(server=server)


def test_oversized_body_is_413(make_gateway: Any, mock: MockUpstream) -> None:
    gw = _small_body_gateway(make_gateway)
    with sdk(gw) as c:
        # small enough still works
        assert c.chat.completions.create(model="gpt-4o", messages=user("short")).choices
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="gpt-4o", messages=user("word " * 1000))
    error = check_sdk_error(info.value, 413, type="invalid_request_error", code="request_too_large")
    assert "1048" in error["message"]
    assert len(mock.requests) == 1
    rows = final_rows(gw, 2)
    assert rows[0]["status"] == 200
    assert_logged(rows[1], 413, "invalid_request_error")


def test_oversized_chunked_body_is_413(make_gateway: Any, mock: MockUpstream) -> None:
    """No Content-Length to check up front: the limit holds while reading."""
    gw = _small_body_gateway(make_gateway)
    payload = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * 3000 + b'"}]}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 500):
            yield payload[i:i + 500]

    with httpx.Client(base_url=gw.url, timeout=10) as http:
        r = http.post(CHAT, content=chunks(), headers={"Authorization": f"Bearer {CLIENT_KEY}",
                                                       "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    check_response(r, 413, code="request_too_large")
    assert mock.requests == []
    assert_logged(final_rows(gw, 1)[0], 413)


def test_request_headers_over_the_limits_are_431(http: httpx.Client, gateway: Gateway, mock: MockUpstream) -> None:
    """Over a real connection (uvicorn with httptools, which sets no limit of its own)."""
    body = {"model": "gpt-4o", "messages": user("hi")}
    one_big = http.post(CHAT, json=body, headers={"x-big": "a" * (1024 * 1024)})
    error = check_response(one_big, 431, type="invalid_request_error", code="request_header_fields_too_large")
    assert "65536" in error["message"]
    many = http.post(CHAT, json=body, headers=[(f"x-filler-{i}", "1") for i in range(2000)])
    check_response(many, 431, code="request_header_fields_too_large")
    assert http.post(CHAT, json=body, headers={"x-fine": "a" * 8000}).status_code == 200  # within them
    assert len(mock.requests) == 1
    rows = final_rows(gateway, 3)
    assert [r["status"] for r in rows] == [431, 431, 200]


# -- authentication -------------------------------------------------------------------------------


def test_missing_key_is_401(gateway: Gateway, mock: MockUpstream) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        r = http.post(CHAT, json={"model": "gpt-4o", "messages": user("hi")})
        check_response(r, 401, type="invalid_request_error", code="missing_api_key")
        r = http.post(CHAT, json={"model": "gpt-4o", "messages": user("hi")},
                      headers={"Authorization": "Basic dXNlcjpwYXNz"})
        check_response(r, 401, code="missing_api_key")
        # the model list is an API endpoint too
        check_response(http.get("/v1/models"), 401, code="missing_api_key")
    assert mock.requests == []
    for row in final_rows(gateway, 3):
        assert_logged(row, 401, "invalid_request_error")
        assert row["client_key_id"] is None


def test_wrong_key_is_401(gateway: Gateway, mock: MockUpstream) -> None:
    wrong = "sk-wrong-key-9876543210"
    with sdk(gateway, key=wrong) as c, pytest.raises(openai.AuthenticationError) as info:
        c.chat.completions.create(model="gpt-4o", messages=user("hi"))
    error = check_sdk_error(info.value, 401, code="invalid_api_key")
    assert wrong not in info.value.response.text
    assert info.value.code == "invalid_api_key"
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        for name in ("x-api-key", "api-key"):
            r = http.post(CHAT, json={"model": "gpt-4o", "messages": user("hi")}, headers={name: wrong})
            check_response(r, 401, code="invalid_api_key")
            assert wrong not in r.text
    assert "Incorrect API key" in error["message"]
    assert mock.requests == []
    rows = final_rows(gateway, 3)
    for row in rows:
        assert_logged(row, 401)
        assert row["client_key_id"] is None
    data = b"".join(
        p.read_bytes() for p in (gateway.db_path, gateway.db_path.with_name(gateway.db_path.name + "-wal"))
        if p.exists()
    )
    assert data
    assert wrong.encode() not in data and CLIENT_KEY.encode() not in data and MASTER_KEY.encode() not in data


# -- routing errors -------------------------------------------------------------------------------


def test_unknown_url_is_404_json(http: httpx.Client, gateway: Gateway, mock: MockUpstream) -> None:
    check_response(http.post("/v1/embeddingz", json={"model": "gpt-4o"}), 404, code="unknown_url")
    check_response(http.get("/v1/nope/deeper"), 404, code="unknown_url")
    # outside /v1 too (not an API request: no log row)
    r = http.get("/definitely-not-here")
    check_response(r, 404, code="unknown_url")
    assert mock.requests == []
    for row in final_rows(gateway, 2):
        assert_logged(row, 404)


def test_unknown_url_through_sdk(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.post("/no/such/endpoint", body={}, cast_to=object)
    check_sdk_error(info.value, 404, code="unknown_url")
    assert_logged(final_rows(gateway, 1)[0], 404)


def test_wrong_method_is_405_json(http: httpx.Client, gateway: Gateway, mock: MockUpstream) -> None:
    r = http.get(CHAT)
    error = check_response(r, 405, type="invalid_request_error")
    assert "GET" in error["message"]
    assert "POST" in r.headers.get("allow", "")
    r = http.delete("/v1/models")
    check_response(r, 405)
    assert mock.requests == []
    for row in final_rows(gateway, 2):
        assert_logged(row, 405)


# -- upstream errors relayed ------------------------------------------------------------------------


def test_upstream_429_keeps_retry_after(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=user("hi\n#mock status=429 retry_after=7"))
    error = check_sdk_error(info.value, 429, type="requests", code="rate_limit_exceeded")
    assert error["message"] == "Rate limit reached for requests (mock)."
    assert info.value.response.headers["retry-after"] == "7"
    assert len(mock.requests) == 1
    row = final_rows(gateway, 1)[0]
    assert_logged(row, 429)
    assert (row["provider"], row["upstream_model"]) == ("openai", "gpt-4o")


@pytest.mark.parametrize(
    ("status", "exc_class", "etype", "code"),
    [
        (400, openai.BadRequestError, "invalid_request_error", None),
        (401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (403, openai.PermissionDeniedError, "invalid_request_error", "permission_denied"),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "server_error", None),
    ],
)
def test_upstream_error_status_and_body_kept(
    client: openai.OpenAI,
    gateway: Gateway,
    mock: MockUpstream,
    status: int,
    exc_class: type[openai.APIStatusError],
    etype: str,
    code: str | None,
) -> None:
    from llm_proxy.testing.mock_payloads import error_json

    with pytest.raises(exc_class) as info:
        client.chat.completions.create(model="deepseek-chat", messages=user(f"hi\n#mock status={status}"))
    check_sdk_error(info.value, status, type=etype, code=code)
    assert info.value.response.content == error_json(status)  # the upstream's own bytes
    assert "retry-after" not in info.value.response.headers
    assert UPSTREAM_KEY not in info.value.response.text
    row = final_rows(gateway, 1)[0]
    assert_logged(row, status, etype)
    assert row["provider"] == "deepseek"


def test_upstream_error_on_stream_request_is_a_plain_error(
    client: openai.OpenAI, gateway: Gateway, mock: MockUpstream
) -> None:
    """An upstream that refuses a stream before any byte: a real 429, not a 200 stream."""
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=user("hi\n#mock status=429 retry_after=3"), stream=True
        )
    check_sdk_error(info.value, 429, code="rate_limit_exceeded")
    assert info.value.response.headers["retry-after"] == "3"
    assert not info.value.response.headers["content-type"].startswith("text/event-stream")
    assert mock.requests[-1].body["stream"] is True
    row = final_rows(gateway, 1)[0]
    assert_logged(row, 429)
    assert row["stream"] == 1


@pytest.mark.parametrize(
    ("directive", "status", "exc_class", "snippet"),
    [
        ("body=text", 502, openai.InternalServerError, "502 Bad Gateway (mock upstream)"),
        ("status=503 body=html", 503, openai.InternalServerError, "<h1>503 Service Unavailable</h1>"),
        ("status=429 body=text retry_after=2", 429, openai.RateLimitError, "429 Too Many Requests"),
        ("status=404 body=empty", 404, openai.NotFoundError, "returned HTTP 404"),
    ],
    ids=["text-502", "html-503", "text-429", "empty-404"],
)
def test_non_json_upstream_error_is_normalised(
    client: openai.OpenAI,
    gateway: Gateway,
    directive: str,
    status: int,
    exc_class: type[openai.APIStatusError],
    snippet: str,
) -> None:
    with pytest.raises(exc_class) as info:
        client.chat.completions.create(model="gpt-4o", messages=user(f"hi\n#mock {directive}"))
    error = check_sdk_error(info.value, status)
    assert snippet in error["message"]
    assert "openai" in error["message"]  # names the provider
    if "retry_after" in directive:
        assert info.value.response.headers["retry-after"] == "2"
    assert error["type"] == ("api_error" if status >= 500 else
                             {429: "rate_limit_error", 404: "not_found_error"}[status])
    row = final_rows(gateway, 1)[0]
    assert_logged(row, status, error["type"])


# -- transport failures ---------------------------------------------------------------------------


def _providers(mock: MockUpstream, **openai_overrides: Any) -> dict[str, Any]:
    base = {
        "type": "openai",
        "base_url": mock.base_url_v1,
        "api_key": UPSTREAM_KEY,
        "models": ["gpt-4o"],
        "timeouts": {"connect": 2, "read": 5, "total": 20},
    }
    return {"openai": {**base, **openai_overrides}}


def test_upstream_hang_is_504_within_read_timeout(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway(providers=_providers(mock, timeouts={"connect": 2, "read": 0.5, "total": 20}))
    with sdk(gw, timeout=10) as c:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="gpt-4o", messages=user("hi\n#mock hang=1"))
        elapsed = time.monotonic() - started
        # a stream request that hangs before its headers: same answer, not a 200 stream
        with pytest.raises(openai.InternalServerError) as info2:
            c.chat.completions.create(model="gpt-4o", messages=user("hi\n#mock hang=1"), stream=True)
    assert 0.4 <= elapsed < 3, elapsed
    for exc in (info.value, info2.value):
        check_sdk_error(exc, 504, type="upstream_error", code="upstream_timeout")
    # the gateway hung up on the upstream instead of leaving the request open
    assert mock.wait_for(lambda: mock.requests_aborted_by_client == 2)
    for row in final_rows(gw, 2):
        assert_logged(row, 504, "upstream_error")


def test_total_timeout_covers_the_wait_for_headers(make_gateway: Any, mock: MockUpstream) -> None:
    """An upstream that is slow to answer at all hits the total deadline, not only the idle one."""
    gw = make_gateway(providers=_providers(mock, timeouts={"connect": 2, "read": 5, "total": 0.5}))
    with sdk(gw, timeout=10) as c:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="gpt-4o", messages=user("hi\n#mock latency_ms=3000"))
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.5, elapsed
    check_sdk_error(info.value, 504, type="upstream_error", code="upstream_timeout")
    assert_logged(final_rows(gw, 1)[0], 504, "upstream_error")


def test_upstream_silent_mid_stream_times_out(make_gateway: Any, mock: MockUpstream) -> None:
    """Read timeout between chunks: the stream has started, so it ends with an error event."""
    gw = make_gateway(providers=_providers(mock, timeouts={"connect": 2, "read": 0.3, "total": 20}))
    got: list[str] = []
    with sdk(gw) as c, pytest.raises(openai.APIError) as info:
        for chunk in c.chat.completions.create(
            model="gpt-4o", messages=user("hi\n#mock chunk_ms=1000"), stream=True
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == ""
    assert not isinstance(info.value, openai.APIStatusError)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "stream_interrupted"
    row = final_rows(gw, 1)[0]
    assert_logged(row, 502, "upstream_stream_interrupted")
    assert row["usage_estimated"] == 1


def test_connection_refused_is_502(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway(providers=_providers(mock, base_url=f"http://127.0.0.1:{free_port()}/v1"))
    with sdk(gw) as c:
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="gpt-4o", messages=user("hi"))
        with pytest.raises(openai.InternalServerError) as info2:
            c.chat.completions.create(model="gpt-4o", messages=user("hi"), stream=True)
    for exc in (info.value, info2.value):
        error = check_sdk_error(exc, 502, type="upstream_error", code="upstream_unreachable")
        assert "openai" in error["message"]
        assert "127.0.0.1" not in error["message"]  # no upstream address leaks to clients
    for row in final_rows(gw, 2):
        assert_logged(row, 502, "upstream_error")


# -- failures after the stream started --------------------------------------------------------------


def test_stream_cut_mid_way(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=user("hi\n#mock cut_after=2"), stream=True
        ):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "Hello from"  # what arrived before the cut was delivered
    exc = info.value
    assert not isinstance(exc, openai.APIStatusError)
    assert isinstance(exc.body, dict)
    assert set(exc.body) == {"message", "type", "param", "code"}
    assert exc.body["code"] == "stream_interrupted"
    for marker in TRACEBACK_MARKERS:
        assert marker not in exc.message
    assert mock.wait_for(lambda: mock.streams_cut == 1)
    row = final_rows(gateway, 1)[0]
    assert_logged(row, 502, "upstream_stream_interrupted")
    assert row["stream"] == 1
    # charged for what was delivered: an estimate, flagged as such
    assert (row["usage_estimated"], row["completion_tokens"]) == (1, 2)
    assert row["ttft_ms"] is not None


def test_stream_error_event_relayed(client: openai.OpenAI, gateway: Gateway, mock: MockUpstream) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=user("hi\n#mock error_event_after=2"), stream=True
        ):
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "Hello from"
    exc = info.value
    assert not isinstance(exc, openai.APIStatusError)
    assert exc.message == "The server had an error while streaming (mock)."
    assert isinstance(exc.body, dict) and exc.body["type"] == "server_error"
    row = final_rows(gateway, 1)[0]
    assert_logged(row, 502, "upstream_stream_error")
    assert row["error_message"] == "The server had an error while streaming (mock)."


def test_stream_errors_over_raw_http_end_cleanly(http: httpx.Client, gateway: Gateway) -> None:
    """The SSE body after a cut: the delivered chunks, one error event, no [DONE], a clean end."""
    payload = {"model": "gpt-4o", "messages": user("hi\n#mock cut_after=1"), "stream": True}
    with http.stream("POST", CHAT, json=payload) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert "[DONE]" not in text
    last = json.loads(events[-1].removeprefix("data: "))
    assert set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    for marker in TRACEBACK_MARKERS:
        assert marker not in text
    assert_logged(final_rows(gateway, 1)[0], 502)
