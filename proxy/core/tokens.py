"""Token estimates for when an upstream never sent its usage (client disconnect, cut stream).

Roughly four characters per token for text; a delivered stream chunk counts as one token,
which matches how OpenAI-compatible servers emit content. Rows using estimates are
flagged ``usage_estimated`` in the request log.
"""

from __future__ import annotations

from typing import Any

__all__ = ["estimate_prompt_tokens"]


def _text_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def estimate_prompt_tokens(body: dict[str, Any] | None) -> int:
    if not body:
        return 0
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = sum(_text_len(m.get("content")) for m in messages if isinstance(m, dict))
    return chars // 4 + 4 * len(messages)
