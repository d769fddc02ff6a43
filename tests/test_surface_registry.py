"""Every surface in the registry is served at both its paths, read by the alias layer, answers
errors in its own envelope and is logged under its own name: one record, no parallel lists."""

from __future__ import annotations

import httpx
import pytest
from conftest import CLIENT_KEY, Gateway

from llm_proxy.core.surfaces import OTHER, SURFACES, Surface, surface_for

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def test_every_path_names_its_surface() -> None:
    for surface in SURFACES:
        assert surface.paths == ("/v1" + surface.path, surface.path)
        for path in surface.paths:
            assert surface_for(path) is surface
    assert surface_for("/v1/not-a-surface") is OTHER
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
