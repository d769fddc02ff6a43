"""Small helpers for working on raw ASGI scopes without building a Request object."""

from __future__ import annotations

from typing import Any

__all__ = ["header", "route_path"]

def route_path(scope: dict[str, Any]) -> str:
    """The path inside this app, with any mount prefix (``root_path``) removed."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None
