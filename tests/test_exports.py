"""Every module declares ``__all__`` and every name in it exists: the public surface is explicit."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import llm_proxy
import llm_proxy.middleware
import llm_proxy.plugins

# The middleware and plugins folders install under llm_proxy from folders of their own, so an
# editable install does not show them inside llm_proxy's own folder: walk each root.
MODULES = sorted({
    info.name
    for package in (llm_proxy, llm_proxy.middleware, llm_proxy.plugins)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    if not info.ispkg and not info.name.split(".")[-1].startswith("_")
})


def test_modules_found() -> None:
    assert {"llm_proxy.app", "llm_proxy.core.config", "llm_proxy.middleware.auth",
            "llm_proxy.plugins.registry"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"
