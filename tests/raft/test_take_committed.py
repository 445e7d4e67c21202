"""`RawNode.take_committed_entries`: entries committed while a Ready is being
persisted may be applied at once, in order after the Ready's own, and the next
Ready does not hand them out again."""

from __future__ import annotations

import pytest

from raftkv.raft import ConfChange, ConfChangeType, EntryType, MessageType

from .network import Network
from .test_snapshot import lagging_follower_cluster


def test_an_entry_committed_while_its_ready_persists_is_taken_once() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose(b"x")
    rd = leader.ready()  # persisting "x"...
    assert rd.committed_entries == []
    net.acknowledge(1, rd.early_messages)  # ...when both followers hold it
    taken = leader.take_committed_entries()
    assert [e.data for e in taken] == [b"x"]
    assert leader.take_committed_entries() == []
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    assert leader.status().applied == taken[-1].index
    assert not leader.has_ready() or leader.ready().committed_entries == []


def test_entries_proposed_after_ready_are_left_for_the_next_ready() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose(b"x")
    rd = leader.ready()
    leader.propose(b"y")  # Not in this Ready: not durable here when it advances.
    net.acknowledge(1, rd.early_messages + leader.take_early_messages())
    assert [e.data for e in leader.take_committed_entries()] == [b"x"]
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    rd = leader.ready()
    assert [e.data for e in rd.committed_entries] == [b"y"]
    assert [e.data for e in rd.entries] == [b"y"]


def test_a_membership_change_is_never_taken() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose(b"x")
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    leader.propose(b"z")
    rd = leader.ready()
    net.acknowledge(1, rd.early_messages)
    assert [e.data for e in leader.take_committed_entries()] == [b"x"]
    assert leader.take_committed_entries() == []
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    rd = leader.ready()
    kinds = [e.type for e in rd.committed_entries]
    assert kinds == [EntryType.CONF_CHANGE, EntryType.NORMAL]


def test_nothing_is_taken_while_a_snapshot_installs() -> None:
    net = lagging_follower_cluster()
    net.recover()
    follower = net.nodes[3].raw
    for _ in range(50):  # Heartbeats until the leader learns node 3 needs a snapshot.
        net.tick(1)
        messages = net.take(process=False)
        snapshots = [m for m in messages if m.type is MessageType.SNAP]
        if snapshots:
            follower.step(snapshots[0])
            break
        for message in messages:
            net.nodes[message.to].raw.step(message)
        net.process()
    rd = follower.ready()
    assert rd.snapshot is not None
    assert follower.take_committed_entries() == []


def test_taking_outside_a_ready_is_refused() -> None:
    net = Network(3)
    net.campaign(1)
    with pytest.raises(AssertionError):
        net.nodes[1].raw.take_committed_entries()
