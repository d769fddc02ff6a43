"""Every Prometheus collector the gateway exports, in one place.

Label values are bounded: models the config does not know collapse to ``unknown`` and a
request that never reached routing has provider ``none``, so a client sending random model
names cannot blow up the series count.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "COST",
    "IN_FLIGHT",
    "LOG_DROPPED",
    "LOG_QUEUE_DEPTH",
    "OVERHEAD",
    "REQUESTS",
    "REQUEST_DURATION",
    "TOKENS",
    "TTFT",
    "UPSTREAM_ERRORS",
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
