"""Outermost layer: request id, the per-request context, error shaping and the request log.

Any failure below becomes a JSON error in the surface's own envelope (OpenAI's, or Anthropic's
for Messages; never a traceback) as long as the response has not started, every response
carries ``x-request-id``, and every API request is handed to the request log exactly once,
whatever happened to it. A request whose headers are too many or too large
(``server.max_headers``, ``server.max_header_kb``) is refused here with 431, before any other
layer reads them: the server has already parsed them, so counting once is all it costs. It is
also where a shutdown (``core/drain.py``) refuses new API requests and tracks those in flight,
and where one cut by the end of the shutdown grace before its answer started gets its 503.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_proxy.core import metrics
from llm_proxy.core.chain import RequestEnd
from llm_proxy.core.context import SCOPE_KEY, RequestContext, Usage
from llm_proxy.core.drain import Drain
from llm_proxy.core.errors import ProxyError, send_error
from llm_proxy.core.parts import Intake, SnapshotSource
from llm_proxy.core.scope import route_path
from llm_proxy.core.surfaces import ErrorBody, surface_for
from llm_proxy.core.tokens import estimate_prompt_tokens

__all__ = ["RequestContextMiddleware"]

logger = logging.getLogger("llm_proxy")

_VALID_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


# Unique per process (random prefix) and cheap: os.urandom is a syscall per request.
_ID_PREFIX = "req_" + os.urandom(6).hex()
_ids = itertools.count(1)


def _request_id(given: bytes | None) -> str:
    if given is not None and _VALID_ID.fullmatch(given):
        return given.decode()
    return f"{_ID_PREFIX}{next(_ids):012x}"


def _read_head(headers: list[tuple[bytes, bytes]], intake: Intake) -> tuple[bytes | None, ProxyError | None]:
    """The client's ``x-request-id`` and, when the headers are over the limits, the 431 to answer:
    one pass over the headers for both."""
    if len(headers) > intake.max_headers:
        return None, _too_large(f"{len(headers)} header fields were sent; "
                                f"at most {intake.max_headers} are accepted.")
    given = None
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
        if given is None and name == b"x-request-id":
            given = value
    if size > intake.max_header_bytes:
        return None, _too_large(f"The request's header fields total {size} bytes; "
                                f"at most {intake.max_header_bytes} are accepted.")
    return given, None


def _too_large(message: str) -> ProxyError:
    return ProxyError(431, message, code="request_header_fields_too_large")


def _in_envelope(exc: ProxyError, render: ErrorBody | None) -> ProxyError:
    """``exc`` in a surface's own envelope (Anthropic's for Messages); as it is for OpenAI's."""
    if render is None:
        return exc
    return ProxyError(exc.status, exc.message, headers=exc.headers, body=render(exc.status, exc.message))


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, holder: SnapshotSource, finish: RequestEnd, drain: Drain | None = None) -> None:
        self.app = app
        self.holder = holder
        self.finish = finish  # the request's log row and metrics
        self.drain = drain if drain is not None else Drain()  # the API requests in flight, for a graceful shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        surface = surface_for(route_path(scope))
        snapshot = self.holder.current
        given, refused = _read_head(scope["headers"], snapshot.intake)
        request_id = _request_id(given)
        rid_header = (b"x-request-id", request_id.encode())
        ctx = RequestContext(request_id, snapshot, surface.name if surface is not None else "",
                             started=started, surface=surface)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[SCOPE_KEY] = ctx
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = ctx.response_started = True
                if not ctx.status:
                    ctx.status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        drain = self.drain
        task: asyncio.Task[object] | None = None
        if surface is not None:
            metrics.IN_FLIGHT.inc()
        render = surface.error_body if surface is not None else None  # None: OpenAI's envelope
        try:
            if not self.holder.started:  # mounted without its lifespan: start lazily
                await self.holder.ensure_started()
                ctx.runtime = self.holder.current
            if refused is not None:
                raise refused
            if surface is not None:
                if drain.draining:
                    raise drain.refusal()
                task = drain.enter(ctx)
            await self.app(scope, receive, send_with_id)
        except ProxyError as exc:
            if not response_started:
                await _send_proxy_error(ctx, render, send_with_id, exc)
        except asyncio.CancelledError:
            if not ctx.shut_down or task is None or task.uncancel() > 0:
                raise
            # cut by the shutdown before a stream's relay could end it (which then logs it itself)
            cut = drain.cut_error()
            if ctx.usage is None and ctx.upstream_started is not None and surface is not None and surface.generative:
                ctx.usage = Usage(prompt_tokens=estimate_prompt_tokens(ctx.body), completion_tokens=0)
                ctx.metadata["usage_estimated"] = True  # the prompt was sent: charged, like a disconnect
            if response_started:
                ctx.fail(cut.status, cut.type, cut.message)
            else:
                await _send_proxy_error(ctx, render, send_with_id, cut)
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            ctx.fail(500, "server_error", "internal error")
            if not response_started:
                error = ProxyError(500, "The server had an error while processing your request.", type="server_error")
                await send_error(send_with_id, _in_envelope(error, render))
        finally:
            if task is not None:
                drain.leave(task)
            if surface is not None:
                metrics.IN_FLIGHT.dec()
                ctx.finished_at = time.perf_counter()
                try:
                    self.finish(ctx)
                except Exception:  # logging must never turn a served request into a failure
                    logger.exception("could not record request %s", request_id)


async def _send_proxy_error(ctx: RequestContext, render: ErrorBody | None, send: Send, exc: ProxyError) -> None:
    """Record ``exc`` for the request log and answer it in the surface's error envelope."""
    ctx.fail(exc.status, exc.type, exc.message)
    await send_error(send, _in_envelope(exc, render))
