"""`RawNode.take_committed_entries`: committed entries may be applied as soon as
they commit (while a Ready is being persisted, in order after the Ready's own, or
with no Ready pending), and the next Ready does not hand them out again.
`RawNode.persisted`: a leader counts its own write as soon as it is durable.
`RawNode.has_ready(commit_alone=False)`: a commit index whose entries were all
taken may wait for the next Ready."""

from __future__ import annotations

import pytest

from raftkv.raft import ConfChange, ConfChangeType, EntryType, MessageType, RawNode, Ready

from .network import Network
from .test_snapshot import lagging_follower_cluster


def persisting(data: bytes) -> tuple[Network, RawNode, Ready]:
    """A 3-node cluster whose leader (node 1) proposed `data` and took the Ready
    that holds it: the leader is persisting it, and no follower has it yet."""
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose(data)
    return net, leader, leader.ready()


def test_an_entry_committed_while_its_ready_persists_is_taken_once() -> None:
    net, leader, rd = persisting(b"x")
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
    net, leader, rd = persisting(b"x")
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
    assert follower.take_committed_entries() == []  # Stepped, not yet in a Ready.
    rd = follower.ready()
    assert rd.snapshot is not None
    assert follower.take_committed_entries() == []


def test_outside_a_ready_committed_entries_are_taken_and_count_as_applied() -> None:
    net, leader, rd = persisting(b"x")
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)  # Durable here; the followers have not answered yet.
    assert leader.take_committed_entries() == []
    net.acknowledge(1, rd.early_messages)
    taken = leader.take_committed_entries()
    assert [e.data for e in taken] == [b"x"]
    assert leader.status().applied == taken[-1].index
    assert leader.take_committed_entries() == []
    rd = leader.ready()  # The new commit index, to persist; "x" is not handed out again.
    assert rd.committed_entries == []
    assert rd.hard_state is not None and rd.hard_state.commit == taken[-1].index


def test_outside_a_ready_entries_not_yet_durable_here_are_left_for_the_ready() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose(b"y")  # Committed by the followers before this node persists it.
    net.acknowledge(1, leader.take_early_messages())
    assert leader.status().hard_state.commit == leader.status().last_index
    assert leader.take_committed_entries() == []
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"y"]
    assert [e.data for e in rd.committed_entries] == [b"y"]


def test_a_leaders_own_durable_write_commits_at_once_with_persisted() -> None:
    net, leader, rd = persisting(b"x")
    net.isolate(3)  # Only node 2 answers: "x" needs the leader's own write too.
    net.acknowledge(1, [m for m in rd.early_messages if m.to == 2])
    assert leader.take_committed_entries() == []
    net.nodes[1].storage.append(rd.entries)
    leader.persisted(rd)
    taken = leader.take_committed_entries()
    assert [e.data for e in taken] == [b"x"]
    leader.advance(rd)
    assert leader.status().applied == taken[-1].index
    assert not leader.has_ready() or leader.ready().committed_entries == []


def test_persisted_outside_a_ready_is_refused() -> None:
    net, leader, rd = persisting(b"x")
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    with pytest.raises(AssertionError):
        leader.persisted(rd)


def test_a_new_commit_index_alone_may_wait_for_the_next_ready() -> None:
    net, leader, rd = persisting(b"x")
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    net.acknowledge(1, rd.early_messages)
    assert [e.data for e in leader.take_committed_entries()] == [b"x"]
    leader.take_early_messages()  # The new commit index for the followers, sent.
    assert leader.has_ready()  # The new commit index, to persist...
    assert not leader.has_ready(commit_alone=False)  # ...which may wait.
    leader.propose(b"y")
    assert leader.has_ready(commit_alone=False)
    rd = leader.ready()  # Persists the commit index with the next entry.
    assert rd.hard_state is not None and rd.hard_state.commit == rd.entries[0].index - 1
    assert rd.committed_entries == []


def test_entries_to_apply_count_even_when_the_commit_index_alone_waits() -> None:
    net, leader, rd = persisting(b"x")
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    net.acknowledge(1, rd.early_messages)  # "x" commits; nobody takes it.
    assert leader.has_ready(commit_alone=False)
    assert [e.data for e in leader.ready().committed_entries] == [b"x"]
