"""The auth stage alone: where a key may be sent, what a missing or wrong one gets, the open mode
for a gateway without keys, database-style identities (expiry, revocation, tags), and that a key
is never echoed back."""

from __future__ import annotations

import time

import pytest
from stubs import KeyTable, StubApp, call, context, make_scope, runtime, with_keys

from llm_proxy.core.context import ClientIdentity
from llm_proxy.core.errors import ProxyError
from llm_proxy.middleware.auth import AuthMiddleware
from llm_proxy.runtime.snapshot import Runtime

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MASTER = "sk-master-0123456789abcdef"
TEAM = "sk-team-a-0123456789abcdef"
KEYED = runtime(auth={"master_key": MASTER, "keys": [{"key": TEAM, "name": "team-a"}]})
OPEN = runtime()


async def authenticate(snapshot: Runtime, headers: dict[str, str], *,
                       client: tuple[str, int] | None = ("127.0.0.1", 50000)) -> StubApp:
    app = StubApp()
    ctx = context(snapshot)
    sent = await call(AuthMiddleware(app), make_scope(headers=headers, client=client, ctx=ctx))
    assert sent.status == 200
    return app


async def refused(snapshot: Runtime, headers: dict[str, str], *,
                  client: tuple[str, int] | None = ("127.0.0.1", 50000)) -> ProxyError:
    app = StubApp()
    ctx = context(snapshot)
    with pytest.raises(ProxyError) as caught:
        await call(AuthMiddleware(app), make_scope(headers=headers, client=client, ctx=ctx))
    assert app.called == 0
    return caught.value


@pytest.mark.parametrize("headers", [
    {"authorization": f"Bearer {TEAM}"}, {"authorization": f"bearer  {TEAM} "},
    {"x-api-key": TEAM}, {"api-key": TEAM},
], ids=["bearer", "bearer-lowercase", "x-api-key", "api-key"])
async def test_a_config_key_is_accepted_in_each_place_clients_send_it(headers: dict[str, str]) -> None:
    app = await authenticate(KEYED, headers, client=("203.0.113.9", 4000))
    client = app.ctx.client
    assert client is not None and client.name == "team-a"
    assert not client.is_master and not client.metered
    assert TEAM not in client.key_id


async def test_the_master_key_is_known_as_such() -> None:
    app = await authenticate(KEYED, {"authorization": f"Bearer {MASTER}"})
    assert app.ctx.client is not None and app.ctx.client.is_master


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer "}, {"authorization": f"Basic {TEAM}"},
                                     {"x-api-key": ""}], ids=["none", "empty-bearer", "basic", "empty-x-api-key"])
async def test_no_usable_key_is_401_missing_api_key(headers: dict[str, str]) -> None:
    error = await refused(KEYED, headers)
    assert (error.status, error.code) == (401, "missing_api_key")


async def test_a_wrong_key_is_401_invalid_api_key_and_never_echoed() -> None:
    wrong = "sk-wrong-9f8e7d6c5b4a3210"
    error = await refused(KEYED, {"authorization": f"Bearer {wrong}"})
    assert (error.status, error.code) == (401, "invalid_api_key")
    assert wrong.encode() not in error.body() and wrong not in error.message
    assert MASTER.encode() not in error.body() and TEAM.encode() not in error.body()


@pytest.mark.parametrize("client", [("127.0.0.1", 1), ("127.8.9.10", 1), ("::1", 1), ("::ffff:127.0.0.1", 1),
                                    ("::ffff:127.9.0.1", 1)])
async def test_without_any_key_loopback_clients_are_served(client: tuple[str, int]) -> None:
    app = await authenticate(OPEN, {}, client=client)
    assert app.ctx.client is None


@pytest.mark.parametrize("client", [
    ("203.0.113.9", 1), ("10.0.0.5", 1), ("::ffff:8.8.8.8", 1), ("0.0.0.0", 1), ("::", 1),
    # names some servers and test clients report: only a real loopback address counts
    ("localhost", 1), ("testclient", 1), ("127.0.0.1.example.com", 1), ("127.evil", 1),
])
async def test_without_any_key_other_clients_are_refused_even_with_a_key(client: tuple[str, int]) -> None:
    error = await refused(OPEN, {"authorization": "Bearer sk-anything-0123456789"}, client=client)
    assert (error.status, error.code) == (401, "invalid_api_key")


@pytest.mark.parametrize("client", [None, ("", 0)], ids=["none", "empty"])
async def test_without_any_key_a_client_with_no_address_is_refused_unless_unix_sockets_are_trusted(
        client: tuple[str, int] | None) -> None:
    error = await refused(OPEN, {}, client=client)
    assert (error.status, error.code) == (401, "invalid_api_key")
    app = await authenticate(runtime(auth={"trust_unix_socket": True}), {}, client=client)
    assert app.ctx.client is None


async def test_trusting_unix_sockets_does_not_open_a_gateway_that_has_keys() -> None:
    snapshot = runtime(auth={"master_key": MASTER, "trust_unix_socket": True})
    error = await refused(snapshot, {}, client=None)
    assert (error.status, error.code) == (401, "missing_api_key")


DB_KEY = "sk-db-key-0123456789abcdef"


def database_identity(*, expires_at: float | None = None, revoked_at: float | None = None,
                      tags: tuple[tuple[str, str], ...] = ()) -> ClientIdentity:
    return ClientIdentity(key_id="ck_test01", name="db-key", metered=True, expires_at=expires_at,
                          revoked_at=revoked_at, tags=tags)


def database_keys(identity: ClientIdentity) -> Runtime:
    return with_keys(KEYED, KeyTable({DB_KEY: identity}))


async def test_an_expired_database_key_is_401_api_key_expired() -> None:
    error = await refused(database_keys(database_identity(expires_at=time.time() - 1)), {"x-api-key": DB_KEY})
    assert (error.status, error.code) == (401, "api_key_expired")
    assert DB_KEY.encode() not in error.body()


async def test_a_revoked_database_key_past_its_grace_is_401_invalid_api_key() -> None:
    error = await refused(database_keys(database_identity(revoked_at=time.time() - 1)), {"x-api-key": DB_KEY})
    assert (error.status, error.code) == (401, "invalid_api_key")


async def test_a_database_key_still_in_its_grace_period_or_before_expiry_is_served() -> None:
    later = time.time() + 3600
    snapshot = database_keys(database_identity(expires_at=later, revoked_at=later))
    app = await authenticate(snapshot, {"x-api-key": DB_KEY})
    assert app.ctx.client is not None and app.ctx.client.key_id == "ck_test01"


async def test_a_database_keys_tags_go_to_the_request_metadata() -> None:
    snapshot = database_keys(database_identity(tags=(("team", "search"), ("env", "prod"))))
    app = await authenticate(snapshot, {"authorization": f"Bearer {DB_KEY}"})
    assert app.ctx.metadata["tags"] == {"team": "search", "env": "prod"}


async def test_paths_outside_the_api_are_not_authenticated() -> None:
    app = StubApp()
    ctx = context(KEYED, "/health")
    sent = await call(AuthMiddleware(app), make_scope("/health", method="GET", client=("203.0.113.9", 1), ctx=ctx))
    assert sent.status == 200 and app.ctx.client is None
