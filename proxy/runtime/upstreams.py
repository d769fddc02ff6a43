"""The upstreams part: every provider of the snapshot, and what starting them opens.

Built without connections; ``start`` returns the copy that serves, with one pooled transport
per enabled provider (lent by the previous snapshot when the provider's connection settings
did not change) and the remote-image fetcher when a provider needs images inline.
``discover`` asks the providers that list no models which ones they serve.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from llm_proxy.core.config import ImagesConfig
from llm_proxy.runtime.provider import ProviderRuntime
from llm_proxy.upstream.discovery import discover_models
from llm_proxy.upstream.remote_images import ImageFetcher
from llm_proxy.upstream.transport import AiohttpTransport

__all__ = ["Upstreams"]

logger = logging.getLogger("llm_proxy")


@dataclass(frozen=True, slots=True)
class Upstreams:
    providers: Mapping[str, ProviderRuntime]
    image_fetcher: ImageFetcher | None = None  # remote image URLs -> inline bytes, for formats that need them

    def transports(self) -> list[AiohttpTransport]:
        return [p.transport for p in self.providers.values() if p.transport is not None]

    def start(self, images: ImagesConfig, previous: Upstreams | None = None) -> Upstreams:
        """The serving copy: a transport per enabled provider, the image fetcher if one is needed."""
        started: dict[str, ProviderRuntime] = {}
        for name, p in self.providers.items():
            if not p.enabled:
                started[name] = p
                continue
            old = previous.providers.get(name) if previous is not None else None
            if old is not None and old.transport is not None and old.fingerprint == p.fingerprint:
                transport = old.transport
            else:
                transport = AiohttpTransport(limit=p.config.max_connections, keepalive_expiry=p.config.pool_idle_timeout,
                                             retry_stale=p.config.retry_stale_connection)
            started[name] = dataclasses.replace(p, transport=transport)
        fetcher = previous.image_fetcher if previous is not None else None
        if fetcher is None and any(p.enabled and p.wire.needs_inline_images for p in started.values()):
            fetcher = ImageFetcher(images)
        return Upstreams(started, fetcher)

    async def discover(self) -> dict[str, list[str]]:
        """provider -> the models its upstream lists, for started providers that list none themselves."""
        found: dict[str, list[str]] = {}
        for p in self.providers.values():
            discovery = p.wire.discovery
            if not p.enabled or discovery is None or p.config.models or p.transport is None:
                continue
            names = await discover_models(p.transport, p.base_url, p.raw_headers, discovery, p.name)
            if names is not None:
                found[p.name] = names
                logger.info("provider %s: discovered %d model(s)", p.name, len(names))
        return found

    async def aclose(self) -> None:
        for transport in self.transports():
            await transport.aclose()
        if self.image_fetcher is not None:
            await self.image_fetcher.aclose()
