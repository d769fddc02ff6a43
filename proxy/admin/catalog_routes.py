"""``/providers``, ``/models``, ``/groups``: what is served and at what price, changed at runtime.

Every change is stored as an overlay on config.yaml (``llm_proxy.runtime.overlay``), checked
with the config file's own validation before it is stored (400 with every error, nothing
written), then applied at once by rebuilding the runtime from the last file config: breakers
of unchanged deployments, connection pools and in-flight requests carry on. Changes are
serialised, so two admins cannot each store half of an invalid combination.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response

from llm_proxy.accounts.provider_secrets import ProviderSecretStore, mask
from llm_proxy.admin.api import (
    AdminError,
    AdminRoute,
    admin_route,
    holder,
    in_thread,
    json_response,
    read_json,
    services,
    store,
)
from llm_proxy.core.config import Config, ConfigError
from llm_proxy.runtime.overlay import ModelOverride, Overlay, OverlayStore, apply_overlay, serving
from llm_proxy.runtime.snapshot import Runtime

__all__ = ["ROUTES"]

_KINDS = {"provider": "providers", "model": "models", "group": "groups"}
_MODEL_KEYS = ("enabled", "price", "discount_pct", "discount_expires_at")


# -- storing a change ----------------------------------------------------------------------------

def _lock(request: Request) -> asyncio.Lock:
    return services(request).overlay_lock


def _with(overlay: Overlay, kind: str, name: str, value: Any) -> Overlay:
    entries = dict(getattr(overlay, _KINDS[kind]))
    if value is None or (isinstance(value, ModelOverride) and value.empty):
        entries.pop(name, None)
    else:
        entries[name] = value
    return dataclasses.replace(overlay, **{_KINDS[kind]: entries})


async def _change(request: Request, kind: str, name: str, value: Any) -> tuple[Runtime, Overlay]:
    """Validate, store and apply one row (None deletes it; a callable makes it from the row
    stored now); 400 with every error if invalid, and then nothing is stored."""
    overlays, runtime_holder = store(request, OverlayStore), holder(request)
    setter = getattr(overlays, f"set_{kind}")
    async with _lock(request):
        current = await in_thread(overlays.load)
        if callable(value):
            value = value(getattr(current, _KINDS[kind]).get(name))
        proposed = _with(current, kind, name, value)
        try:
            await in_thread(apply_overlay, runtime_holder.file_config, proposed)
        except ConfigError as exc:
            raise AdminError(400, str(exc), "invalid_config") from None
        await in_thread(setter, name, value)
        try:
            runtime = await runtime_holder.refresh()
        except ConfigError as exc:  # the file was reloaded meanwhile and no longer fits: put the row back
            await in_thread(setter, name, getattr(current, _KINDS[kind]).get(name))
            raise AdminError(400, str(exc), "invalid_config") from None
    return runtime, proposed


def _invalid(errors: list[str]) -> AdminError:
    return AdminError(400, str(ConfigError(errors, "request body")), "invalid_value")


def _only(body: dict[str, Any], allowed: tuple[str, ...], errors: list[str]) -> None:
    for key in body:
        if key not in allowed:
            errors.append(f"{key}: unknown key (known: {', '.join(allowed)})")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _epoch(value: Any) -> float:
    """ISO-8601 (UTC unless it says otherwise) or epoch seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        datetime.fromtimestamp(value, UTC)  # out of range: OverflowError/ValueError/OSError, as for a string
        return float(value)
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)  # ValueError when malformed
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise ValueError(value)


# -- providers -----------------------------------------------------------------------------------

def _safe_url(url: str) -> str:
    """A base URL without credentials or a query, which may carry a token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _provider_name(request: Request) -> str:
    name: str = request.path_params["name"]
    if name not in holder(request).file_config.providers:
        raise AdminError(404, f"No provider named {name!r} is configured.", "provider_not_found")
    return name


def _provider_entry(name: str, runtime: Runtime, file: Config, overlay: Overlay,
                    stored: list[dict[str, Any]], admin: bool) -> dict[str, Any]:
    p, configured = runtime.upstreams.providers[name], file.providers[name]
    mine = [k for k in stored if k["provider"] == name]
    keys: dict[str, Any] = {"in_use": len(p.api_keys), "stored": sum(not k["disabled"] for k in mine)}
    if admin:  # masked keys are for admins only, as on /providers/{name}/keys
        config_keys = dict.fromkeys(k for k in (configured.api_key, *configured.api_keys) if k)
        keys["config"] = [mask(k) for k in config_keys]
        keys["database"] = [{f: k[f] for f in ("id", "label", "masked", "disabled")} for k in mine]
    return {
        "name": name, "type": p.config.type, "base_url": _safe_url(p.base_url),
        "enabled": p.enabled, "disabled_reason": p.disabled_reason,
        "enabled_in_config": configured.enabled, "enabled_override": overlay.providers.get(name),
        "models": len(p.config.models), "breakers": runtime.routes.learned.breaker_states(name), "keys": keys,
        **p.details(),  # last_success, last_error, last_error_at: not on the unauthenticated /health
    }


async def _provider_answer(request: Request, names: list[str], overlay: Overlay | None = None) -> list[dict[str, Any]]:
    runtime_holder = holder(request)
    if overlay is None:
        overlay = await in_thread(store(request, OverlayStore).load)
    stored = await in_thread(store(request, ProviderSecretStore).list_keys)
    admin = request.state.principal.role == "admin"
    return [_provider_entry(n, runtime_holder.current, runtime_holder.file_config, overlay, stored, admin)
            for n in names]


async def list_providers(request: Request) -> Response:
    names = list(holder(request).file_config.providers)
    return json_response({"data": await _provider_answer(request, names)})


async def patch_provider(request: Request) -> Response:
    name, body = _provider_name(request), await read_json(request)
    errors: list[str] = []
    _only(body, ("enabled",), errors)
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        errors.append("enabled: expected true, false or null (null: as config.yaml says)")
    if errors:
        raise _invalid(errors)
    if "enabled" not in body:
        return json_response((await _provider_answer(request, [name]))[0])
    _, overlay = await _change(request, "provider", name, enabled)
    return json_response((await _provider_answer(request, [name], overlay))[0])


async def reset_provider(request: Request) -> Response:
    name = _provider_name(request)
    _, overlay = await _change(request, "provider", name, None)
    return json_response((await _provider_answer(request, [name], overlay))[0])


# -- models --------------------------------------------------------------------------------------

def _model_names(file: Config, runtime: Runtime) -> list[str]:
    """Configured models (disabled ones too), then any a provider reported itself (Ollama)."""
    names = [m for p in file.providers.values() for m in p.models]
    return list(dict.fromkeys([*names, *file.models, *runtime.routes.models]))


def _override(o: ModelOverride | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"enabled": o.enabled, "price": o.price, "discount_pct": o.discount_pct,
            "discount_expires_at": _iso(o.discount_expires_at)}


def _discount(o: ModelOverride | None) -> dict[str, Any] | None:
    if o is None or o.discount_pct is None or o.discount_expires_at is None:
        return None
    return {"pct": o.discount_pct, "expires_at": _iso(o.discount_expires_at),
            "active": time.time() < o.discount_expires_at}


def _model_entry(name: str, runtime: Runtime, file: Config, overlay: Overlay) -> dict[str, Any]:
    o = overlay.models.get(name)
    served = serving(file, name)
    if not served:  # not in the file: a discovered model
        for t in runtime.routes.models.get(name, ()):
            served[t.provider] = (*served.get(t.provider, ()), t.model)
    deployments = []
    for provider, upstream_names in served.items():
        p = runtime.upstreams.providers[provider]
        for upstream in upstream_names:
            info = runtime.pricing.catalog.pricing(upstream, p.catalog_id)
            price = dataclasses.asdict(info.price) if info is not None and info.price is not None else None
            per_image = p.config.prices.get(upstream)
            if per_image is not None and per_image.per_image is not None:
                price = {**(price or {}), "per_image": per_image.per_image}
            deployments.append({"provider": provider, "upstream_model": upstream, "provider_enabled": p.enabled,
                                "price": price})
    return {"id": name, "enabled": not (o is not None and o.enabled is False), "deployments": deployments,
            "override": _override(o), "discount": _discount(o)}


def _group_names(file: Config, overlay: Overlay) -> list[str]:
    return list(dict.fromkeys([*file.groups, *overlay.groups]))


async def list_models(request: Request) -> Response:
    runtime_holder = holder(request)
    overlay = await in_thread(store(request, OverlayStore).load)
    runtime, file = runtime_holder.current, runtime_holder.file_config
    return json_response({"data": [_model_entry(m, runtime, file, overlay) for m in _model_names(file, runtime)]})


def _model_changes(body: dict[str, Any], is_group: bool, errors: list[str]) -> dict[str, Any]:
    _only(body, _MODEL_KEYS, errors)
    changes: dict[str, Any] = {}
    if "enabled" in body:
        enabled = body["enabled"]
        if is_group and enabled is not None:
            errors.append("enabled: a group has no switch: remove it with DELETE /api/groups/{name}")
        elif enabled is not None and not isinstance(enabled, bool):
            errors.append("enabled: expected true, false or null")
        changes["enabled"] = False if enabled is False else None  # the file has no switch: true = as the file
    if "price" in body:
        price = body["price"]
        if price is not None and not isinstance(price, dict):
            errors.append("price: expected an object such as {\"input\": 1.0, \"output\": 2.0} (USD per 1M tokens) "
                          "or null")
        changes["price"] = price or None
    if "discount_pct" in body:
        pct = body["discount_pct"]
        if pct is None or (isinstance(pct, int | float) and not isinstance(pct, bool) and 0 < pct <= 100):
            changes["discount_pct"] = None if pct is None else float(pct)
        else:
            errors.append("discount_pct: expected a number above 0 and at most 100, or null")
    if "discount_expires_at" in body:
        value = body["discount_expires_at"]
        try:
            changes["discount_expires_at"] = None if value is None else _epoch(value)
        except (ValueError, OverflowError, OSError):
            errors.append("discount_expires_at: expected an ISO-8601 time (UTC unless it has an offset) "
                          "or epoch seconds")
    return changes


async def patch_model(request: Request) -> Response:
    name: str = request.path_params["name"]
    runtime_holder = holder(request)
    overlay = await in_thread(store(request, OverlayStore).load)
    is_group = name in _group_names(runtime_holder.file_config, overlay)
    if not is_group and name not in _model_names(runtime_holder.file_config, runtime_holder.current):
        raise AdminError(404, f"No model or group named {name!r} is configured.", "model_not_found")
    if not is_group and not serving(runtime_holder.file_config, name):
        raise AdminError(400, f"{name!r} was discovered from its provider, not configured: list it under the "
                         "provider's models in config.yaml to manage it.", "not_configured")
    body = await read_json(request)
    errors: list[str] = []
    changes = _model_changes(body, is_group, errors)
    if errors:
        raise _invalid(errors)

    def merge(stored: ModelOverride | None) -> ModelOverride:  # on the row as stored now, under the lock
        merged = dataclasses.replace(stored or ModelOverride(), **changes)
        if merged.discount_pct is None and "discount_pct" in changes:
            return dataclasses.replace(merged, discount_expires_at=None)  # a cleared discount takes its expiry
        if merged.discount_pct is None and merged.discount_expires_at is not None:
            raise _invalid(["discount_expires_at: set it with discount_pct"])
        if merged.discount_pct is not None and merged.discount_expires_at is None:
            raise _invalid(["discount_expires_at: required with discount_pct (a promotion ends)"])
        return merged

    runtime, overlay = await _change(request, "model", name, merge)
    entry = _group_entry if is_group else _model_entry
    return json_response(entry(name, runtime, runtime_holder.file_config, overlay))


async def reset_model(request: Request) -> Response:
    name: str = request.path_params["name"]
    runtime_holder = holder(request)
    overlay = await in_thread(store(request, OverlayStore).load)
    if name not in overlay.models:
        known = _model_names(runtime_holder.file_config, runtime_holder.current)
        if name not in known and name not in _group_names(runtime_holder.file_config, overlay):
            raise AdminError(404, f"No model or group named {name!r} is configured.", "model_not_found")
        raise AdminError(404, f"{name!r} has no override: it is as config.yaml says.", "override_not_found")
    runtime, overlay = await _change(request, "model", name, None)
    file = runtime_holder.file_config
    if name in _group_names(file, overlay):
        return json_response(_group_entry(name, runtime, file, overlay))
    if name in _model_names(file, runtime):
        return json_response(_model_entry(name, runtime, file, overlay))
    return json_response({"id": name, "deleted": True})  # an override left from a model the file dropped


# -- groups --------------------------------------------------------------------------------------

def _group_entry(name: str, runtime: Runtime, file: Config, overlay: Overlay) -> dict[str, Any]:
    group = runtime.config.groups.get(name)
    o = overlay.models.get(name)
    return {
        "name": name, "source": "database" if name in overlay.groups else "config",
        "overrides_config": name in overlay.groups and name in file.groups,
        "spec": dataclasses.asdict(group) if group is not None else overlay.groups.get(name),
        "price": o.price if o is not None else None, "discount": _discount(o),
    }


async def list_groups(request: Request) -> Response:
    runtime_holder = holder(request)
    overlay = await in_thread(store(request, OverlayStore).load)
    file, runtime = runtime_holder.file_config, runtime_holder.current
    return json_response({"data": [_group_entry(n, runtime, file, overlay) for n in _group_names(file, overlay)]})


async def put_group(request: Request) -> Response:
    name: str = request.path_params["name"]
    if not name.strip() or len(name) > 200:
        raise _invalid(["name: a group name is 1 to 200 characters"])
    body = await read_json(request)
    existed = name in (await in_thread(store(request, OverlayStore).load)).groups
    runtime, overlay = await _change(request, "group", name, body)
    entry = _group_entry(name, runtime, holder(request).file_config, overlay)
    return json_response(entry, status=200 if existed else 201)


async def delete_group(request: Request) -> Response:
    name: str = request.path_params["name"]
    runtime_holder = holder(request)
    overlays = store(request, OverlayStore)
    overlay = await in_thread(overlays.load)
    in_file = name in runtime_holder.file_config.groups
    if name not in overlay.groups:
        if in_file:
            raise AdminError(409, f"Group {name!r} is defined in config.yaml: remove it there and reload.",
                             "config_group")
        raise AdminError(404, f"No group named {name!r}.", "group_not_found")
    await _change(request, "group", name, None)
    if not in_file:  # gone for good: its price and discount go with it
        await in_thread(overlays.set_model, name, None)
    return json_response({"name": name, "deleted": True, "restored_from_config": in_file})


ROUTES: list[AdminRoute] = [
    admin_route("GET", "/providers", list_providers, role="viewer"),
    admin_route("PATCH", "/providers/{name}", patch_provider),
    admin_route("DELETE", "/providers/{name}/overrides", reset_provider),
    admin_route("GET", "/models", list_models, role="viewer"),
    admin_route("PATCH", "/models/{name:path}", patch_model),
    admin_route("DELETE", "/models/{name:path}/overrides", reset_model),
    admin_route("GET", "/groups", list_groups, role="viewer"),
    admin_route("PUT", "/groups/{name}", put_group),
    admin_route("DELETE", "/groups/{name}", delete_group),
]
