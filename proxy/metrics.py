"""Every Prometheus collector the gateway exports, in one place.

Label values are bounded: models the config does not know collapse to ``unknown`` and a
request that never reached routing has provider ``none``, so a client sending random model
names cannot blow up the series count.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "COST",
    "IN_FLIGHT",
    "LOG_DROPPED",
    "LOG_QUEUE_DEPTH",
    "OVERHEAD",
    "REQUESTS",
    "REQUEST_DURATION",
    "Series",
    "TOKENS",
    "TTFT",
    "UPSTREAM_ERRORS",
    "series",
]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

REQUESTS = Counter(
    "llm_proxy_requests", "Requests handled, by outcome.", ["endpoint", "provider", "model", "status"]
)
REQUEST_DURATION = Histogram(
    "llm_proxy_request_duration_seconds",
    "Time from request arrival to the end of the response.",
    ["endpoint", "provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "llm_proxy_time_to_first_token_seconds",
    "Time from request arrival to the first generated token of a stream.",
    ["provider", "model"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter("llm_proxy_tokens", "Tokens metered, by type.", ["provider", "model", "type"])
COST = Counter("llm_proxy_cost_usd", "Cost in USD at catalog or configured prices.", ["provider", "model"])
UPSTREAM_ERRORS = Counter(
    "llm_proxy_upstream_errors", "Failures talking to an upstream provider.", ["provider", "type"]
)
IN_FLIGHT = Gauge("llm_proxy_requests_in_flight", "Requests being handled right now.")
OVERHEAD = Histogram(
    "llm_proxy_gateway_overhead_seconds",
    "Time the gateway itself added before the response started (total minus upstream).",
    buckets=_OVERHEAD_BUCKETS,
)
LOG_QUEUE_DEPTH = Gauge("llm_proxy_log_queue_depth", "Request-log rows waiting to be written.")
LOG_DROPPED = Counter("llm_proxy_log_dropped", "Request-log rows dropped because the queue was full.")


class Series:
    """The labelled children for one (endpoint, provider, model), resolved once.

    ``Counter.labels()`` validates and locks on every call; the label sets are bounded, so
    the children are looked up once and kept.
    """

    __slots__ = ("duration", "ttft", "prompt", "completion", "reasoning", "cached", "cost", "_requests", "_key")

    def __init__(self, endpoint: str, provider: str, model: str) -> None:
        self._key = (endpoint, provider, model)
        self.duration = REQUEST_DURATION.labels(endpoint, provider, model)
        self.ttft = TTFT.labels(provider, model)
        self.prompt = TOKENS.labels(provider, model, "prompt")
        self.completion = TOKENS.labels(provider, model, "completion")
        self.reasoning = TOKENS.labels(provider, model, "reasoning")
        self.cached = TOKENS.labels(provider, model, "cached")
        self.cost = COST.labels(provider, model)
        self._requests: dict[int, Any] = {}

    def requests(self, status: int) -> Any:
        child = self._requests.get(status)
        if child is None:
            child = self._requests[status] = REQUESTS.labels(*self._key, str(status))
        return child


_SERIES: dict[tuple[str, str, str], Series] = {}


def series(endpoint: str, provider: str, model: str) -> Series:
    key = (endpoint, provider, model)
    found = _SERIES.get(key)
    if found is None:
        found = _SERIES[key] = Series(endpoint, provider, model)
    return found
