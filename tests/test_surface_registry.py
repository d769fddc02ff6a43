"""Every surface in the registry is served at both its paths, read by the alias layer, answers
errors in its own envelope and is logged under its own name: one record, no parallel lists."""

from __future__ import annotations

import httpx
import pytest
from conftest import CLIENT_KEY, Gateway

from llm_proxy.core.surfaces import OTHER, OTHER_MESSAGES, SURFACES, Surface, surface_for

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def test_every_path_names_its_surface() -> None:
    for surface in SURFACES:
        assert surface.paths == ("/v1" + surface.path, surface.path)
        for path in surface.paths:
            assert surface_for(path) is surface
    assert surface_for("/v1/not-a-surface") is OTHER
    assert surface_for("/v1/messages/batches") is OTHER_MESSAGES and OTHER_MESSAGES.name == OTHER.name
    assert surface_for("/health") is None and surface_for("/api/usage") is None


@pytest.mark.parametrize("surface", [s for s in SURFACES if s.names_model], ids=lambda s: s.name)
def test_model_surfaces_need_a_model_in_their_own_envelope(gateway: Gateway, surface: Surface) -> None:
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) as client:
        for path in surface.paths:
            response = client.post(path, json={"messages": []})
            assert response.status_code == 400, (path, response.text)
            body = response.json()
            if surface.error_body is None:
                assert body["error"]["message"] == "you must provide a model parameter"
                assert body["error"]["param"] == "model"
            else:  # Anthropic's envelope
                assert body["type"] == "error"
                assert body["error"] == {"type": "invalid_request_error",
                                         "message": "you must provide a model parameter"}
    rows = gateway.rows(expected=2)
    assert [r["endpoint"] for r in rows] == [surface.name, surface.name]
    assert all(r["status"] == 400 for r in rows)


def test_get_surface_and_unknown_paths(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/models").status_code == 200
        unknown = client.post("/v1/not-a-surface", json={})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "unknown_url"
    rows = gateway.rows(expected=3)
    assert [r["endpoint"] for r in rows] == ["models", "models", "other"]


@pytest.mark.parametrize("surface", SURFACES, ids=lambda s: s.name)
def test_a_wrong_method_is_405_in_the_surfaces_own_envelope(gateway: Gateway, surface: Surface) -> None:
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) as client:
        wrong = client.request("GET" if surface.method == "POST" else "POST", surface.paths[0])
    assert wrong.status_code == 405, wrong.text
    body = wrong.json()
    if surface.error_body is None:
        assert body["error"]["type"] == "invalid_request_error" and "not allowed" in body["error"]["message"]
    else:  # Anthropic's envelope
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert "not allowed" in body["error"]["message"]
    assert gateway.rows(expected=1)[0]["status"] == 405


def test_an_unknown_path_under_messages_is_404_in_anthropics_envelope(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, headers={"x-api-key": CLIENT_KEY}, timeout=10) as client:
        unknown = client.post("/v1/messages/batches", json={"requests": []})
        unauthenticated = client.post("/v1/messages/batches", json={}, headers={"x-api-key": "sk-wrong-0123456789"})
    assert unknown.status_code == 404
    assert unknown.json() == {"type": "error", "error": {
        "type": "not_found_error", "message": "Unknown request URL: POST /v1/messages/batches."}}
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "authentication_error"
    assert [r["endpoint"] for r in gateway.rows(expected=2)] == ["other", "other"]


def test_the_gateways_own_500_on_messages_reaches_the_anthropic_sdk_in_anthropics_shape(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    import anthropic

    from llm_proxy.inbound import anthropic_messages

    def broken(body: object) -> int:
        raise RuntimeError("internal-detail-xyz")

    monkeypatch.setattr(anthropic_messages, "count_tokens", broken)  # a bug in the gateway itself
    client = anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    gateway.clients.append(client)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.json() == {"type": "error", "error": {
        "type": "api_error", "message": "The server had an error while processing your request."}}
    assert "internal-detail-xyz" not in info.value.response.text
    assert gateway.rows(expected=1)[0]["status"] == 500
