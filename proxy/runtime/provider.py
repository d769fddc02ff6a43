"""One configured provider as a request uses it: where it is, how it authenticates, what it speaks.

A ``ProviderRuntime`` is built per config and frozen; the copy that serves has its pooled
``transport`` (``Upstreams.start``). What the gateway learns about the provider while it
runs (its last success and last error, shown by ``/health``) is a ``ProviderHealth`` that
outlives the snapshot: the next build gets the same one while the provider's definition
(``fingerprint``) stays the same.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import httpx

from llm_proxy.core.config import ProviderConfig
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.wire import WireFormat
from llm_proxy.providers import wire_format
from llm_proxy.upstream.transport import AiohttpTransport

__all__ = ["Fingerprint", "ProviderHealth", "ProviderRuntime", "build_provider", "fingerprint"]

Fingerprint = tuple[object, ...]
RawHeaders = list[tuple[bytes, bytes]]
_LOCAL_NAMES = re.compile(r"localhost|.*\.local|.*\.internal|host\.docker\.internal")


def _user_agent() -> str:
    try:
        return f"llm-proxy/{version('llm-proxy')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "llm-proxy"


_USER_AGENT = _user_agent()


def fingerprint(cfg: ProviderConfig) -> Fingerprint:
    """What makes a provider the same upstream across a reload (its connection and keys)."""
    return (cfg.type, cfg.base_url, cfg.api_key, cfg.api_keys, tuple(sorted(cfg.headers.items())), cfg.timeouts,
            cfg.max_connections, cfg.pool_idle_timeout, cfg.retry_stale_connection, cfg.enabled)


class ProviderHealth:
    """The provider's last success and last error, as the admin API reports them."""

    __slots__ = ("last_error", "last_error_at", "last_ok")

    def __init__(self) -> None:
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def record_ok(self) -> None:
        self.last_ok = time.time()

    def record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()


@dataclass(frozen=True, slots=True)
class ProviderRuntime:
    name: str
    config: ProviderConfig
    enabled: bool
    disabled_reason: str | None
    base_url: str
    headers: dict[str, str]
    catalog_id: str
    timeout: httpx.Timeout
    wire: WireFormat  # what the provider's ``type`` can do
    fingerprint: Fingerprint
    health: ProviderHealth
    raw_headers: RawHeaders  # every upstream request's headers, encoded once (host and length are per request)
    extensions: dict[str, dict[str, float | None]]  # the httpx request extensions: its timeouts
    api_keys: tuple[str, ...] = ()  # api_key then api_keys: rotated per request when several
    tags: frozenset[str] = frozenset()
    transport: AiohttpTransport | None = None  # set on the started copy
    raw_by_key: tuple[RawHeaders, ...] = ()  # raw_headers with each key, when a fixed header carries it
    _urls: dict[str, httpx.URL] = field(default_factory=dict)  # a memo: parsed once per path

    @property
    def last_ok(self) -> float | None:
        return self.health.last_ok

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    def status(self) -> JSONObject:
        """What the unauthenticated ``/health`` shows: enabled or disabled, nothing more. Why, and
        the last error (an upstream's words about some client's request), are ``details``."""
        return {"status": "enabled" if self.enabled else "disabled"}

    def details(self) -> JSONObject:
        """The last success and the last error (its text and time), for the admin API only."""
        info: JSONObject = {}
        health = self.health
        if health.last_ok is not None:
            info["last_success"] = round(health.last_ok, 3)
        if health.last_error is not None:
            info["last_error"] = health.last_error
            info["last_error_at"] = round(health.last_error_at or 0, 3)
        return info

    def raw_headers_for(self, key_index: int) -> RawHeaders:
        """The headers with the ``key_index``-th key, for formats whose key is a fixed header."""
        if key_index == 0 or not self.raw_by_key:
            return self.raw_headers
        return self.raw_by_key[key_index]

    def api_key(self, key_index: int = 0) -> str:
        """The key for a native-format request (placed where that API wants it)."""
        return self.api_keys[key_index] if self.api_keys else ""

    def url(self, path: str) -> httpx.URL:
        """The upstream URL for an API path, parsed once per provider and path."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url

    def record_ok(self) -> None:
        self.health.record_ok()

    def record_error(self, message: str) -> None:
        self.health.record_error(message)


def build_provider(name: str, cfg: ProviderConfig, missing_env: dict[str, str], health: ProviderHealth,
                   *, switched_off: bool = False) -> ProviderRuntime:
    """The provider as ``cfg`` describes it; ``switched_off``: disabled through the admin API."""
    t = cfg.timeouts
    reason = None
    if switched_off:
        reason = "disabled through the admin API"
    elif not cfg.enabled:
        reason = "disabled in config"
    elif cfg.api_key_required and not (cfg.api_key or any(cfg.api_keys)):
        var = missing_env.get(f"providers.{name}.api_key")
        reason = f"{var} is not set" if var else "no api_key configured"
    # identity: bytes are relayed as received, so they must not arrive compressed
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "accept-encoding": "identity",
        "user-agent": _USER_AGENT,
        **cfg.headers,
    }
    keys = tuple(dict.fromkeys(k for k in (cfg.api_key, *cfg.api_keys) if k))
    wire = wire_format(cfg.type)
    if keys and wire.static_auth:  # other formats place the key in each call they build
        headers.update(wire.auth_headers(keys[0]))
    raw = _encode(headers)
    by_key: tuple[RawHeaders, ...] = ()
    if len(keys) > 1 and wire.static_auth:
        auth = [_encode(wire.auth_headers(key)) for key in keys]
        names = {header for header, _ in auth[0]}
        base = [h for h in raw if h[0] not in names]
        by_key = tuple([*base, *pairs] for pairs in auth)
    timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect)
    return ProviderRuntime(
        name=name,
        config=cfg,
        enabled=reason is None,
        disabled_reason=reason,
        base_url=cfg.base_url.rstrip("/"),
        headers=headers,
        catalog_id=cfg.catalog_provider or name,
        timeout=timeout,
        wire=wire,
        fingerprint=fingerprint(cfg),
        health=health,
        raw_headers=raw,
        extensions={"timeout": timeout.as_dict()},
        api_keys=keys,
        tags=frozenset(cfg.tags if cfg.tags is not None else (_locality(cfg.base_url),)),
        raw_by_key=by_key,
    )


def _encode(headers: dict[str, str]) -> RawHeaders:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _locality(base_url: str) -> str:
    """``local`` for a server on this machine or a private network, else ``cloud``."""
    host = urlsplit(base_url).hostname or ""
    if _LOCAL_NAMES.fullmatch(host):
        return "local"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "cloud"
    return "local" if address.is_loopback or address.is_private or address.is_link_local else "cloud"
