"""The plugin contract: hooks, the registry, config-spec validation and the per-app chain.

Plugins are small async hooks at three points of a request (``before`` the upstream call,
``after`` a delivered response, on ``error``). Config is checked once at load time, with
every problem reported at once, so the request path only walks prebuilt tuples; an
empty stage costs one attribute read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from llm_proxy.core.context import RequestContext
from llm_proxy.core.errors import ProxyError
from llm_proxy.core.jsontypes import JSONObject

__all__ = [
    "STAGES",
    "Plugin",
    "PluginChain",
    "Registry",
    "Reject",
    "get",
    "names",
    "register",
    "default_registry",
    "validate_specs",
]

logger = logging.getLogger("llm_proxy.plugins")

STAGES: frozenset[str] = frozenset({"before", "after", "error"})
_SPEC_KEYS = frozenset({"name", "stage", "config", "enabled"})

# OpenAI-style ``type`` for a rejection, by status; anything else is ``invalid_request_error``.
_REJECT_TYPES = {
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    429: "rate_limit_error",
}


class Reject(Exception):
    """A plugin's verdict that the request is refused (the client did something we won't allow).

    Distinct from a plugin that breaks: a ``Reject`` becomes a 4xx with this message, any
    other exception a 500. Only 4xx is allowed because the refusal is about the request.
    """

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
            raise ValueError(f"Reject status must be a 4xx int, got {status!r}")
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Plugin:
    """Base class: subclasses set ``name`` and ``stages`` and override the hooks they use.

    ``validate_config`` must be I/O free: it runs at config load, before anything starts,
    and each message starts with the key path relative to the plugin's config
    (``"providers: expected a list of strings"``; a leading ``":"`` means the config itself).
    """

    name: ClassVar[str] = ""
    stages: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: JSONObject) -> None:
        self.config = config

    @classmethod
    def validate_config(cls, config: JSONObject) -> list[str]:
        return []

    async def before(self, ctx: RequestContext) -> None:
        """May mutate ``ctx.body`` (then set ``ctx.body_dirty``) or raise ``Reject``."""

    async def after(self, ctx: RequestContext) -> None:
        """Observe a delivered response; ``ctx.usage``/``cost``/``status`` are filled."""

    async def on_error(self, ctx: RequestContext, error: BaseException) -> None:
        """Observe a failed request, including one a ``before`` plugin rejected."""


class Registry:
    """Plugin classes by name; a name is taken once so config can't silently pick the wrong one."""

    def __init__(self) -> None:
        self._plugins: dict[str, type[Plugin]] = {}

    def register(self, cls: type[Plugin]) -> type[Plugin]:
        """Register ``cls``; returns it, so it works as a class decorator."""
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise TypeError(f"{cls!r} is not a Plugin subclass")
        if not isinstance(cls.name, str) or not cls.name:
            raise ValueError(f"{cls.__qualname__}.name must be a non-empty string")
        if not cls.stages or not cls.stages <= STAGES:
            raise ValueError(
                f"plugin {cls.name!r}: stages must be a non-empty subset of {sorted(STAGES)}, "
                f"got {sorted(cls.stages)}"
            )
        existing = self._plugins.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"plugin name {cls.name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        self._plugins[cls.name] = cls
        return cls

    def get(self, name: str) -> type[Plugin]:
        try:
            return self._plugins[name]
        except KeyError:
            raise KeyError(f"unknown plugin {name!r} (known: {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins


# Not called ``registry``: the package re-exports it, and that name would shadow this module.
default_registry = Registry()
register = default_registry.register
get = default_registry.get
names = default_registry.names


def _spec_stages(cls: type[Plugin], stage: str | None) -> frozenset[str]:
    return frozenset((stage,)) if stage is not None else cls.stages


def validate_specs(specs: object, registry: Registry = default_registry) -> list[str]:
    """Check the YAML ``plugins:`` list; returns every problem, each prefixed with its path.

    ``None`` (no ``plugins:`` key) is an empty list, and ``config: null`` an empty config.
    Disabled items are still validated but don't count as duplicates, so an alternative
    config can be kept switched off next to the active one.
    """
    if specs is None:
        return []
    if not isinstance(specs, list):
        return ["plugins: expected a list of plugin specs"]
    errors: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for i, spec in enumerate(specs):
        at = f"plugins[{i}]"
        if not isinstance(spec, Mapping):
            errors.append(f"{at}: expected a mapping with at least 'name'")
            continue
        for key in spec:
            if key not in _SPEC_KEYS:
                errors.append(f"{at}.{key}: unknown key (allowed: {', '.join(sorted(_SPEC_KEYS))})")

        cls: type[Plugin] | None = None
        name = spec.get("name")
        if "name" not in spec:
            errors.append(f"{at}.name: required")
        elif not isinstance(name, str):
            errors.append(f"{at}.name: expected a string")
        elif name not in registry:
            errors.append(f"{at}.name: unknown plugin {name!r} (known: {', '.join(registry.names())})")
        else:
            cls = registry.get(name)

        stage = spec.get("stage")
        stage_ok = True
        if stage is not None:
            allowed = cls.stages if cls is not None else STAGES
            if not isinstance(stage, str) or stage not in allowed:
                stage_ok = False
                owner = f"plugin {name!r} has" if cls is not None else "known stages are"
                errors.append(
                    f"{at}.stage: {stage!r} is not a valid stage ({owner}: {', '.join(sorted(allowed))})"
                )

        enabled = spec.get("enabled", True)
        if not isinstance(enabled, bool):
            errors.append(f"{at}.enabled: expected true or false")

        config = spec.get("config")
        if config is not None and not isinstance(config, Mapping):
            errors.append(f"{at}.config: expected a mapping")
        elif cls is not None:
            errors.extend(_config_errors(cls, dict(config or {}), f"{at}.config"))

        if cls is not None and stage_ok and enabled is not False:
            for st in sorted(_spec_stages(cls, stage)):
                first = seen.setdefault((cls.name, st), i)
                if first != i:
                    errors.append(f"{at}: duplicate of plugins[{first}] (plugin {cls.name!r}, stage {st!r})")
    return errors


def _config_errors(cls: type[Plugin], config: JSONObject, at: str) -> list[str]:
    try:
        problems = cls.validate_config(config)
    except Exception as exc:  # a validator bug must not hide the other errors
        return [f"{at}: validator of plugin {cls.name!r} crashed: {type(exc).__name__}"]
    return [f"{at}{p}" if p.startswith(":") else f"{at}.{p}" for p in problems]


def _mark_ran(ctx: RequestContext, name: str) -> None:
    ran = ctx.metadata.get("plugins")
    if ran is None:
        ctx.metadata["plugins"] = [name]
    elif name not in ran:
        ran.append(name)


class PluginChain:
    """The enabled plugins, split by stage in config order; built once per app.

    ``before`` fails closed (a broken plugin must not let a request through unchecked);
    ``after`` and ``error`` fail open (the response is already out, an observer's bug must
    not turn it into a failure). ``CancelledError`` is a ``BaseException`` and is never caught.
    """

    __slots__ = ("_before", "_after", "_error")

    def __init__(
        self,
        before: Iterable[Plugin] = (),
        after: Iterable[Plugin] = (),
        error: Iterable[Plugin] = (),
    ) -> None:
        self._before: tuple[Plugin, ...] = tuple(before)
        self._after: tuple[Plugin, ...] = tuple(after)
        self._error: tuple[Plugin, ...] = tuple(error)

    @classmethod
    def from_specs(
        cls, specs: Sequence[JSONObject] | None, registry: Registry = default_registry
    ) -> PluginChain:
        """Instantiate the enabled specs; assumes ``validate_specs`` returned no errors."""
        stages: dict[str, list[Plugin]] = {"before": [], "after": [], "error": []}
        for spec in specs or ():
            if not spec.get("enabled", True):
                continue
            plugin_cls = registry.get(spec["name"])
            plugin = plugin_cls(dict(spec.get("config") or {}))
            for st in _spec_stages(plugin_cls, spec.get("stage")):
                stages[st].append(plugin)
        return cls(stages["before"], stages["after"], stages["error"])

    @property
    def has_before(self) -> bool:
        return bool(self._before)

    @property
    def has_after(self) -> bool:
        return bool(self._after)

    @property
    def has_error(self) -> bool:
        return bool(self._error)

    def __bool__(self) -> bool:
        return bool(self._before or self._after or self._error)

    def __repr__(self) -> str:
        def ns(ps: tuple[Plugin, ...]) -> list[str]:
            return [p.name for p in ps]

        return f"PluginChain(before={ns(self._before)}, after={ns(self._after)}, error={ns(self._error)})"

    async def run_before(self, ctx: RequestContext) -> None:
        """Run ``before`` hooks in order; ``Reject`` -> 4xx ``ProxyError``, anything else -> 500."""
        for plugin in self._before:
            _mark_ran(ctx, plugin.name)
            try:
                await plugin.before(ctx)
            except Reject as rej:
                logger.debug(
                    "request %s rejected by plugin %r with %d", ctx.request_id, plugin.name, rej.status
                )
                raise ProxyError(
                    rej.status,
                    rej.message,
                    type=_REJECT_TYPES.get(rej.status, "invalid_request_error"),
                    code=rej.code or "rejected_by_plugin",
                ) from rej
            except Exception as exc:
                _log_failure(plugin, "before", ctx)
                raise ProxyError(
                    500, f"plugin '{plugin.name}' failed", type="server_error", code="plugin_error"
                ) from exc

    async def run_after(self, ctx: RequestContext) -> None:
        """Run ``after`` hooks in order; a failing one is logged and the rest still run."""
        for plugin in self._after:
            _mark_ran(ctx, plugin.name)
            try:
                await plugin.after(ctx)
            except Exception:
                _log_failure(plugin, "after", ctx)

    async def run_error(self, ctx: RequestContext, error: BaseException) -> None:
        """Run ``on_error`` hooks in order; a failing one is logged and the rest still run."""
        for plugin in self._error:
            _mark_ran(ctx, plugin.name)
            try:
                await plugin.on_error(ctx, error)
            except Exception:
                _log_failure(plugin, "error", ctx)


def _log_failure(plugin: Plugin, stage: str, ctx: RequestContext) -> None:
    # Only names and ids: never the body, headers or keys. The traceback carries the
    # exception's own message, so plugins must not put request content into exceptions.
    logger.exception(
        "plugin %r failed in stage %r (request %s)",
        plugin.name,
        stage,
        ctx.request_id,
        extra={"plugin": plugin.name, "plugin_stage": stage, "request_id": ctx.request_id},
    )
