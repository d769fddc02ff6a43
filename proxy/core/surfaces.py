"""The API surfaces the gateway serves, one record each: every layer that needs to know
about a surface reads its record here instead of keeping a list of its own.

A surface's ``name`` is the request log's ``endpoint`` and the metrics' ``endpoint`` label.
It is served at ``path`` and at ``/v1`` + ``path``, as OpenAI-compatible servers are. The
handler that answers it is bound by the app (``llm_proxy.endpoints.HANDLERS``), which
refuses to start if a surface has none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from llm_proxy.core.errors import anthropic_error_body

__all__ = ["OTHER", "OTHER_MESSAGES", "SURFACES", "ErrorBody", "Surface", "surface_for"]

ErrorBody = Callable[[int, str], bytes]  # (status, message) -> the error body in a surface's envelope


@dataclass(frozen=True, slots=True)
class Surface:
    """What the gateway knows about one inbound API.

    ``names_model``: the body is a JSON object naming ``model`` (read, parsed once and resolved
    by the alias layer). ``generative``: it produces tokens, so admission reserves its output
    cap. ``stream_usage``: the gateway asks the upstream for usage on a stream
    (``stream_options.include_usage``) and strips that chunk again when the client did not ask;
    surfaces translated through chat get usage from their own translation. ``error_body``
    renders an error in the surface's own envelope (Anthropic's for Messages); None is
    OpenAI's, where an upstream's own OpenAI-shaped error body is passed on byte for byte."""

    name: str
    path: str
    method: str = "POST"
    names_model: bool = False
    generative: bool = False
    stream_usage: bool = False
    error_body: ErrorBody | None = None

    @property
    def paths(self) -> tuple[str, str]:
        return "/v1" + self.path, self.path


SURFACES: tuple[Surface, ...] = (
    Surface("chat.completions", "/chat/completions", names_model=True, generative=True, stream_usage=True),
    Surface("messages", "/messages", names_model=True, generative=True, error_body=anthropic_error_body),
    Surface("messages.count_tokens", "/messages/count_tokens", names_model=True, error_body=anthropic_error_body),
    Surface("responses", "/responses", names_model=True, generative=True),
    Surface("embeddings", "/embeddings", names_model=True),
    Surface("images.generations", "/images/generations", names_model=True),
    Surface("models", "/models", method="GET"),
)

# Any other /v1/ path: authenticated and logged like an API call, answered 404 by the router;
# under /v1/messages/ (Anthropic's batches, say) in Anthropic's envelope, which its SDK reads.
OTHER = Surface("other", "")
OTHER_MESSAGES = Surface("other", "", error_body=anthropic_error_body)

_BY_PATH: Mapping[str, Surface] = MappingProxyType(
    {path: surface for surface in SURFACES for path in surface.paths}
)


def surface_for(path: str) -> Surface | None:
    """The surface a path names (``OTHER`` for unknown ``/v1/`` paths, ``OTHER_MESSAGES`` under
    ``/v1/messages/``), None for non-API paths (health, metrics, the admin API, static files)."""
    surface = _BY_PATH.get(path)
    if surface is None and path.startswith("/v1/"):
        return OTHER_MESSAGES if path.startswith("/v1/messages/") else OTHER
    return surface
