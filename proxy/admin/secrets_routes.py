"""``/providers/{name}/keys``: provider API keys entered through the admin API (admin only).

A key is encrypted before it is stored (``SecretBox``) and only its masked form is ever
answered. Without ``LLM_PROXY__ENCRYPTION_KEY`` the gateway refuses to store one (409,
``encryption_unavailable``) and says how to set it. Adding or deleting a key rebuilds the
runtime, so the change holds from the next request on.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.accounts.provider_secrets import ProviderSecretStore, SecretBox, SecretsUnavailable
from llm_proxy.admin.api import (
    AdminError,
    AdminRoute,
    admin_route,
    holder,
    in_thread,
    json_response,
    read_json,
    store,
)
from llm_proxy.core.config import ConfigError

__all__ = ["ROUTES"]

_MAX_KEY = 4096
_MAX_LABEL = 200


def _provider(request: Request) -> str:
    name: str = request.path_params["name"]
    if name not in holder(request).current.config.providers:
        raise AdminError(404, f"No provider named {name!r} is configured.", "provider_not_found")
    return name


async def _apply(request: Request) -> None:
    """Rebuild the runtime so the next request already uses (or no longer uses) the key."""
    try:
        await holder(request).refresh()
    except ConfigError as exc:  # the key is stored; it is used once the configuration is valid again
        raise AdminError(409, f"The key is saved, but the running configuration could not be rebuilt: {exc}",
                         "invalid_config") from None


async def list_keys(request: Request) -> Response:
    keys = await in_thread(store(request, ProviderSecretStore).list_keys, _provider(request))
    return json_response({"data": keys})


async def add_key(request: Request) -> Response:
    provider = _provider(request)
    body = await read_json(request)
    secret, label = body.get("api_key"), body.get("label", "")
    if not isinstance(secret, str) or not secret.strip() or len(secret) > _MAX_KEY:
        raise AdminError(400, f"api_key must be a non-empty string of at most {_MAX_KEY} characters.",
                         "invalid_value")
    if not isinstance(label, str) or len(label) > _MAX_LABEL:
        raise AdminError(400, f"label must be a string of at most {_MAX_LABEL} characters.", "invalid_value")
    try:
        box = SecretBox(holder(request).current.config.encryption_key)
    except SecretsUnavailable as exc:
        raise AdminError(409, str(exc), "encryption_unavailable") from None
    added = await in_thread(store(request, ProviderSecretStore).add, provider, secret.strip(), box, label)
    await _apply(request)
    return json_response(added, status=201)


async def delete_key(request: Request) -> Response:
    provider, key_id = _provider(request), request.path_params["key_id"]
    if not await in_thread(store(request, ProviderSecretStore).delete, provider, key_id):
        raise AdminError(404, f"Provider {provider!r} has no key {key_id}.", "key_not_found")
    await _apply(request)
    return json_response({"id": key_id, "deleted": True})


ROUTES: list[AdminRoute] = [
    admin_route("GET", "/providers/{name}/keys", list_keys),
    admin_route("POST", "/providers/{name}/keys", add_key),
    admin_route("DELETE", "/providers/{name}/keys/{key_id:int}", delete_key),
]
