"""Wire formats: ``openai`` (the hub, passed through) and one translator module per native format."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["NATIVE_FORMATS", "translator"]

NATIVE_FORMATS = ("anthropic", "gemini", "ollama")


def translator(kind: str) -> ModuleType:
    """The translator module for a provider ``type`` other than ``openai``."""
    if kind not in NATIVE_FORMATS:
        raise ValueError(f"no translator for provider type {kind!r}")
    return importlib.import_module(f"llm_proxy.providers.{kind}")
