"""What a stage of the chain calls below itself, handed in by the app that assembles the chain.

A middleware imports only the core, so the two jobs it must leave to lower layers reach it
as callables of these types: writing the request's log row and metrics when it ends (the
outermost stage), and asking a model through the gateway's own dispatch (a classifier group).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

from llm_proxy.core.context import RequestContext

__all__ = ["Classify", "RequestEnd"]

RequestEnd: TypeAlias = Callable[[RequestContext], None]
"""Called exactly once when a request ends, whatever happened to it: its log row and metrics."""

Classify: TypeAlias = Callable[[RequestContext, str, str], Awaitable[str]]
"""(the request, selector model, prompt) -> the model's answer, asked as a request of its own."""
