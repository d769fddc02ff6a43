"""Request plugins: the contract lives in ``llm_proxy.plugins.registry``; importing this package
registers the built-ins, so config validation knows their names.
"""

from __future__ import annotations

from llm_proxy.plugins.english_system_prompt import EnglishSystemPrompt
from llm_proxy.plugins.max_tokens_cap import MaxTokensCap
from llm_proxy.plugins.registry import (
    STAGES,
    Plugin,
    PluginChain,
    Registry,
    Reject,
    default_registry,
    get,
    names,
    register,
    validate_specs,
)

__all__ = [
    "STAGES",
    "EnglishSystemPrompt",
    "MaxTokensCap",
    "Plugin",
    "PluginChain",
    "Registry",
    "Reject",
    "default_registry",
    "get",
    "names",
    "register",
    "validate_specs",
]
