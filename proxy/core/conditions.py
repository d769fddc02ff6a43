"""The condition language of ``when:`` blocks, shared by group rules and the ``conditional`` strategy.

A condition is a mapping with one key: ``all``/``any`` over a list of conditions, ``tag``,
``prompt_tokens_above``/``prompt_tokens_below``, or one of the flags ``multimodal``,
``reasoning``, ``tools`` and ``stream``. It is checked once at load (:func:`condition_errors`)
and evaluated per request (:func:`holds`) against :class:`RequestFacts`, which
:func:`facts_from` distils from the body once, so rules never look at the body themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_proxy.core.jsontypes import JSONObject
from llm_proxy.core.tokens import estimate_prompt_tokens

__all__ = ["RequestFacts", "condition_errors", "facts_from", "holds"]

_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
_BOOL_CONDS = frozenset({"multimodal", "reasoning", "tools", "stream"})
_INT_CONDS = frozenset({"prompt_tokens_above", "prompt_tokens_below"})
_KNOWN = frozenset({"all", "any", "tag", *_INT_CONDS, *_BOOL_CONDS})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What conditions may look at, extracted once per request."""

    last_user_text: str
    tags: frozenset[str]
    prompt_tokens: int
    multimodal: bool
    reasoning: bool
    tools: bool
    stream: bool


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _norm_tag(tag: str) -> str:
    return tag.strip().lower()


def facts_from(body: JSONObject, header_tags: bytes | None) -> RequestFacts:
    """Distil a chat-completions body (+ ``x-llm-proxy-tags`` header) into facts.

    Tags are stripped and lower-cased so ``Code`` in a header matches ``code`` in config.
    """
    raw_messages = body.get("messages")
    messages: list[JSONObject] = (
        [m for m in raw_messages if isinstance(m, dict)] if isinstance(raw_messages, list) else []
    )
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = _text_of(last_user.get("content")) if last_user else ""

    tags: set[str] = set()
    metadata = body.get("metadata")
    raw = metadata.get("tags") if isinstance(metadata, dict) else None
    if isinstance(raw, list):
        tags.update(_norm_tag(t) for t in raw if isinstance(t, str))
    if header_tags:
        tags.update(_norm_tag(t) for t in header_tags.decode("utf-8", "replace").split(","))
    tags.discard("")

    multimodal = any(
        isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] not in _TEXT_PARTS
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
    )
    effort = body.get("reasoning_effort")
    thinking = body.get("thinking")
    reasoning = (effort is not None and str(effort).lower() != "none") or (
        thinking not in (None, False)
        and not (isinstance(thinking, dict) and thinking.get("type") == "disabled")
    )
    tools = any(isinstance(body.get(k), list) and body[k] for k in ("tools", "functions"))
    return RequestFacts(
        last_user_text=text,
        tags=frozenset(tags),
        prompt_tokens=estimate_prompt_tokens(body),
        multimodal=multimodal,
        reasoning=bool(reasoning),
        tools=tools,
        stream=body.get("stream") is True,
    )


def holds(cond: object, facts: RequestFacts) -> bool:
    """Evaluate a validated condition tree; anything malformed is simply false."""
    if not isinstance(cond, dict) or len(cond) != 1:
        return False
    ((key, value),) = cond.items()
    if key == "all":
        return isinstance(value, list) and all(holds(c, facts) for c in value)
    if key == "any":
        return isinstance(value, list) and any(holds(c, facts) for c in value)
    if key == "tag":
        return isinstance(value, str) and _norm_tag(value) in facts.tags
    if key in _INT_CONDS and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if key == "prompt_tokens_above":
        return bool(facts.prompt_tokens > value)
    if key == "prompt_tokens_below":
        return bool(facts.prompt_tokens < value)
    if key in _BOOL_CONDS:
        return getattr(facts, key) is value
    return False


def condition_errors(cond: object, path: str) -> list[str]:
    """Every problem with a ``when:`` condition, each as ``path: message``."""
    if not isinstance(cond, dict) or len(cond) != 1:
        return [f"{path}: a condition is a mapping with exactly one key (use all/any to combine)"]
    ((key, value),) = cond.items()
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            return [f"{path}.{key}: must be a non-empty list of conditions"]
        return [e for i, c in enumerate(value) for e in condition_errors(c, f"{path}.{key}[{i}]")]
    if key == "tag":
        ok = isinstance(value, str) and bool(value.strip())
        return [] if ok else [f"{path}.tag: must be a non-empty string"]
    if key in _INT_CONDS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return [] if ok else [f"{path}.{key}: must be a non-negative integer"]
    if key in _BOOL_CONDS:
        return [] if isinstance(value, bool) else [f"{path}.{key}: must be true or false"]
    known = ", ".join(sorted(_KNOWN))
    return [f"{path}: unknown condition {key!r} (known: {known})"]
