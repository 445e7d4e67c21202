"""The order in which a leader answers a committed write and tells the followers.

Once an acknowledgement commits a write, the leader answers the write's client
before it sends the followers appends that carry the new commit index: those only
let the followers apply, while the client waits for its answer. Three real nodes in
one event loop, on 127.0.0.1; one side's fsyncs are slowed so that the
acknowledgement that commits arrives either after the leader's own fsync (the Ready
applies the entry) or during it (the acknowledgement applies it).
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from raftkv.kv import encode_put
from raftkv.raft import Message, MessageType, Role
from raftkv.server._node import Node
from raftkv.server._options import NodeOptions
from raftkv.transport import _transport

SLOW_FSYNC_S = 0.03


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def slow_fsyncs(node: Node) -> None:
    fsyncer = node._fsyncer
    assert fsyncer is not None and fsyncer.via == "thread"
    sync = fsyncer._sync_in_thread

    def slow() -> float:
        time.sleep(SLOW_FSYNC_S)
        return sync()

    fsyncer._sync_in_thread = slow  # type: ignore[method-assign]


async def elect(nodes: list[Node]) -> Node:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leaders = [node for node in nodes if node.role is Role.LEADER]
        if leaders and all(node.leader_id == leaders[0].id for node in nodes):
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no leader within 10 s")


async def writes_and_frames(tmp_path: Path, slow: str, monkeypatch: Any) -> list[tuple]:
    """Ten writes, one at a time, through the leader; returns what it did in order:
    ("answered", index) when a write's client hears back, ("sent", commit) for
    every frame of appends it writes to a follower."""
    ports = free_ports(3)
    cluster = tuple(f"http://127.0.0.1:{port}" for port in ports)
    nodes = [
        Node(
            NodeOptions(
                id=i,
                cluster=cluster,
                port=0,
                data_dir=tmp_path / f"n{i}",
                tick_ms=20,
                fsync="thread",
            )
        )
        for i in (1, 2, 3)
    ]
    events: list[tuple] = []
    try:
        for node in nodes:
            await node.start()
        leader = await elect(nodes)
        for node in nodes:
            if (node is leader) == (slow == "leader"):
                slow_fsyncs(node)
        write_batch = _transport._Peer.write_batch

        def recording(peer: Any, link: Any, batch: list[Message]) -> None:
            commits = [m.commit for m in batch if m.type is MessageType.APP]
            if peer.owner is leader._transport and commits:
                events.append(("sent", max(commits)))
            write_batch(peer, link, batch)

        monkeypatch.setattr(_transport._Peer, "write_batch", recording)
        for k in range(10):
            future = leader.submit_write(encode_put(b"key%d" % k, b"value"))
            future.add_done_callback(
                lambda _, leader=leader: events.append(("answered", leader.applied_index))
            )
            await asyncio.wait_for(future, 10)
            await asyncio.sleep(SLOW_FSYNC_S * 2)  # the followers hear of the commit
    finally:
        for node in nodes:
            await node.stop()
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
        assert told, f"the followers never learned that {index} is committed: {events}"
        assert told[0] > at, f"commit {index} went out before its answer: {events}"
