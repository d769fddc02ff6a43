"""Graceful shutdown: the API requests in flight, and whether new ones are still taken.

A shutdown (``llm-proxy serve`` on SIGTERM or SIGINT) first stops taking API requests — they
get a 503 ``shutting_down``, and ``/health`` says not ready, so a load balancer moves traffic
away while the socket still answers — then lets the requests in flight finish for up to the
grace (``server.shutdown_grace``). Whatever is still running then is cut on purpose: its
context is marked ``shut_down`` and its task cancelled, and the layer the cancellation reaches
ends it well — a stream's relay with an error event in the client's format, the outermost
stage with a 503 when nothing was sent yet — and logs it as 503 ``shutdown``. Only then does
the server close, so it has no task left to cancel (uvicorn's own cancel prints a traceback
per request and logs them as they were).

Registering costs a dict insert and delete per API request (the task it looks up is kept in
the context for the stream-wrap stage, which needs it too); chunks pay nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from llm_proxy.core.context import RequestContext
from llm_proxy.core.errors import ProxyError

__all__ = ["CUT_MESSAGE", "SHUTDOWN_TYPE", "Drain"]

logger = logging.getLogger("llm_proxy")

SHUTDOWN_TYPE = "shutdown"  # the error type a refused or cut request is logged and answered with
CUT_MESSAGE = "The gateway is shutting down: the request was cut when its shutdown grace ended."
_REFUSED = "The gateway is shutting down and takes no new requests; retry (another instance will serve it)."
_POLL = 0.05  # s between looks at what is left while draining (shutdown only)
_SETTLE = 5.0  # s the cut requests get to send their error and end


class Drain:
    """The app's in-flight API requests (request task → context) and its shutdown state."""

    __slots__ = ("draining", "requests", "_hurry")

    def __init__(self) -> None:
        self.draining = False  # refusing new API requests; /health is not ready
        self.requests: dict[asyncio.Task[object], RequestContext] = {}
        self._hurry = False

    def enter(self, ctx: RequestContext) -> asyncio.Task[object] | None:
        """Track the request running in the current task (kept in ``ctx.task``, so later
        stages need not look it up again); None when there is no task."""
        ctx.task = task = asyncio.current_task()
        if task is not None:
            self.requests[task] = ctx
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self.requests.pop(task, None)

    @staticmethod
    def refusal() -> ProxyError:
        """What a request that arrives while draining gets (and ``connection: close``)."""
        return ProxyError(503, _REFUSED, type=SHUTDOWN_TYPE, code="shutting_down",
                          headers={"retry-after": "1", "connection": "close"})

    @staticmethod
    def cut_error() -> ProxyError:
        return ProxyError(503, CUT_MESSAGE, type=SHUTDOWN_TYPE, code="shutting_down", headers={"connection": "close"})

    def hurry(self) -> None:
        """End the grace now (a second signal)."""
        self._hurry = True

    async def shutdown(self, grace: float, settle: float = _SETTLE) -> int:
        """Refuse new requests, wait up to ``grace`` seconds for those in flight, then cut the
        rest and wait (up to ``settle``) until they have ended. Returns how many were cut."""
        self.draining = True
        if self.requests:
            logger.info("shutting down: no new requests taken; %d in flight get up to %g s to finish",
                        len(self.requests), grace)
        await self._wait(grace, hurried=True)
        cut = self.cut()
        if cut:
            logger.warning("shutdown grace over: %d request(s) still in flight are ended with an error", cut)
            await self._wait(settle, hurried=False)
            if self.requests:
                logger.warning("%d cut request(s) had not ended after %g s", len(self.requests), settle)
        return cut

    def cut(self) -> int:
        """Mark every request in flight as cut by the shutdown and cancel its task."""
        count = 0
        for task, ctx in list(self.requests.items()):
            if not task.done() and not ctx.shut_down:
                ctx.shut_down = True
                task.cancel()
                count += 1
        return count

    async def _wait(self, seconds: float, *, hurried: bool) -> None:
        deadline = time.monotonic() + seconds
        while self.requests and time.monotonic() < deadline and not (hurried and self._hurry):
            await asyncio.sleep(_POLL)
