"""The one runtime builder: the file config, the database overlay and the long-lived services in,
a frozen snapshot out.

Nothing is patched into the snapshot afterwards: what the overlay decides beyond the Config
(discounts, which providers the admin API switched off) and the app's database keys are
inputs here. Building opens no connection; ``llm_proxy.runtime.holder`` starts the snapshot
that serves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llm_proxy.access.key_lookup import CombinedKeys, StaticKeys
from llm_proxy.core.config import Config, ConfigError
from llm_proxy.core.parts import KeyLookup
from llm_proxy.plugins import PluginChain
from llm_proxy.routing.learned import RoutingState
from llm_proxy.routing.validation import load_config, validate_config
from llm_proxy.runtime.overlay import StoredOverlay, apply_overlay
from llm_proxy.runtime.pricing import build_pricing
from llm_proxy.runtime.provider import build_provider, fingerprint
from llm_proxy.runtime.routes import build_routes
from llm_proxy.runtime.services import Services
from llm_proxy.runtime.snapshot import IntakeRules, RequestLog, Runtime
from llm_proxy.runtime.upstreams import Upstreams
from llm_proxy.storage.request_log import RequestLogWriter

__all__ = ["build_runtime", "check_config"]

logger = logging.getLogger("llm_proxy")


def check_config(path: str | Path | None = None, config: Config | None = None) -> Config:
    """Load (unless given) and fully validate a config; ConfigError lists every problem at once.

    This is where a config is validated, once, as it comes in: a file (the CLI, ``create_app``,
    a reload) or a Config object given to ``create_app``. What the admin API stores is checked
    when it is laid over (``apply_overlay``), so ``build_runtime`` validates nothing again."""
    if config is None:
        return load_config(path)  # every check: schema, types, plugins, groups
    errors = validate_config(config)
    if errors:
        raise ConfigError(errors, str(path or "config"))
    return config


def build_runtime(config: Config, stored: StoredOverlay | None = None, services: Services | None = None) -> Runtime:
    """The snapshot for the file's ``config`` with ``stored`` (the admin API's rows) laid over it;
    ConfigError if the overlay does not fit. ``config`` has passed ``check_config``;
    ``services`` lends what outlives the snapshot."""
    services = services if services is not None else Services()
    learned = services.learned
    effective = apply_overlay(config, stored.overlay, stored.provider_keys) if stored is not None else config
    switched_off = {n for n, on in stored.overlay.providers.items() if not on} if stored is not None else set()
    providers = {
        name: build_provider(name, cfg, effective.missing_env, learned.health(name, fingerprint(cfg)),
                             switched_off=name in switched_off)
        for name, cfg in effective.providers.items()
    }
    for p in providers.values():
        if not p.enabled and p.config.enabled:
            logger.warning("provider %s disabled: %s", p.name, p.disabled_reason)
    state = RoutingState(effective.routing)
    routes = build_routes(effective, providers, state)
    learned.adopt(state)
    static = StaticKeys(effective.auth)
    keys: KeyLookup = static if services.database_keys is None else CombinedKeys(static, services.database_keys)
    log = effective.request_log
    writer = RequestLogWriter(effective.database.path, queue_size=log.queue_size, batch_size=log.batch_size,
                              flush_interval=log.flush_ms / 1000.0)
    return Runtime(
        config=effective,
        keys=keys,
        intake=IntakeRules(int(effective.server.max_body_mb * 1024 * 1024), routes.aliases,
                           max_header_bytes=int(effective.server.max_header_kb * 1024),
                           max_headers=effective.server.max_headers),
        routes=routes,
        pricing=build_pricing(providers, stored.overlay.discounts() if stored is not None else {}),
        upstreams=Upstreams(providers),
        plugins=PluginChain.from_specs(list(effective.plugins)),
        request_log=RequestLog(writer, frozenset(routes.models) | frozenset(effective.aliases)
                               | frozenset(effective.groups)),
    )
