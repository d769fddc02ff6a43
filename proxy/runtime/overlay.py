"""What the admin API changes on top of config.yaml: provider and model switches, prices,
discounts and model groups, kept in SQLite and laid over the file's Config.

config.yaml stays the base; a row here wins over it for the one thing it sets, and
deleting the row gives the file its say back. ``apply_overlay`` is pure and runs the
result through the config file's own checks, so a group stored here is validated exactly
like one written in the file. ``OverlaySource`` is what the runtime holder reads before every
build: the rows and the stored provider keys, decrypted; the builder applies both.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlite_utils

from llm_proxy.accounts.provider_secrets import ProviderSecretStore, SecretBox, SecretsUnavailable

# the config file's own checks, so the database's entries are validated exactly like the file's
from llm_proxy.core.config import (
    Config,
    ConfigError,
    GroupConfig,
    PriceConfig,
    ProviderConfig,
    check_values,
    convert_section,
    merge_errors,
)
from llm_proxy.providers import wire_format
from llm_proxy.routing.validation import group_errors
from llm_proxy.storage.sqlite import SqliteStore

__all__ = ["ModelOverride", "Overlay", "OverlaySource", "OverlayStore", "StoredOverlay", "apply_overlay", "serving"]

logger = logging.getLogger("llm_proxy")


@dataclass(frozen=True, slots=True)
class ModelOverride:
    """A model's (or a group's) row. None everywhere means "as config.yaml says"."""

    enabled: bool | None = None
    price: dict[str, float] | None = None  # PriceConfig fields, USD per 1M tokens
    discount_pct: float | None = None
    discount_expires_at: float | None = None  # epoch seconds

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


@dataclass(frozen=True, slots=True)
class Overlay:
    providers: dict[str, bool] = field(default_factory=dict)  # provider → enabled
    models: dict[str, ModelOverride] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → the group's keys, as in config

    def discounts(self) -> dict[str, tuple[float, float]]:
        """model or group → (cost multiplier, expires at): what pricing reads per request."""
        return {name: ((100.0 - o.discount_pct) / 100.0, o.discount_expires_at)
                for name, o in self.models.items()
                if o.discount_pct is not None and o.discount_expires_at is not None}


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS provider_overrides (provider TEXT PRIMARY KEY, enabled INTEGER NOT NULL, "
    "updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS model_overrides (model TEXT PRIMARY KEY, enabled INTEGER, price TEXT, "
    "discount_pct REAL, discount_expires_at REAL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS model_groups (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at REAL NOT NULL)",
)


class OverlayStore(SqliteStore):
    """One row per overridden provider, model and group; a setter given None deletes the row."""

    def _setup(self, db: sqlite_utils.Database) -> None:
        for statement in _SCHEMA:
            db.execute(statement)

    def load(self) -> Overlay:
        with self._db() as db:
            providers = db.execute("SELECT provider, enabled FROM provider_overrides").fetchall()
            models = db.execute("SELECT model, enabled, price, discount_pct, discount_expires_at "
                                "FROM model_overrides").fetchall()
            groups = db.execute("SELECT name, spec FROM model_groups ORDER BY name").fetchall()
        return Overlay(
            providers={p: bool(e) for p, e in providers},
            models={m: ModelOverride(None if e is None else bool(e), orjson.loads(p) if p else None, d, x)
                    for m, e, p, d, x in models},
            groups={n: orjson.loads(s) for n, s in groups},
        )

    def set_provider(self, provider: str, enabled: bool | None) -> None:
        with self._db() as db, db.conn:
            if enabled is None:
                db.execute("DELETE FROM provider_overrides WHERE provider = ?", [provider])
            else:
                db.execute("INSERT OR REPLACE INTO provider_overrides VALUES (?, ?, ?)",
                           [provider, int(enabled), time.time()])

    def set_model(self, model: str, override: ModelOverride | None) -> None:
        with self._db() as db, db.conn:
            if override is None or override.empty:
                db.execute("DELETE FROM model_overrides WHERE model = ?", [model])
                return
            o = override
            db.execute("INSERT OR REPLACE INTO model_overrides VALUES (?, ?, ?, ?, ?, ?)", [
                model, None if o.enabled is None else int(o.enabled),
                orjson.dumps(o.price).decode() if o.price is not None else None,
                o.discount_pct, o.discount_expires_at, time.time()])

    def set_group(self, name: str, spec: Mapping[str, Any] | None) -> None:
        with self._db() as db, db.conn:
            if spec is None:
                db.execute("DELETE FROM model_groups WHERE name = ?", [name])
            else:
                db.execute("INSERT OR REPLACE INTO model_groups VALUES (?, ?, ?)",
                           [name, orjson.dumps(dict(spec)).decode(), time.time()])


def serving(config: Config, model: str) -> dict[str, tuple[str, ...]]:
    """provider → the names it serves ``model`` under (a ``models:`` entry may rename it upstream)."""
    found: dict[str, list[str]] = {}
    spec = config.models.get(model)
    if spec is not None and spec.deployments:
        for d in spec.deployments:
            found.setdefault(d.provider, []).append(d.model or model)
    else:
        for name, p in config.providers.items():
            if model in p.models:
                found.setdefault(name, []).append(model)
    return {p: tuple(dict.fromkeys(names)) for p, names in found.items()}


def apply_overlay(config: Config, overlay: Overlay, provider_keys: Mapping[str, list[str]] | None = None) -> Config:
    """``config`` with ``overlay`` laid over it, checked as the config file is; ConfigError lists
    every problem, entries that come from the database marked so."""
    errors: list[str] = []
    groups = dict(config.groups)
    for name, spec in overlay.groups.items():
        group = convert_section(spec, GroupConfig, f"groups.{name}", errors)
        if isinstance(group, GroupConfig):
            groups[name] = group
    disabled = {m for m, o in overlay.models.items() if o.enabled is False and m not in groups}
    prices: dict[str, dict[str, PriceConfig]] = {}  # provider → served name → price
    for model, o in overlay.models.items():
        if o.price is None:
            continue
        price = convert_section(o.price, PriceConfig, f"models.{model}.price", errors)
        if not isinstance(price, PriceConfig):
            continue
        # a group is priced on every provider: pricing falls back to it when the model it chose has no price
        where = {p: (model,) for p in config.providers} if model in groups else serving(config, model)
        for provider, names in where.items():
            for served in names:
                prices.setdefault(provider, {})[served] = price
    providers = {name: _provider(name, p, overlay, disabled, prices.get(name, {}), (provider_keys or {}).get(name))
                 for name, p in config.providers.items()}
    merged = dataclasses.replace(config, providers=providers, groups=groups,
                                 models={m: s for m, s in config.models.items() if m not in disabled})
    check_values(merged, errors)
    merge_errors(errors, group_errors(merged))
    if errors:
        raise ConfigError([_mark(e, overlay, disabled) for e in errors], "config + database")
    return merged


def _provider(name: str, p: ProviderConfig, overlay: Overlay, disabled: set[str],
              prices: dict[str, PriceConfig], keys: list[str] | None) -> ProviderConfig:
    changes: dict[str, Any] = {}
    if name in overlay.providers:
        changes["enabled"] = overlay.providers[name]
    if keys:
        changes["api_keys"] = (*p.api_keys, *keys)
    if disabled & set(p.models):
        changes["models"] = tuple(m for m in p.models if m not in disabled)
        if not changes["models"] and wire_format(p.type).discovery is not None:  # empty: "discover them all"
            changes["enabled"] = False
    if prices:  # database fields win one by one; the rest stay the file's (then the catalog's)
        merged = dict(p.prices)
        for served, price in prices.items():
            base = p.prices.get(served)
            given = {k: v for k, v in dataclasses.asdict(price).items() if v is not None}
            merged[served] = dataclasses.replace(base, **given) if base is not None else price
        changes["prices"] = merged
    return dataclasses.replace(p, **changes) if changes else p


def _mark(error: str, overlay: Overlay, disabled: set[str]) -> str:
    """Say which errors the database's entries cause: the fix is in the admin API, not the file."""
    path = error.split(":", 1)[0]
    for name in overlay.groups:
        if path == f"groups.{name}" or path.startswith((f"groups.{name}.", f"groups.{name}[")):
            return f"{error} (group {name!r} is set through the admin API)"
    for model in disabled:
        if repr(model) in error:
            return f"{error} (model {model!r} is disabled through the admin API)"
    return error


@dataclass(frozen=True, slots=True)
class StoredOverlay:
    """What the database lays over the file: the admin API's rows and its provider keys, in clear."""

    overlay: Overlay
    provider_keys: Mapping[str, list[str]] = field(default_factory=dict)


class OverlaySource:
    """Reads what the runtime builder lays over the file config, before every build.

    ``read`` blocks (it reads SQLite and decrypts): the holder calls it from a worker thread."""

    def __init__(self, db_path: str) -> None:
        self.overlays = OverlayStore(db_path)
        self.secrets = ProviderSecretStore(db_path)
        self._warned: set[str] = set()

    def read(self, config: Config) -> StoredOverlay:
        return StoredOverlay(self.overlays.load(), self._keys(config))

    def _keys(self, config: Config) -> dict[str, list[str]]:
        """Stored keys in clear, per configured provider; none (and one warning) without the encryption key."""
        wanted = sorted({k["provider"] for k in self.secrets.list_keys()
                         if not k["disabled"] and k["provider"] in config.providers})
        if not wanted:
            return {}
        try:
            box = SecretBox(config.encryption_key)
        except SecretsUnavailable as exc:
            self._warn(f"provider keys stored through the admin API are not used: {exc}")
            return {}
        keys: dict[str, list[str]] = {}
        for provider in wanted:
            try:
                keys[provider] = self.secrets.decrypt_all(provider, box)
            except SecretsUnavailable as exc:
                self._warn(f"stored keys of provider {provider} are not used: {exc}")
        return keys

    def _warn(self, message: str) -> None:
        if message not in self._warned:  # once per process, not on every reload
            self._warned.add(message)
            logger.warning("%s", message)

    def close(self) -> None:
        self.overlays.close()
        self.secrets.close()
