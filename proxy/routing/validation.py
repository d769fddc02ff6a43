"""Whole-config validation: the core's checks plus those that need the plugins and the group engine.

``llm_proxy.core.config`` checks what the core can see (schema, values, conditions, aliases).
Provider types are checked against the wire-format registry (so a new format is one registry
line, not a config change), the plugin specs against the plugin registry and the groups by the
group engine;
:func:`validate_config` runs both, and :func:`load_config` / :func:`parse_config` are the core
loaders with it passed in, so one run still lists every problem of a file at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llm_proxy.core import config as core
from llm_proxy.core.config import Config, GroupConfig, ProviderConfig
from llm_proxy.plugins import validate_specs
from llm_proxy.providers import FORMATS
from llm_proxy.routing.groups import validate_groups

__all__ = ["group_errors", "load_config", "parse_config", "plugin_errors", "type_errors", "validate_config"]


def type_errors(config: Config) -> list[str]:
    """Each provider's ``type`` names a registered wire format."""
    return [
        f"providers.{name}.type: expected one of {', '.join(FORMATS)}, got {provider.type!r}"
        for name, provider in config.providers.items()
        if isinstance(provider, ProviderConfig) and provider.type not in FORMATS
    ]


def plugin_errors(config: Config) -> list[str]:
    """The ``plugins:`` specs against the plugin registry (names, stages, each plugin's config)."""
    return validate_specs(list(config.plugins))


def group_errors(config: Config) -> list[str]:
    """Group targets, rules, cycles and depth — at load, never at request time."""
    if not config.groups:
        return []
    known = {m for p in config.providers.values() if isinstance(p, ProviderConfig) for m in p.models}
    known |= set(config.aliases) | set(config.models)
    for group in config.groups.values():
        for target in getattr(group, "targets", ()) or ():
            provider, sep, rest = str(target).partition("/")
            if sep and rest and provider in config.providers:
                known.add(target)  # provider/model passes any model name through
    groups = {name: g for name, g in config.groups.items() if isinstance(g, GroupConfig)}
    return validate_groups(groups, known)


def validate_config(config: Config) -> list[str]:
    """What the core cannot check about ``config``: every problem, each as ``path: message``."""
    return [*type_errors(config), *plugin_errors(config), *group_errors(config)]


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The config file, fully checked: ``ConfigError`` lists every problem at once."""
    return core.load_config(path, environ, check=validate_config)


def parse_config(raw: Mapping[str, object], environ: Mapping[str, str] | None = None,
                 source: str = "config") -> Config:
    """Parsed YAML/JSON data, fully checked: ``ConfigError`` lists every problem at once."""
    return core.parse_config(raw, environ, source, check=validate_config)
