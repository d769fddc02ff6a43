"""Reads the request once and resolves the model name the client asked for through aliases.

This is the first layer that needs the body, so it reads it (size-capped), parses it with
orjson once into the request context, and checks the one field every later layer relies
on: ``model``. Aliases are a config map and may chain; cycles are refused at load.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_proxy.core.body import parse_json_object, read_body, replay
from llm_proxy.core.context import get_context
from llm_proxy.core.errors import bad_request

__all__ = ["AliasMiddleware"]

class AliasMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        if ctx is None or ctx.surface is None or not ctx.surface.names_model or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        intake = ctx.runtime.intake
        raw = await read_body(scope, receive, intake.max_body_bytes)
        body = parse_json_object(raw)
        ctx.raw_body = raw
        ctx.body = body
        model = body.get("model")
        if model is None or model == "":
            raise bad_request("you must provide a model parameter", param="model")
        if not isinstance(model, str):
            raise bad_request("model must be a string", param="model", code="invalid_type")
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise bad_request("stream must be a boolean", param="stream", code="invalid_type")
        ctx.stream = bool(stream)
        ctx.requested_model = model
        aliases = intake.aliases
        while model in aliases:  # chains are cycle-checked at config load
            target = aliases[model]
            ctx.route.append(f"alias {model} -> {target}")
            model = target
        ctx.model = model
        await self.app(scope, replay(raw, receive), send)
