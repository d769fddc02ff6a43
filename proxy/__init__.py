"""llm-proxy: an LLM gateway speaking the OpenAI API in front of many providers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real import is lazy (below) so `import llm_proxy.core.config` stays light
    from llm_proxy.app import create_app

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> object:  # keep `import llm_proxy.core.config` light; the app pulls in everything
    if name == "create_app":
        from llm_proxy.app import create_app

        return create_app
    raise AttributeError(name)
