"""A 401/403 rests what it is evidence against, never a whole provider on one request.

With several keys on a provider, one client request for a model the upstream refuses
(anyone can pin ``provider/model``) used to rest every key for ``auth_cooldown``, and every
model of the provider answered 503 for five minutes. Now: a key rests for every model only
when the provider says the key itself is refused (``invalid_api_key``), never the last
usable one, at most one per request; a refusal of a pair that has served is about the
request and rests nothing; any other refusal rests the (key, model) pair. End to end
against the mock's ``#mock status=401/403`` markers and a keyed upstream on 127.0.0.1, and
the pool's own rules with a fake clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import CLIENT_KEY, read_body, serve_asgi

from llm_proxy.providers import anthropic, gemini
from llm_proxy.routing.key_pool import KeyPool
from llm_proxy.testing.mock_upstream import MockUpstream

KEY_A, KEY_B = "sk-upstream-key-a", "sk-upstream-key-b"
MODELS = ["gpt-4o", "gpt-4o-mini"]
TIMEOUTS = {"connect": 1, "read": 5, "total": 10}


def two_keys(url: str) -> dict[str, Any]:
    return {"only": {"type": "openai", "base_url": url, "api_key": KEY_A, "api_keys": [KEY_B],
                     "models": MODELS, "timeouts": TIMEOUTS}}


def chat(gw: Any, model: str, text: str = "hi") -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", timeout=30, headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


def keys_seen(mock: MockUpstream) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in mock.requests]


def rested(row: dict[str, Any]) -> list[str]:
    return [a["rested"] for a in json.loads(row["attempts"] or "[]") if "rested" in a]


# -- one client request cannot take the provider down -------------------------------------------

@pytest.mark.parametrize(("status", "scopes"), [(403, ["model", "model"]), (401, ["key", "model"])])
def test_one_pinned_request_for_a_refused_model_leaves_every_other_model_serving(
        make_gateway: Any, mock: MockUpstream, status: int, scopes: list[str]) -> None:
    gw = make_gateway(providers=two_keys(mock.base_url_v1))
    r = chat(gw, "only/forbidden-model", f"hi\n#mock status={status}")
    assert r.status_code == status  # the upstream's own answer, not a 503
    assert sorted(keys_seen(mock)) == [KEY_A, KEY_B]  # both keys were tried for it
    # 403 permission_denied: the pair rests for each key. 401 invalid_api_key: the first key
    # rests for every model, the second, the last usable one, only for this model.
    assert rested(gw.rows(1)[0]) == scopes
    for model in MODELS * 2:
        assert chat(gw, model).status_code == 200
    used = set(keys_seen(mock)[2:])
    assert used == ({KEY_A, KEY_B} if status == 403 else {KEY_B})
    again = chat(gw, "only/forbidden-model")  # the refused pairs themselves do rest
    assert again.status_code == 503 and again.json()["error"]["code"] == "no_deployment_available"
    assert len(mock.requests) == 6


def test_a_refusal_of_a_pair_that_served_rests_nothing(make_gateway: Any, mock: MockUpstream) -> None:
    """A key that has answered for this model is not refused for the model: it is the request
    (a feature the key may not use). The client hears the 403; nobody else notices."""
    gw = make_gateway(providers=two_keys(mock.base_url_v1))
    assert [chat(gw, "gpt-4o").status_code for _ in range(2)] == [200, 200]  # both keys served it
    assert chat(gw, "gpt-4o", "hi\n#mock status=403").status_code == 403
    assert rested(gw.rows(3)[2]) == ["none", "none"]
    assert [chat(gw, "gpt-4o").status_code for _ in range(2)] == [200, 200]
    assert set(keys_seen(mock)[-2:]) == {KEY_A, KEY_B}  # still both in rotation


def test_one_key_a_refusal_of_a_deployment_that_served_does_not_open_its_breaker(
        make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway()  # one key per provider
    assert chat(gw, "gpt-4o").status_code == 200
    gw.rows(1)  # the request has ended: its deployment has served
    assert chat(gw, "gpt-4o", "hi\n#mock status=403").status_code == 403
    assert chat(gw, "gpt-4o").status_code == 200
    assert "breakers" not in httpx.get(gw.url + "/health").json()["providers"]["openai"]  # none open


def test_one_key_a_refused_pinned_model_opens_that_deployment_only(make_gateway: Any, mock: MockUpstream) -> None:
    gw = make_gateway()
    assert chat(gw, "openai/forbidden-model", "hi\n#mock status=401").status_code == 401
    assert chat(gw, "openai/forbidden-model").status_code == 503
    assert chat(gw, "gpt-4o").status_code == chat(gw, "gpt-4o-mini").status_code == 200
    assert httpx.get(gw.url + "/health").json()["providers"]["openai"]["breakers"] == {"forbidden-model": "open"}


# -- a key that is really refused still rests ---------------------------------------------------

class Keyed:
    """An OpenAI-compatible upstream refusing some (key, model) pairs with an error code."""

    def __init__(self, refuse: dict[tuple[str, str], tuple[int, str | None]]) -> None:
        self.refuse = refuse
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = orjson.loads(await read_body(receive))
        key = dict(scope["headers"]).get(b"authorization", b"").decode().removeprefix("Bearer ")
        self.seen.append((key, body["model"]))
        refusal = self.refuse.get((key, body["model"])) or self.refuse.get((key, "*"))
        if refusal is not None:
            status, code = refusal
            reply: dict[str, Any] = {"error": {"message": "refused", "type": "invalid_request_error",
                                               "code": code, "param": None}}
        else:
            status = 200
            reply = {"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps(reply)})


@pytest.fixture
def keyed() -> Iterator[Any]:
    stack: list[Any] = []

    def start(refuse: dict[tuple[str, str], tuple[int, str | None]]) -> tuple[str, Keyed]:
        upstream = Keyed(refuse)
        cm = serve_asgi(upstream)
        stack.append(cm)
        return cm.__enter__() + "/v1", upstream

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def test_a_key_the_provider_calls_invalid_rests_and_the_other_key_serves(make_gateway: Any, keyed: Any) -> None:
    url, up = keyed({(KEY_A, "*"): (401, "invalid_api_key")})
    gw = make_gateway(providers=two_keys(url))
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini"):
        assert chat(gw, model).status_code == 200
    assert up.seen[:2] == [(KEY_A, "gpt-4o"), (KEY_B, "gpt-4o")]  # refused, then the same request went on
    assert {key for key, _ in up.seen[2:]} == {KEY_B}  # the refused key rests for every model
    assert rested(gw.rows(5)[0]) == ["key"]


def test_a_refusal_without_a_key_code_rests_that_key_for_that_model_only(make_gateway: Any, keyed: Any) -> None:
    url, up = keyed({(KEY_A, "gpt-4o"): (403, "model_not_found")})  # OpenAI: no access to this model
    gw = make_gateway(providers=two_keys(url))
    assert chat(gw, "gpt-4o").status_code == 200
    assert up.seen == [(KEY_A, "gpt-4o"), (KEY_B, "gpt-4o")]
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o"):
        assert chat(gw, model).status_code == 200
    assert len(up.seen) == 6 and (KEY_A, "gpt-4o-mini") in up.seen[2:]  # A still serves the other model
    assert {key for key, model in up.seen[2:] if model == "gpt-4o"} == {KEY_B}  # but not gpt-4o
    assert rested(gw.rows(5)[0]) == ["model"]


def test_every_key_invalid_the_last_one_still_answers_for_other_models(make_gateway: Any, keyed: Any) -> None:
    url, up = keyed({(KEY_A, "*"): (401, "invalid_api_key"), (KEY_B, "*"): (401, "invalid_api_key")})
    gw = make_gateway(providers=two_keys(url))
    assert chat(gw, "gpt-4o").status_code == 401  # the upstream's answer: nothing else to try
    assert rested(gw.rows(1)[0]) == ["key", "model"]
    assert chat(gw, "gpt-4o").status_code == 503  # both rest for gpt-4o
    assert chat(gw, "gpt-4o-mini").status_code == 401  # the last key is asked again for another model
    assert len(up.seen) == 3


# -- the wire formats say when the key itself is refused ----------------------------------------

def test_formats_mark_a_refused_key_apart_from_a_refused_model() -> None:
    envelope = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    assert anthropic.parse_error(401, orjson.dumps(envelope)).code == "invalid_api_key"
    envelope["error"]["type"] = "permission_error"
    assert anthropic.parse_error(403, orjson.dumps(envelope)).code is None
    assert anthropic.parse_error(401, b"<html>proxy says no</html>").code is None  # not Anthropic's word

    def google(status: int, name: str, message: str = "m") -> bytes:
        return orjson.dumps({"error": {"code": status, "message": message, "status": name}})

    assert gemini.parse_error(401, google(401, "UNAUTHENTICATED")).code == "invalid_api_key"
    leaked = google(403, "PERMISSION_DENIED", "Your API key was reported as leaked. Please use another API key.")
    assert (gemini.parse_error(403, leaked).status, gemini.parse_error(403, leaked).code) == (403, "invalid_api_key")
    assert gemini.parse_error(403, google(403, "PERMISSION_DENIED")).code == "permission_denied"


# -- the pool -----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pool_rests_a_key_for_one_model_or_all_and_skips_keys_tried() -> None:
    clock = Clock()
    pool = KeyPool(("a", "b", "c"), clock)
    pool.rest_model(0, "m", 60)
    assert [pool.pick("m") for _ in range(4)] == [1, 2, 1, 2]
    assert pool.pick("other") == 0
    assert pool.pick("m", tried=0b110) is None  # b and c were tried by this request, a rests for m
    pool.rest(1, 30)
    assert pool.others_usable(0) and pool.others_usable(2)
    pool.rest(2, 30)
    assert not pool.others_usable(0)  # a is the last key usable for every model
    assert pool.pick("m") is None and pool.ready_at("m") == 1030
    clock.now += 30
    assert pool.pick("m") in (1, 2)
    clock.now += 30
    assert {pool.pick("m") for _ in range(3)} == {0, 1, 2}


def test_pool_pair_memory_is_bounded() -> None:
    clock = Clock()
    pool = KeyPool(("a", "b"), clock)
    for n in range(5000):  # what a client can make of provider/<anything>
        pool.rest_model(0, f"m{n}", 60)
        pool.served(1, f"m{n}")
    assert len(pool._model_resting) <= 1024 and len(pool._served) <= 1024
    assert pool.has_served(1, "m4999") and not pool.has_served(1, "m0")
    assert pool.pick("m4999") == 1 and pool.pick("m0") == 0  # an evicted rest only costs one more attempt
