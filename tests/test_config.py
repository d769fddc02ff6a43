"""Config loading: ${VAR} interpolation, LLM_PROXY__ overrides, strict validation, the shipped file.

Every call passes an explicit ``environ`` so nothing here depends on the real environment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_proxy.core.config import ConfigError
from llm_proxy.routing.validation import load_config, parse_config  # every check: plugins and groups too
from llm_proxy.runtime.build import build_runtime

SHIPPED = Path(__file__).resolve().parents[1] / "config.yaml"
CLOUD_KEYS = {
    "openai": "OPENAI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "moonshot": "MOONSHOT_API_KEY",
    "xai": "XAI_API_KEY",
    "xiaomi": "XIAOMI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}


def minimal(**providers: dict[str, Any]) -> dict[str, Any]:
    return {"providers": providers or {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "sk-up"}}}


def errors_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ or {})
    return info.value.errors


def has_error(errors: list[str], path: str, *fragments: str) -> bool:
    """An error for exactly ``path`` (the text before the first ':') containing every fragment."""
    return any(e.split(":", 1)[0] == path and all(f in e for f in fragments) for e in errors)


# -- interpolation ----------------------------------------------------------------------------


def test_defaults_without_any_file_content() -> None:
    config = parse_config({}, {})
    assert config.server.port == 8080
    assert config.server.log_level == "info"
    assert config.providers == {}
    assert config.missing_env == {}


def test_interpolates_a_variable() -> None:
    raw = {"providers": {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"}}}
    config = parse_config(raw, {"OPENAI_API_KEY": "sk-from-env"})
    assert config.providers["openai"].api_key == "sk-from-env"
    assert config.missing_env == {}


def test_default_applies_when_unset_or_empty_and_not_when_set() -> None:
    raw = {"database": {"path": "${DB_PATH:-/var/lib/llm.db}"}}
    assert parse_config(raw, {}).database.path == "/var/lib/llm.db"
    assert parse_config(raw, {"DB_PATH": ""}).database.path == "/var/lib/llm.db"
    assert parse_config(raw, {"DB_PATH": "/tmp/x.db"}).database.path == "/tmp/x.db"
    assert parse_config(raw, {}).missing_env == {}  # a non-empty default is not "missing"


def test_several_variables_in_one_string_stay_a_string() -> None:
    raw = {"providers": {"local": {"base_url": "http://${HOST}:${PORT:-8000}/${PREFIX}", "api_key_required": False}}}
    config = parse_config(raw, {"HOST": "10.0.0.5", "PORT": "9001", "PREFIX": "v1"})
    assert config.providers["local"].base_url == "http://10.0.0.5:9001/v1"
    config = parse_config(raw, {"HOST": "h", "PREFIX": "v2"})
    assert config.providers["local"].base_url == "http://h:8000/v2"


def test_a_whole_value_variable_takes_the_yaml_type_of_its_value() -> None:
    raw = {
        "server": {"port": "${PORT}", "access_log": "${ACCESS_LOG}", "max_body_mb": "${MAX_MB}"},
        "providers": {"local": {"base_url": "http://127.0.0.1:1/v1", "api_key_required": "${NEED_KEY:-false}",
                                "enabled": "${LOCAL_ON:-true}", "api_key": "${LOCAL_KEY}"}},
    }
    config = parse_config(raw, {"PORT": "9000", "ACCESS_LOG": "true", "MAX_MB": "1.5", "LOCAL_KEY": "sk-abc"})
    assert config.server.port == 9000 and type(config.server.port) is int
    assert config.server.access_log is True
    assert config.server.max_body_mb == 1.5
    assert config.providers["local"].api_key_required is False  # from the default, typed too
    assert config.providers["local"].enabled is True
    assert config.providers["local"].api_key == "sk-abc"  # a string value stays a string


@pytest.mark.parametrize("secret", ["0012345670", "1_000_000_000", "12:30:45:10", "123456789", "true", "2024-01-01"])
def test_a_string_field_keeps_the_exact_text_of_a_number_like_value(secret: str) -> None:
    # YAML would read these as an octal, an int with separators, a sexagesimal, a bool, a date:
    # a key must reach the upstream exactly as it was given, from ${VAR} and from an override
    raw = {"auth": {"master_key": "${MASTER}"},
           "providers": {"p": {"base_url": "http://127.0.0.1:1/v1", "api_key": "${KEY}"}}}
    config = parse_config(raw, {"MASTER": "sk-master-0123456", "KEY": secret})
    assert config.providers["p"].api_key == secret and type(config.providers["p"].api_key) is str
    config = parse_config(raw, {"KEY": "x", "LLM_PROXY__AUTH__MASTER_KEY": f"{secret}-pad",
                                "LLM_PROXY__PROVIDERS__P__API_KEY": secret})
    assert config.providers["p"].api_key == secret and type(config.providers["p"].api_key) is str
    assert config.auth.master_key == f"{secret}-pad"


def test_override_values_are_typed_for_typed_fields() -> None:
    env = {
        "LLM_PROXY__SERVER__ACCESS_LOG": "true",
        "LLM_PROXY__SERVER__MAX_BODY_MB": "0.5",
        "LLM_PROXY__PROVIDERS__P__BASE_URL": "http://127.0.0.1:1/v1",
        "LLM_PROXY__PROVIDERS__P__TIMEOUTS__TOTAL": "null",
        "LLM_PROXY__PROVIDERS__P__TIMEOUTS__READ": "30",
        "LLM_PROXY__PROVIDERS__P__CATALOG_PROVIDER": "2024",
    }
    config = parse_config({}, env)
    assert config.server.access_log is True
    assert config.server.max_body_mb == 0.5
    assert config.providers["p"].timeouts.total is None
    assert config.providers["p"].timeouts.read == 30.0
    assert config.providers["p"].catalog_provider == "2024"


def test_plugin_config_from_a_variable_is_typed() -> None:
    raw = {"plugins": [{"name": "max_tokens_cap", "config": {"max_tokens": "${CAP}"}}]}
    config = parse_config(raw, {"CAP": "256"})
    assert config.plugins[0]["config"]["max_tokens"] == 256
    assert type(config.plugins[0]["config"]["max_tokens"]) is int


def test_a_whole_value_variable_of_the_wrong_type_is_an_error_with_its_path() -> None:
    errors = errors_of({"server": {"port": "${PORT}"}}, {"PORT": "eighty"})
    assert has_error(errors, "server.port", "expected an integer", "eighty")


def test_missing_variable_is_recorded_and_empty() -> None:
    raw = {
        "auth": {"master_key": "${MASTER:-}"},
        "providers": {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"},
                      "other": {"base_url": "https://x.example/v1", "api_key": "pre-${OTHER_KEY}-post"}},
    }
    config = parse_config(raw, {})
    assert config.providers["openai"].api_key == ""
    assert config.providers["other"].api_key == "pre--post"
    assert config.auth.master_key == ""
    assert config.missing_env == {
        "providers.openai.api_key": "OPENAI_API_KEY",
        "providers.other.api_key": "OTHER_KEY",
        "auth.master_key": "MASTER",
    }


def test_interpolation_reaches_into_lists() -> None:
    raw = {
        "auth": {"keys": [{"key": "${TEAM_A_KEY}", "name": "team-a"}]},
        "providers": {"local": {"base_url": "http://127.0.0.1:1/v1", "api_key_required": False,
                                "models": ["${MODEL_A}", "fixed", "${MODEL_B}"]}},
    }
    config = parse_config(raw, {"TEAM_A_KEY": "sk-team-a-123456", "MODEL_A": "llama3.2"})
    assert config.auth.keys[0].key == "sk-team-a-123456"
    assert config.providers["local"].models == ("llama3.2", "fixed", "")
    assert config.missing_env == {"providers.local.models[2]": "MODEL_B"}


def test_a_client_key_from_a_missing_variable_is_an_error_not_an_empty_key() -> None:
    errors = errors_of({"auth": {"keys": [{"key": "${TEAM_A_KEY}", "name": "team-a"}]}})
    assert has_error(errors, "auth.keys", "at least 8")


def test_the_environ_argument_is_used_instead_of_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-environment")
    monkeypatch.setenv("LLM_PROXY__SERVER__PORT", "1234")
    raw = {"providers": {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"}}}
    config = parse_config(raw, {})
    assert config.providers["openai"].api_key == ""
    assert config.server.port == 8080


# -- environment overrides --------------------------------------------------------------------


def test_override_port_is_typed() -> None:
    config = parse_config({"server": {"port": 8080}}, {"LLM_PROXY__SERVER__PORT": "9000"})
    assert config.server.port == 9000 and type(config.server.port) is int


def test_override_beats_interpolation() -> None:
    raw = {"server": {"port": "${PORT}"}}
    config = parse_config(raw, {"PORT": "7000", "LLM_PROXY__SERVER__PORT": "9000"})
    assert config.server.port == 9000


def test_override_provider_base_url() -> None:
    config = parse_config(minimal(), {"LLM_PROXY__PROVIDERS__OPENAI__BASE_URL": "http://127.0.0.1:18080/v1"})
    assert config.providers["openai"].base_url == "http://127.0.0.1:18080/v1"
    assert config.providers["openai"].api_key == "sk-up"  # the rest of the section is kept


def test_override_master_key() -> None:
    config = parse_config(minimal(), {"LLM_PROXY__AUTH__MASTER_KEY": "sk-master-from-env-0123"})
    assert config.auth.master_key == "sk-master-from-env-0123"


def test_override_creates_a_provider_section_absent_from_the_file() -> None:
    env = {
        "LLM_PROXY__PROVIDERS__LOCAL__BASE_URL": "http://127.0.0.1:11434/v1",
        "LLM_PROXY__PROVIDERS__LOCAL__API_KEY_REQUIRED": "false",
        "LLM_PROXY__PROVIDERS__LOCAL__MODELS": "[llama3.2, qwen3]",
    }
    config = parse_config(minimal(), env)
    assert set(config.providers) == {"openai", "local"}
    local = config.providers["local"]
    assert local.base_url == "http://127.0.0.1:11434/v1"
    assert local.api_key_required is False
    assert local.models == ("llama3.2", "qwen3")


def test_override_creates_a_section_under_a_null_key() -> None:
    config = parse_config({"auth": None}, {"LLM_PROXY__AUTH__MASTER_KEY": "sk-master-0123456"})
    assert config.auth.master_key == "sk-master-0123456"


def test_override_of_a_non_section_is_an_error() -> None:
    errors = errors_of({"server": {"port": 8080}}, {"LLM_PROXY__SERVER__PORT__NUMBER": "1"})
    assert any(e.startswith("LLM_PROXY__SERVER__PORT__NUMBER:") and "not a section" in e for e in errors), errors


def test_override_with_an_empty_section_name_is_an_error() -> None:
    errors = errors_of({}, {"LLM_PROXY__SERVER____PORT": "1"})
    assert any(e.startswith("LLM_PROXY__SERVER____PORT:") for e in errors), errors


def test_override_of_an_unknown_key_is_reported_with_its_path() -> None:
    errors = errors_of({}, {"LLM_PROXY__SERVER__PROT": "9000"})
    assert has_error(errors, "server.prot", "unknown key")


def test_override_with_a_bad_value_is_reported_with_its_path() -> None:
    errors = errors_of({}, {"LLM_PROXY__SERVER__PORT": "not-a-port"})
    assert has_error(errors, "server.port", "expected an integer")


def test_variables_without_the_prefix_are_not_overrides() -> None:
    config = parse_config({}, {"LLM_PROXY_SERVER__PORT": "1", "SERVER__PORT": "2", "llm_proxy__server__port": "3"})
    assert config.server.port == 8080


# -- strict validation ------------------------------------------------------------------------


def test_every_error_is_reported_at_once_with_its_path() -> None:
    raw = {
        "sevrer": {"port": 1},  # unknown top-level key
        "server": {"port": "eighty", "log_level": "loud"},
        "providers": {
            "openai": {
                "base_url": "ftp://api.openai.com/v1",
                "api_key": "sk-up",
                "api_kee": "typo",  # unknown provider key
                "timeouts": {"read": 0, "connect": "soon"},
            },
            "nourl": {"api_key": "sk-up"},  # base_url is required
        },
        "aliases": {"a": "b", "b": "c", "c": "a", "fine": "gpt-4o"},
        "plugins": [
            {"name": "no_such_plugin"},
            {"name": "max_tokens_cap", "config": {"max_tokens": -5, "bogus": 1}},
        ],
    }
    errors = errors_of(raw)
    expected = [
        ("sevrer", ("unknown key",)),
        ("providers.openai.api_kee", ("unknown key",)),
        ("server.port", ("expected an integer", "eighty")),
        ("server.log_level", ("expected one of", "loud")),
        ("providers.openai.base_url", ("http(s) URL", "ftp://")),
        ("providers.openai.timeouts.read", ("greater than 0",)),
        ("providers.openai.timeouts.connect", ("expected a number", "soon")),
        ("providers.nourl.base_url", ("required",)),
        ("aliases.a", ("cycle", "a -> b -> c -> a")),
        ("plugins[0].name", ("unknown plugin", "no_such_plugin")),
        ("plugins[1].config.max_tokens", ("positive integer",)),
        ("plugins[1].config.bogus", ("unknown key",)),
    ]
    missing = [(path, frags) for path, frags in expected if not has_error(errors, path, *frags)]
    assert not missing, f"not reported: {missing}\ngot: {errors}"
    assert not any(e.startswith("aliases.fine") for e in errors)
    assert len(errors) == len(set(errors)), errors  # nothing reported twice


def test_config_error_message_lists_every_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"x": 1, "server": {"port": -1}}, {}, source="my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: 2 error(s)")
    for error in info.value.errors:
        assert error in message


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"server": {"port": 70000}}, "server.port", "at most 65535"),
        ({"server": {"port": True}}, "server.port", "expected an integer"),
        ({"server": {"port": -1}}, "server.port", "must not be negative"),
        ({"server": {"max_body_mb": "big"}}, "server.max_body_mb", "expected a number"),
        ({"server": "0.0.0.0"}, "server", "expected a mapping"),
        ({"server": {"access_log": "yes please"}}, "server.access_log", "true or false"),
        ({"server": {"max_headers": 0}}, "server.max_headers", "at least 1"),
        ({"server": {"max_header_kb": 0}}, "server.max_header_kb", "greater than 0"),
        ({"auth": {"trust_unix_socket": "yes"}}, "auth.trust_unix_socket", "true or false"),
        ({"providers": {"p": {"base_url": "http://x", "timeouts": {"write": -1}}}},
         "providers.p.timeouts.write", "must not be negative"),
        ({"providers": {"p": {"base_url": "http://x", "timeouts": {"connect": 0}}}},
         "providers.p.timeouts.connect", "greater than 0"),
        ({"providers": {"p": {"base_url": "http://x", "max_connections": 0}}}, "providers.p.max_connections", "at least 1"),
        ({"providers": {"p": {"base_url": "http://x", "type": "bedrock"}}}, "providers.p.type", "expected one of"),
        ({"providers": {"p": {"base_url": "api.example.com/v1"}}}, "providers.p.base_url", "http(s) URL"),
        ({"providers": {"P": {"base_url": "http://x"}}}, "providers.P", "lowercase"),
        ({"providers": {"p": {"base_url": "http://x", "prices": {"m": {"input": "cheap"}}}}},
         "providers.p.prices.m.input", "expected a number"),
        ({"providers": ["openai"]}, "providers", "expected a mapping"),
        ({"auth": {"master_key": "short"}}, "auth.master_key", "at least 8"),
        ({"auth": {"keys": [{"key": "tiny"}]}}, "auth.keys", "at least 8"),
        ({"auth": {"keys": [{"name": "no key"}]}}, "auth.keys[0].key", "required"),
        ({"aliases": {"x": "x"}}, "aliases.x", "cycle"),
        ({"plugins": {"name": "max_tokens_cap"}}, "plugins", "expected a list"),
        ({"plugins": [{"name": "max_tokens_cap"}]}, "plugins[0].config.max_tokens", "required"),
        ({"missing_env": {"a": "b"}}, "missing_env", "unknown key"),
    ],
)
def test_single_errors_have_their_path(raw: dict[str, Any], path: str, fragment: str) -> None:
    errors = errors_of(raw)
    assert has_error(errors, path, fragment), errors


def test_a_plain_list_at_top_level_is_an_error() -> None:
    with pytest.raises(ConfigError):
        parse_config(["server"], {})  # type: ignore[arg-type]


def test_valid_config_is_frozen() -> None:
    config = parse_config(minimal(), {})
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


# -- files ------------------------------------------------------------------------------------


def test_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: [8080\n  host: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("invalid YAML")
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", {})
    assert "cannot read" in info.value.errors[0]


def test_empty_file_is_the_default_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n", encoding="utf-8")
    assert load_config(path, {}).server.port == 8080


def test_load_config_interpolates_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "server: {port: '${PORT:-8081}'}\n"
        "providers:\n  openai: {base_url: 'https://api.openai.com/v1', api_key: '${OPENAI_API_KEY}'}\n",
        encoding="utf-8",
    )
    config = load_config(path, {"OPENAI_API_KEY": "sk-x", "LLM_PROXY__PROVIDERS__OPENAI__TYPE": "openai"})
    assert config.server.port == 8081
    assert config.providers["openai"].api_key == "sk-x"


# -- providers without keys -------------------------------------------------------------------


def _provider_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "disabled" in r.getMessage()]


def test_provider_without_key_is_disabled_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = {
        "providers": {
            "openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}", "models": ["gpt-4o"]},
            "deepseek": {"base_url": "https://api.deepseek.com/v1", "api_key": "${DEEPSEEK_API_KEY}"},
        }
    }
    config = parse_config(raw, {"DEEPSEEK_API_KEY": "sk-deepseek"})
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        runtime = build_runtime(config)
    assert runtime.upstreams.providers["openai"].enabled is False
    assert runtime.upstreams.providers["deepseek"].enabled is True
    assert "OPENAI_API_KEY" in (runtime.upstreams.providers["openai"].disabled_reason or "")
    warnings = _provider_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "openai" in warnings[0].getMessage()
    assert "OPENAI_API_KEY" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


def test_provider_with_a_literal_empty_key_is_disabled_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}}}, {})
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        runtime = build_runtime(config)
    assert runtime.upstreams.providers["p"].enabled is False
    warnings = _provider_warnings(caplog)
    assert len(warnings) == 1 and "no api_key" in warnings[0].getMessage()


def test_provider_that_needs_no_key_is_enabled_without_one(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"providers": {"local": {"base_url": "http://127.0.0.1:11434/v1", "api_key_required": False,
                                   "api_key": "${LOCAL_KEY:-}", "models": ["llama3.2"]}}}
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        runtime = build_runtime(parse_config(raw, {}))
    local = runtime.upstreams.providers["local"]
    assert local.enabled is True and local.disabled_reason is None
    assert "authorization" not in local.headers
    assert _provider_warnings(caplog) == []


def test_provider_disabled_in_config_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"providers": {"off": {"base_url": "http://127.0.0.1:1/v1", "enabled": False}}}
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        runtime = build_runtime(parse_config(raw, {}))
    assert runtime.upstreams.providers["off"].enabled is False
    assert runtime.upstreams.providers["off"].disabled_reason == "disabled in config"
    assert _provider_warnings(caplog) == []


# -- the shipped config.yaml ------------------------------------------------------------------


def _shipped_providers() -> list[str]:
    return list(yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))["providers"])


def test_shipped_config_loads_with_an_empty_environment(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(SHIPPED, {})
    assert set(CLOUD_KEYS) <= set(config.providers)
    assert config.auth.master_key == ""
    with caplog.at_level(logging.WARNING, logger="llm_proxy"):
        runtime = build_runtime(config)
    assert not any(p.enabled for p in runtime.upstreams.providers.values())
    for name, var in CLOUD_KEYS.items():
        assert runtime.upstreams.providers[name].disabled_reason == f"{var} is not set"
    messages = [r.getMessage() for r in _provider_warnings(caplog)]
    assert len(messages) == len(CLOUD_KEYS), messages  # one line per cloud provider; local ones are off
    for var in CLOUD_KEYS.values():
        assert sum(var in m for m in messages) == 1
    # every alias points at a model some provider lists
    for alias, target in config.aliases.items():
        assert target in runtime.routes.models, alias


def test_shipped_config_enables_openai_when_its_key_is_set() -> None:
    config = load_config(SHIPPED, {"OPENAI_API_KEY": "sk-upstream-openai"})
    runtime = build_runtime(config)
    assert runtime.upstreams.providers["openai"].enabled is True
    assert runtime.upstreams.providers["openai"].headers["authorization"] == "Bearer sk-upstream-openai"
    assert [n for n, p in runtime.upstreams.providers.items() if p.enabled] == ["openai"]
    assert "providers.openai.api_key" not in config.missing_env


def test_shipped_config_local_providers_follow_their_variables() -> None:
    config = load_config(SHIPPED, {"OLLAMA_ENABLED": "true", "OLLAMA_BASE_URL": "http://10.1.2.3:11434/v1"})
    runtime = build_runtime(config)
    assert runtime.upstreams.providers["ollama"].enabled is True
    assert runtime.upstreams.providers["ollama"].base_url == "http://10.1.2.3:11434/v1"
    assert runtime.upstreams.providers["vllm"].enabled is False


@pytest.mark.parametrize("name", _shipped_providers())
def test_every_shipped_provider_has_an_overridable_base_url(name: str) -> None:
    url = f"http://127.0.0.1:18080/{name}/v1"
    config = load_config(SHIPPED, {f"LLM_PROXY__PROVIDERS__{name.upper()}__BASE_URL": url})
    assert config.providers[name].base_url == url
    others = {n: p.base_url for n, p in config.providers.items() if n != name}
    assert url not in others.values()


def test_shipped_config_with_master_key_and_port_overrides() -> None:
    env = {"LLM_PROXY__AUTH__MASTER_KEY": "sk-master-0123456789", "LLM_PROXY__SERVER__PORT": "9000",
           "LLM_PROXY_MASTER_KEY": "sk-ignored-because-overridden"}
    config = load_config(SHIPPED, env)
    assert config.auth.master_key == "sk-master-0123456789"
    assert config.server.port == 9000
