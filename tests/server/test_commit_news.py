"""How a new commit index reaches clients and followers, with three real nodes in
one event loop on 127.0.0.1.

- Once an acknowledgement commits a write, the leader answers the write's client
  before it sends any follower an append that carries the new commit index, and
  before it writes that index to its WAL. One
  side's fsyncs are slowed so that the acknowledgement that commits arrives either
  after the leader's own fsync (the Ready applies the entry) or during it (the
  acknowledgement applies it).
- A follower learns most commits with its next append or heartbeat, but a write
  forwarded by a follower is answered there without waiting for a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from raftkv.kv import encode_put
from raftkv.raft import Entry, HardState, Message, MessageType, Role
from raftkv.server._node import Node
from raftkv.server._options import NodeOptions
from raftkv.transport import _transport

from ..ports import free_ports

SLOW_FSYNC_S = 0.03


def slow_fsyncs(node: Node) -> None:
    fsyncer = node._fsyncer
    assert fsyncer is not None and fsyncer.via == "thread"
    sync = fsyncer._sync_in_thread

    def slow() -> float:
        time.sleep(SLOW_FSYNC_S)
        return sync()

    fsyncer._sync_in_thread = slow  # type: ignore[method-assign]


async def elect(nodes: list[Node], within: float = 10) -> Node:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        leaders = [node for node in nodes if node.role is Role.LEADER]
        if leaders and all(node.leader_id == leaders[0].id for node in nodes):
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no leader within {within} s")


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, **options: Any) -> AsyncIterator[list[Node]]:
    ports = free_ports(3)
    peers = tuple(f"http://127.0.0.1:{port}" for port in ports)
    nodes = [
        Node(NodeOptions(id=i, cluster=peers, port=0, data_dir=tmp_path / f"n{i}", **options))
        for i in (1, 2, 3)
    ]
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def writes_and_frames(tmp_path: Path, slow: str, monkeypatch: Any) -> list[tuple]:
    """Ten writes, one at a time, through the leader; returns what it did in order:
    ("answered", index) when a write's client hears back, ("sent", commit) for
    every frame of appends it writes to a follower, ("heartbeat", commit) for
    every frame of heartbeats, ("wal", commit) for every WAL write of a new commit
    index alone."""
    events: list[tuple] = []
    async with cluster(tmp_path, tick_ms=20, fsync="thread") as nodes:
        leader = await elect(nodes)
        for node in nodes:
            if (node is leader) == (slow == "leader"):
                slow_fsyncs(node)
        write_batch = _transport._Peer.write_batch

        def recording(peer: Any, link: Any, batch: list[Message]) -> None:
            if peer.owner is leader._transport:
                for kind, what in ((MessageType.APP, "sent"), (MessageType.HEARTBEAT, "heartbeat")):
                    commits = [m.commit for m in batch if m.type is kind]
                    if commits:
                        events.append((what, max(commits)))
            write_batch(peer, link, batch)

        monkeypatch.setattr(_transport._Peer, "write_batch", recording)
        storage = leader._storage
        append = storage.append

        def recording_wal(entries: list[Entry], hard_state: HardState | None = None) -> None:
            if not entries and hard_state is not None:
                events.append(("wal", hard_state.commit))
            append(entries, hard_state)

        monkeypatch.setattr(storage, "append", recording_wal)
        for k in range(10):
            future = leader.submit_write(encode_put(b"key%d" % k, b"value"))
            future.add_done_callback(
                lambda _, leader=leader: events.append(("answered", leader.applied_index))
            )
            await asyncio.wait_for(future, 10)
            await asyncio.sleep(SLOW_FSYNC_S * 2)  # the followers hear of the commit
    return events


@pytest.mark.parametrize("slow", ["followers", "leader"])
def test_the_client_is_answered_before_the_followers_learn_the_commit(
    tmp_path: Path, slow: str, monkeypatch: Any
) -> None:
    events = asyncio.run(writes_and_frames(tmp_path, slow, monkeypatch))
    answers = [(at, index) for at, (what, index) in enumerate(events) if what == "answered"]
    assert len(answers) == 10
    for at, index in answers:
        told = [p for p, (what, commit) in enumerate(events) if what == "sent" and commit >= index]
        assert not told or told[0] > at, f"commit {index} went out before its answer: {events}"
        learned = [
            what
            for what, commit in events[at:]
            if what in ("sent", "heartbeat") and commit >= index
        ]
        assert learned, f"the followers never learned that {index} is committed: {events}"


@pytest.mark.parametrize("slow", ["followers", "leader"])
def test_the_client_is_answered_before_the_commit_index_is_written(
    tmp_path: Path, slow: str, monkeypatch: Any
) -> None:
    events = asyncio.run(writes_and_frames(tmp_path, slow, monkeypatch))
    for at, (what, index) in enumerate(events):
        if what == "answered":
            written = [p for p, (w, commit) in enumerate(events) if w == "wal" and commit >= index]
            assert not written or written[0] > at, f"{index} written before answered: {events}"


def test_a_write_through_a_follower_does_not_wait_for_a_heartbeat(tmp_path: Path) -> None:
    async def main() -> list[float]:
        # Heartbeats every 0.5 s: a write that waited for one would take 0.25 s in
        # the median.
        async with cluster(tmp_path, tick_ms=500, election_ticks=3) as nodes:
            leader = await elect(nodes, within=15)
            follower = next(node for node in nodes if node is not leader)
            took = []
            for k in range(9):
                started = time.monotonic()
                await asyncio.wait_for(follower.write(encode_put(b"key%d" % k, b"v")), 10)
                took.append(time.monotonic() - started)
            return took

    took = asyncio.run(main())
    assert statistics.median(took) < 0.1, took
