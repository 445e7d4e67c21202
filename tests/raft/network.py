"""An in-memory cluster of RawNodes for scripted tests of the core.

Each node has a MemoryStorage that the harness treats as durable at once; messages
go into a queue that `deliver`/`stabilize` drain. `cut`, `cut_one_way`, `isolate`,
`drop_types`, `filters` and `recover` shape what gets through. Every message the
nodes emit is recorded in `sent` (in emission order) and every message stepped
into a node in `delivered`, so tests can count round trips and compare runs.

Each node's state machine is the list of non-empty NORMAL payloads it applied
(`Node.state`); a snapshot's data is that list, msgpack-encoded, so a node that
installs a snapshot ends up with the same state as the node that took it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
)


@dataclass
class Node:
    raw: RawNode
    storage: MemoryStorage
    #: Every committed entry handed to this node's host, in order.
    applied: list[Entry] = field(default_factory=list)
    #: The state machine: the non-empty NORMAL payloads applied, in order.
    state: list[bytes] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    #: Every Ready this node produced (only when the network records them).
    readies: list[Ready] = field(default_factory=list)
    removed: bool = False


def encode_state(state: list[bytes]) -> bytes:
    data: bytes = msgpack.packb(state)
    return data


def decode_state(data: bytes) -> list[bytes]:
    return [bytes(item) for item in msgpack.unpackb(data)] if data else []


class Network:
    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        configure: Callable[[int], Config] | None = None,
        bootstrap: bool = True,
        learners: Iterable[int] = (),
        storages: dict[int, MemoryStorage] | None = None,
        record_readies: bool = False,
        report_snapshots: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.configure = configure or (lambda node_id: Config(id=node_id))
        self.record_readies = record_readies
        #: Whether delivering (or dropping) a SNAP reports it to the sender with
        #: `report_snapshot`, as a real transport does once the transfer ends.
        self.report_snapshots = report_snapshots
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.drop_types: set[MessageType] = set()
        #: Extra drop rules: a message is dropped when any filter returns True.
        self.filters: list[Callable[[Message], bool]] = []
        #: Rewrites applied, in order, to each message that gets through.
        self.rewrites: list[Callable[[Message], Message]] = []
        self.sent: list[Message] = []
        self.delivered: list[Message] = []
        learner_ids = set(learners)
        members = [
            ConfChange(
                ConfChangeType.ADD_LEARNER if peer in learner_ids else ConfChangeType.ADD_NODE,
                peer,
            )
            for peer in range(1, size + 1)
        ]
        storages = storages or {}
        for node_id in range(1, size + 1):
            self.add_node(node_id, storages.get(node_id))
            if bootstrap and node_id not in storages:
                self.nodes[node_id].raw.bootstrap(members)
        self.process()

    def add_node(self, node_id: int, storage: MemoryStorage | None = None) -> Node:
        storage = storage if storage is not None else MemoryStorage()
        config = self.configure(node_id)
        raw = RawNode(config, storage, random.Random(self.rng.random()))
        node = Node(raw, storage)
        self.nodes[node_id] = node
        return node

    # --- driving ---------------------------------------------------------------------

    def process(self) -> None:
        """Run the host contract for every node that has a Ready."""
        progressed = True
        while progressed:
            progressed = False
            for node_id, node in self.nodes.items():
                if node.removed or not node.raw.has_ready():
                    continue
                progressed = True
                self.handle_ready(node_id, node.raw.ready())

    def process_node(self, node_id: int) -> None:
        """Run the host contract for one node only."""
        node = self.nodes[node_id]
        while node.raw.has_ready():
            self.handle_ready(node_id, node.raw.ready())

    def handle_ready(self, node_id: int, rd: Ready) -> None:
        """Carry out one Ready in the order of the host contract, then advance."""
        node = self.nodes[node_id]
        if self.record_readies:
            node.readies.append(rd)
        if rd.snapshot is not None:
            node.storage.apply_snapshot(rd.snapshot)
            node.state = decode_state(rd.snapshot.data)
        node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        self.sent.extend(rd.early_messages)
        self.sent.extend(rd.messages)
        self.queue.extend(rd.early_messages)
        self.queue.extend(rd.messages)
        for entry in rd.committed_entries:
            node.applied.append(entry)
            if entry.type == EntryType.CONF_CHANGE:
                node.raw.apply_conf_change(ConfChange.decode(entry.data))
            elif entry.data:
                node.state.append(entry.data)
        node.read_states.extend(rd.read_states)
        node.raw.advance(rd)

    def deliver(self, count: int | None = None) -> int:
        """Deliver queued messages (all, or the first `count`); returns how many."""
        self.process()
        delivered = 0
        while self.queue and (count is None or delivered < count):
            message = self.queue.pop(0)
            delivered += 1
            self._deliver_one(message)
            if count is None:
                self.process()
        self.process()
        return delivered

    def _deliver_one(self, message: Message) -> None:
        target = self.nodes.get(message.to)
        passes = self._passes(message) and target is not None and not target.removed
        if message.type is MessageType.SNAP and self.report_snapshots:
            sender = self.nodes.get(message.frm)
            if sender is not None and not sender.removed:
                sender.raw.report_snapshot(message.to, passes)
        if not passes or target is None:
            return
        for rewrite in self.rewrites:
            message = rewrite(message)
        self.delivered.append(message)
        target.raw.step(message)

    def stabilize(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            self.process()
            if not self.queue:
                return
            self.deliver()

    def _passes(self, message: Message) -> bool:
        if message.type in self.drop_types:
            return False
        if (message.frm, message.to) in self.cut_links:
            return False
        return not any(drop(message) for drop in self.filters)

    def acknowledge(self, leader_id: int, appends: list[Message]) -> None:
        """Hand a leader's appends to their followers and the followers' answers
        back to the leader, while the leader itself may be mid-Ready."""
        for message in appends:
            self.nodes[message.to].raw.step(message)
        for follower in {message.to for message in appends}:
            self.process_node(follower)
        for message in self.take(MessageType.APP_RESP, process=False):
            self.nodes[leader_id].raw.step(message)

    def take(self, kind: MessageType | None = None, *, process: bool = True) -> list[Message]:
        """Remove and return the queued messages (of one type, or all), after running
        the host contract for every node (unless `process` is False)."""
        if process:
            self.process()
        taken = [m for m in self.queue if kind is None or m.type is kind]
        self.queue = [m for m in self.queue if kind is not None and m.type is not kind]
        return taken

    def tick(self, node_id: int, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[node_id].raw.tick()
        self.process()

    def tick_all(self, times: int = 1, stabilize: bool = True) -> None:
        for _ in range(times):
            for node in self.nodes.values():
                if not node.removed:
                    node.raw.tick()
            if stabilize:
                self.stabilize()
            else:
                self.process()

    def tick_until(self, done: Callable[[], bool], limit: int = 200) -> int:
        """Tick every node (stabilizing after each tick) until `done()`; returns the
        number of ticks it took. Fails if `limit` ticks are not enough."""
        for ticks in range(limit + 1):
            if done():
                return ticks
            self.tick_all()
        raise AssertionError(f"condition not reached within {limit} ticks")

    def campaign(self, node_id: int) -> None:
        self.nodes[node_id].raw.campaign()
        self.stabilize()

    def propose(self, node_id: int, data: bytes) -> None:
        self.nodes[node_id].raw.propose(data)
        self.stabilize()

    def propose_conf_change(self, node_id: int, change: ConfChange) -> None:
        self.nodes[node_id].raw.propose_conf_change(change)
        self.stabilize()

    def compact(self, node_id: int, index: int) -> Snapshot:
        """Snapshot node `node_id`'s state machine at `index` (which it must have
        applied) and compact its log through it, as a host does."""
        node = self.nodes[node_id]
        assert index <= node.raw.status().applied
        applied_through = [e for e in node.applied if e.index <= index]
        state = [e.data for e in applied_through if e.type == EntryType.NORMAL and e.data]
        if node.storage.first_index() > 1:
            # Entries before a snapshot this node installed are not in `applied`.
            state = decode_state(node.storage.snapshot().data) + state
        snapshot = node.storage.create_snapshot(
            index, node.raw.status().conf_state, encode_state(state)
        )
        node.storage.compact(index)
        return snapshot

    # --- faults ----------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))

    def cut_one_way(self, frm: int, to: int) -> None:
        self.cut_links.add((frm, to))

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between nodes of different groups."""
        sets = [set(group) for group in groups]
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in group and b in group for group in sets):
                    self.cut_links.add((a, b))

    def heal(self, *node_ids: int) -> None:
        """Restore every link between the given nodes (both ways)."""
        group = set(node_ids)
        self.cut_links = {(a, b) for a, b in self.cut_links if not (a in group and b in group)}

    def recover(self) -> None:
        self.cut_links.clear()
        self.drop_types.clear()
        self.filters.clear()
        self.rewrites.clear()

    # --- queries ---------------------------------------------------------------------

    def leader(self) -> int | None:
        leaders = [i for i, n in self.nodes.items() if not n.removed and n.raw.role is Role.LEADER]
        return max(leaders, key=lambda i: self.nodes[i].raw.term) if leaders else None

    def log_of(self, node_id: int) -> list[tuple[int, bytes]]:
        storage = self.nodes[node_id].storage
        first, last = storage.first_index(), storage.last_index()
        return [(e.term, e.data) for e in storage.entries(first, last + 1)] if last >= first else []

    def terms_of(self, node_id: int) -> list[int]:
        """The term of every entry in node `node_id`'s stored log, in index order."""
        return [term for term, _ in self.log_of(node_id)]

    def applied_data(self, node_id: int) -> list[bytes]:
        return list(self.nodes[node_id].state)

    def count_sent(self, kind: MessageType, frm: int | None = None, to: int | None = None) -> int:
        return sum(
            1
            for m in self.sent
            if m.type is kind and (frm is None or m.frm == frm) and (to is None or m.to == to)
        )
