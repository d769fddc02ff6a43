"""Cap how many tokens a request may ask for, so one call can't run up an unbounded bill."""

from __future__ import annotations

from llm_proxy.core.context import RequestContext
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.plugins._checks import check_bool, check_str_list, unknown_keys
from llm_proxy.plugins.registry import Plugin, register

__all__ = ["MaxTokensCap"]

_FIELDS = ("max_tokens", "max_completion_tokens")


@register
class MaxTokensCap(Plugin):
    """Config: ``max_tokens`` (required cap), ``models`` (optional filter on ``ctx.model``),
    ``set_when_missing`` (default false: also set ``max_tokens`` on chat requests that omit both).
    """

    name = "max_tokens_cap"
    stages = frozenset({"before"})

    @classmethod
    def validate_config(cls, config: JSONObject) -> list[str]:
        errors = unknown_keys(config, ("max_tokens", "models", "set_when_missing"))
        cap = config.get("max_tokens")
        if "max_tokens" not in config:
            errors.append("max_tokens: required")
        elif isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
            errors.append(f"max_tokens: expected a positive integer, got {cap!r}")
        errors += check_str_list(config, "models")
        errors += check_bool(config, "set_when_missing")
        return errors

    def __init__(self, config: JSONObject) -> None:
        super().__init__(config)
        self.cap: int = config["max_tokens"]
        models = config.get("models")
        self.models: frozenset[str] | None = frozenset(models) if models is not None else None
        self.set_when_missing: bool = config.get("set_when_missing", False)

    async def before(self, ctx: RequestContext) -> None:
        if self.models is not None and ctx.model not in self.models:
            return
        body = ctx.body
        if not isinstance(body, dict):
            return
        capped_from: int | float | None = None
        present = False
        for key in _FIELDS:
            value = body.get(key)
            if value is None:  # absent or JSON null: both mean "not set"
                continue
            present = True
            # floats too: a cap that ``1e9`` slips past is no cap; bool is left to the upstream to refuse
            if isinstance(value, int | float) and not isinstance(value, bool) and value > self.cap:
                body[key] = self.cap
                capped_from = value if capped_from is None else max(capped_from, value)
        if capped_from is not None:
            ctx.metadata["max_tokens_capped_from"] = capped_from
            ctx.body_dirty = True
        elif not present and self.set_when_missing and isinstance(body.get("messages"), list):
            body["max_tokens"] = self.cap
            ctx.body_dirty = True
