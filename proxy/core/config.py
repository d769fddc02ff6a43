"""Configuration: YAML → typed, frozen dataclasses, validated strictly before serving.

Loading runs in three steps so a user sees every mistake at once: ``${VAR}`` interpolation,
``LLM_PROXY__SECTION__KEY`` environment overrides, then a schema walk over the dataclasses
below that collects every unknown key and bad value with its path instead of stopping
at the first one.

This module checks what the core can see: the schema, values across sections, ``when:``
conditions and alias cycles. What needs a higher layer (plugin specs against the plugin
registry, the shape of model groups) is a ``check`` the caller passes in; its errors join the
same list, so one run still reports everything (``llm_proxy.routing.validation`` passes them).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard, TypeVar

import yaml

from llm_proxy.core.conditions import condition_errors
from llm_proxy.core.jsontypes import JSONObject

__all__ = [
    "AuthConfig",
    "BreakerConfig",
    "ClientKeyConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DeploymentConfig",
    "DeploymentRuleConfig",
    "GroupConfig",
    "ImagesConfig",
    "ModelConfig",
    "PriceConfig",
    "ProviderConfig",
    "RequestLogConfig",
    "RoutingConfig",
    "RuleConfig",
    "STRATEGIES",
    "ServerConfig",
    "TimeoutConfig",
    "ENV_PREFIX",
    "ConfigCheck",
    "check_values",
    "convert_section",
    "default_config_path",
    "load_config",
    "merge_errors",
    "parse_config",
]

ENV_PREFIX = "LLM_PROXY__"


class ConfigError(Exception):
    """Every problem found in a config, one line each."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  - {e}" for e in errors))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``forwarded_allow_ips``: the proxies whose ``X-Forwarded-For``/``-Proto`` ``llm-proxy serve``
    believes (addresses, networks, or ``*``); none by default, so a client cannot pick the address
    login throttling counts. ``keep_alive_timeout``: seconds ``llm-proxy serve`` keeps an idle
    client connection open; longer than clients keep theirs pooled (httpx and the OpenAI SDK 5 s,
    load balancers 60 s), so a client never sends on a connection the gateway is closing.
    ``shutdown_grace``: seconds the requests in flight get to finish after SIGTERM before the rest
    are ended with an error (``core/drain.py``).

    ``header_timeout``/``body_timeout`` (seconds): how long a connection may take to send a
    request head, and a request its body, before it is closed (408); ``max_connections``: open
    client connections at most (``null``: derived from the open-file limit), beyond which the
    longest-waiting idle connection is closed, or the new one answered 503 when none is idle."""

    host: str = "0.0.0.0"
    port: int = 8080
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False
    max_body_mb: float = 32.0
    forwarded_allow_ips: tuple[str, ...] = ()
    max_header_kb: float = 64.0  # request headers, names + values summed; larger is 431
    max_headers: int = 100  # request header lines; more is 431
    keep_alive_timeout: int = 75
    shutdown_grace: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int | None = None


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: str = "data/llm_proxy.db"


@dataclass(frozen=True, slots=True)
class RequestLogConfig:
    queue_size: int = 50_000
    batch_size: int = 1000
    flush_ms: int = 100


@dataclass(frozen=True, slots=True)
class ClientKeyConfig:
    key: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    master_key: str = ""
    keys: tuple[ClientKeyConfig, ...] = ()
    trust_unix_socket: bool = False  # with no key configured: serve clients with no address (a Unix socket)


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Seconds. ``read`` is the longest silence allowed between two chunks of a response;
    ``total`` caps the whole upstream exchange (``null`` for none)."""

    connect: float = 10.0
    read: float = 300.0
    write: float = 60.0
    total: float | None = 1800.0


@dataclass(frozen=True, slots=True)
class PriceConfig:
    """USD per 1M tokens, like the catalog."""

    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None
    per_image: float | None = None  # USD per generated image (image models)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    base_url: str
    type: str = "openai"  # a wire format in llm_proxy.providers.FORMATS (checked by routing.validation)
    api_key: str = ""
    api_keys: tuple[str, ...] = ()  # several keys: rotated per request, each cooled down on 401/403/429
    api_key_required: bool = True
    enabled: bool = True
    models: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    timeouts: TimeoutConfig = TimeoutConfig()
    prices: dict[str, PriceConfig] = field(default_factory=dict)
    catalog_provider: str | None = None
    max_connections: int = 1000
    # seconds an idle pooled connection is kept: under the upstream's own idle timeout (5 s for
    # uvicorn, node, Apache), else a request can go out on a connection the upstream is closing
    pool_idle_timeout: float = 4.0
    retry_stale_connection: bool = True  # resend once, on a new connection, what a dropped pooled one lost
    responses_api: bool = False  # serves OpenAI's /responses itself (OpenAI does): pass it through
    tags: tuple[str, ...] | None = None  # default: ("local",) for a loopback/private base_url, else ("cloud",)
    priority: int = 0  # for its deployments: lower is tried first (ties keep config order)
    weight: float = 1.0  # for its deployments under the weighted and A/B strategies


STRATEGIES = ("priority", "weighted", "round-robin", "least-latency", "lowest-cost", "least-busy", "ab", "conditional")
StrategyName = Literal["priority", "weighted", "round-robin", "least-latency", "lowest-cost", "least-busy", "ab",
                       "conditional"]


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """One place a model is served: a provider and the name it knows the model by."""

    provider: str
    model: str | None = None  # the upstream's name; default: the model's own name
    weight: float | None = None  # default: the provider's
    priority: int | None = None  # default: the provider's
    tags: tuple[str, ...] | None = None  # default: the provider's
    rpm: int | None = None  # capacity: requests per minute this deployment takes
    tpm: int | None = None  # capacity: tokens per minute (prompt estimate + max_tokens at admission)


@dataclass(frozen=True, slots=True)
class DeploymentRuleConfig:
    """A conditional strategy's rule: when it matches, deployments named by ``use`` go first."""

    use: str  # a provider name or a deployment tag
    pattern: str | None = None
    case_sensitive: bool = False
    when: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """How a model name is served, when it is more than "every provider that lists it"."""

    deployments: tuple[DeploymentConfig, ...] = ()
    strategy: StrategyName | None = None  # default: routing.strategy
    rules: tuple[DeploymentRuleConfig, ...] = ()  # for the conditional strategy
    context_fallback: str | None = None  # a larger-context model to try when the prompt is too long


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Per deployment: open after ``failures`` failures (``transient_failures`` for 502/503/529
    overloads, which pass by themselves) within ``window`` seconds; probe after ``cooldown``,
    doubling up to ``max_cooldown``; a refused key (401/403) rests for ``auth_cooldown``: the
    key, the key for one model, or the deployment's breaker, as the refusal warrants."""

    failures: int = 5
    transient_failures: int = 10
    window: float = 30.0
    cooldown: float = 5.0
    max_cooldown: float = 300.0
    auth_cooldown: float = 300.0


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The resilience pipeline around every upstream call."""

    enabled: bool = True  # false: first deployment only, no retries, breakers or statistics
    strategy: StrategyName = "priority"
    mode: Literal["auto", "local", "cloud"] = "auto"  # local/cloud: only deployments tagged so
    retries: int = 2  # extra rounds over the deployments after all failed with a retryable error
    retry_backoff: float = 0.25  # seconds before the first retry round, doubled each round, full jitter
    max_retry_wait: float = 10.0  # a longer Retry-After is not waited for: the error goes back instead
    key_cooldown: float = 30.0  # a provider key answered 429 without Retry-After rests this long
    breaker: BreakerConfig = BreakerConfig()


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """A heuristic group's rule: a pattern in the last user message and/or conditions."""

    target: str
    pattern: str | None = None
    case_sensitive: bool = False
    when: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A model group: a name clients send, resolved to a concrete model per request."""

    targets: tuple[str, ...]
    strategy: Literal["heuristic", "classifier"] = "heuristic"
    selector_model: str | None = None
    complexity_threshold: int = 10
    rules: tuple[RuleConfig, ...] = ()
    logic_level: int | None = None
    primary_use: str | None = None
    classifier_timeout: float = 3.0
    cache_ttl: float = 300.0
    deployment_strategy: StrategyName | None = None  # orders the chosen model's deployments


@dataclass(frozen=True, slots=True)
class ImagesConfig:
    """Fetching remote image URLs for providers that need the bytes inline (Gemini, Ollama)."""

    fetch_timeout: float = 10.0
    max_mb: float = 20.0  # one image
    max_per_request: int = 16  # remote images in one request
    max_total_mb: float = 20.0  # all of one request's images together (Gemini's inline-request cap)
    max_concurrent_fetches: int = 16  # gateway-wide, across requests
    max_inflight_mb: float = 64.0  # gateway-wide bytes fetched and held while inlining
    allow_private_networks: bool = False  # loopback, private, link-local and metadata addresses
    allowed_hosts: tuple[str, ...] = ()  # exact host names allowed even if private


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    request_log: RequestLogConfig = RequestLogConfig()
    auth: AuthConfig = AuthConfig()
    images: ImagesConfig = ImagesConfig()
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    routing: RoutingConfig = RoutingConfig()
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    plugins: tuple[JSONObject, ...] = ()
    # encrypts provider keys stored through the admin API; set it from LLM_PROXY__ENCRYPTION_KEY
    encryption_key: str = ""
    # which env vars were referenced but unset, by dotted path (e.g. providers.openai.api_key)
    missing_env: dict[str, str] = field(default_factory=dict)


def default_config_path() -> Path:
    return Path(os.environ.get("LLM_PROXY_CONFIG", "config.yaml"))


ConfigCheck = Callable[[Config], list[str]]
"""A check from a higher layer: every problem it finds, each as ``path: message``."""


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    check: ConfigCheck | None = None,
) -> Config:
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {exc}"], str(path)) from None
    return parse_config(raw or {}, environ, source=str(path), check=check)


def parse_config(
    raw: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    source: str = "config",
    *,
    check: ConfigCheck | None = None,
) -> Config:
    """The typed config; ``ConfigError`` with every problem, ``check``'s included, if it has any."""
    env = os.environ if environ is None else environ
    errors: list[str] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(["top level: expected a mapping"], source)
    missing: dict[str, str] = {}
    tree = _interpolate(raw, env, "", missing)
    assert isinstance(tree, dict)  # a mapping interpolates to a dict
    _apply_env_overrides(tree, env, errors)
    config = convert_section(tree, Config, "", errors)
    assert config is not None  # a mapping always converts: Config has no required field
    # value checks and the caller's check run even after type errors, so one run reports everything
    check_values(config, errors)
    if check is not None:
        merge_errors(errors, check(config))
    if errors:
        raise ConfigError(errors, source)
    return dataclasses.replace(config, missing_env=missing)


def merge_errors(errors: list[str], found: Iterable[str]) -> None:
    """Add each of ``found`` unless its path, or one above it, is already reported.

    A value reported as wrongly typed was replaced by a default, so what a later check says
    about it (or about anything inside it) would only repeat the first error.
    """
    reported = _error_paths(errors)
    for error in found:
        path = error.split(":", 1)[0]
        if not any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in reported):
            errors.append(error)


# -- interpolation and overrides ------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _EnvText(str):
    """Text from the environment that also reads as a YAML scalar (``9000``, ``true``, ``null``).

    The schema walk picks per field: a ``str`` field keeps the text exactly as given (a key
    like ``0012345670`` must not become the octal number 2739128), any other field gets
    ``typed``.
    """

    typed: object

    def __new__(cls, text: str, typed: object) -> _EnvText:
        self = super().__new__(cls, text)
        self.typed = typed
        return self


def _from_env(text: str) -> object:
    """An environment value read as YAML; a scalar keeps its text too (see ``_EnvText``)."""
    try:
        typed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(typed, str | list | dict):
        return typed
    return _EnvText(text, typed)


def _plain(node: object) -> object:
    """``node`` with every ``_EnvText`` replaced by its YAML value (for untyped parts: plugins)."""
    if isinstance(node, _EnvText):
        return node.typed
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _interpolate(node: object, env: Mapping[str, str], path: str, missing: dict[str, str]) -> object:
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            value = env.get(m.group(1))
            if value is None or value == "":
                default = m.group(2) or ""
                if not default:
                    missing[path] = m.group(1)
                return default
            return value

        whole = _VAR.fullmatch(node)
        result = _VAR.sub(sub, node)
        if whole and result:  # a value that is one ${VAR} takes the variable's YAML type (ports, booleans)
            value = _from_env(result)
            if isinstance(value, _EnvText) and isinstance(value.typed, bool | int | float):
                return value
        return result
    if isinstance(node, Mapping):
        return {k: _interpolate(v, env, _join(path, str(k)), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
    return node


def _apply_env_overrides(tree: dict[str, object], env: Mapping[str, str], errors: list[str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
        if not all(keys):
            errors.append(f"{name}: empty section in variable name")
            continue
        value = _from_env(env[name]) if env[name] != "" else ""
        node = tree
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                errors.append(f"{name}: {'.'.join(keys)} is not a section")
                break
            node = child
        else:
            node[keys[-1]] = value


# -- schema walk -------------------------------------------------------------------------------

def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(value: object, tp: object, path: str, errors: list[str]) -> object:
    origin = typing.get_origin(tp)
    where = path or "top level"
    if tp is Any:
        return _plain(value)
    if isinstance(value, _EnvText) and not (origin is typing.Union or origin is types.UnionType):
        wants_text = tp is str or (origin is Literal and all(isinstance(c, str) for c in typing.get_args(tp)))
        value = str(value) if wants_text else value.typed
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if isinstance(value, _EnvText) and value.typed is None and type(None) in args:
            return None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, path, errors)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            errors.append(f"{where}: expected one of {', '.join(map(str, choices))}, got {_describe(value)}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, errors)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            errors.append(f"{where}: expected a list, got {_describe(value)}")
            return ()
        (inner, _) = typing.get_args(tp)
        return tuple(_convert(v, inner, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            errors.append(f"{where}: expected a mapping, got {_describe(value)}")
            return {}
        _, inner = typing.get_args(tp)
        return {str(k): _convert(v, inner, _join(path, str(k)), errors) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{where}: expected an integer, got {_describe(value)}")
        elif value < 0:
            errors.append(f"{where}: must not be negative")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{where}: expected a number, got {_describe(value)}")
            return value
        if value < 0:
            errors.append(f"{where}: must not be negative")
        return float(value)
    if tp is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in the schema, not in the user's file


_HINTS: dict[type, dict[str, object]] = {}  # a dataclass's resolved field types
_Section = TypeVar("_Section")


def convert_section(value: object, cls: type[_Section], path: str, errors: list[str]) -> _Section | None:
    """``value`` (plain YAML/JSON data) as the config dataclass ``cls``, problems appended to ``errors``.

    None when it is not a mapping or lacks a required key; otherwise a ``cls`` that may still
    hold wrongly typed values where ``errors`` says so. The admin API's overlay converts the
    sections it stores with this, so they are checked exactly like the file's.
    """
    converted = _convert_dataclass(value, cls, path, errors)
    return converted if isinstance(converted, cls) else None


def _convert_dataclass(value: object, cls: type, path: str, errors: list[str]) -> object:
    where = path or "top level"
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        errors.append(f"{where}: expected a mapping, got {_describe(value)}")
        return None
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields or key == "missing_env":
            known = ", ".join(n for n in fields if n != "missing_env")
            errors.append(f"{_join(path, str(key))}: unknown key (known: {known})")
    kwargs: dict[str, object] = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], _join(path, name), errors)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{_join(path, name)}: required")
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # required fields missing: already reported


def _error_paths(errors: list[str]) -> set[str]:
    return {e.split(":", 1)[0] for e in errors}


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_values(config: Config, errors: list[str]) -> None:
    """Checks across values (ports, URLs, limits, deployments, rules, conditions, alias cycles).

    The config may hold wrongly typed values (already reported): check only what has the
    right type, and add nothing for a path already reported."""
    reported = _error_paths(errors)

    def add(path: str, message: str) -> None:
        if path not in reported:
            errors.append(f"{path}: {message}")

    server = config.server
    if isinstance(server, ServerConfig) and _is_number(server.port) and server.port > 65535:
        add("server.port", "must be at most 65535")
    if isinstance(server, ServerConfig) and _is_number(server.shutdown_grace) and server.shutdown_grace < 0:
        add("server.shutdown_grace", "must be at least 0")
    if isinstance(server, ServerConfig) and isinstance(server.forwarded_allow_ips, tuple):
        _check_proxies(server.forwarded_allow_ips, add)
    if isinstance(server, ServerConfig):
        if _is_number(server.max_header_kb) and server.max_header_kb <= 0:
            add("server.max_header_kb", "must be greater than 0")
        if _is_number(server.max_headers) and server.max_headers < 1:
            add("server.max_headers", "must be at least 1")
        if _is_number(server.keep_alive_timeout) and server.keep_alive_timeout < 1:
            add("server.keep_alive_timeout", "must be at least 1")
        _check_connection_limits(server, add)
    for name, p in config.providers.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
            add(f"providers.{name}", "provider names use lowercase letters, digits, '-', '_' or '.'")
        if not isinstance(p, ProviderConfig):
            continue
        if isinstance(p.base_url, str) and not p.base_url.startswith(("http://", "https://")):
            add(f"providers.{name}.base_url", f"expected an http(s) URL, got {_describe(p.base_url)}")
        if _is_number(p.max_connections) and p.max_connections < 1:
            add(f"providers.{name}.max_connections", "must be at least 1")
        if _is_number(p.pool_idle_timeout) and p.pool_idle_timeout <= 0:
            add(f"providers.{name}.pool_idle_timeout", "must be greater than 0")
        if isinstance(p.timeouts, TimeoutConfig):
            for key in ("connect", "read", "write"):
                value = getattr(p.timeouts, key)
                if _is_number(value) and value <= 0:
                    add(f"providers.{name}.timeouts.{key}", "must be greater than 0")
    auth = config.auth
    if isinstance(auth, AuthConfig):
        if isinstance(auth.keys, tuple):
            for client_key in auth.keys:
                if (isinstance(client_key, ClientKeyConfig) and isinstance(client_key.key, str)
                        and len(client_key.key) < 8):
                    add("auth.keys", "every client key must be at least 8 characters")
                    break
        if isinstance(auth.master_key, str) and auth.master_key and len(auth.master_key) < 8:
            add("auth.master_key", "must be at least 8 characters")
    _check_models(config, add)
    aliases = {a: t for a, t in config.aliases.items() if isinstance(t, str)}
    for alias, target in aliases.items():
        seen = [alias]
        while target in aliases:
            if target in seen:
                add(f"aliases.{alias}", f"cycle {' -> '.join([*seen, target])}")
                break
            seen.append(target)
            target = aliases[target]


def _check_connection_limits(server: ServerConfig, add: Callable[[str, str], None]) -> None:
    for key in ("header_timeout", "body_timeout"):
        value = getattr(server, key)
        if _is_number(value) and value <= 0:
            add(f"server.{key}", "must be greater than 0")
    if _is_number(server.max_connections) and server.max_connections < 1:
        add("server.max_connections", "must be at least 1")


def _check_proxies(entries: tuple[str, ...], add: Callable[[str, str], None]) -> None:
    """Entries as uvicorn reads them: it silently ignores one it cannot parse (``10.0.0.1/8``)."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            continue
        if entry == "*":
            if len(entries) > 1:
                add(f"server.forwarded_allow_ips[{i}]", "'*' (trust every peer) must be the only entry")
            continue
        try:
            if "/" in entry:
                ipaddress.ip_network(entry)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            add(f"server.forwarded_allow_ips[{i}]",
                f"expected an IP address, a network such as 10.0.0.0/8, or '*', got {_describe(entry)}")


def _check_models(config: Config, add: Callable[[str, str], None]) -> None:
    """Deployments name known providers, rules are well formed, fallbacks name known models."""
    providers = {n: p for n, p in config.providers.items() if isinstance(p, ProviderConfig)}
    for name, p in providers.items():
        if _is_number(p.weight) and p.weight <= 0:
            add(f"providers.{name}.weight", "must be greater than 0")
    served = {m for p in providers.values() for m in (p.models if isinstance(p.models, tuple) else ())}
    served |= set(config.models)
    tags = {t for p in providers.values() if isinstance(p.tags, tuple) for t in p.tags} | {"local", "cloud"}
    for model, spec in config.models.items():
        if not isinstance(spec, ModelConfig):
            continue
        path = f"models.{model}"
        for i, dep in enumerate(spec.deployments):
            if not isinstance(dep, DeploymentConfig):
                continue
            if isinstance(dep.provider, str) and dep.provider not in config.providers:
                add(f"{path}.deployments[{i}].provider", f"unknown provider {dep.provider!r}")
            if _is_number(dep.weight) and dep.weight <= 0:
                add(f"{path}.deployments[{i}].weight", "must be greater than 0")
            tags |= set(dep.tags or ())
        if spec.rules and spec.strategy != "conditional":
            add(f"{path}.rules", "rules are used by the conditional strategy only (set strategy: conditional)")
        for i, rule in enumerate(spec.rules):
            if not isinstance(rule, DeploymentRuleConfig):
                continue
            where = f"{path}.rules[{i}]"
            if isinstance(rule.use, str) and rule.use not in config.providers and rule.use not in tags:
                add(f"{where}.use", f"{rule.use!r} is neither a provider nor a deployment tag")
            if rule.pattern is None and rule.when is None:
                add(where, "a rule needs a pattern, a when condition, or both")
            if isinstance(rule.pattern, str):
                try:
                    re.compile(rule.pattern)
                except re.error as exc:
                    add(f"{where}.pattern", f"invalid regex ({exc})")
            if rule.when is not None:
                for error in condition_errors(rule.when, f"{where}.when"):
                    path_, _, message = error.partition(": ")
                    add(path_, message)
        fallback = spec.context_fallback
        if isinstance(fallback, str) and fallback not in served and fallback not in config.aliases:
            add(f"{path}.context_fallback", f"unknown model {fallback!r}")
