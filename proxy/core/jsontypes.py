"""Names for JSON data whose shape the gateway does not own.

Request and response bodies, provider payloads and plugin configuration are JSON that the
gateway reads only in part. They are typed through these aliases, never a bare ``Any``, so a
reader sees at a glance that a value is a decoded payload and mypy still checks everything
around it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["JSONArray", "JSONObject", "JSONValue"]

JSONValue: TypeAlias = Any
"""Any decoded JSON value (object, array, string, number, bool or null)."""

JSONObject: TypeAlias = dict[str, Any]
"""A decoded JSON object: a request body, a provider payload, a config mapping."""

JSONArray: TypeAlias = list[Any]
"""A decoded JSON array."""
