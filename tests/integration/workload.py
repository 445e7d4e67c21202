"""Client load for integration tests: threads that write over REST to random nodes
and remember what each answer promised.

A write's outcome is one of three:

- acknowledged (204): it must be in the store forever after;
- not applied: the node refused the connection (nothing was sent), or answered 503
  saying that the write was withdrawn before it was proposed ("the write was not
  applied"): it must never appear;
- unknown (any other error, a timeout, a connection dropped mid-request): it may or
  may not have been applied, but if it was, with the value that was sent.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

from .cluster import Cluster, request

#: The phrase of a 503 that promises the write was withdrawn before it was proposed.
NOT_APPLIED_PHRASE = "the write was not applied"


@dataclass
class WriteOutcomes:
    """What the writers were told, by key; each key was written once, with `sent[key]`."""

    sent: dict[str, str] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    not_applied: set[str] = field(default_factory=set)
    unknown: dict[str, str] = field(default_factory=dict)

    def merge(self, other: WriteOutcomes) -> None:
        self.sent.update(other.sent)
        self.acknowledged |= other.acknowledged
        self.not_applied |= other.not_applied
        self.unknown.update(other.unknown)

    def summary(self) -> str:
        return (
            f"{len(self.sent)} writes: {len(self.acknowledged)} acknowledged, "
            f"{len(self.not_applied)} not applied, {len(self.unknown)} unknown"
        )

    def problems_in(self, stored: dict[str, str], prefix: str) -> list[str]:
        """Every way `stored` (the keys under `prefix` read back) breaks a promise."""
        problems = []
        for key in sorted(self.acknowledged):
            if stored.get(key) != self.sent[key]:
                problems.append(
                    f"acknowledged write lost: {key}={self.sent[key]!r}, read {stored.get(key)!r}"
                )
        for key in sorted(self.not_applied & stored.keys()):
            problems.append(f"write answered 'not applied' is present: {key}={stored[key]!r}")
        for key, value in sorted(stored.items()):
            if key.startswith(prefix) and self.sent.get(key) != value:
                problems.append(f"{key}={value!r} was never written (sent {self.sent.get(key)!r})")
        return problems


def put_outcome(cluster: Cluster, node_id: int, key: str, value: str, timeout: float) -> str:
    """PUT one key; returns "acknowledged", "not applied" or the unknown outcome's cause."""
    try:
        reply = request(cluster.members[node_id].port, "PUT", "/" + quote(key), value, timeout)
    except ConnectionRefusedError:
        return "not applied"
    except OSError as exc:
        return f"unknown: {exc!r}"
    if reply.status == 204:
        return "acknowledged"
    if reply.status == 503 and NOT_APPLIED_PHRASE in _error_text(reply.body):
        return "not applied"
    return f"unknown: {reply.status} {reply.body[:200]!r}"


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


class Writers:
    """Threads that PUT unique keys (`<prefix><thread>-<n>`) to random nodes until
    stopped. Use as a context manager: the threads are always joined.

    `targets`, if given, names the nodes to write to, asked before every write (for
    a cluster whose membership changes); by default, every member."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        prefix: str,
        seed: int,
        threads: int = 4,
        timeout_s: float = 8.0,
        targets: Callable[[], list[int]] | None = None,
    ) -> None:
        self.cluster = cluster
        self._targets = targets or (lambda: list(cluster.members))
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._outcomes = [WriteOutcomes() for _ in range(threads)]
        self._acknowledged_counts = [0] * threads
        self._threads = [
            threading.Thread(
                target=self._write, args=(number, random.Random(seed * 1000 + number)), daemon=True
            )
            for number in range(threads)
        ]

    def _write(self, number: int, rng: random.Random) -> None:
        outcomes = self._outcomes[number]
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            node_id = rng.choice(self._targets())
            key = f"{self.prefix}{number}-{sequence:06d}"
            value = f"{key}@{node_id}:{rng.getrandbits(32):08x}"
            outcomes.sent[key] = value
            outcome = put_outcome(self.cluster, node_id, key, value, self.timeout_s)
            if outcome == "acknowledged":
                outcomes.acknowledged.add(key)
                self._acknowledged_counts[number] += 1
            elif outcome == "not applied":
                outcomes.not_applied.add(key)
                time.sleep(0.02)  # Mostly a node that is down: do not spin on it.
            else:
                outcomes.unknown[key] = outcome

    @property
    def acknowledged_count(self) -> int:
        return sum(self._acknowledged_counts)

    def wait_acknowledged(self, more: int, timeout: float = 30.0) -> None:
        """Wait until `more` writes beyond the current count were acknowledged."""
        target = self.acknowledged_count + more
        deadline = time.monotonic() + timeout
        while self.acknowledged_count < target:
            assert time.monotonic() < deadline, (
                f"only {self.acknowledged_count} of {target} writes acknowledged in {timeout} s"
            )
            time.sleep(0.05)

    @contextmanager
    def running(self) -> Iterator[Writers]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=self.timeout_s + 10)
            assert not any(thread.is_alive() for thread in self._threads), "a writer hung"

    def outcomes(self) -> WriteOutcomes:
        merged = WriteOutcomes()
        for outcomes in self._outcomes:
            merged.merge(outcomes)
        return merged


def check_promises(cluster: Cluster, writers: Writers, node_ids: list[int]) -> None:
    """Read every key of the writers back, linearizably, from each of `node_ids`,
    and check every promise their answers made."""
    outcomes = writers.outcomes()
    print(outcomes.summary())
    for node_id in node_ids:
        stored = cluster.scan(node_id, writers.prefix)
        problems = outcomes.problems_in(stored, writers.prefix)
        assert not problems, f"node {node_id}: {len(problems)} problems:\n" + "\n".join(
            problems[:20]
        )
