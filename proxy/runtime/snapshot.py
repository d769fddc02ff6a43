"""The runtime: one immutable snapshot of everything a request needs, built from a Config.

Each request captures the snapshot in force when it arrives, so a reload (which builds a
new Runtime and swaps one reference) never changes the rules under a request in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx

from llm_proxy import __version__
from llm_proxy.access.key_lookup import KeyLookup, StaticKeys
from llm_proxy.core.catalog import Catalog
from llm_proxy.core.config import Config, ConfigError, ProviderConfig, load_config
from llm_proxy.core.context import Target
from llm_proxy.core.errors import ProxyError, not_found_model
from llm_proxy.plugins import PluginChain, validate_specs
from llm_proxy.providers import translator
from llm_proxy.routing.groups import GroupResolver
from llm_proxy.routing.learned import RoutingState
from llm_proxy.storage.request_log import RequestLogWriter
from llm_proxy.upstream.remote_images import ImageFetcher
from llm_proxy.upstream.transport import AiohttpTransport

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
    api_keys: tuple[str, ...] = ()  # api_key then api_keys: rotated per request when several
    tags: frozenset[str] = frozenset()
    _raw_by_key: list[list[tuple[bytes, bytes]]] | None = None
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

    def raw_headers_for(self, key_index: int) -> list[tuple[bytes, bytes]]:
        """The headers with the ``key_index``-th key (OpenAI-compatible providers send it as a bearer)."""
        if key_index == 0 or len(self.api_keys) < 2 or self.translator is not None:
            return self.raw_headers
        by_key = self._raw_by_key
        if by_key is None:
            base = [h for h in self.raw_headers if h[0] != b"authorization"]
            by_key = self._raw_by_key = [[*base, (b"authorization", f"Bearer {k}".encode())] for k in self.api_keys]
        return by_key[key_index]

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
        self.last_ok = time.time()

    def record_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()


def _build_provider(name: str, cfg: ProviderConfig, missing_env: dict[str, str]) -> ProviderRuntime:
    t = cfg.timeouts
    reason = None
    if not cfg.enabled:
        reason = "disabled in config"
    elif cfg.api_key_required and not (cfg.api_key or any(cfg.api_keys)):
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
    keys = tuple(dict.fromkeys(k for k in (cfg.api_key, *cfg.api_keys) if k))
    if keys and cfg.type == "openai":  # native formats put the key where their API wants it
        headers["authorization"] = f"Bearer {keys[0]}"
    return ProviderRuntime(
        api_keys=keys,
        tags=frozenset(cfg.tags if cfg.tags is not None else (_locality(cfg.base_url),)),
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


_LOCAL_NAMES = re.compile(r"localhost|.*\.local|.*\.internal|host\.docker\.internal")


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


def _deployments(config: Config, providers: dict[str, ProviderRuntime]) -> dict[str, list[Target]]:
    """Model name → its deployments: a ``models:`` entry's list, else every provider listing it."""
    models: dict[str, list[Target]] = {}

    def target(p: ProviderRuntime, model: str, dep: Any = None) -> Target:
        cfg = p.config
        return Target(
            p.name, model,
            weight=dep.weight if dep is not None and dep.weight is not None else cfg.weight,
            priority=dep.priority if dep is not None and dep.priority is not None else cfg.priority,
            tags=frozenset(dep.tags) if dep is not None and dep.tags is not None else p.tags,
            rpm=dep.rpm if dep is not None else None,
            tpm=dep.tpm if dep is not None else None,
        )

    for p in providers.values():
        for model in p.config.models:
            if model not in config.models or not config.models[model].deployments:
                models.setdefault(model, []).append(target(p, model))
    for name, spec in config.models.items():
        if spec.deployments:
            models[name] = [target(providers[d.provider], d.model or name, d) for d in spec.deployments]
    for targets in models.values():  # priority order (stable: ties keep config order)
        targets.sort(key=lambda t: t.priority)
    return models


def _provider_fingerprint(cfg: ProviderConfig) -> tuple[Any, ...]:
    """What makes a provider the same upstream across a reload (its connection and keys)."""
    return (cfg.type, cfg.base_url, cfg.api_key, cfg.api_keys, tuple(sorted(cfg.headers.items())), cfg.timeouts,
            cfg.max_connections, cfg.enabled)


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
    routing: RoutingState = field(default_factory=lambda: RoutingState(Config().routing))
    strategies: dict[str, str] = field(default_factory=dict)  # model → its own deployment strategy
    deployment_rules: dict[str, list[tuple[str, Any, Any]]] = field(default_factory=dict)
    context_fallbacks: dict[str, str] = field(default_factory=dict)
    # model or group → (cost multiplier, expires at epoch): promotional discounts, checked when pricing
    discounts: dict[str, tuple[float, float]] = field(default_factory=dict)
    known_labels: frozenset[str] = field(default_factory=frozenset)
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def build(cls, config: Config) -> Runtime:
        check_config(config=config)
        providers = {n: _build_provider(n, c, config.missing_env) for n, c in config.providers.items()}
        for p in providers.values():
            if not p.enabled and p.config.enabled:
                logger.warning("provider %s disabled: %s", p.name, p.disabled_reason)
        models = _deployments(config, providers)
        routing = RoutingState(config.routing)
        routing.providers = {n: _provider_fingerprint(p.config) for n, p in providers.items()}
        for targets in models.values():
            for t in targets:
                routing.definitions.setdefault(
                    (t.provider, t.model), (routing.providers[t.provider], t.weight, t.priority, t.tags, t.rpm, t.tpm))
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
            routing=routing,
            strategies={m: spec.strategy for m, spec in config.models.items() if spec.strategy},
            deployment_rules={
                m: [(r.use, re.compile(r.pattern, 0 if r.case_sensitive else re.IGNORECASE) if r.pattern else None,
                     r.when) for r in spec.rules]
                for m, spec in config.models.items() if spec.rules
            },
            context_fallbacks={m: spec.context_fallback for m, spec in config.models.items() if spec.context_fallback},
        )

    def targets(self, model: str, requested: str | None = None) -> list[Target]:
        """The enabled deployments of a concrete model (``provider/model`` pins one provider)."""
        targets = self.models.get(model)
        if targets is None:
            provider, sep, rest = model.partition("/")
            if sep and rest and provider in self.providers:
                targets = [Target(provider, rest, tags=self.providers[provider].tags)]
            else:
                raise not_found_model(requested or model)
        enabled = [t for t in targets if self.providers[t.provider].enabled]
        if not enabled:
            reasons = "; ".join(f"{t.provider}: {self.providers[t.provider].disabled_reason}" for t in targets)
            raise ProxyError(503, f"No enabled provider serves `{model}` ({reasons}).", type="server_error",
                             code="provider_disabled")
        return enabled

    async def start(self, previous: Runtime | None = None) -> None:
        """Open pooled upstream connections and the log writer; called from the lifespan.

        After a reload, ``previous`` lends what has not changed: the log writer (same
        database), the image fetcher, and the connection pool of every provider whose
        connection settings are the same."""
        if self.started:
            return
        if previous is not None and previous.log_writer.path == self.log_writer.path:
            self.log_writer = previous.log_writer
        self.log_writer.start()
        for p in self.providers.values():
            if not p.enabled:
                continue
            old = previous.providers.get(p.name) if previous is not None else None
            if old is not None and old.transport is not None and (
                    _provider_fingerprint(old.config) == _provider_fingerprint(p.config)):
                p.transport = old.transport
            else:
                p.transport = AiohttpTransport(limit=p.config.max_connections)
            p.extensions = {"timeout": p.timeout.as_dict()}
        if previous is not None and previous.image_fetcher is not None:
            self.image_fetcher = previous.image_fetcher
        elif any(p.enabled and p.config.type in ("gemini", "ollama") for p in self.providers.values()):
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
            self.models.setdefault(name, []).append(Target(provider.name, name, tags=provider.tags))
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
    """The one mutable reference: which Runtime new requests get.

    ``reload`` builds a new Runtime, lets it adopt what the old one learned (breakers,
    latency, key cooldowns of unchanged deployments) and its unchanged connection pools,
    then swaps the reference: requests in flight finish on the snapshot they started with.
    Pools no longer used are closed once those requests have had time to finish.

    ``file_config`` is the config as the file (or the caller) gave it; ``overlay``, when set,
    lays what the admin API stored over it before every build, so ``refresh`` can apply an
    admin change without re-reading a file someone may be half-way through editing."""

    def __init__(self, runtime: Runtime, config_path: str | Path | None = None,
                 file_config: Config | None = None) -> None:
        self.current = runtime
        self.config_path = config_path
        self.file_config = file_config if file_config is not None else runtime.config
        # file config → effective config; runs in a worker thread (it may read the database)
        self.overlay: Callable[[Config], Config] | None = None
        self._retired: list[AiohttpTransport] = []
        self._writers: list[RequestLogWriter] = []
        self._lock = asyncio.Lock()
        # run on every new snapshot before it serves (e.g. wiring app-level state into it)
        self.configure: list[Callable[[Runtime], None]] = []

    async def reload(self, config: Config | None = None) -> Runtime:
        """Swap in a new snapshot from ``config``, else the config file (else the last file config)
        with the overlay applied; ConfigError if invalid."""
        async with self._lock:
            if config is None:
                if self.config_path is None:
                    config = self.file_config
                else:
                    config = await asyncio.to_thread(check_config, self.config_path)
            return await self._swap(config)

    async def refresh(self) -> Runtime:
        """Rebuild from the last file config: what an admin change calls to take effect at once."""
        async with self._lock:
            return await self._swap(self.file_config)

    async def _swap(self, config: Config) -> Runtime:
        effective = await asyncio.to_thread(self.overlay, config) if self.overlay is not None else config
        old = self.current
        new = Runtime.build(effective)
        for configure in self.configure:
            configure(new)
        new.routing.adopt(old.routing)
        if old.started:
            await new.start(previous=old)
        self.current, self.file_config = new, config
        kept = {id(p.transport) for p in new.providers.values()}
        unused = [p.transport for p in old.providers.values() if p.transport is not None and id(p.transport) not in kept]
        grace = max((p.config.timeouts.total or 600.0 for p in old.providers.values()), default=0.0)
        self._retired.extend(unused)
        if unused:
            asyncio.get_running_loop().call_later(grace, lambda: asyncio.ensure_future(self._close(unused)))
        if old.log_writer is not new.log_writer:  # a new database path: the old queue drains, then stops
            self._writers.append(old.log_writer)
            writer = old.log_writer
            asyncio.get_running_loop().call_later(
                grace, lambda: asyncio.ensure_future(asyncio.to_thread(self._close_writer, writer)))
        logger.info("configuration reloaded: %d provider(s), %d model(s)", len(new.providers), len(new.models))
        return new

    async def _close(self, transports: list[AiohttpTransport]) -> None:
        for transport in transports:
            if transport in self._retired:
                self._retired.remove(transport)
                await transport.aclose()

    def _close_writer(self, writer: RequestLogWriter) -> None:
        if writer in self._writers:
            self._writers.remove(writer)
            writer.close()

    async def aclose(self) -> None:
        """Shutdown: the current snapshot and anything a reload retired."""
        await self._close(list(self._retired))
        for writer in list(self._writers):
            self._close_writer(writer)
        await self.current.aclose()
