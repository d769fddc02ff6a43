"""Rate limiting slot: requests and tokens per minute per client key.

Not installed yet: with no limits configured the factory returns the inner app unchanged,
so the layer costs nothing per request. Database-backed per-key limits fill this slot.
"""

from __future__ import annotations

from starlette.types import ASGIApp

__all__ = ["rate_limit"]


def rate_limit(app: ASGIApp) -> ASGIApp:
    return app
