"""Add an English system prompt to chat requests that have none.

Some providers' models drift into another language when the conversation doesn't pin one;
a client's own system/developer prompt always wins and is never touched.
"""

from __future__ import annotations

from llm_proxy.core.context import RequestContext
from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.plugins._checks import check_str_list, unknown_keys
from llm_proxy.plugins.registry import Plugin, register

__all__ = ["DEFAULT_TEXT", "EnglishSystemPrompt"]

DEFAULT_TEXT = "Always respond in English."
_PROMPT_ROLES = frozenset({"system", "developer"})


@register
class EnglishSystemPrompt(Plugin):
    """Config: ``providers`` (optional list: only these targets), ``text`` (the prompt)."""

    name = "english_system_prompt"
    stages = frozenset({"before"})

    @classmethod
    def validate_config(cls, config: JSONObject) -> list[str]:
        errors = unknown_keys(config, ("providers", "text"))
        errors += check_str_list(config, "providers")
        if "text" in config and not (isinstance(config["text"], str) and config["text"].strip()):
            errors.append("text: expected a non-empty string")
        return errors

    def __init__(self, config: JSONObject) -> None:
        super().__init__(config)
        providers = config.get("providers")
        self.providers: frozenset[str] | None = frozenset(providers) if providers is not None else None
        self.text: str = config.get("text", DEFAULT_TEXT)

    async def before(self, ctx: RequestContext) -> None:
        if self.providers is not None and (ctx.deployment is None or ctx.deployment.provider not in self.providers):
            return
        body = ctx.body
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return
        if any(isinstance(m, dict) and isinstance(m.get("role"), str) and m["role"] in _PROMPT_ROLES
               for m in messages):
            return
        messages.insert(0, {"role": "system", "content": self.text})
        ctx.body_dirty = True
