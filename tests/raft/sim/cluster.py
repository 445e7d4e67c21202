"""A simulated cluster of `raftkv.raft` nodes, driven one event at a time.

Theory of operation. Simulated time is an integer count of units; a node's clock
ticks every `TICK_UNITS`. Everything that happens is an event in one heap ordered by
(time, sequence number): a node's tick, the delivery of a message, a node taking a
`Ready`, the end of the write that persists it, a client's next call, a fault. A
step is one event. All randomness comes from one `random.Random(seed)` (each
`RawNode` gets its own rng drawn from it), so a seed replays exactly.

Each node is a host for one `RawNode`, following the host contract of `raftkv.raft`:

- `ready()` sends `early_messages` at once and starts writing entries, hard state
  and snapshot; the write becomes durable `fsync` units later. A crash before then
  loses it. The node's `MemoryStorage` is its disk: it changes only when a write
  becomes durable (and on compaction), and it is all that survives a crash.
- When the write is durable: send `messages`, apply committed entries to the node's
  `KVStore`, answer read states, `advance`. With `apply_before_persist` (the
  server's order) committed entries are applied and reads answered when the Ready
  is taken instead, before the write.
- Input that arrives while a write is in flight is stepped at once
  (`input_while_persisting`, which `RawNode` allows) or queued until `advance`.
  A paused process queues everything until it resumes.

Crashes can be armed to strike at a chosen point of a Ready (`CrashPoint`): with
the write in flight, with only the entries of it on disk, or right after the
messages that promise it (votes, acknowledgements) went out.

The safety checks sit where the state they constrain changes: a leader is checked
when its soft state says it leads, a log when a write makes entries durable, the
committed log when a hard state or an applied entry reveals commits. So after every
step the properties of `invariants` hold over everything observed so far.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raftkv.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftError,
    RawNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
)

from .invariants import (
    CommittedLog,
    ElectionSafety,
    LogMatching,
    SafetyViolation,
    check_apply_order,
    check_truncation,
)
from .kv import Command, KVStore
from .network import Network
from .workload import ClientOp

TICK_UNITS = 10
TRACE_EVENTS = 60
_FORWARDED_TYPES = frozenset(
    {MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER}
)


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"
    #: Applied its own removal from the membership: no longer driven.
    REMOVED = "removed"
    #: Created for a membership change that was refused: never part of the cluster.
    DISCARDED = "discarded"


class CrashPoint(enum.Enum):
    #: After the early messages went out, before the write is durable: the write
    #: is lost although a leader's appends were sent.
    MID_WRITE = "mid_write"
    #: After the write is durable and the messages that promise it (votes,
    #: append acknowledgements) were sent, before applying and `advance`.
    AFTER_SEND = "after_send"
    #: As AFTER_SEND, at a Ready that grants a vote.
    AFTER_VOTE = "after_vote"
    #: While the write becomes durable: the entries reached the disk, the hard
    #: state (term, vote, commit) did not.
    TORN_WRITE = "torn_write"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    nodes: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_inflight_msgs: int = 256
    max_size_per_msg_bytes: int = 1 << 20
    max_inflight_bytes: int = 0
    max_uncommitted_entries_bytes: int = 0
    pre_vote: bool = True
    check_quorum: bool = True
    #: Step input into a node while its Ready is being persisted (RawNode allows any
    #: input but `ready()` between `ready()` and `advance()`), rather than queue it.
    input_while_persisting: bool = True
    #: Apply committed entries and answer reads as soon as the Ready is taken,
    #: before its write is durable, as the server does (they are durable on a
    #: quorum), rather than after the write (the order of the host contract).
    apply_before_persist: bool = False
    #: Send `take_early_messages()` after input taken while a Ready is persisting.
    send_early_while_persisting: bool = False
    #: Apply `take_committed_entries()` after input taken while a Ready is
    #: persisting, as the server does. Only with `apply_before_persist`: the
    #: Ready's own committed entries must be applied first.
    apply_while_persisting: bool = False
    #: Also take committed entries outside a Ready (on input), and when a Ready's
    #: write is durable, after `persisted()` (before `advance()`), as the server
    #: does. Only with `apply_while_persisting`.
    apply_outside_ready: bool = False
    #: Take no Ready for a new commit index alone (`has_ready(commit_alone=False)`):
    #: it is persisted with the next Ready's other work, as the server does.
    commit_alone_waits: bool = False
    #: `Config.eager_commit`: off, followers learn most commits from the next
    #: append or heartbeat, as on the server.
    eager_commit: bool = True
    #: A write that must be fsynced takes 1..this many units.
    max_fsync_units: int = 3
    #: A node takes its Ready 0..this many units after new input (batching).
    max_ready_delay_units: int = 1
    #: Each tick comes TICK_UNITS +- this many units after the previous one.
    tick_jitter_units: int = 2
    #: How often a send that fails (link cut, peer down) is reported to the core.
    report_unreachable_probability: float = 0.3
    #: Print every event as it runs (for replaying one seed by hand).
    trace: bool = False


class SimNode:
    """One simulated host process and its disk."""

    def __init__(self, node_id: int, initial_member: bool) -> None:
        self.id = node_id
        self.initial_member = initial_member
        #: The disk: durable log, hard state and snapshot. Survives crashes.
        self.storage = MemoryStorage()
        self.state = NodeState.DOWN
        #: Bumped on every start and stop, so events of a dead process are ignored.
        self.incarnation = 0
        self.rn: RawNode | None = None
        self.kv = KVStore()
        self.conf_state = ConfState()
        #: Term and commit index of the durable hard state.
        self.term = 0
        self.commit = 0
        #: The highest commit index any Ready reported (durable or not yet).
        self.commit_seen = 0
        self.role = Role.FOLLOWER
        self.leader_id = NONE
        #: A Ready is between `ready()` and `advance()` (its write is in flight).
        self.busy = False
        self.ready_scheduled = False
        self.applied_own_removal = False
        #: A crash armed to strike at a chosen point of the next Ready, and the delay
        #: before the restart that follows it.
        self.armed_crash: tuple[CrashPoint, int] | None = None
        #: The process is frozen until this time.
        self.paused_until = 0
        #: Input that arrived while the node could not take it (paused, or busy
        #: without `input_while_persisting`), in arrival order.
        self.inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self.waiting_writes: dict[str, ClientOp] = {}
        self.waiting_read_index: dict[bytes, ClientOp] = {}
        self.waiting_apply: list[ClientOp] = []

    @property
    def raw(self) -> RawNode:
        assert self.rn is not None, f"node {self.id} is {self.state.value}"
        return self.rn

    def durable_log(self) -> list[Entry]:
        storage = self.storage
        first, last = storage.first_index(), storage.last_index()
        return storage.entries(first, last + 1) if last >= first else []

    def __repr__(self) -> str:
        return (
            f"<node {self.id} {self.state.value} {self.role.name} term={self.term} "
            f"commit={self.commit} applied={self.kv.applied_index}>"
        )


class Cluster:
    def __init__(self, seed: int, config: ClusterConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.network = Network(random.Random(self.rng.getrandbits(64)))
        self.time = 0
        self.steps = 0
        self.stats: Counter[str] = Counter()
        self.nodes: dict[int, SimNode] = {}
        self.election_safety = ElectionSafety()
        self.log_matching = LogMatching()
        self.committed = CommittedLog()
        self.trace: deque[tuple[int, str, tuple[Any, ...]]] = deque(maxlen=TRACE_EVENTS)
        self._events: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        self._history_time = 0.0
        #: Operation id -> history time at which some node first applied it.
        self.first_applied_at: dict[str, float] = {}
        self.initial_members = list(range(1, config.nodes + 1))
        for node_id in self.initial_members:
            self.nodes[node_id] = SimNode(node_id, initial_member=True)
            self._start(self.nodes[node_id])

    # --- the event loop --------------------------------------------------------------

    def schedule(self, delay_units: int, action: Callable[..., None], *args: Any) -> None:
        assert delay_units >= 0
        self._sequence += 1
        heapq.heappush(self._events, (self.time + delay_units, self._sequence, action, args))

    def step(self) -> None:
        time, _, action, args = heapq.heappop(self._events)
        self.time = time
        self.steps += 1
        self.trace.append((time, action.__name__, args))
        if self.config.trace:
            print(f"t={time} {action.__name__}{args!r}")
        action(*args)

    def history_time(self) -> float:
        """A timestamp for a client call or return: the simulated time plus a
        fraction that orders calls and returns within one time unit as they
        happened, so that no two are ever equal."""
        stamp = max(float(self.time), self._history_time + 0.001)
        assert stamp < self.time + 1, "more than 999 calls and returns in one time unit"
        self._history_time = stamp
        return stamp

    def run_steps(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def run_for(self, units: int) -> None:
        deadline = self.time + units
        while self._events and self._events[0][0] <= deadline:
            self.step()
        self.time = deadline

    def run_until(self, done: Callable[[], bool], max_units: int) -> bool:
        """Run until `done()` holds (checked after each step) or time runs out."""
        deadline = self.time + max_units
        while not done():
            if not self._events or self._events[0][0] > deadline:
                return False
            self.step()
        return True

    def format_trace(self) -> str:
        return "\n".join(f"  t={time} {name}{args!r}" for time, name, args in self.trace)

    # --- queries ---------------------------------------------------------------------

    def live_node_ids(self) -> list[int]:
        return [node_id for node_id, node in self.nodes.items() if node.state is NodeState.UP]

    def leader_id(self) -> int | None:
        """The live node that leads the highest term, as far as its host knows."""
        best: SimNode | None = None
        for node in self.nodes.values():
            if (
                node.state is NodeState.UP
                and node.role is Role.LEADER
                and (best is None or node.raw.term > best.raw.term)
            ):
                best = node
        return None if best is None else best.id

    def leader(self) -> SimNode | None:
        leader_id = self.leader_id()
        return None if leader_id is None else self.nodes[leader_id]

    # --- node lifecycle --------------------------------------------------------------

    def _start(self, node: SimNode) -> None:
        assert node.state is NodeState.DOWN
        storage = node.storage
        snapshot = storage.snapshot()
        hard_state = storage.hard_state
        if hard_state.commit < snapshot.metadata.index:
            # Only when applying before persisting, or outside a Ready: a snapshot
            # (installed, or taken at an applied index) reached the disk ahead of
            # the hard state that commits it. A snapshot holds committed entries
            # only, so recovery raises the commit index to it, as DiskStorage's
            # recovery does.
            assert self.config.apply_before_persist or self.config.apply_outside_ready, (
                f"node {node.id}: {hard_state} {snapshot}"
            )
            storage.set_hard_state(
                HardState(hard_state.term, hard_state.vote, snapshot.metadata.index)
            )
        config = Config(
            id=node.id,
            election_tick=self.config.election_tick,
            heartbeat_tick=self.config.heartbeat_tick,
            max_inflight_msgs=self.config.max_inflight_msgs,
            max_size_per_msg_bytes=self.config.max_size_per_msg_bytes,
            max_inflight_bytes=self.config.max_inflight_bytes,
            max_uncommitted_entries_bytes=self.config.max_uncommitted_entries_bytes,
            pre_vote=self.config.pre_vote,
            check_quorum=self.config.check_quorum,
            eager_commit=self.config.eager_commit,
            applied=snapshot.metadata.index,
        )
        config.validate()
        node.incarnation += 1
        node.state = NodeState.UP
        node.rn = RawNode(config, storage, random.Random(self.rng.getrandbits(64)))
        node.kv = KVStore.restore(snapshot.data)
        assert node.kv.applied_index == snapshot.metadata.index, "snapshot data and metadata"
        node.conf_state = snapshot.metadata.conf_state
        node.term = storage.hard_state.term
        node.commit = storage.hard_state.commit
        node.commit_seen = node.commit
        node.role = Role.FOLLOWER
        node.leader_id = NONE
        node.busy = False
        node.ready_scheduled = False
        node.applied_own_removal = False
        node.armed_crash = None
        if node.initial_member and storage.last_index() == 0 and storage.hard_state == HardState():
            # The bootstrap never reached the disk: do it again, as a server
            # starting on an empty data directory would.
            node.raw.bootstrap(
                [ConfChange(ConfChangeType.ADD_NODE, member) for member in self.initial_members]
            )
        self.schedule(self.rng.randint(1, TICK_UNITS), self._on_tick, node.id, node.incarnation)
        self._want_ready(node)

    def _stop(self, node: SimNode, state: NodeState) -> None:
        """The process ends: everything but the disk is lost."""
        node.state = state
        node.incarnation += 1
        node.rn = None
        node.kv = KVStore()
        node.busy = False
        node.ready_scheduled = False
        node.role = Role.FOLLOWER
        node.leader_id = NONE
        node.inbox.clear()
        node.paused_until = 0
        # Clients waiting on this process never hear back; they time out.
        node.waiting_writes.clear()
        node.waiting_read_index.clear()
        node.waiting_apply.clear()

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        assert node.state is NodeState.UP
        self.stats["crashes"] += 1
        if node.busy:
            self.stats["crashes_losing_a_write"] += 1
        self._stop(node, NodeState.DOWN)

    def arm_crash(self, node_id: int, point: CrashPoint, restart_after_units: int) -> None:
        """Crash the node at `point` of a coming Ready, then restart it."""
        self.nodes[node_id].armed_crash = (point, restart_after_units)

    def _maybe_crash(self, node: SimNode, point: CrashPoint, worthwhile: bool) -> bool:
        armed = node.armed_crash
        if armed is None or armed[0] is not point or not worthwhile:
            return False
        node.armed_crash = None
        self.stats[f"crashes_{point.value}"] += 1
        self.crash(node.id)
        self.schedule(armed[1], self.restart, node.id)
        return True

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.state is NodeState.DOWN:
            self.stats["restarts"] += 1
            self._start(node)

    def add_node(self, node_id: int) -> SimNode:
        """Start a brand-new, empty node that a membership change will add."""
        assert node_id not in self.nodes, f"node id {node_id} was used before"
        node = SimNode(node_id, initial_member=False)
        self.nodes[node_id] = node
        self._start(node)
        return node

    def discard(self, node_id: int) -> None:
        """Stop a node created for a membership change that was refused."""
        self._stop(self.nodes[node_id], NodeState.DISCARDED)

    # --- input to a node -------------------------------------------------------------

    def _accepts_input(self, node: SimNode) -> bool:
        if node.paused_until > self.time:
            return False
        return not node.busy or self.config.input_while_persisting

    def _input(self, node: SimNode, action: Callable[..., None], *args: Any) -> None:
        if not self._accepts_input(node):
            node.inbox.append((action, args))
            return
        action(*args)
        if node.busy and self.config.send_early_while_persisting:
            # As the server does: a leader's appends for input taken while it
            # persists go out at once (the entries come in the next Ready).
            for message in node.raw.take_early_messages():
                self._send(node, message)
        config = self.config
        if config.apply_while_persisting and (
            (node.busy and config.apply_before_persist)
            or (not node.busy and config.apply_outside_ready)
        ):
            # As the server does: entries committed meanwhile (durable on a quorum)
            # are applied, and reads answered, before the Ready's write is durable,
            # or without waiting for a Ready.
            self._take_committed(
                node, "applied_while_persisting" if node.busy else "applied_outside_ready"
            )
        self._want_ready(node)

    def _take_committed(self, node: SimNode, stat: str) -> None:
        taken = node.raw.take_committed_entries()
        if taken:
            self.stats[stat] += len(taken)
            node.commit_seen = max(node.commit_seen, node.raw.status().hard_state.commit)
            self._apply(node, taken)
            self._serve_reads(node)

    def _drain_inbox(self, node: SimNode) -> None:
        while node.inbox and self._accepts_input(node):
            action, args = node.inbox.popleft()
            action(*args)
        self._want_ready(node)

    def _on_tick(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.incarnation != incarnation:
            return
        # A paused process misses its ticks (as a ticker drops them); it does not
        # catch up on resuming.
        if node.paused_until <= self.time:
            self._input(node, node.raw.tick)
        jitter = self.config.tick_jitter_units
        self.schedule(
            TICK_UNITS + self.rng.randint(-jitter, jitter), self._on_tick, node_id, incarnation
        )

    def pause(self, node_id: int, units: int) -> None:
        """Freeze the node's process (a long GC pause, a stopped VM) for `units`: it
        handles nothing meanwhile, then everything that arrived at once."""
        node = self.nodes[node_id]
        if node.state is not NodeState.UP:
            return
        self.stats["pauses"] += 1
        node.paused_until = max(node.paused_until, self.time + units)
        self.schedule(units, self._resume, node_id, node.incarnation)

    def _resume(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.incarnation == incarnation and node.paused_until <= self.time:
            self._drain_inbox(node)

    def _want_ready(self, node: SimNode) -> None:
        if node.ready_scheduled or node.busy or node.state is not NodeState.UP:
            return
        if self._has_ready(node):
            node.ready_scheduled = True
            delay = self.rng.randint(0, self.config.max_ready_delay_units)
            self.schedule(delay, self._on_ready, node.id, node.incarnation)

    def _has_ready(self, node: SimNode) -> bool:
        return node.raw.has_ready(commit_alone=not self.config.commit_alone_waits)

    # --- the host contract -----------------------------------------------------------

    def _on_ready(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if node.incarnation != incarnation:
            return
        if node.paused_until > self.time:
            self.schedule(node.paused_until - self.time, self._on_ready, node_id, incarnation)
            return
        node.ready_scheduled = False
        rn = node.raw
        if node.busy or not self._has_ready(node):
            return
        rd = rn.ready()
        node.busy = True
        if rd.hard_state is not None:
            node.commit_seen = max(node.commit_seen, rd.hard_state.commit)
        if rd.soft_state is not None:
            self._observe_soft_state(node, rd)
        for message in rd.early_messages:
            self._send(node, message)
        if self.config.apply_before_persist:
            # As the server does: committed entries are durable on a quorum already,
            # so they are applied (and clients answered) before this node's write.
            if rd.snapshot is not None:
                self._persist_snapshot(node, rd.snapshot)
            self._apply_and_read(node, rd)
        if self._maybe_crash(node, CrashPoint.MID_WRITE, rd.must_sync):
            return
        delay = self.rng.randint(1, self.config.max_fsync_units) if rd.must_sync else 0
        self.schedule(delay, self._on_persisted, node_id, incarnation, rd)

    def _on_persisted(self, node_id: int, incarnation: int, rd: Ready) -> None:
        node = self.nodes[node_id]
        if node.incarnation != incarnation:
            return  # The process crashed before its write was durable.
        if node.paused_until > self.time:
            self.schedule(
                node.paused_until - self.time, self._on_persisted, node_id, incarnation, rd
            )
            return
        if rd.snapshot is not None and not self.config.apply_before_persist:
            self._persist_snapshot(node, rd.snapshot)
        if rd.entries:
            self._persist_entries(node, rd.entries)
        # A torn write: the WAL writes the entries record, then the hard state
        # record; a crash between the two keeps only the entries.
        torn = rd.entries and rd.hard_state is not None and rd.snapshot is None
        if self._maybe_crash(node, CrashPoint.TORN_WRITE, bool(torn)):
            return
        if rd.hard_state is not None:
            self._persist_hard_state(node, rd.hard_state)
        for message in rd.messages:
            self._send(node, message)
        if self._maybe_crash(node, CrashPoint.AFTER_SEND, bool(rd.messages)):
            return
        if self._maybe_crash(node, CrashPoint.AFTER_VOTE, _grants_vote(rd.messages)):
            return
        if not self.config.apply_before_persist:
            self._apply_and_read(node, rd)
        if self.config.apply_while_persisting and self.config.apply_outside_ready:
            # As the server does: a leader counts its own write at once, and what
            # that commits is applied before `advance()`.
            node.raw.persisted(rd)
            self._take_committed(node, "applied_when_durable")
        node.raw.advance(rd)
        node.busy = False
        if node.applied_own_removal:
            self.stats["nodes_removed"] += 1
            self._stop(node, NodeState.REMOVED)
            return
        self._drain_inbox(node)

    def _apply_and_read(self, node: SimNode, rd: Ready) -> None:
        self._apply(node, rd.committed_entries)
        for read_state in rd.read_states:
            self._on_read_state(node, read_state)
        self._serve_reads(node)

    def _observe_soft_state(self, node: SimNode, rd: Ready) -> None:
        soft_state = rd.soft_state
        assert soft_state is not None
        node.role = soft_state.role
        node.leader_id = soft_state.leader_id
        if soft_state.role is not Role.LEADER:
            return
        term = node.raw.term
        self.stats["leaders_elected"] += 1
        self.election_safety.observe_leader(node.id, term)
        self.committed.check_leader_log(node.id, _merged_log(node.storage, rd.entries), term)

    def _persist_snapshot(self, node: SimNode, snapshot: Snapshot) -> None:
        metadata = snapshot.metadata
        if metadata.index <= node.kv.applied_index:
            raise SafetyViolation(
                f"node {node.id} is told to install a snapshot at {metadata.index}, but has "
                f"applied up to {node.kv.applied_index}: its state would go back"
            )
        if metadata.index < node.commit:
            raise SafetyViolation(
                f"node {node.id} is told to install a snapshot at {metadata.index} below "
                f"its commit index {node.commit}"
            )
        self.committed.observe_committed_term(node.id, metadata.index, metadata.term, node.term)
        node.storage.apply_snapshot(snapshot)
        node.kv = KVStore.restore(snapshot.data)
        assert node.kv.applied_index == metadata.index, "snapshot data and metadata differ"
        node.conf_state = metadata.conf_state
        self.stats["snapshots_installed"] += 1

    def _persist_entries(self, node: SimNode, entries: list[Entry]) -> None:
        storage = node.storage
        for previous, entry in itertools.pairwise(entries):
            assert entry.index == previous.index + 1, f"Ready entries not contiguous: {entries}"
        skip = storage.first_index() - entries[0].index
        kept = entries[skip:] if skip > 0 else entries
        if not kept:
            return
        overwritten_from = _first_overwritten_index(storage, kept)
        if overwritten_from is not None:
            check_truncation(node.id, overwritten_from, node.commit)
            self.stats["log_truncations"] += 1
        self.log_matching.observe_append(node.id, storage.term(kept[0].index - 1), kept)
        storage.append(kept)

    def _persist_hard_state(self, node: SimNode, hard_state: HardState) -> None:
        storage = node.storage
        old = storage.hard_state
        if hard_state.term < old.term:
            raise SafetyViolation(f"node {node.id}'s term goes back: {old} -> {hard_state}")
        if hard_state.term == old.term and old.vote not in (NONE, hard_state.vote):
            raise SafetyViolation(f"node {node.id} votes twice in one term: {old} -> {hard_state}")
        if hard_state.commit < old.commit:
            raise SafetyViolation(f"node {node.id}'s commit goes back: {old} -> {hard_state}")
        if hard_state.commit > storage.last_index():
            raise SafetyViolation(
                f"node {node.id} persists commit {hard_state.commit} past its durable log "
                f"(last index {storage.last_index()})"
            )
        storage.set_hard_state(hard_state)
        node.term = hard_state.term
        if hard_state.commit > node.commit:
            lo = max(node.commit + 1, storage.first_index())
            if lo <= hard_state.commit:
                for entry in storage.entries(lo, hard_state.commit + 1):
                    self.committed.observe_committed(node.id, entry, hard_state.term)
            node.commit = hard_state.commit

    def _apply(self, node: SimNode, entries: list[Entry]) -> None:
        if not entries:
            return
        check_apply_order(node.id, node.kv.applied_index, node.commit_seen, entries)
        kv = node.kv
        term = node.raw.term
        for entry in entries:
            self.committed.observe_committed(node.id, entry, term)
            if entry.type is EntryType.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                node.conf_state = node.raw.apply_conf_change(change)
                kv.apply(entry.index, None)
                if change.type is ConfChangeType.REMOVE_NODE and change.node_id == node.id:
                    node.applied_own_removal = True
            elif entry.data:
                command = Command.decode(entry.data)
                if kv.apply(entry.index, command) and command.op_id not in self.first_applied_at:
                    self.first_applied_at[command.op_id] = self.history_time()
                op = node.waiting_writes.pop(command.op_id, None)
                if op is not None:
                    self._complete(op)
            else:
                kv.apply(entry.index, None)

    def _on_read_state(self, node: SimNode, read_state: ReadState) -> None:
        op = node.waiting_read_index.pop(read_state.request_ctx, None)
        if op is None:
            return  # A duplicate answer, or one for a read already given up on.
        op.read_index = read_state.index
        node.waiting_apply.append(op)

    def _serve_reads(self, node: SimNode) -> None:
        if not node.waiting_apply:
            return
        applied = node.kv.applied_index
        still_waiting = []
        for op in node.waiting_apply:
            assert op.read_index is not None
            if op.read_index <= applied:
                op.output = node.kv.get(op.key)
                self._complete(op)
            else:
                still_waiting.append(op)
        node.waiting_apply = still_waiting

    # --- the network -----------------------------------------------------------------

    def _send(self, node: SimNode, message: Message) -> None:
        # A forwarded request (a follower passing on a PROP, READ_INDEX or
        # TRANSFER_LEADER) keeps the id of the node that issued it in `frm`, so the
        # link is the sending node's, not the message's `frm`.
        if message.type not in _FORWARDED_TYPES:
            assert message.frm == node.id, f"node {node.id} sends {message}"
        assert message.to != node.id, f"node {node.id} sends a message to itself: {message}"
        self.stats["messages_sent"] += 1
        delays = self.network.plan_delivery(node.id, message.to)
        is_snapshot = message.type is MessageType.SNAP
        if is_snapshot:
            self.stats["snapshots_sent"] += 1
            if not delays:
                self.schedule(
                    1, self._report_snapshot, node.id, node.incarnation, message.to, False
                )
        for copy, delay in enumerate(delays):
            report = is_snapshot and copy == 0
            self.schedule(delay, self._on_deliver, node.id, node.incarnation, message, report)

    def _on_deliver(
        self, sender_id: int, sender_incarnation: int, message: Message, report: bool
    ) -> None:
        dest = self.nodes.get(message.to)
        delivered = (
            dest is not None
            and dest.state is NodeState.UP
            and self.network.link_is_up(sender_id, message.to)
        )
        if report:
            self._report_snapshot(sender_id, sender_incarnation, message.to, delivered)
        if not delivered:
            self.stats["messages_lost"] += 1
            if self.rng.random() < self.config.report_unreachable_probability:
                self._report_unreachable(sender_id, sender_incarnation, message.to)
            return
        assert dest is not None
        self.stats["messages_delivered"] += 1
        self._input(dest, dest.raw.step, message)

    def _report_snapshot(self, sender_id: int, incarnation: int, to: int, ok: bool) -> None:
        sender = self.nodes[sender_id]
        if sender.incarnation == incarnation:
            self._input(sender, sender.raw.report_snapshot, to, ok)

    def _report_unreachable(self, sender_id: int, incarnation: int, to: int) -> None:
        sender = self.nodes.get(sender_id)
        if sender is not None and sender.incarnation == incarnation:
            self._input(sender, sender.raw.report_unreachable, to)

    # --- client requests -------------------------------------------------------------

    def submit(self, op: ClientOp) -> None:
        """Hand a client's request to node `op.node_id`. The op's `on_done` runs when
        it completes, or at once with `op.return_time` None if it is refused."""
        node = self.nodes[op.node_id]
        if node.state is not NodeState.UP:
            self._refuse(op)
            return
        if op.is_write:
            assert op.value is not None
            data = Command(op.op_id, op.kind, op.key, op.value).encode()
            node.waiting_writes[op.op_id] = op
            self._input(node, self._propose, node, op, data)
        else:
            node.waiting_read_index[op.op_id.encode()] = op
            self._input(node, self._read_index, node, op)

    def _propose(self, node: SimNode, op: ClientOp, data: bytes) -> None:
        try:
            node.raw.propose(data)
        except ProposalDropped:
            node.waiting_writes.pop(op.op_id, None)
            self._refuse(op)

    def _read_index(self, node: SimNode, op: ClientOp) -> None:
        try:
            node.raw.read_index(op.op_id.encode())
        except RaftError:
            node.waiting_read_index.pop(op.op_id.encode(), None)
            self._refuse(op)

    def forget(self, op: ClientOp) -> None:
        """The client gave up on `op`: a later answer must not complete it."""
        node = self.nodes[op.node_id]
        node.waiting_writes.pop(op.op_id, None)
        node.waiting_read_index.pop(op.op_id.encode(), None)
        if op in node.waiting_apply:
            node.waiting_apply.remove(op)

    def _complete(self, op: ClientOp) -> None:
        if op.done:
            return
        op.done = True
        op.return_time = self.history_time()
        self.stats["writes_completed" if op.is_write else "reads_completed"] += 1
        if op.on_done is not None:
            op.on_done(op)

    def _refuse(self, op: ClientOp) -> None:
        if op.done:
            return
        op.done = True
        op.refused = True
        self.stats["requests_refused"] += 1
        if op.on_done is not None:
            op.on_done(op)

    # --- operator actions ------------------------------------------------------------

    def propose_conf_change(self, via: int, change: ConfChange) -> bool:
        node = self.nodes[via]
        if node.state is not NodeState.UP:
            return False
        try:
            node.raw.propose_conf_change(change)
        except RaftError:
            return False
        self._want_ready(node)
        self.stats["conf_changes_proposed"] += 1
        return True

    def transfer_leader(self, via: int, transferee: int) -> bool:
        node = self.nodes[via]
        if node.state is not NodeState.UP:
            return False
        try:
            node.raw.transfer_leader(transferee)
        except RaftError:
            return False
        self._want_ready(node)
        self.stats["transfers_requested"] += 1
        return True

    def campaign(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.state is NodeState.UP:
            self._input(node, node.raw.campaign)

    def compact(self, node_id: int, keep_entries: int) -> bool:
        """Snapshot the node's state machine at its applied index and discard its log
        up to `keep_entries` before that, as a server does every so many entries."""
        node = self.nodes[node_id]
        if node.state is not NodeState.UP:
            return False
        storage = node.storage
        applied = node.kv.applied_index
        if applied <= storage.snapshot().metadata.index or applied > storage.last_index():
            # Nothing new to snapshot, or (applying before persisting) the applied
            # entries are not all on this node's disk yet.
            return False
        storage.create_snapshot(applied, node.conf_state, node.kv.snapshot())
        compact_to = applied - keep_entries
        if compact_to >= storage.first_index():
            storage.compact(compact_to)
        self.stats["compactions"] += 1
        return True


def _grants_vote(messages: Sequence[Message]) -> bool:
    return any(message.type is MessageType.VOTE_RESP and not message.reject for message in messages)


def _first_overwritten_index(storage: MemoryStorage, entries: Sequence[Entry]) -> int | None:
    """The first index at which appending `entries` changes or drops an entry that
    `storage` holds, or None if it only adds."""
    last = storage.last_index()
    first = entries[0].index
    if first > last:
        return None
    overlap_last = min(last, entries[-1].index)
    existing = storage.entries(first, overlap_last + 1)
    for old, new in zip(existing, entries, strict=False):
        if old != new:
            return new.index
    if entries[-1].index < last:
        return entries[-1].index + 1
    return None


def _merged_log(storage: MemoryStorage, entries: Sequence[Entry]) -> list[Entry]:
    """The log a node has once `entries` are appended to its durable log."""
    first, last = storage.first_index(), storage.last_index()
    log = storage.entries(first, last + 1) if last >= first else []
    if entries:
        keep = max(0, entries[0].index - first)
        log = log[:keep] + [entry for entry in entries if entry.index >= first]
    return log
