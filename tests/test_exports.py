"""Every module declares ``__all__`` and every name in it exists: the public surface is explicit."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import middleware
import plugins
import proxy

MODULES = sorted(
    info.name
    for package in (proxy, middleware, plugins)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    if not info.ispkg and not info.name.split(".")[-1].startswith("_")
)


def test_modules_found() -> None:
    assert {"proxy.app", "proxy.config", "middleware.auth", "plugins.registry"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
