"""The runtime: one immutable snapshot of everything a request needs, built from a Config.

Each request captures the snapshot in force when it arrives, so a reload (which builds a
new Runtime and swaps one reference) never changes the rules under a request in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from plugins import PluginChain, validate_specs
from proxy import __version__
from proxy.breaker import Breakers
from proxy.catalog import Catalog
from proxy.config import Config, ConfigError, ProviderConfig, load_config
from proxy.context import Target
from proxy.errors import ProxyError
from proxy.groups import GroupResolver
from proxy.keys import KeyLookup, StaticKeys
from proxy.providers import translator
from proxy.remote_images import ImageFetcher
from proxy.store import RequestLogWriter
from proxy.transport import AiohttpTransport

__all__ = ["ProviderRuntime", "Runtime", "RuntimeHolder", "check_config", "shared_catalog"]

logger = logging.getLogger("llm_proxy")


@lru_cache(maxsize=1)
def shared_catalog() -> Catalog:
    """The packaged catalog, parsed once per process (it is 3.6 MB of JSON)."""
    return Catalog.load()


def check_config(path: str | Path | None = None, config: Config | None = None) -> Config:
    """Load and fully validate a config, plugins included; raise ConfigError with every problem."""
    if config is None:
        config = load_config(path)
    errors = validate_specs(list(config.plugins))
    if errors:
        raise ConfigError(errors, str(path or "config"))
    return config


@dataclass(slots=True)
class ProviderRuntime:
    name: str
    config: ProviderConfig
    enabled: bool
    disabled_reason: str | None
    base_url: str
    headers: dict[str, str]
    catalog_id: str
    timeout: httpx.Timeout
    transport: AiohttpTransport | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    _urls: dict[str, httpx.URL] = field(default_factory=dict)
    _raw_headers: list[tuple[bytes, bytes]] | None = None
    translator: ModuleType | None = None  # None: OpenAI-compatible, passed through
    last_ok: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "status": "enabled" if self.enabled else "disabled",
            "type": self.config.type,
            "models": len(self.config.models),
        }
        if self.disabled_reason:
            info["reason"] = self.disabled_reason
        if self.last_ok is not None:
            info["last_success"] = round(self.last_ok, 3)
        if self.last_error is not None:
            info["last_error"] = self.last_error
            info["last_error_at"] = round(self.last_error_at or 0, 3)
        return info

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers for every upstream request, encoded once (host and length are per request)."""
        raw = self._raw_headers
        if raw is None:
            raw = self._raw_headers = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        return raw

    def url(self, path: str) -> httpx.URL:
        """The upstream URL for an API path, parsed once per provider and path."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url

    def record_ok(self) -> None:
        self.last_ok = time.time()

    def record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()


def _build_provider(name: str, cfg: ProviderConfig, missing_env: dict[str, str]) -> ProviderRuntime:
    t = cfg.timeouts
    reason = None
    if not cfg.enabled:
        reason = "disabled in config"
    elif cfg.api_key_required and not cfg.api_key:
        var = missing_env.get(f"providers.{name}.api_key")
        reason = f"{var} is not set" if var else "no api_key configured"
    # identity: bytes are relayed as received, so they must not arrive compressed
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "accept-encoding": "identity",
        "user-agent": f"llm-proxy/{__version__}",
        **cfg.headers,
    }
    if cfg.api_key and cfg.type == "openai":  # native formats put the key where their API wants it
        headers["authorization"] = f"Bearer {cfg.api_key}"
    return ProviderRuntime(
        name=name,
        config=cfg,
        enabled=reason is None,
        disabled_reason=reason,
        base_url=cfg.base_url.rstrip("/"),
        headers=headers,
        catalog_id=cfg.catalog_provider or name,
        timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect),
        translator=None if cfg.type == "openai" else translator(cfg.type),
    )


@dataclass(slots=True)
class Runtime:
    config: Config
    providers: dict[str, ProviderRuntime]
    models: dict[str, list[Target]]
    aliases: dict[str, str]
    catalog: Catalog
    keys: KeyLookup
    plugins: PluginChain
    log_writer: RequestLogWriter
    max_body_bytes: int
    started: bool = False
    closed: bool = False
    image_fetcher: Any = None  # remote image URLs → inline bytes, for providers that need them
    groups: GroupResolver = field(default_factory=lambda: GroupResolver({}))
    breakers: Breakers = field(default_factory=Breakers)
    known_labels: frozenset[str] = field(default_factory=frozenset)
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def build(cls, config: Config) -> Runtime:
        check_config(config=config)
        providers = {n: _build_provider(n, c, config.missing_env) for n, c in config.providers.items()}
        for p in providers.values():
            if not p.enabled and p.config.enabled:
                logger.warning("provider %s disabled: %s", p.name, p.disabled_reason)
        models: dict[str, list[Target]] = {}
        for p in providers.values():
            for model in p.config.models:
                models.setdefault(model, []).append(Target(p.name, model))
        overrides = {
            (p.name, model): {k: v for k, v in dataclasses.asdict(price).items() if v is not None and k != "per_image"}
            for p in providers.values()
            for model, price in p.config.prices.items()
        }
        catalog = shared_catalog()
        if overrides:
            catalog = catalog.with_overrides(
                {(providers[n].catalog_id, m): v for (n, m), v in overrides.items()}
            )
        return cls(
            config=config,
            providers=providers,
            models=models,
            aliases=dict(config.aliases),
            catalog=catalog,
            keys=StaticKeys(config.auth),
            plugins=PluginChain.from_specs(list(config.plugins)),
            log_writer=RequestLogWriter(
                config.database.path,
                queue_size=config.request_log.queue_size,
                batch_size=config.request_log.batch_size,
                flush_interval=config.request_log.flush_ms / 1000.0,
            ),
            max_body_bytes=int(config.server.max_body_mb * 1024 * 1024),
            known_labels=frozenset(models) | frozenset(config.aliases) | frozenset(config.groups),
            groups=GroupResolver(config.groups),
        )

    async def start(self) -> None:
        """Open pooled upstream connections and the log writer; called from the lifespan."""
        if self.started:
            return
        self.log_writer.start()
        for p in self.providers.values():
            if p.enabled:
                p.transport = AiohttpTransport(limit=p.config.max_connections)
                p.extensions = {"timeout": p.timeout.as_dict()}
        if any(p.enabled and p.config.type in ("gemini", "ollama") for p in self.providers.values()):
            self.image_fetcher = ImageFetcher(self.config.images)
        for p in self.providers.values():
            if p.enabled and p.config.type == "ollama" and not p.config.models:
                await self._discover_ollama(p)
        self.started = True
        if self.keys.open:
            logger.warning("no client keys configured: serving loopback clients only (set auth.master_key)")

    async def _discover_ollama(self, provider: ProviderRuntime) -> None:
        """An Ollama provider listing no models serves whatever ``/api/tags`` reports at startup."""
        assert provider.transport is not None and provider.translator is not None
        request = httpx.Request("GET", provider.url("/api/tags"), headers=provider.raw_headers,
                                extensions={"timeout": httpx.Timeout(5.0).as_dict()})
        try:
            response = await provider.transport.handle_async_request(request)
            try:
                data = b"".join([chunk async for chunk in response.stream])
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            logger.warning("provider %s: model discovery failed (%s)", provider.name, type(exc).__name__)
            return
        names = provider.translator.parse_tags(data) if response.status_code == 200 else []
        for name in names:
            self.models.setdefault(name, []).append(Target(provider.name, name))
        self.known_labels = self.known_labels | frozenset(names)
        logger.info("provider %s: discovered %d model(s)", provider.name, len(names))

    async def ensure_started(self) -> None:
        """Start on first use when no lifespan did: a host app that mounts the gateway without
        running its lifespan still gets upstream clients and a request log (drained at exit)."""
        if self.closed:
            raise ProxyError(503, "The gateway is shutting down.", type="server_error", code="shutting_down")
        async with self._start_lock:
            if not self.started:
                logger.warning("llm-proxy started on its first request: pass its lifespan to the host app")
                await self.start()

    async def aclose(self) -> None:
        for p in self.providers.values():
            if p.transport is not None:
                await p.transport.aclose()
                p.transport = None
        if self.image_fetcher is not None:
            await self.image_fetcher.aclose()
            self.image_fetcher = None
        self.log_writer.close()
        self.started = False
        self.closed = True


class RuntimeHolder:
    """The one mutable reference: which Runtime new requests get."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
