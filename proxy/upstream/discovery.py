"""Asking an upstream which models it serves, for formats that can say (``WireFormat.discovery``)."""

from __future__ import annotations

import logging
from typing import cast

import httpx

from llm_proxy.core.wire import ModelDiscovery
from llm_proxy.upstream.transport import AiohttpTransport

__all__ = ["discover_models"]

logger = logging.getLogger("llm_proxy")
_TIMEOUT = httpx.Timeout(5.0).as_dict()


async def discover_models(transport: AiohttpTransport, base_url: str, headers: list[tuple[bytes, bytes]],
                          discovery: ModelDiscovery, provider: str) -> list[str] | None:
    """The model names the upstream lists (none on a non-200); None when it could not be reached."""
    request = httpx.Request("GET", httpx.URL(base_url + discovery.path), headers=headers,
                            extensions={"timeout": _TIMEOUT})
    try:
        response = await transport.handle_async_request(request)
        try:
            data = b"".join([chunk async for chunk in cast(httpx.AsyncByteStream, response.stream)])
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        logger.warning("provider %s: model discovery failed (%s)", provider, type(exc).__name__)
        return None
    return discovery.parse(data) if response.status_code == 200 else []
