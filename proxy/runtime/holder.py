"""The one mutable reference: which snapshot new requests get, and its life from start to close.

Starting makes the snapshot that serves (``start_runtime``): the request-log writer running,
a pooled transport per provider, the models discovered from providers that list none.
``reload`` builds a new snapshot from the file (``source``), starts it with what the old one
lends (unchanged pools, the writer of the same database, the image fetcher) and swaps the
reference: requests in flight finish on the snapshot they started with. Pools and writers
no longer used are closed once those requests have had time to finish.

``file_config`` is the config as the file (or the caller) gave it; the database's overlay is
laid over it on every build, so ``refresh`` applies an admin change without re-reading a
file someone may be half-way through editing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from llm_proxy.core.config import Config
from llm_proxy.core.errors import ProxyError
from llm_proxy.runtime.build import build_runtime, check_config
from llm_proxy.runtime.overlay import OverlaySource
from llm_proxy.runtime.services import Services
from llm_proxy.runtime.snapshot import RequestLog, Runtime
from llm_proxy.storage.request_log import RequestLogWriter
from llm_proxy.upstream.transport import AiohttpTransport

__all__ = ["RuntimeHolder", "close_runtime", "start_runtime"]

logger = logging.getLogger("llm_proxy")


async def start_runtime(runtime: Runtime, previous: Runtime | None = None) -> Runtime:
    """The serving copy of ``runtime``; ``previous`` (the snapshot it replaces) lends what has not changed."""
    writer = runtime.request_log.writer
    if previous is not None and previous.request_log.writer.path == writer.path:
        writer = previous.request_log.writer
    writer.start()
    upstreams = runtime.upstreams.start(runtime.config.images, previous.upstreams if previous is not None else None)
    routes, labels = runtime.routes, runtime.request_log.known_labels
    for provider, names in (await upstreams.discover()).items():
        routes = routes.with_discovered(provider, names)
        labels = labels | frozenset(names)
    return dataclasses.replace(runtime, upstreams=upstreams, routes=routes, request_log=RequestLog(writer, labels))


async def close_runtime(runtime: Runtime) -> None:
    await runtime.upstreams.aclose()
    runtime.request_log.writer.close()


class RuntimeHolder:
    def __init__(self, runtime: Runtime, file_config: Config, *, source: str | Path | None = None,
                 services: Services | None = None, overlays: OverlaySource | None = None) -> None:
        self.current = runtime
        self.file_config = file_config
        self.source = Path(source) if source is not None else None  # the file reload reads; None: reuse file_config
        self.services = services if services is not None else Services()
        self.overlays = overlays
        self.started = False
        self.closed = False
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._retired: list[AiohttpTransport] = []
        self._writers: list[RequestLogWriter] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done, so none is collected mid-flight
        self.services.learned.keep(runtime)

    @classmethod
    def build(cls, file_config: Config, *, source: str | Path | None = None, services: Services | None = None,
              overlays: OverlaySource | None = None) -> RuntimeHolder:
        """A holder with the first snapshot built now (blocking: it reads the database's overlay)."""
        services = services if services is not None else Services()
        stored = overlays.read(file_config) if overlays is not None else None
        return cls(build_runtime(file_config, stored, services), file_config, source=source, services=services,
                   overlays=overlays)

    async def start(self) -> None:
        """Make the current snapshot the serving one; called from the lifespan."""
        async with self._lock:
            if self.started:
                return
            self.current = await start_runtime(self.current)
            self.started = True
        if self.current.keys.open:
            logger.warning("no client keys configured: serving loopback clients only (set auth.master_key)")

    async def ensure_started(self) -> None:
        """Start on first use when no lifespan did: a host app that mounts the gateway without
        running its lifespan still gets upstream clients and a request log (drained at exit)."""
        if self.closed:
            raise ProxyError(503, "The gateway is shutting down.", type="server_error", code="shutting_down")
        async with self._start_lock:
            if not self.started:
                logger.warning("llm-proxy started on its first request: pass its lifespan to the host app")
                await self.start()

    async def reload(self, config: Config | None = None) -> Runtime:
        """Swap in a new snapshot from ``config``, else the source file (else the last file config),
        with the overlay applied; ConfigError if invalid, and then nothing changes."""
        async with self._lock:
            if config is None:
                config = self.file_config if self.source is None else await asyncio.to_thread(check_config, self.source)
            else:  # a Config from the caller comes in here: validated once, like a file
                config = check_config(config=config)
            return await self._swap(config)

    async def refresh(self) -> Runtime:
        """Rebuild from the last file config: what an admin change calls to take effect at once."""
        async with self._lock:
            return await self._swap(self.file_config)

    async def _swap(self, config: Config) -> Runtime:
        stored = await asyncio.to_thread(self.overlays.read, config) if self.overlays is not None else None
        new = build_runtime(config, stored, self.services)
        old = self.current
        if self.started:
            new = await start_runtime(new, old)
        self.current, self.file_config = new, config
        self.services.learned.keep(new)
        if self.started:
            self._retire(old, new)
        logger.info("configuration reloaded: %d provider(s), %d model(s)",
                    len(new.upstreams.providers), len(new.routes.models))
        return new

    def _retire(self, old: Runtime, new: Runtime) -> None:
        """Close what only ``old`` used, once its requests have had time to finish."""
        kept = {id(t) for t in new.upstreams.transports()}
        unused = [t for t in old.upstreams.transports() if id(t) not in kept]
        grace = max((p.config.timeouts.total or 600.0 for p in old.upstreams.providers.values()), default=0.0)
        if unused:
            self._retired.extend(unused)
            self._later(grace, lambda: self._close(unused))
        writer = old.request_log.writer
        if writer is not new.request_log.writer:  # a new database path: the old queue drains, then stops
            self._writers.append(writer)
            self._later(grace, lambda: asyncio.to_thread(self._close_writer, writer))

    def _later(self, delay: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` in ``delay`` seconds, as a task kept referenced until it is done."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            self._timers.discard(timer)
            task = loop.create_task(_awaited(job()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        timer = loop.call_later(delay, run)
        self._timers.add(timer)

    async def _close(self, transports: list[AiohttpTransport]) -> None:
        for transport in transports:
            if transport in self._retired:
                self._retired.remove(transport)
                await transport.aclose()

    def _close_writer(self, writer: RequestLogWriter) -> None:
        if writer in self._writers:
            self._writers.remove(writer)
            writer.close()

    async def aclose(self) -> None:
        """Shutdown: the current snapshot and anything a reload retired."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close(list(self._retired))
        for writer in list(self._writers):
            self._close_writer(writer)
        await close_runtime(self.current)
        self.started = False
        self.closed = True


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable
