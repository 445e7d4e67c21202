"""Single-server membership changes (Raft thesis 4.1) and learners (4.2.1)."""

from __future__ import annotations

import pytest

from raftkv.raft import (
    ConfChange,
    ConfChangePending,
    ConfChangeType,
    Config,
    ConfState,
    EntryType,
    InvalidConfChange,
    MessageType,
    ProposalDropped,
    Role,
)

from .helpers import msg
from .network import Network

ADD = ConfChangeType.ADD_NODE
REMOVE = ConfChangeType.REMOVE_NODE
ADD_LEARNER = ConfChangeType.ADD_LEARNER
ELECTION_TICK = 10


def conf_states(net: Network) -> set[ConfState]:
    return {n.raw.status().conf_state for n in net.nodes.values() if not n.removed}


def test_add_voter() -> None:
    net = Network(3)
    net.campaign(1)
    net.add_node(4)
    net.propose_conf_change(1, ConfChange(ADD, 4, b"http://node4"))
    assert conf_states(net) == {ConfState((1, 2, 3, 4))}
    net.propose(1, b"x")
    assert net.applied_data(4) == [b"x"]
    # The quorum is now three of four: two voters no longer commit.
    net.isolate(3)
    net.isolate(4)
    net.propose(1, b"y")
    assert net.applied_data(1) == [b"x"]


def test_conf_change_entry_carries_its_context_to_every_node() -> None:
    net = Network(3)
    net.campaign(1)
    net.add_node(4)
    change = ConfChange(ADD, 4, b"http://node4:2380")
    net.propose_conf_change(1, change)
    for node_id in (1, 2, 3, 4):
        applied = [
            ConfChange.decode(e.data)
            for e in net.nodes[node_id].applied
            if e.type == EntryType.CONF_CHANGE
        ]
        assert applied[-1] == change


def test_remove_voter() -> None:
    net = Network(4)
    net.campaign(1)
    net.propose_conf_change(1, ConfChange(REMOVE, 4))
    net.nodes[4].removed = True
    assert conf_states(net) == {ConfState((1, 2, 3))}
    # Two of the three remaining voters are a quorum now (they were not of four).
    net.isolate(3)
    net.propose(1, b"x")
    assert net.applied_data(1) == [b"x"]


def test_removed_node_that_missed_its_removal_does_not_disrupt_the_cluster() -> None:
    net = Network(4)
    net.campaign(1)
    net.isolate(4)
    net.propose_conf_change(1, ConfChange(REMOVE, 4))
    assert net.nodes[1].raw.status().conf_state == ConfState((1, 2, 3))
    # Node 4 never learns it was removed; it times out and campaigns, but the
    # others hear from their leader and ignore it.
    net.tick_all(5 * ELECTION_TICK)
    net.recover()
    net.tick_all(5 * ELECTION_TICK)
    assert net.leader() == 1
    term = net.nodes[1].raw.term
    assert all(net.nodes[i].raw.term == term for i in (1, 2, 3))


def test_add_learner() -> None:
    net = Network(3)
    net.campaign(1)
    net.add_node(4)
    net.propose_conf_change(1, ConfChange(ADD_LEARNER, 4))
    assert conf_states(net) == {ConfState((1, 2, 3), (4,))}
    net.propose(1, b"x")
    assert net.applied_data(4) == [b"x"]
    assert net.nodes[1].raw.status().progress[4].is_learner


def test_learner_does_not_count_toward_the_commit_quorum() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    net.isolate(2)
    net.isolate(3)
    net.propose(1, b"x")
    # The learner stored it, but only one of three voters did.
    assert net.applied_data(1) == []
    assert net.nodes[1].raw.status().progress[4].match == net.nodes[1].storage.last_index()
    net.recover()
    net.tick_all(1)
    assert net.applied_data(1) == [b"x"]


def test_commit_goes_on_with_the_learner_partitioned() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    net.isolate(4)
    net.propose(1, b"x")
    assert net.applied_data(2) == [b"x"]
    net.recover()
    net.tick_all(2)
    assert net.applied_data(4) == [b"x"]


def test_election_succeeds_with_the_learner_partitioned() -> None:
    net = Network(4, learners=[4])
    net.isolate(4)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    net.propose(1, b"x")
    assert net.applied_data(3) == [b"x"]


def test_learner_never_campaigns() -> None:
    net = Network(4, learners=[4])
    net.isolate(4)
    net.tick_all(20 * ELECTION_TICK)
    assert net.nodes[4].raw.role is Role.FOLLOWER
    for kind in (MessageType.PRE_VOTE, MessageType.VOTE):
        assert net.count_sent(kind, frm=4) == 0
    net.nodes[4].raw.campaign()
    assert net.nodes[4].raw.role is Role.FOLLOWER


def test_learner_ignores_timeout_now() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    term = net.nodes[1].raw.term
    net.nodes[4].raw.step(msg(MessageType.TIMEOUT_NOW, 1, 4, term=term))
    assert net.nodes[4].raw.role is Role.FOLLOWER
    assert net.nodes[4].raw.term == term


def test_learner_votes_do_not_elect_a_leader() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    # Node 2 can reach only the learner: its vote does not make a majority.
    net.isolate(1)
    net.isolate(3)
    net.heal(2, 4)
    net.tick_all(10 * ELECTION_TICK)
    assert net.nodes[2].raw.role is not Role.LEADER


def test_promote_learner() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    net.propose_conf_change(1, ConfChange(ADD, 4))
    assert conf_states(net) == {ConfState((1, 2, 3, 4))}
    assert not net.nodes[1].raw.status().progress[4].is_learner
    # Node 4 now counts: with 2 and 3 cut off, 1 and 4 are two of four, not enough.
    net.isolate(2)
    net.isolate(3)
    net.propose(1, b"x")
    assert net.applied_data(1) == []
    net.heal(1, 2, 4)
    net.tick_all(1)
    assert net.applied_data(1) == [b"x"]


def test_second_conf_change_is_refused_while_one_is_pending() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    net.add_node(4)
    net.add_node(5)
    leader.propose_conf_change(ConfChange(ADD, 4))
    last_index = leader.status().last_index
    with pytest.raises(ConfChangePending):
        leader.propose_conf_change(ConfChange(ADD, 5))
    # Nothing was appended for the refused change.
    assert leader.status().last_index == last_index
    net.stabilize()
    # Once the first is applied, the next is accepted.
    leader.propose_conf_change(ConfChange(ADD, 5))
    net.stabilize()
    assert conf_states(net) == {ConfState((1, 2, 3, 4, 5))}


def test_new_leader_refuses_conf_changes_until_its_log_is_applied() -> None:
    # No leader lease, so node 2 can be elected at once after node 1 is cut off.
    net = Network(3, configure=lambda i: Config(id=i, check_quorum=False))
    net.campaign(1)
    net.nodes[1].raw.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    # The change reaches node 2's log, but node 1 is cut off before it commits.
    net.cut_one_way(2, 1)
    net.cut_one_way(1, 3)
    net.stabilize()
    assert net.nodes[2].raw.status().conf_state.learners == ()
    net.recover()
    net.isolate(1)
    new_leader = net.nodes[2].raw
    new_leader.campaign()
    while new_leader.role is not Role.LEADER:
        assert net.deliver(1) == 1
    # Its log may hold an unapplied change (it does): a new one must wait.
    with pytest.raises(ConfChangePending):
        new_leader.propose_conf_change(ConfChange(ADD, 5))
    net.add_node(4)
    net.stabilize()
    # The no-op of its term committed the old change; now a new one is allowed.
    assert new_leader.status().conf_state.learners == (4,)
    net.add_node(5)
    net.propose_conf_change(2, ConfChange(ADD, 5))
    assert 5 in new_leader.status().conf_state.voters


def test_conf_change_dropped_by_backpressure_does_not_block_the_next_one() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_uncommitted_entries_bytes=300))
    net.campaign(1)
    leader = net.nodes[1].raw
    net.isolate(2)
    net.isolate(3)
    leader.propose(bytes(400))  # nothing commits: the cap is now reached
    with pytest.raises(ProposalDropped) as refused:
        leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    assert not isinstance(refused.value, ConfChangePending)
    net.recover()
    net.tick_all(1)
    assert len(net.applied_data(1)) == 1
    # The dropped change left nothing pending behind it.
    net.add_node(4)
    net.propose_conf_change(1, ConfChange(ADD_LEARNER, 4))
    assert net.nodes[1].raw.status().conf_state.learners == (4,)


def test_follower_refuses_a_conf_change_while_its_log_holds_a_pending_one() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[1].raw.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    net.cut_one_way(2, 1)  # node 2 gets the change, but it does not commit yet
    net.cut_one_way(3, 1)
    net.stabilize()
    follower = net.nodes[2].raw
    with pytest.raises(ConfChangePending):
        follower.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    net.recover()
    net.add_node(4)
    net.tick_all(2)
    assert follower.status().conf_state.learners == (4,)
    # Once applied, the follower forwards the next change to the leader.
    net.add_node(5)
    follower.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    net.stabilize()
    assert net.nodes[1].raw.status().conf_state.learners == (4, 5)


def test_forwarded_conf_change_is_dropped_by_a_leader_with_one_pending() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[1].raw.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    # Node 2 does not have the first change yet, so it cannot refuse the second.
    net.nodes[2].raw.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    net.stabilize()
    net.add_node(4)
    net.stabilize()
    # The leader dropped the second change (the follower's client times out and
    # retries); nothing else went wrong.
    assert net.nodes[1].raw.status().conf_state.learners == (4,)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (ConfChange(ADD, 2), "already a voter"),
        (ConfChange(ADD_LEARNER, 3), "is a voter"),
        (ConfChange(REMOVE, 9), "not a member"),
        (ConfChange(ADD, 0), "positive"),
        (ConfChange(ADD, -3), "positive"),
    ],
)
def test_invalid_conf_change_is_refused(change: ConfChange, reason: str) -> None:
    net = Network(3)
    net.campaign(1)
    last_index = net.nodes[1].raw.status().last_index
    with pytest.raises(InvalidConfChange, match=reason):
        net.nodes[1].raw.propose_conf_change(change)
    assert net.nodes[1].raw.status().last_index == last_index


def test_last_voter_cannot_be_removed() -> None:
    net = Network(1)
    net.campaign(1)
    with pytest.raises(InvalidConfChange, match="last voter"):
        net.nodes[1].raw.propose_conf_change(ConfChange(REMOVE, 1))


def test_removing_the_leader_makes_it_step_down_once_applied() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose_conf_change(1, ConfChange(REMOVE, 1))
    assert net.nodes[1].raw.role is Role.FOLLOWER
    assert conf_states(net) == {ConfState((2, 3))}
    # The others learned the change was committed, and elect a new leader.
    net.tick_until(lambda: net.leader() in (2, 3))
    leader = net.leader()
    assert leader is not None
    net.propose(leader, b"x")
    assert net.applied_data(2) == [b"x"] and net.applied_data(3) == [b"x"]
    # The removed node never campaigns again.
    net.tick_all(10 * ELECTION_TICK)
    assert net.nodes[1].raw.role is Role.FOLLOWER
    assert net.leader() == leader


def test_removed_leader_refuses_proposals() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose_conf_change(1, ConfChange(REMOVE, 1))
    with pytest.raises(ProposalDropped):
        net.nodes[1].raw.propose(b"x")


def test_leader_ignores_messages_from_a_removed_node() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose_conf_change(1, ConfChange(REMOVE, 3))
    term = net.nodes[1].raw.term
    net.nodes[1].raw.step(msg(MessageType.APP_RESP, 3, 1, term=term, index=1000))
    net.nodes[1].raw.step(msg(MessageType.HEARTBEAT_RESP, 3, 1, term=term))
    assert 3 not in net.nodes[1].raw.status().progress
    assert net.nodes[1].raw.role is Role.LEADER


def test_added_node_is_replicated_to_at_once() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"x")
    net.add_node(4)
    net.propose_conf_change(1, ConfChange(ADD, 4))
    # Without waiting for a heartbeat, the new node already has the whole log.
    assert net.applied_data(4) == [b"x"]
    assert net.nodes[1].raw.status().progress[4].state == "replicate"
