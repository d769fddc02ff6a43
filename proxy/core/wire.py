"""The contract every native wire-format translator implements (OpenAI chat is the hub).

A translator module (``proxy/providers/<format>.py``) is pure: no HTTP, no routing, no
storage. It exposes

* ``build_request(body, model, *, api_key, stream, max_output_tokens) -> UpstreamCall`` —
  an OpenAI chat-completions request body (a dict, already parsed) → the native request;
* ``parse_response(data, model) -> Translated`` — a native non-streaming response → an
  OpenAI ``chat.completion`` dict plus usage and finish reason;
* ``StreamDecoder(model)`` — per-stream state: ``feed(chunk: bytes)`` takes raw upstream
  bytes in any chunking (the decoder owns the framing: SSE, NDJSON or a JSON array) and
  returns OpenAI ``chat.completion.chunk`` dicts; ``finish()`` flushes at end of stream;
  ``usage``, ``finish_reason`` and ``error`` (a mid-stream error, OpenAI error dict) are
  read by the relay;
* ``parse_error(status, data) -> UpstreamError`` — a native error body → the status and
  OpenAI-shaped error the client should get.

Simple parameter renames are data (a table per format applied by ``rename_params``);
structural transforms (messages, system, tools, tool_choice) are code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_proxy.core.context import Usage

__all__ = ["FINISH_REASONS", "Translated", "UpstreamCall", "UpstreamError", "rename_params"]

# The vocabulary an OpenAI client understands.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


@dataclass(slots=True)
class UpstreamCall:
    """What to send: a path appended to the provider's ``base_url``, the body, and the
    format's own headers (authentication, API version), added to the provider's headers."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Translated:
    response: dict[str, Any]
    usage: Usage | None
    finish_reason: str | None


@dataclass(slots=True)
class UpstreamError:
    status: int
    message: str
    type: str
    code: str | None = None


def rename_params(body: dict[str, Any], table: dict[str, str], out: dict[str, Any]) -> None:
    """Copy OpenAI parameters present in ``body`` to ``out`` under their native names.

    ``table`` maps an OpenAI name to a dotted native path (``"top_p": "generationConfig.topP"``).
    """
    for name, path in table.items():
        value = body.get(name)
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
