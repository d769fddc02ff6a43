"""Every admin area's route table, and the guard in front of them (assembled by ``llm_proxy.app``)."""

from __future__ import annotations

from starlette.applications import Starlette

from llm_proxy.admin import (
    auth_routes,
    catalog_routes,
    config_routes,
    secrets_routes,
    usage_routes,
    users_routes,
)
from llm_proxy.admin import client_keys_routes as keys_routes
from llm_proxy.admin.api import AdminRoute, AdminServices, build_admin_app
from llm_proxy.admin.auth_routes import authenticate

__all__ = ["admin_app"]


def _tables() -> list[list[AdminRoute]]:
    return [
        auth_routes.ROUTES,
        users_routes.ROUTES,
        secrets_routes.ROUTES,
        keys_routes.ROUTES,
        config_routes.ROUTES,
        catalog_routes.ROUTES,
        usage_routes.ROUTES,
    ]


def admin_app(services: AdminServices) -> Starlette:
    return build_admin_app(services, _tables(), authenticate)
