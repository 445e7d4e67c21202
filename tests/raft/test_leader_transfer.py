"""Leadership transfer (Raft thesis 3.10)."""

from __future__ import annotations

import pytest

from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    LeaderTransferRefused,
    MessageType,
    ProposalDropped,
    Role,
)

from .helpers import msg
from .network import Network

ELECTION_TICK = 10


def test_transfer_to_a_caught_up_follower() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"x")
    term = net.nodes[1].raw.term
    net.nodes[1].raw.transfer_leader(2)
    net.stabilize()  # no ticks: nobody waits for an election timeout
    assert net.count_sent(MessageType.TIMEOUT_NOW, frm=1, to=2) == 1
    assert net.leader() == 2
    assert net.nodes[2].raw.term == term + 1
    assert net.nodes[1].raw.role is Role.FOLLOWER
    # The transferee skipped pre-vote and was elected despite the others' lease.
    assert net.count_sent(MessageType.PRE_VOTE, frm=2) == 0
    net.propose(2, b"y")
    assert net.applied_data(1) == [b"x", b"y"]


def test_transfer_asked_on_a_follower_is_forwarded_to_the_leader() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[3].raw.transfer_leader(2)
    net.stabilize()
    # The forwarded request names its real sender (transports check it) and
    # carries the transferee apart.
    forwarded = [m for m in net.sent if m.type is MessageType.TRANSFER_LEADER]
    assert [(m.frm, m.to, m.index) for m in forwarded] == [(3, 1, 2)]
    assert net.leader() == 2


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.recover()
    before = len(net.sent)
    net.nodes[1].raw.transfer_leader(3)
    net.stabilize()
    sent = [(m.type, m.to) for m in net.sent[before:] if m.frm == 1]
    assert sent.index((MessageType.APP, 3)) < sent.index((MessageType.TIMEOUT_NOW, 3))
    assert net.leader() == 3
    assert net.applied_data(3) == [b"%d" % i for i in range(5)]


def test_timeout_now_is_sent_only_once_the_transferee_matches() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.recover()
    leader = net.nodes[1].raw
    leader.transfer_leader(3)
    net.process()
    assert [m.type for m in net.queue if m.to == 3] == [MessageType.APP]


@pytest.mark.parametrize("transferee", [4, 9, 0])
def test_transfer_to_a_non_voter_is_refused(transferee: int) -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    with pytest.raises(LeaderTransferRefused):
        net.nodes[1].raw.transfer_leader(transferee)
    net.propose(1, b"x")  # nothing is left in flight
    assert net.applied_data(1) == [b"x"]


def test_transfer_to_a_non_voter_asked_on_a_follower_is_refused() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    with pytest.raises(LeaderTransferRefused):
        net.nodes[2].raw.transfer_leader(4)
    assert net.take() == []


def test_transfer_to_itself_is_a_no_op() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[1].raw.transfer_leader(1)
    net.propose(1, b"x")
    assert net.leader() == 1


def test_proposals_are_dropped_while_a_transfer_is_in_flight() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    leader = net.nodes[1].raw
    leader.transfer_leader(3)
    with pytest.raises(ProposalDropped, match="transferred"):
        leader.propose(b"x")
    # Forwarded proposals are dropped too (the follower's client retries).
    net.nodes[2].raw.propose(b"y")
    net.stabilize()
    assert net.applied_data(1) == []


def test_transfer_to_an_unreachable_node_is_aborted_after_an_election_timeout() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    leader = net.nodes[1].raw
    leader.transfer_leader(3)
    assert leader.status().lead_transferee == 3
    net.tick_all(ELECTION_TICK - 1)
    with pytest.raises(ProposalDropped):
        leader.propose(b"too soon")
    net.tick_all(1)
    assert leader.status().lead_transferee == 0
    assert net.leader() == 1
    net.propose(1, b"x")
    assert net.applied_data(2) == [b"x"]


def test_a_second_transfer_replaces_the_first() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    net.nodes[1].raw.transfer_leader(3)
    net.recover()
    net.isolate(3)
    net.nodes[1].raw.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2


def test_transfer_is_aborted_when_the_transferee_is_removed() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.isolate(3)
    net.process()
    leader.transfer_leader(3)
    assert leader.status().lead_transferee == 3
    net.stabilize()
    assert 3 not in leader.status().conf_state.voters
    assert leader.status().lead_transferee == 0
    net.propose(1, b"x")
    assert net.applied_data(1) == [b"x"]


def test_timeout_now_from_an_old_term_is_ignored() -> None:
    net = Network(3)
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.nodes[2].raw.step(msg(MessageType.TIMEOUT_NOW, 1, 2, term=term - 1))
    net.stabilize()
    assert net.leader() == 1
    assert net.nodes[2].raw.term == term


def test_transferee_elected_by_transfer_campaign_even_with_others_in_lease() -> None:
    net = Network(5)
    net.campaign(1)
    net.nodes[1].raw.transfer_leader(5)
    net.stabilize()
    assert net.leader() == 5
    assert {n.raw.leader_id for n in net.nodes.values()} == {5}
