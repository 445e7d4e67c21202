"""Prometheus metrics of one node, in a registry of its own (several nodes may run in
one process when embedded)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, node_id: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.node_id = node_id
        self.proposals = Counter(
            "raftkv_proposals", "Entries this node proposed.", registry=registry
        )
        self.applied = Counter(
            "raftkv_applied_entries", "Committed entries applied.", registry=registry
        )
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
        self.fsync_seconds = Histogram(
            "raftkv_fsync_seconds",
            "Latency of one WAL fsync (one per batch of entries).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
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
        self.requests = Counter(
            "raftkv_requests",
            "Client requests by API and outcome.",
            ["api", "status"],
            registry=registry,
        )

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
