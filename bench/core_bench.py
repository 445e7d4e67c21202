"""Throughput of the consensus core alone: three RawNodes wired in memory.

No disk, no sockets: proposals of 100-byte entries in batches of 64 go to the
leader; an entry counts once it is committed and applied on all three nodes.
Prints a table, then one JSON object as the last line.

    python bench/core_bench.py [--quick] [--entries N]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    MemoryStorage,
    Message,
    RawNode,
    Role,
)


class Cluster:
    def __init__(self, size: int) -> None:
        members = [ConfChange(ConfChangeType.ADD_NODE, i) for i in range(1, size + 1)]
        self.storages = {i: MemoryStorage() for i in range(1, size + 1)}
        self.nodes = {
            i: RawNode(Config(id=i, max_inflight_msgs=4096), self.storages[i], random.Random(i))
            for i in range(1, size + 1)
        }
        for node in self.nodes.values():
            node.bootstrap(members)
        self.applied_entries = {i: 0 for i in self.nodes}
        self.inbox: list[Message] = []
        self.pump()
        self.nodes[1].campaign()
        self.pump()
        assert self.nodes[1].role is Role.LEADER

    def pump(self) -> None:
        while True:
            busy = False
            for node_id, node in self.nodes.items():
                if not node.has_ready():
                    continue
                busy = True
                rd = node.ready()
                storage = self.storages[node_id]
                if rd.snapshot is not None:
                    storage.apply_snapshot(rd.snapshot)
                if rd.entries:
                    storage.append(rd.entries)
                if rd.hard_state is not None:
                    storage.set_hard_state(rd.hard_state)
                self.inbox.extend(rd.early_messages)
                self.inbox.extend(rd.messages)
                self.applied_entries[node_id] += len(rd.committed_entries)
                node.advance(rd)
            if self.inbox:
                busy = True
                inbox, self.inbox = self.inbox, []
                for message in inbox:
                    self.nodes[message.to].step(message)
            if not busy:
                return


def run(total_entries: int, batch: int, value_bytes: int) -> dict[str, float]:
    cluster = Cluster(3)
    leader = cluster.nodes[1]
    payload = [bytes(value_bytes) for _ in range(batch)]
    baseline = dict(cluster.applied_entries)
    started = time.perf_counter()
    proposed = 0
    while proposed < total_entries:
        for _ in range(8):  # several batches per loop turn, as a busy server sees
            leader.propose_many(payload)
            proposed += batch
        cluster.pump()
    elapsed = time.perf_counter() - started
    applied = min(cluster.applied_entries[i] - baseline[i] for i in cluster.nodes)
    assert applied >= proposed, (applied, proposed)
    return {"entries": proposed, "seconds": elapsed, "entries_per_s": proposed / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--entries", type=int, default=0)
    args = parser.parse_args()
    total = args.entries or (50_000 if args.quick else 400_000)
    result = run(total, batch=64, value_bytes=100)
    print(f"{'nodes':>5} {'batch':>5} {'entries':>9} {'seconds':>8} {'entries/s':>11}")
    print(
        f"{3:>5} {64:>5} {result['entries']:>9} {result['seconds']:>8.2f} "
        f"{result['entries_per_s']:>11,.0f}"
    )
    print(json.dumps({"bench": "core", "nodes": 3, "batch": 64, "value_bytes": 100, **result}))


if __name__ == "__main__":
    main()
