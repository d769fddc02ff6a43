"""Small helpers for working on raw ASGI scopes without building a Request object."""

from __future__ import annotations

from typing import Any

__all__ = ["endpoint_name", "header", "route_path"]

# Paths are accepted with and without the /v1 prefix, as OpenAI-compatible servers do.
_ENDPOINTS = {
    path: name
    for name, paths in {
        "chat.completions": ("/v1/chat/completions", "/chat/completions"),
        "models": ("/v1/models", "/models"),
        "messages": ("/v1/messages", "/messages"),
        "messages.count_tokens": ("/v1/messages/count_tokens", "/messages/count_tokens"),
        "responses": ("/v1/responses", "/responses"),
        "embeddings": ("/v1/embeddings", "/embeddings"),
        "images.generations": ("/v1/images/generations", "/images/generations"),
    }.items()
    for path in paths
}


def route_path(scope: dict[str, Any]) -> str:
    """The path inside this app, with any mount prefix (``root_path``) removed."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def endpoint_name(path: str) -> str | None:
    """The API endpoint a path names, or None for non-API paths (health, metrics, static)."""
    name = _ENDPOINTS.get(path)
    if name is None and path.startswith("/v1/"):
        return "other"
    return name


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None
