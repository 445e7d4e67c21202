"""Pre-vote (Raft thesis 9.6) and check-quorum with the leader lease (thesis 4.2.3, 6.2)."""

from __future__ import annotations

from raftkv.raft import Config, MessageType, Role

from .helpers import make_node, msg
from .network import Network

ELECTION_TICK = 10


def test_pre_vote_and_check_quorum_are_on_by_default() -> None:
    config = Config(id=1)
    assert config.pre_vote
    assert config.check_quorum


def test_isolated_node_does_not_inflate_its_term() -> None:
    net = Network(3)
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.isolate(3)
    net.tick_all(10 * ELECTION_TICK)
    assert net.nodes[3].raw.term == term
    assert net.count_sent(MessageType.PRE_VOTE, frm=3) > 0
    assert net.count_sent(MessageType.VOTE, frm=3) == 0


def test_rejoining_node_does_not_depose_a_healthy_leader() -> None:
    net = Network(3)
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.isolate(3)
    net.tick_all(10 * ELECTION_TICK)
    net.recover()
    net.tick_all(3 * ELECTION_TICK)
    assert net.leader() == 1
    assert {n.raw.term for n in net.nodes.values()} == {term}
    assert {n.raw.leader_id for n in net.nodes.values()} == {1}
    net.propose(1, b"after")
    assert net.applied_data(3) == [b"after"]


def test_without_pre_vote_a_rejoining_node_inflates_terms() -> None:
    # The contrast that shows why pre-vote is on by default.
    net = Network(3, configure=lambda i: Config(id=i, pre_vote=False, check_quorum=False))
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.isolate(3)
    net.tick_all(10 * ELECTION_TICK)
    assert net.nodes[3].raw.term > term + 3
    net.recover()
    net.tick_all(3 * ELECTION_TICK)
    assert net.nodes[1].raw.term > term + 3


def test_stale_leader_learns_the_new_term_from_followers_answers() -> None:
    # Check-quorum off, so the old leader keeps leading alone.
    net = Network(3, configure=lambda i: Config(id=i, check_quorum=False))
    net.campaign(1)
    net.isolate(1)
    net.campaign(2)
    assert net.nodes[2].raw.role is Role.LEADER
    assert net.nodes[1].raw.role is Role.LEADER
    net.recover()
    net.tick_all(2)
    assert net.nodes[1].raw.role is Role.FOLLOWER
    assert net.nodes[1].raw.leader_id == 2
    assert net.nodes[1].raw.term == net.nodes[2].raw.term


def test_isolated_leader_steps_down_within_an_election_timeout() -> None:
    # Whatever point of its check-quorum cycle the leader is at when cut off.
    for offset in range(2 * ELECTION_TICK):
        net = Network(3)
        net.campaign(1)
        net.tick_all(offset)
        assert net.leader() == 1
        net.isolate(1)
        ticks = 0
        while net.nodes[1].raw.role is Role.LEADER:
            net.tick_all()
            ticks += 1
            assert ticks <= ELECTION_TICK + 2, f"still leading {ticks} ticks after isolation"
        assert net.nodes[1].raw.leader_id == 0


def test_leader_with_a_quorum_keeps_leading() -> None:
    net = Network(5)
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.isolate(4)
    net.isolate(5)
    net.tick_all(10 * ELECTION_TICK)
    assert net.leader() == 1
    assert net.nodes[1].raw.term == term


def test_minority_side_never_elects_a_leader() -> None:
    net = Network(5)
    net.campaign(1)
    net.partition({1, 2, 3}, {4, 5})
    net.tick_all(10 * ELECTION_TICK)
    assert net.nodes[4].raw.role is not Role.LEADER
    assert net.nodes[5].raw.role is not Role.LEADER
    assert net.leader() == 1


def test_majority_side_elects_a_new_leader_when_the_leader_is_isolated() -> None:
    net = Network(5)
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.isolate(1)
    net.tick_until(lambda: any(n.raw.role is Role.LEADER for i, n in net.nodes.items() if i != 1))
    leader = net.leader()
    assert leader not in (None, 1)
    # Exactly one term was spent on the new election.
    assert net.nodes[leader].raw.term == term + 1
    net.recover()
    net.tick_all(3)
    assert {n.raw.leader_id for n in net.nodes.values()} == {leader}


def test_follower_in_lease_ignores_vote_requests() -> None:
    net = Network(3)
    net.campaign(1)
    term = net.nodes[1].raw.term
    follower = net.nodes[3].raw
    last_index = net.nodes[3].storage.last_index()
    for kind in (MessageType.VOTE, MessageType.PRE_VOTE):
        follower.step(msg(kind, 2, 3, term=term + 1, log_term=term, index=last_index))
        net.process()
        assert net.take() == [], "a follower in its lease must not answer"
        assert follower.term == term
        assert follower.leader_id == 1


def test_leader_in_lease_ignores_vote_requests() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    term = leader.term
    last_index = net.nodes[1].storage.last_index()
    leader.step(msg(MessageType.VOTE, 2, 1, term=term + 1, log_term=term, index=last_index))
    assert leader.role is Role.LEADER
    assert leader.term == term


def test_follower_grants_votes_once_its_lease_has_expired() -> None:
    net = Network(3)
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.isolate(1)
    last_index = net.nodes[3].storage.last_index()
    net.tick(3, ELECTION_TICK)
    net.take()
    vote = msg(MessageType.VOTE, 2, 3, term=term + 1, log_term=term, index=last_index)
    net.nodes[3].raw.step(vote)
    answers = net.take(MessageType.VOTE_RESP)
    assert [(m.to, m.reject) for m in answers] == [(2, False)]


def test_pre_vote_is_refused_by_a_node_with_a_newer_term() -> None:
    node = make_node(2, terms=(1, 5))
    node.step(msg(MessageType.PRE_VOTE, 1, 2, term=3, log_term=1, index=1))
    rd = node.ready()
    assert [(m.type, m.term, m.reject) for m in rd.messages] == [
        (MessageType.PRE_VOTE_RESP, 5, True)
    ]


def test_pre_candidate_that_is_refused_returns_to_follower_without_a_new_term() -> None:
    node = make_node(1, terms=(1,))
    node.campaign()
    assert node.role is Role.PRE_CANDIDATE
    # Refusals carry the refuser's own term, here the pre-candidate's.
    node.step(msg(MessageType.PRE_VOTE_RESP, 2, 1, term=1, reject=True))
    node.step(msg(MessageType.PRE_VOTE_RESP, 3, 1, term=1, reject=True))
    assert node.role is Role.FOLLOWER
    assert node.term == 1


def test_pre_candidate_steps_down_on_a_leaders_heartbeat() -> None:
    node = make_node(1, terms=(1,))
    node.campaign()
    node.step(msg(MessageType.HEARTBEAT, 2, 1, term=1, commit=0))
    assert node.role is Role.FOLLOWER
    assert node.leader_id == 2
