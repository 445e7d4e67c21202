"""Simulated clients and the history of what they saw.

Each client runs one operation at a time: a put or an append of a unique value, or
a linearizable read, on one of a few keys, sent to one node. A write completes when
the node it was sent to applies it; a read completes when that node has applied up
to the read index the core returned. A client whose write times out (its node
crashed, its proposal was lost) cannot know whether the write happened, so it sends
it again under the same operation id to another node, as a client with an
exactly-once session would. Only when the retries run out does the write go into
the history with an unknown outcome, and the client continues under a new client
id, as a crashed process would be replaced. A read that is given up on changed nothing
and is left out of the history.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .kv import APPEND, GET, PUT

if TYPE_CHECKING:
    from .cluster import Cluster

# Called once when an operation completes or is refused.
OpCallback = Callable[["ClientOp"], None]


@dataclass(slots=True, eq=False)
class ClientOp:
    op_id: str
    client_id: int
    kind: str
    key: str
    #: The written value (None for a read).
    value: str | None
    call_time: float
    node_id: int
    on_done: OpCallback | None = None
    #: Read result once complete (None also means "key absent").
    output: str | None = None
    return_time: float | None = None
    done: bool = False
    #: 1 for the first send; a write that timed out is sent again under the same id.
    attempt: int = 1
    #: Refused at once by the node (nothing was proposed): leaves no record.
    refused: bool = False
    #: For a read: the index the core answered, once known.
    read_index: int | None = None

    @property
    def is_write(self) -> bool:
        return self.kind != GET


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    op_id: str
    client_id: int
    kind: str
    key: str
    input: str | None
    output: str | None
    call_time: float
    #: None when the outcome is unknown (a write that was given up on).
    return_time: float | None


@dataclass(slots=True)
class History:
    records: list[HistoryRecord] = field(default_factory=list)
    completed_writes: int = 0
    completed_reads: int = 0
    unknown_writes: int = 0

    def complete(self, op: ClientOp) -> None:
        assert op.done and op.return_time is not None
        self.records.append(
            HistoryRecord(
                op.op_id,
                op.client_id,
                op.kind,
                op.key,
                op.value,
                op.output,
                op.call_time,
                op.return_time,
            )
        )
        if op.is_write:
            self.completed_writes += 1
        else:
            self.completed_reads += 1

    def abandon(self, op: ClientOp) -> None:
        """The client stops waiting for `op`; a write's outcome stays unknown."""
        if op.is_write:
            self.records.append(
                HistoryRecord(
                    op.op_id, op.client_id, op.kind, op.key, op.value, None, op.call_time, None
                )
            )
            self.unknown_writes += 1


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    clients: int = 3
    keys: tuple[str, ...] = ("x", "y", "z")
    #: Pause between one operation's end and the client's next call.
    max_think_units: int = 20
    #: How long a client waits for one attempt of an operation.
    timeout_units: int = 200
    #: A write that times out is sent again, with the same operation id, to another
    #: node (the store applies an id once), up to this many attempts in all. Each
    #: retry turns what would be an unknown outcome into a known one, which keeps the
    #: linearizability search small.
    max_write_attempts: int = 5
    read_fraction: float = 0.4
    append_fraction: float = 0.3
    #: How often a client sends to the node it believes leads (else a random node).
    leader_affinity: float = 0.6


class Workload:
    """Drives the clients through the cluster's scheduler."""

    def __init__(self, cluster: Cluster, rng: random.Random, config: WorkloadConfig) -> None:
        self._cluster = cluster
        self._rng = rng
        self.config = config
        self.history = History()
        self.active = True
        self._next_client_id = 1
        self._op_seq = 0
        self.retries = 0
        self._pending: dict[int, ClientOp] = {}
        self._client_ids: dict[int, int] = {}
        for slot in range(config.clients):
            self._client_ids[slot] = self._new_client_id()
            cluster.schedule(rng.randint(0, config.max_think_units), self._act, slot)

    def _new_client_id(self) -> int:
        client_id = self._next_client_id
        self._next_client_id += 1
        return client_id

    @property
    def pending_ops(self) -> list[ClientOp]:
        return list(self._pending.values())

    def _act(self, slot: int) -> None:
        if not self.active:
            return
        cluster = self._cluster
        rng = self._rng
        node_id = self._choose_node()
        if node_id is None:
            cluster.schedule(self.config.max_think_units, self._act, slot)
            return
        self._op_seq += 1
        roll = rng.random()
        if roll < self.config.read_fraction:
            kind = GET
            value = None
        else:
            kind = APPEND if roll < self.config.read_fraction + self.config.append_fraction else PUT
            value = f"{self._op_seq}." if kind == APPEND else f"v{self._op_seq}"
        op = ClientOp(
            op_id=f"op{self._op_seq}",
            client_id=self._client_ids[slot],
            kind=kind,
            key=rng.choice(self.config.keys),
            value=value,
            call_time=cluster.history_time(),
            node_id=node_id,
            on_done=lambda done: self._finished(slot, done),
        )
        self._pending[slot] = op
        cluster.schedule(self.config.timeout_units, self._timeout, slot, op, op.attempt)
        cluster.submit(op)

    def _choose_node(self) -> int | None:
        cluster = self._cluster
        candidates = cluster.live_node_ids()
        if not candidates:
            return None
        leader = cluster.leader_id()
        if leader is not None and self._rng.random() < self.config.leader_affinity:
            return leader
        return self._rng.choice(candidates)

    def _finished(self, slot: int, op: ClientOp) -> None:
        if op.refused and op.attempt > 1:
            # A refused retry says nothing of the earlier attempts: one of them may
            # still commit, so the write stays pending and is sent again.
            op.done = False
            op.refused = False
            self._cluster.schedule(self._think_units(), self._retry, slot, op)
            return
        if self._pending.get(slot) is op:
            del self._pending[slot]
        # A refused request (no leader known, a transfer in progress) was never
        # proposed, so it never happened and leaves no record.
        if not op.refused:
            self.history.complete(op)
        self._next(slot)

    def _timeout(self, slot: int, op: ClientOp, attempt: int) -> None:
        if op.done or op.attempt != attempt:
            return
        self._cluster.forget(op)
        if op.is_write and op.attempt < self.config.max_write_attempts:
            self._retry(slot, op)
        else:
            self._give_up(slot, op)

    def _retry(self, slot: int, op: ClientOp) -> None:
        if op.done:
            return
        self._cluster.forget(op)
        op.attempt += 1
        self.retries += 1
        self._cluster.schedule(self.config.timeout_units, self._timeout, slot, op, op.attempt)
        node_id = self._choose_node()
        if node_id is not None:
            op.node_id = node_id
            self._cluster.submit(op)

    def _give_up(self, slot: int, op: ClientOp) -> None:
        self._cluster.forget(op)
        op.done = True
        self._pending.pop(slot, None)
        self.history.abandon(op)
        if op.is_write:
            self._client_ids[slot] = self._new_client_id()
        self._next(slot)

    def _think_units(self) -> int:
        return self._rng.randint(1, self.config.max_think_units)

    def _next(self, slot: int) -> None:
        self._cluster.schedule(self._think_units(), self._act, slot)

    def stop(self) -> None:
        """Issue no new operations; the pending ones may still complete."""
        self.active = False

    def abandon_pending(self) -> None:
        """Give up on every operation still pending (the end of a run)."""
        self.active = False
        for slot, op in list(self._pending.items()):
            self._give_up(slot, op)
