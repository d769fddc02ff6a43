"""The runtime snapshot: everything a request needs, built once per config and frozen.

Each request captures the snapshot in force when it arrives, so a reload (which builds a
new one and swaps one reference, ``llm_proxy.runtime.holder``) never changes the rules under
a request in flight. It is made of one part per stage: key lookup, intake rules, routing
table, pricing, upstreams, plugins and request log. The chain reads the parts through the
core's Protocols (``llm_proxy.core.parts``); code below the chain gets the whole snapshot
with ``runtime_of``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from llm_proxy.core.config import Config
from llm_proxy.core.context import RequestContext
from llm_proxy.core.parts import KeyLookup
from llm_proxy.plugins import PluginChain
from llm_proxy.runtime.pricing import PricingTable
from llm_proxy.runtime.routes import RoutingTable
from llm_proxy.runtime.upstreams import Upstreams
from llm_proxy.storage.request_log import RequestLogWriter

__all__ = ["IntakeRules", "RequestLog", "Runtime", "runtime_of"]


@dataclass(frozen=True, slots=True)
class IntakeRules:
    """The intake part: the size limits of a request's head and body, and the aliases (chains
    are cycle-checked at load)."""

    max_body_bytes: int
    aliases: Mapping[str, str]
    max_header_bytes: int
    max_headers: int


@dataclass(frozen=True, slots=True)
class RequestLog:
    """Where each request's row goes, and the model names its metrics may carry as labels."""

    writer: RequestLogWriter
    known_labels: frozenset[str]


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config  # the effective config: the file's with the database's overlay
    keys: KeyLookup
    intake: IntakeRules
    routes: RoutingTable
    pricing: PricingTable
    upstreams: Upstreams
    plugins: PluginChain
    request_log: RequestLog


if TYPE_CHECKING:
    def runtime_of(ctx: RequestContext) -> Runtime:
        """The request's whole snapshot, for the code below the chain (endpoints, dispatch, pipeline)."""
else:  # the same read at C level: no Python frame on the request path, however often it is called
    runtime_of = attrgetter("runtime")
