"""Proposals: forwarding to the leader, refusal without one, and backpressure."""

from __future__ import annotations

import pytest

from raftkv.raft import Config, MessageType, ProposalDropped, Role

from .network import Network


def test_follower_forwards_proposals_to_the_leader() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(2, b"from-2")
    net.nodes[3].raw.propose_many([b"a", b"b"])
    net.stabilize()
    assert net.count_sent(MessageType.PROP, frm=2, to=1) == 1
    assert net.count_sent(MessageType.PROP, frm=3, to=1) == 1
    for node_id in (1, 2, 3):
        assert net.applied_data(node_id) == [b"from-2", b"a", b"b"]


def test_proposal_without_a_leader_is_refused_at_once() -> None:
    net = Network(3)
    with pytest.raises(ProposalDropped, match="no leader"):
        net.nodes[1].raw.propose(b"x")
    assert net.take() == []


def test_proposal_during_an_election_is_refused_at_once() -> None:
    net = Network(3)
    net.isolate(1)
    net.nodes[1].raw.campaign()
    assert net.nodes[1].raw.role is Role.PRE_CANDIDATE
    with pytest.raises(ProposalDropped):
        net.nodes[1].raw.propose(b"x")


def test_proposal_after_the_leader_is_lost_is_refused_at_once() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(1)
    net.tick_until(lambda: net.nodes[1].raw.role is not Role.LEADER)
    with pytest.raises(ProposalDropped):
        net.nodes[1].raw.propose(b"x")


def test_proposal_forwarded_to_a_node_that_lost_leadership_is_dropped_quietly() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[2].raw.propose(b"x")
    net.process()
    forwarded = net.take(MessageType.PROP)
    net.isolate(1)
    net.tick_until(lambda: net.nodes[1].raw.role is not Role.LEADER)
    for m in forwarded:
        net.nodes[1].raw.step(m)  # must not raise: the peer's client retries
    net.recover()
    net.tick_until(lambda: net.leader() is not None)
    assert all(b"x" not in net.applied_data(i) for i in net.nodes)


def test_uncommitted_bytes_cap_applies_backpressure() -> None:
    cap = 1000
    net = Network(3, configure=lambda i: Config(id=i, max_uncommitted_entries_bytes=cap))
    net.campaign(1)
    leader = net.nodes[1].raw
    net.isolate(2)
    net.isolate(3)
    accepted = 0
    with pytest.raises(ProposalDropped, match="uncommitted"):
        for _ in range(100):
            leader.propose(bytes(100))
            accepted += 1
    # 116 bytes each (payload plus entry overhead): the cap holds.
    assert 0 < accepted <= cap // 116 + 1
    net.process()
    last_index = leader.status().last_index
    with pytest.raises(ProposalDropped):
        leader.propose_many([b"fits", bytes(100)])
    assert leader.status().last_index == last_index  # nothing of a refused batch is kept


def test_backpressure_lifts_once_entries_commit() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_uncommitted_entries_bytes=1000))
    net.campaign(1)
    leader = net.nodes[1].raw
    net.isolate(2)
    net.isolate(3)
    with pytest.raises(ProposalDropped):
        for _ in range(100):
            leader.propose(bytes(100))
    refused_after = len(net.nodes[1].storage.entries(1, net.nodes[1].storage.last_index() + 1))
    net.recover()
    net.tick_all(2)
    leader.propose(bytes(100))
    net.stabilize()
    assert net.nodes[1].storage.last_index() > refused_after


def test_uncommitted_bytes_cap_does_not_limit_a_healthy_cluster() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_uncommitted_entries_bytes=1000))
    net.campaign(1)
    for i in range(100):
        net.propose(1, bytes(100) + b"%d" % i)
    assert len(net.applied_data(3)) == 100


def test_a_single_proposal_larger_than_the_cap_is_accepted_when_nothing_is_pending() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_uncommitted_entries_bytes=100))
    net.campaign(1)
    net.propose(1, bytes(500))
    assert net.applied_data(2) == [bytes(500)]


def test_new_leader_starts_with_no_uncommitted_bytes() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_uncommitted_entries_bytes=500))
    net.campaign(1)
    net.isolate(1)
    with pytest.raises(ProposalDropped):
        for _ in range(100):
            net.nodes[1].raw.propose(bytes(100))
    net.tick_until(lambda: net.leader() in (2, 3))
    leader = net.leader()
    assert leader is not None
    net.propose(leader, b"x")
    assert net.applied_data(leader) == [b"x"]


def test_uncommitted_bytes_count_only_the_leaders_own_entries() -> None:
    cap = 700
    net = Network(
        3,
        configure=lambda i: Config(
            id=i, max_uncommitted_entries_bytes=cap, max_size_per_msg_bytes=1, check_quorum=False
        ),
    )
    net.campaign(1)
    # Node 1 gets five entries (580 bytes) onto node 2, but commits none of them.
    net.isolate(3)
    net.cut_one_way(2, 1)
    for _ in range(5):
        net.nodes[1].raw.propose(bytes(100))
    net.stabilize()
    net.recover()
    net.isolate(1)
    # Node 2 takes over and at once appends five entries of its own (580 bytes).
    leader = net.nodes[2].raw
    leader.campaign()
    while leader.role is not Role.LEADER:
        net.deliver(1)
    for _ in range(5):
        leader.propose(bytes(100))
    # Its no-op commits, and node 1's entries with it, but its own entries do not.
    term = leader.term
    net.filters.append(lambda m: any(e.term == term and e.data for e in m.entries))
    net.stabilize()
    assert len(net.applied_data(2)) == 5
    # 580 bytes of node 2's own are still uncommitted, so 200 more pass the cap:
    # applying node 1's old entries must not count as releasing node 2's.
    with pytest.raises(ProposalDropped):
        leader.propose(bytes(200))
