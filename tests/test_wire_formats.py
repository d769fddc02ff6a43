"""The wire-format registry: one format per provider ``type``, capabilities asked, never type strings."""

from __future__ import annotations

import typing

import pytest

from llm_proxy.core.config import ConfigError, ProviderConfig
from llm_proxy.core.wire import Passthrough, WireFormat
from llm_proxy.providers import FORMATS, wire_format
from llm_proxy.routing.validation import parse_config


def _config(**kw: typing.Any) -> ProviderConfig:
    return ProviderConfig(base_url="http://127.0.0.1:1", **kw)


def test_registry_is_the_list_of_provider_types() -> None:
    assert set(FORMATS) == {"openai", "anthropic", "gemini", "ollama"}
    for name in FORMATS:  # every registered format is a valid provider type, nothing else is
        parse_config({"providers": {"p": {"type": name, "base_url": "http://127.0.0.1:1"}}}, {})
    with pytest.raises(ConfigError, match="providers.p.type: expected one of openai, anthropic, gemini, ollama"):
        parse_config({"providers": {"p": {"type": "bedrock", "base_url": "http://127.0.0.1:1"}}}, {})
    for name, fmt in FORMATS.items():
        assert isinstance(fmt, WireFormat) and fmt.name == name and wire_format(name) is fmt


def test_unknown_type() -> None:
    with pytest.raises(ValueError, match="bedrock"):
        wire_format("bedrock")


def test_capabilities() -> None:
    openai, anthropic, gemini, ollama = (FORMATS[n] for n in ("openai", "anthropic", "gemini", "ollama"))
    assert [f.name for f in FORMATS.values() if f.chat_passthrough] == ["openai"]
    assert [f.name for f in FORMATS.values() if f.static_auth] == ["openai"]
    assert {f.name for f in FORMATS.values() if f.needs_inline_images} == {"gemini", "ollama"}
    assert [f.name for f in FORMATS.values() if f.discovery is not None] == ["ollama"]
    assert isinstance(openai.embeddings, Passthrough) and isinstance(openai.images, Passthrough)
    assert gemini.embeddings is not None and ollama.embeddings is not None and anthropic.embeddings is None
    assert gemini.images is not None and ollama.images is None and anthropic.images is None


def test_passthrough_surfaces() -> None:
    plain, responses = _config(), _config(responses_api=True)
    openai, anthropic = wire_format("openai"), wire_format("anthropic")
    assert openai.passes_through("chat.completions", plain)
    assert not openai.passes_through("responses", plain) and openai.passes_through("responses", responses)
    assert anthropic.passes_through("messages", plain) and not anthropic.passes_through("responses", responses)
    assert not any(f.passes_through("messages", plain) for n, f in FORMATS.items() if n != "anthropic")


def test_auth_headers() -> None:
    assert wire_format("openai").auth_headers("k") == {"authorization": "Bearer k"}
    assert wire_format("anthropic").auth_headers("k") == {"x-api-key": "k"}
    assert wire_format("gemini").auth_headers("k") == {"x-goog-api-key": "k"}
    assert wire_format("ollama").auth_headers("k") == {"authorization": "Bearer k"}
    assert wire_format("ollama").auth_headers("") == {}


def test_discovery_parses_tags() -> None:
    discovery = wire_format("ollama").discovery
    assert discovery is not None and discovery.path == "/api/tags"
    assert discovery.parse(b'{"models": [{"name": "qwen3:8b"}]}') == ["qwen3:8b"]
    assert discovery.parse(b"garbage") == []
