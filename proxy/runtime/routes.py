"""The routing table part: what a name means (alias, group, model) and where a model is served.

Built once per config from the providers and ``models:`` entries, in priority order, with
each model's enabled deployments worked out at build time so a request copies a tuple
instead of filtering. ``learned`` is the routing state of this generation (breakers,
latency, key pools), made by adopting what the previous one learned
(``llm_proxy.runtime.services.Learned``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from llm_proxy.core.conditions import facts_from
from llm_proxy.core.config import Config, DeploymentConfig, GroupConfig, RoutingConfig
from llm_proxy.core.context import Deployment
from llm_proxy.core.errors import ProxyError, not_found_model
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.parts import SelectorCall
from llm_proxy.routing.groups import GroupResolver
from llm_proxy.routing.learned import RoutingState
from llm_proxy.runtime.provider import ProviderRuntime

__all__ = ["DeploymentRule", "RoutingTable", "build_routes"]

# a conditional strategy's rule: (provider or tag to put first, prompt pattern, condition)
DeploymentRule = tuple[str, re.Pattern[str] | None, JSONObject | None]
_MODES = ("local", "cloud", "auto")


@dataclass(frozen=True, slots=True)
class RoutingTable:
    settings: RoutingConfig
    models: Mapping[str, tuple[Deployment, ...]]  # every deployment of a model, enabled or not, priority order
    aliases: Mapping[str, str]
    groups: GroupResolver
    group_configs: Mapping[str, GroupConfig]
    strategies: Mapping[str, str]  # model -> its own deployment strategy
    deployment_rules: Mapping[str, list[DeploymentRule]]
    context_fallbacks: Mapping[str, str]
    learned: RoutingState
    enabled: Mapping[str, tuple[Deployment, ...]]  # model -> its enabled deployments
    provider_tags: Mapping[str, frozenset[str]]  # every provider: its tags (for a provider/model pin)
    disabled: Mapping[str, str]  # disabled provider -> why
    stepping: frozenset[str]  # models whose dispatch may add route steps

    def targets(self, model: str, requested: str | None = None) -> list[Deployment]:
        """The enabled deployments of a concrete model (``provider/model`` pins one provider)."""
        enabled = self.enabled.get(model)
        if enabled:
            return list(enabled)
        if enabled is None:
            provider, sep, rest = model.partition("/")
            tags = self.provider_tags.get(provider) if sep and rest else None
            if tags is None:
                raise not_found_model(requested or model)
            pinned = Deployment(provider, rest, tags=tags)
            if provider not in self.disabled:
                return [pinned]
            every: tuple[Deployment, ...] = (pinned,)
        else:
            every = self.models[model]
        reasons = "; ".join(f"{t.provider}: {self.disabled[t.provider]}" for t in every)
        raise ProxyError(503, f"No enabled provider serves `{model}` ({reasons}).", type="server_error",
                         code="provider_disabled")

    def candidates(self, model: str, requested: str | None, tags_header: bytes | None) -> list[Deployment]:
        """The enabled deployments of ``model``, narrowed to the routing mode's tag (local/cloud)."""
        targets = self.targets(model, requested)
        mode = self.settings.mode
        if tags_header is not None or mode != "auto":
            wanted = _mode(tags_header, mode)
            if wanted != "auto":
                targets = [t for t in targets if wanted in t.tags]
                if not targets:
                    raise ProxyError(503, f"No {wanted} deployment serves `{model}` (routing mode {wanted}).",
                                     type="server_error", code="no_deployment_for_mode")
        return targets

    def is_group(self, name: str) -> bool:
        return name in self.group_configs  # the names the resolver was built from

    def group_strategy(self, name: str) -> str | None:
        return self.group_configs[name].deployment_strategy

    async def resolve_group(self, name: str, body: JSONObject, tags_header: bytes | None,
                            ask: SelectorCall) -> tuple[str, list[str]]:
        model, steps = await self.groups.resolve(name, facts_from(body, tags_header), ask)
        aliases = self.aliases
        while model in aliases:  # a group may name an alias
            steps.append(f"alias {model} -> {aliases[model]}")
            model = aliases[model]
        return model, steps

    def may_add_steps(self, model: str) -> bool:
        return model in self.stepping

    def with_discovered(self, provider: str, names: list[str]) -> RoutingTable:
        """This table with the models a started provider reported (appended after configured ones)."""
        tags = self.provider_tags[provider]
        models, enabled = dict(self.models), dict(self.enabled)
        for name in names:
            target = Deployment(provider, name, tags=tags)
            models[name] = (*models.get(name, ()), target)
            enabled[name] = (*enabled.get(name, ()), target)
        return dataclasses.replace(self, models=models, enabled=enabled)


def _mode(tags_header: bytes | None, default: str) -> str:
    """A request may ask for a routing mode with the tag ``local``, ``cloud`` or ``auto``."""
    if tags_header:
        for tag in tags_header.decode("latin-1").lower().split(","):
            if tag.strip() in _MODES:
                return tag.strip()
    return default


def build_routes(config: Config, providers: Mapping[str, ProviderRuntime], learned: RoutingState) -> RoutingTable:
    """The table for ``config``; ``learned`` gets each deployment's definition, to tell on reload what changed."""
    models = _deployments(config, providers)
    learned.providers = {n: p.fingerprint for n, p in providers.items()}
    for targets in models.values():
        for t in targets:
            learned.definitions.setdefault(
                (t.provider, t.model), (learned.providers[t.provider], t.weight, t.priority, t.tags, t.rpm, t.tpm))
    rules = {
        m: [(r.use, re.compile(r.pattern, 0 if r.case_sensitive else re.IGNORECASE) if r.pattern else None, r.when)
            for r in spec.rules]
        for m, spec in config.models.items() if spec.rules
    }
    fallbacks = {m: spec.context_fallback for m, spec in config.models.items() if spec.context_fallback}
    return RoutingTable(
        settings=config.routing,
        models=models,
        aliases=dict(config.aliases),
        groups=GroupResolver(config.groups),
        group_configs=config.groups,
        strategies={m: spec.strategy for m, spec in config.models.items() if spec.strategy},
        deployment_rules=rules,
        context_fallbacks=fallbacks,
        learned=learned,
        enabled={m: tuple(t for t in targets if providers[t.provider].enabled) for m, targets in models.items()},
        provider_tags={n: p.tags for n, p in providers.items()},
        disabled={n: p.disabled_reason or "disabled" for n, p in providers.items() if not p.enabled},
        stepping=frozenset(rules) | frozenset(fallbacks),
    )


def _deployments(config: Config, providers: Mapping[str, ProviderRuntime]) -> dict[str, tuple[Deployment, ...]]:
    """Model name -> its deployments: a ``models:`` entry's list, else every provider listing it."""
    models: dict[str, list[Deployment]] = {}

    def target(p: ProviderRuntime, model: str, dep: DeploymentConfig | None = None) -> Deployment:
        cfg = p.config
        return Deployment(
            p.name, model,
            weight=dep.weight if dep is not None and dep.weight is not None else cfg.weight,
            priority=dep.priority if dep is not None and dep.priority is not None else cfg.priority,
            tags=frozenset(dep.tags) if dep is not None and dep.tags is not None else p.tags,
            rpm=dep.rpm if dep is not None else None,
            tpm=dep.tpm if dep is not None else None,
        )

    for p in providers.values():
        for model in p.config.models:
            if model not in config.models or not config.models[model].deployments:
                models.setdefault(model, []).append(target(p, model))
    for name, spec in config.models.items():
        if spec.deployments:
            models[name] = [target(providers[d.provider], d.model or name, d) for d in spec.deployments]
    # priority order (stable: ties keep config order)
    return {name: tuple(sorted(targets, key=lambda t: t.priority)) for name, targets in models.items()}
