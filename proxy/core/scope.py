"""Small helpers for working on raw ASGI scopes without building a Request object."""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["header", "route_path"]


def route_path(scope: Scope) -> str:
    """The path inside this app, with any mount prefix (``root_path``) removed."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case bytes), or None when absent."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None
