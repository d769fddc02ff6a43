"""Every admin area's route table, and the guard in front of them (assembled by ``proxy.app``)."""

from __future__ import annotations

from starlette.applications import Starlette

from proxy.admin.api import AdminRoute, build_admin_app, master_key_only
from proxy.runtime import RuntimeHolder

__all__ = ["admin_app"]


def _tables() -> list[list[AdminRoute]]:
    return []


def admin_app(holder: RuntimeHolder) -> Starlette:
    return build_admin_app(holder, _tables(), master_key_only)
