"""Prometheus metrics of one node, in a registry of its own (several nodes may run in
one process when embedded).

What changes on every request (entries proposed and applied, the fsync latency,
requests by API and outcome) is kept in plain numbers that the event loop thread
bumps, and read by a collector when `/metrics` is scraped: a prometheus-client
`Counter` takes a lock and three Python calls per increment, several times per
write. Everything else is an ordinary prometheus-client metric.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class LatencyHistogram:
    """Bucket counts and a sum, for one thread to observe into."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one for +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative = 0
        buckets = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class Metrics:
    def __init__(self, node_id: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.node_id = node_id
        #: Entries this node proposed, and committed entries it applied.
        self.proposals = 0
        self.applied = 0
        self.fsync_seconds = LatencyHistogram(
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
        )
        #: Responses by (API, status): an HTTP status code for "rest", "ok" or the
        #: error reply's code (ERR, TRYAGAIN, ...) for "resp".
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        registry.register(_HotPath(self))
        self.commit_index = Gauge(
            "raftkv_commit_index", "The commit index this node knows.", registry=registry
        )
        self.applied_index = Gauge(
            "raftkv_applied_index", "The last index applied here.", registry=registry
        )
        self.apply_lag = Gauge(
            "raftkv_apply_lag_entries",
            "Committed entries not yet applied here.",
            registry=registry,
        )
        self.loop_lag_seconds = Histogram(
            "raftkv_event_loop_lag_seconds",
            "How late a 10 ms timer fires: event-loop stalls.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.leader_changes = Counter(
            "raftkv_leader_changes", "Times the known leader changed.", registry=registry
        )
        self.is_leader = Gauge("raftkv_is_leader", "1 on the leader.", registry=registry)
        self.term = Gauge("raftkv_term", "The current Raft term.", registry=registry)
        self.snapshots = Counter(
            "raftkv_snapshots", "State machine snapshots taken.", registry=registry
        )
        self.peer_send_errors = Counter(
            "raftkv_peer_send_errors",
            "Times a peer could not be reached.",
            ["peer"],
            registry=registry,
        )

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


class _HotPath(Collector):
    """The plain numbers of `Metrics`, as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        yield CounterMetricFamily(
            "raftkv_proposals", "Entries this node proposed.", value=metrics.proposals
        )
        yield CounterMetricFamily(
            "raftkv_applied_entries", "Committed entries applied.", value=metrics.applied
        )
        yield metrics.fsync_seconds.family(
            "raftkv_fsync_seconds", "Latency of one WAL fsync (one per batch of entries)."
        )
        requests = CounterMetricFamily(
            "raftkv_requests", "Client requests by API and outcome.", labels=["api", "status"]
        )
        for (api, status), count in sorted(metrics.requests.items()):
            requests.add_metric([api, status], count)
        yield requests
