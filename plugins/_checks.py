"""Small shared checks for plugins' ``validate_config``; messages follow the registry's path style."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["check_bool", "check_str_list", "unknown_keys"]


def unknown_keys(config: Iterable[object], allowed: Iterable[str]) -> list[str]:
    """Typos in config keys would otherwise be silently ignored."""
    names = sorted(allowed)
    return [f"{key}: unknown key (allowed: {', '.join(names)})" for key in config if key not in names]


def check_str_list(config: Mapping[str, object], key: str) -> list[str]:
    """A present ``key`` must be a non-empty list of non-empty strings."""
    value = config.get(key)
    if key in config and (
        not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value)
    ):
        return [f"{key}: expected a non-empty list of strings"]
    return []


def check_bool(config: Mapping[str, object], key: str) -> list[str]:
    if key in config and not isinstance(config[key], bool):
        return [f"{key}: expected true or false"]
    return []
