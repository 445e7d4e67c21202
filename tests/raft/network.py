"""An in-memory cluster of RawNodes for scripted tests of the core.

Each node has a MemoryStorage that the harness treats as durable at once; messages
go into a queue that `deliver`/`stabilize` drain. `cut`, `isolate`, `drop` and
`recover` shape what gets through.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

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
    Role,
)


@dataclass
class Node:
    raw: RawNode
    storage: MemoryStorage
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    removed: bool = False


class Network:
    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        configure: Callable[[int], Config] | None = None,
        bootstrap: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.configure = configure or (lambda node_id: Config(id=node_id))
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.drop_types: set[MessageType] = set()
        self.delivered: list[Message] = []
        for node_id in range(1, size + 1):
            self.add_node(node_id)
            if bootstrap:
                self.nodes[node_id].raw.bootstrap(
                    [ConfChange(ConfChangeType.ADD_NODE, peer) for peer in range(1, size + 1)]
                )
        self.process()

    def add_node(self, node_id: int, storage: MemoryStorage | None = None) -> Node:
        storage = storage or MemoryStorage()
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
            for node in self.nodes.values():
                if node.removed or not node.raw.has_ready():
                    continue
                progressed = True
                rd = node.raw.ready()
                if rd.snapshot is not None:
                    node.storage.apply_snapshot(rd.snapshot)
                node.storage.append(rd.entries)
                if rd.hard_state is not None:
                    node.storage.set_hard_state(rd.hard_state)
                self.queue.extend(rd.early_messages)
                self.queue.extend(rd.messages)
                for entry in rd.committed_entries:
                    node.applied.append(entry)
                    if entry.type == EntryType.CONF_CHANGE:
                        node.raw.apply_conf_change(ConfChange.decode(entry.data))
                node.read_states.extend(rd.read_states)
                node.raw.advance(rd)

    def deliver(self, count: int | None = None) -> int:
        """Deliver queued messages (all, or the first `count`); returns how many."""
        self.process()
        delivered = 0
        while self.queue and (count is None or delivered < count):
            message = self.queue.pop(0)
            delivered += 1
            if not self._passes(message):
                continue
            target = self.nodes.get(message.to)
            if target is None or target.removed:
                continue
            self.delivered.append(message)
            target.raw.step(message)
            if count is None:
                self.process()
        self.process()
        return delivered

    def stabilize(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            self.process()
            if not self.queue:
                return
            self.deliver()

    def _passes(self, message: Message) -> bool:
        if message.type in self.drop_types:
            return False
        return (message.frm, message.to) not in self.cut_links

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

    def campaign(self, node_id: int) -> None:
        self.nodes[node_id].raw.campaign()
        self.stabilize()

    def propose(self, node_id: int, data: bytes) -> None:
        self.nodes[node_id].raw.propose(data)
        self.stabilize()

    # --- faults ----------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def recover(self) -> None:
        self.cut_links.clear()
        self.drop_types.clear()

    # --- queries ---------------------------------------------------------------------

    def leader(self) -> int | None:
        leaders = [i for i, n in self.nodes.items() if not n.removed and n.raw.role is Role.LEADER]
        return max(leaders, key=lambda i: self.nodes[i].raw.term) if leaders else None

    def log_of(self, node_id: int) -> list[tuple[int, bytes]]:
        storage = self.nodes[node_id].storage
        first, last = storage.first_index(), storage.last_index()
        return [(e.term, e.data) for e in storage.entries(first, last + 1)] if last >= first else []

    def applied_data(self, node_id: int) -> list[bytes]:
        return [
            e.data for e in self.nodes[node_id].applied if e.type == EntryType.NORMAL and e.data
        ]
