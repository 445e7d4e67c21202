"""ReadIndex (Raft thesis 6.4): linearizable reads without writing to the log."""

from __future__ import annotations

import pytest

from raftkv.raft import Config, Message, MessageType, ProposalDropped, ReadState, Role

from .network import Network

ELECTION_TICK = 10


def commit_of(net: Network, node_id: int) -> int:
    return net.nodes[node_id].raw.status().hard_state.commit


def test_leader_answers_after_a_heartbeat_quorum() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"x")
    leader = net.nodes[1]
    leader.raw.read_index(b"r1")
    net.process()
    assert leader.read_states == [], "answered before confirming leadership"
    heartbeats = [m for m in net.queue if m.type is MessageType.HEARTBEAT]
    assert sorted(m.to for m in heartbeats) == [2, 3]
    # Both carry the token of this read, which their answers echo.
    assert heartbeats[0].context and heartbeats[0].context == heartbeats[1].context
    net.stabilize()
    assert leader.read_states == [ReadState(commit_of(net, 1), b"r1")]


def test_a_confirmed_read_index_may_be_taken_before_the_next_ready() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"x")
    leader = net.nodes[1].raw
    leader.read_index(b"r1")
    heartbeats = leader.take_early_messages()
    assert leader.take_read_states() == []  # Not before a quorum answers.
    for heartbeat in heartbeats:
        net.nodes[heartbeat.to].raw.step(heartbeat)
        for answer in net.nodes[heartbeat.to].raw.take_early_messages():
            leader.step(answer)
    assert leader.take_read_states() == [ReadState(commit_of(net, 1), b"r1")]
    assert leader.take_read_states() == []
    net.stabilize()
    assert net.nodes[1].read_states == []  # Handed out once only.


def test_one_acknowledgement_besides_the_leader_is_a_quorum_of_three() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    net.nodes[1].raw.read_index(b"r")
    net.stabilize()
    assert [rs.request_ctx for rs in net.nodes[1].read_states] == [b"r"]


def test_leader_holds_reads_until_an_entry_of_its_term_is_committed() -> None:
    net = Network(3)
    net.nodes[1].raw.campaign()
    net.drop_types.add(MessageType.APP)  # the new leader's no-op does not commit
    net.stabilize()
    leader = net.nodes[1]
    assert leader.raw.role is Role.LEADER
    noop_index = leader.raw.status().last_index
    assert commit_of(net, 1) < noop_index
    leader.raw.read_index(b"early")
    net.tick_all(3)  # heartbeats do get through and are acknowledged
    assert leader.read_states == []
    net.recover()
    net.tick_all(1)
    assert commit_of(net, 1) >= noop_index
    assert leader.read_states == [ReadState(commit_of(net, 1), b"early")]


def test_isolated_leader_never_answers() -> None:
    net = Network(3, configure=lambda i: Config(id=i, check_quorum=False))
    net.campaign(1)
    net.isolate(1)
    net.nodes[1].raw.read_index(b"r")
    net.tick_all(5 * ELECTION_TICK)
    assert net.nodes[1].read_states == []


def test_stale_leader_never_answers_after_being_replaced() -> None:
    net = Network(3, configure=lambda i: Config(id=i, check_quorum=False))
    net.campaign(1)
    net.isolate(1)
    net.campaign(2)
    net.propose(2, b"newer")
    old = net.nodes[1]
    assert old.raw.role is Role.LEADER
    old.raw.read_index(b"stale")
    net.tick_all(3)
    net.recover()
    net.tick_all(3)
    assert old.read_states == []
    assert old.raw.role is Role.FOLLOWER


def test_follower_read_is_forwarded_to_the_leader() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"x")
    net.nodes[2].raw.read_index(b"from-2")
    net.stabilize()
    assert net.count_sent(MessageType.READ_INDEX, frm=2, to=1) == 1
    assert net.count_sent(MessageType.READ_INDEX_RESP, frm=1, to=2) == 1
    assert net.nodes[2].read_states == [ReadState(commit_of(net, 1), b"from-2")]
    assert net.nodes[1].read_states == []


def test_learner_read_is_forwarded_to_the_leader() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    net.nodes[4].raw.read_index(b"from-learner")
    net.stabilize()
    assert net.nodes[4].read_states == [ReadState(commit_of(net, 1), b"from-learner")]


def test_follower_read_without_a_leader_is_refused_at_once() -> None:
    net = Network(3)
    with pytest.raises(ProposalDropped):
        net.nodes[2].raw.read_index(b"r")


def test_candidate_read_is_refused_at_once() -> None:
    net = Network(3)
    net.isolate(1)
    net.nodes[1].raw.campaign()
    with pytest.raises(ProposalDropped):
        net.nodes[1].raw.read_index(b"r")


def test_one_heartbeat_round_serves_every_read_that_arrived_before_it() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1]
    contexts = [b"r%d" % i for i in range(5)]
    for context in contexts:
        leader.raw.read_index(context)
    net.process()
    heartbeats = net.take(MessageType.HEARTBEAT)
    assert len(heartbeats) == 2 * len(contexts)
    # Only the heartbeats of the last read get through.
    last_round = [m for m in heartbeats if m.context == heartbeats[-1].context]
    assert len(last_round) == 2
    for m in last_round:
        net.nodes[m.to].raw.step(m)
    net.stabilize()
    assert [rs.request_ctx for rs in leader.read_states] == contexts
    assert {rs.index for rs in leader.read_states} == {commit_of(net, 1)}


def test_a_read_that_arrives_after_a_round_started_needs_a_later_round() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1]
    leader.raw.read_index(b"first")
    net.process()
    first_round = net.take(MessageType.HEARTBEAT)
    leader.raw.read_index(b"second")
    net.process()
    second_round = net.take(MessageType.HEARTBEAT)
    for m in first_round:
        net.nodes[m.to].raw.step(m)
    net.stabilize()
    assert [rs.request_ctx for rs in leader.read_states] == [b"first"]
    for m in second_round:
        net.nodes[m.to].raw.step(m)
    net.stabilize()
    assert [rs.request_ctx for rs in leader.read_states] == [b"first", b"second"]


def test_periodic_heartbeat_confirms_pending_reads() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1]
    leader.raw.read_index(b"r")
    net.take()  # the read's own heartbeats are lost
    net.tick_all(1)
    assert [rs.request_ctx for rs in leader.read_states] == [b"r"]


def test_read_index_is_the_commit_index_when_the_read_arrived() -> None:
    net = Network(3)
    net.campaign(1)
    for i in range(3):
        net.propose(1, b"%d" % i)
    commit = commit_of(net, 1)
    net.nodes[1].raw.read_index(b"r")
    net.nodes[1].raw.propose(b"later")
    net.stabilize()
    assert commit_of(net, 1) == commit + 1
    assert net.nodes[1].read_states == [ReadState(commit, b"r")]


def test_single_voter_answers_at_once() -> None:
    net = Network(1)
    net.campaign(1)
    net.nodes[1].raw.read_index(b"r")
    net.process()
    assert net.nodes[1].read_states == [ReadState(commit_of(net, 1), b"r")]


def test_leader_forgets_pending_reads_when_it_steps_down() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(1)
    net.nodes[1].raw.read_index(b"r")
    net.tick_all(2 * ELECTION_TICK)
    assert net.nodes[1].raw.role is Role.FOLLOWER
    net.recover()
    net.tick_until(lambda: net.leader() is not None)
    net.tick_all(3)
    assert net.nodes[1].read_states == []


def test_read_index_response_from_an_old_term_is_ignored() -> None:
    net = Network(3)
    net.campaign(1)
    term = net.nodes[1].raw.term
    stale = Message(
        MessageType.READ_INDEX_RESP, to=2, frm=1, term=term - 1, index=99, context=b"old"
    )
    net.nodes[2].raw.step(stale)
    net.process()
    assert net.nodes[2].read_states == []


def test_learner_acknowledgements_do_not_confirm_leadership() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    net.isolate(2)
    net.isolate(3)
    net.heal(1, 4)
    net.nodes[1].raw.read_index(b"r")
    net.stabilize()
    assert net.count_sent(MessageType.HEARTBEAT_RESP, frm=4) > 0
    assert net.nodes[1].read_states == []


def test_reads_from_different_nodes_with_the_same_context_are_all_answered() -> None:
    # Each node numbers its own reads, so contexts from different nodes collide.
    net = Network(3)
    net.campaign(1)
    for node_id in (1, 2, 3):
        net.nodes[node_id].raw.read_index(b"\x00\x00\x00\x01")
    net.stabilize()
    commit = commit_of(net, 1)
    for node_id in (1, 2, 3):
        assert net.nodes[node_id].read_states == [ReadState(commit, b"\x00\x00\x00\x01")]


def test_repeated_context_from_one_node_is_answered_for_each_request() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[2].raw.read_index(b"same")
    net.nodes[1].raw.propose(b"x")
    net.nodes[2].raw.read_index(b"same")
    net.stabilize()
    indexes = [rs.index for rs in net.nodes[2].read_states]
    assert len(indexes) == 2
    assert indexes[1] >= indexes[0]
