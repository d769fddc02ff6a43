"""Token estimates for when an upstream never sent its usage (client disconnect, cut stream).

Roughly four characters per token for text; a delivered stream chunk counts as one token,
which matches how OpenAI-compatible servers emit content. Rows using estimates are
flagged ``usage_estimated`` in the request log.
"""

from __future__ import annotations

from llm_proxy.core.context import RequestContext
from llm_proxy.core.jsontypes import JSONObject

__all__ = ["DEFAULT_COMPLETION_RESERVE", "estimate_prompt_tokens", "token_estimate"]

DEFAULT_COMPLETION_RESERVE = 1024  # tokens held for a generation that sets no max_tokens
_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _text_len(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def estimate_prompt_tokens(body: JSONObject | None) -> int:
    if not body:
        return 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = sum(_text_len(m.get("content")) for m in messages if isinstance(m, dict))
    return chars // 4 + 4 * len(messages)


def token_estimate(ctx: RequestContext) -> tuple[int, int]:
    """(prompt, completion) tokens a request may use, for admission to reserve: ~4 characters per
    token, plus the output cap of a generative surface (``DEFAULT_COMPLETION_RESERVE`` without one)."""
    body: JSONObject = ctx.body or {}
    prompt = estimate_prompt_tokens(body) if isinstance(body.get("messages"), list) else len(ctx.raw_body) // 4
    if ctx.surface is None or not ctx.surface.generative:
        return prompt, 0
    for name in _CAPS:
        cap = body.get(name)
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            return prompt, cap
    return prompt, DEFAULT_COMPLETION_RESERVE
