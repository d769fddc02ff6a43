"""Every Prometheus metric the gateway exports, in one place.

Label values are bounded: models the config does not know collapse to ``unknown`` and a
request that never reached routing has provider ``none``, so a client sending random model
names cannot blow up the series count.

The per-request series (requests, duration, TTFT, tokens, cost, overhead) are plain numbers
in a custom collector rather than prometheus-client objects: they are only updated from the
event-loop thread, so they need none of the locks that made ten updates per request the
largest cost the gateway controls. They are turned into metric families at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

__all__ = [
    "BREAKER_STATE",
    "CONNECTIONS_SHED",
    "IN_FLIGHT",
    "LOG_DROPPED",
    "LOG_QUEUE_DEPTH",
    "LATENCY_BUCKETS",
    "OVERHEAD_BUCKETS",
    "UPSTREAM_ERRORS",
    "Histogram",
    "Series",
    "observe_overhead",
    "series",
]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

UPSTREAM_ERRORS = Counter(
    "llm_proxy_upstream_errors", "Failures talking to an upstream provider.", ["provider", "type"]
)
CONNECTIONS_SHED = Counter(
    "llm_proxy_connections_shed",
    "Client connections closed or refused by the server: header_timeout, body_timeout, evicted, over_capacity.",
    ["reason"],
)
IN_FLIGHT = Gauge("llm_proxy_requests_in_flight", "Requests being handled right now.")
LOG_QUEUE_DEPTH = Gauge("llm_proxy_log_queue_depth", "Request-log rows waiting to be written.")
LOG_DROPPED = Counter("llm_proxy_log_dropped", "Request-log rows dropped because the queue was full.")
BREAKER_STATE = Gauge(
    "llm_proxy_breaker_state", "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.", ["provider", "model"]
)

_TOKEN_TYPES = ("prompt", "completion", "reasoning", "cached")


class Histogram:
    """Bucket counts and a sum; cumulative counts are computed at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Series:
    """Everything recorded for one (endpoint, provider, model)."""

    __slots__ = ("requests", "duration", "ttft", "tokens", "cost")

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.duration = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.tokens = [0, 0, 0, 0]  # in _TOKEN_TYPES order
        self.cost = 0.0

    def count(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1


_SERIES: dict[tuple[str, str, str], Series] = {}
_OVERHEAD = Histogram(OVERHEAD_BUCKETS)


def series(endpoint: str, provider: str, model: str) -> Series:
    key = (endpoint, provider, model)
    found = _SERIES.get(key)
    if found is None:
        found = _SERIES[key] = Series()
    return found


def observe_overhead(seconds: float) -> None:
    _OVERHEAD.observe(seconds)


class _RequestCollector:
    def collect(self) -> Iterator[Metric]:
        items = list(_SERIES.items())  # a snapshot: a scrape from another thread sees no resizing
        requests = CounterMetricFamily(
            "llm_proxy_requests", "Requests handled, by outcome.", labels=["endpoint", "provider", "model", "status"]
        )
        duration = HistogramMetricFamily(
            "llm_proxy_request_duration_seconds",
            "Time from request arrival to the end of the response.",
            labels=["endpoint", "provider", "model"],
        )
        ttft: dict[tuple[str, str], Histogram] = {}
        tokens: dict[tuple[str, str], list[int]] = {}
        cost: dict[tuple[str, str], float] = {}
        for (endpoint, provider, model), s in items:
            for status, n in list(s.requests.items()):
                requests.add_metric([endpoint, provider, model, str(status)], n)
            duration.add_metric([endpoint, provider, model], s.duration.buckets(), s.duration.total)
            pm = (provider, model)
            ttft.setdefault(pm, Histogram(LATENCY_BUCKETS)).merge(s.ttft)
            acc = tokens.setdefault(pm, [0, 0, 0, 0])
            for i, n in enumerate(s.tokens):
                acc[i] += n
            cost[pm] = cost.get(pm, 0.0) + s.cost
        yield requests
        yield duration
        ttft_family = HistogramMetricFamily(
            "llm_proxy_time_to_first_token_seconds",
            "Time from request arrival to the first generated token of a stream.",
            labels=["provider", "model"],
        )
        for pm, h in ttft.items():
            ttft_family.add_metric(list(pm), h.buckets(), h.total)
        yield ttft_family
        tokens_family = CounterMetricFamily(
            "llm_proxy_tokens", "Tokens metered, by type.", labels=["provider", "model", "type"]
        )
        for pm, counts in tokens.items():
            for kind, n in zip(_TOKEN_TYPES, counts, strict=True):
                tokens_family.add_metric([*pm, kind], n)
        yield tokens_family
        cost_family = CounterMetricFamily(
            "llm_proxy_cost_usd", "Cost in USD at catalog or configured prices.", labels=["provider", "model"]
        )
        for pm, total in cost.items():
            cost_family.add_metric(list(pm), total)
        yield cost_family
        yield HistogramMetricFamily(
            "llm_proxy_gateway_overhead_seconds",
            "Time the gateway itself added before the response started (total minus upstream).",
            buckets=_OVERHEAD.buckets(),
            sum_value=_OVERHEAD.total,
        )


REGISTRY.register(_RequestCollector())
