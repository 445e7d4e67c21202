"""Leader election (Raft paper 5.2, 5.4.1)."""

from __future__ import annotations

import random
from collections.abc import Callable

from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    EntryType,
    HardState,
    MemoryStorage,
    MessageType,
    RawNode,
    Role,
)

from .helpers import drain, make_node, make_storage, msg, sent_types
from .network import Network

ELECTION_TICK = 10


def ticks_until_campaign(node: RawNode, limit: int = 100) -> int:
    """Tick a lone follower until it starts an election; return how many ticks."""
    for ticks in range(1, limit + 1):
        node.tick()
        if node.role is not Role.FOLLOWER:
            return ticks
    raise AssertionError("the node never campaigned")


def test_election_timeout_is_randomized_from_the_injected_rng() -> None:
    timeouts = [ticks_until_campaign(make_node(seed=seed)) for seed in range(40)]
    # Randomized within [election_tick, 2 * election_tick).
    assert all(ELECTION_TICK <= t < 2 * ELECTION_TICK for t in timeouts), timeouts
    assert len(set(timeouts)) >= 5, timeouts
    # The same seed gives the same timeout.
    again = [ticks_until_campaign(make_node(seed=seed)) for seed in range(40)]
    assert again == timeouts


def test_election_timeout_does_not_use_the_global_random_module() -> None:
    random.seed(1)
    first = ticks_until_campaign(make_node(seed=3))
    random.seed(2)
    assert ticks_until_campaign(make_node(seed=3)) == first


def test_nodes_of_one_cluster_draw_different_timeouts() -> None:
    net = Network(5, seed=11)
    first: dict[int, int] = {}
    for ticks in range(1, 2 * ELECTION_TICK + 1):
        for node_id, node in net.nodes.items():
            node.raw.tick()
            if node.raw.role is not Role.FOLLOWER and node_id not in first:
                first[node_id] = ticks
    assert len(first) == 5
    assert len(set(first.values())) > 1, first


def test_election_timeout_is_redrawn_for_each_new_term() -> None:
    node = make_node(seed=5, pre_vote=False)
    timeouts = []
    for _ in range(8):
        timeouts.append(ticks_until_campaign_again(node))
    assert len(set(timeouts)) > 1, timeouts


def ticks_until_campaign_again(node: RawNode) -> int:
    term = node.term
    for ticks in range(1, 100):
        node.tick()
        if node.term != term:
            return ticks
    raise AssertionError("the candidate never started a new election")


def test_candidate_persists_term_and_vote_before_sending_vote_requests() -> None:
    storage = make_storage((1, 2, 3), (1,))
    node = make_node(storage=storage)
    node.campaign()
    rd = drain(node, storage)
    # Pre-vote first: it changes neither term nor vote, so nothing must be synced.
    assert node.role is Role.PRE_CANDIDATE
    assert rd.hard_state is None and not rd.must_sync
    assert sent_types(rd) == [(MessageType.PRE_VOTE, 2), (MessageType.PRE_VOTE, 3)]
    assert {m.term for m in rd.messages} == {2}
    assert rd.early_messages == []

    node.step(msg(MessageType.PRE_VOTE_RESP, 2, 1, term=2))
    rd = drain(node, storage)
    assert node.role is Role.CANDIDATE
    assert rd.hard_state == HardState(term=2, vote=1, commit=0)
    assert rd.must_sync
    assert sent_types(rd) == [(MessageType.VOTE, 2), (MessageType.VOTE, 3)]
    assert rd.early_messages == [], "vote requests must wait for the term and vote to be durable"


def test_voter_persists_its_vote_before_answering() -> None:
    node = make_node(2, terms=(1,))
    node.step(msg(MessageType.VOTE, 1, 2, term=2, log_term=1, index=1))
    rd = node.ready()
    assert rd.hard_state == HardState(term=2, vote=1, commit=0)
    assert rd.must_sync
    assert sent_types(rd) == [(MessageType.VOTE_RESP, 1)]
    assert not rd.messages[0].reject
    assert rd.early_messages == []


def test_candidate_without_pre_vote_persists_before_sending() -> None:
    node = make_node(terms=(1,), pre_vote=False)
    node.campaign()
    rd = node.ready()
    assert rd.hard_state == HardState(term=2, vote=1, commit=0)
    assert rd.must_sync
    assert sent_types(rd) == [(MessageType.VOTE, 2), (MessageType.VOTE, 3)]
    assert rd.early_messages == []


def test_candidate_with_votes_from_a_majority_becomes_leader() -> None:
    net = Network(5)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    assert all(net.nodes[i].raw.leader_id == 1 for i in net.nodes)
    # A new leader appends an empty entry of its own term.
    assert net.log_of(1)[-1] == (net.nodes[1].raw.term, b"")


def test_candidate_without_a_majority_does_not_become_leader() -> None:
    net = Network(5)
    net.isolate(4)
    net.isolate(5)
    net.cut(1, 3)
    net.campaign(1)
    assert net.nodes[1].raw.role is not Role.LEADER


def test_single_voter_elects_itself_at_once() -> None:
    net = Network(1)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    net.propose(1, b"x")
    assert net.applied_data(1) == [b"x"]


def test_split_vote_resolves() -> None:
    net = Network(4, seed=3)
    # Nodes 1 and 2 campaign at once; 3 votes for 1 and 4 votes for 2: two votes
    # each out of four, no majority.
    net.nodes[1].raw.campaign()
    net.nodes[2].raw.campaign()
    net.filters.append(lambda m: m.type is MessageType.VOTE and (m.frm, m.to) in {(1, 4), (2, 3)})
    net.stabilize()
    assert net.nodes[1].raw.role is Role.CANDIDATE
    assert net.nodes[2].raw.role is Role.CANDIDATE
    split_term = net.nodes[1].raw.term
    assert net.nodes[2].raw.term == split_term
    net.recover()
    ticks = net.tick_until(lambda: net.leader() is not None, limit=10 * ELECTION_TICK)
    assert ticks <= 4 * ELECTION_TICK
    leader = net.leader()
    assert leader is not None
    assert net.nodes[leader].raw.term > split_term
    net.tick_all(3)
    roles = [n.raw.role for n in net.nodes.values()]
    assert roles.count(Role.LEADER) == 1
    assert {n.raw.leader_id for n in net.nodes.values()} == {leader}


def test_elections_converge_from_cold_start_across_seeds() -> None:
    for seed in range(20):
        net = Network(5, seed=seed)
        net.tick_until(has_leader(net), limit=20 * ELECTION_TICK)
        leader = net.leader()
        assert leader is not None
        net.tick_all(2)
        assert sum(n.raw.role is Role.LEADER for n in net.nodes.values()) == 1, seed


def has_leader(net: Network) -> Callable[[], bool]:
    return lambda: net.leader() is not None


def test_node_votes_at_most_once_per_term() -> None:
    storage = make_storage((1, 2, 3), (1,))
    node = make_node(3, storage=storage)
    node.step(msg(MessageType.VOTE, 1, 3, term=2, log_term=1, index=1))
    rd = drain(node, storage)
    assert [m.reject for m in rd.messages] == [False]
    node.step(msg(MessageType.VOTE, 2, 3, term=2, log_term=1, index=1))
    rd = drain(node, storage)
    assert [(m.type, m.to, m.reject) for m in rd.messages] == [(MessageType.VOTE_RESP, 2, True)]
    # A repeated request from the same candidate is granted again (idempotent).
    node.step(msg(MessageType.VOTE, 1, 3, term=2, log_term=1, index=1))
    assert [m.reject for m in drain(node, storage).messages] == [False]

    # The vote survives a restart: it was persisted in the hard state.
    restarted = make_node(3, storage=storage)
    restarted.step(msg(MessageType.VOTE, 2, 3, term=2, log_term=1, index=1))
    assert [m.reject for m in restarted.ready().messages] == [True]


def test_vote_needs_a_log_at_least_as_up_to_date() -> None:
    # The voter's last entry is (index 3, term 2).
    cases = [
        # (candidate last log term, candidate last index, granted)
        (1, 10, False),  # older last term loses, however long the log
        (2, 2, False),  # same last term, shorter log
        (2, 3, True),  # same last term, same length
        (2, 4, True),  # same last term, longer log
        (3, 1, True),  # newer last term wins, however short the log
    ]
    for log_term, index, granted in cases:
        node = make_node(2, terms=(1, 2, 2))
        node.step(msg(MessageType.VOTE, 1, 2, term=3, log_term=log_term, index=index))
        rd = node.ready()
        assert [(m.type, m.reject) for m in rd.messages] == [(MessageType.VOTE_RESP, not granted)]
        # Whatever the answer, the voter adopted the newer term.
        assert node.term == 3
        assert node.status().hard_state.vote == (1 if granted else 0)


def test_pre_vote_needs_a_log_at_least_as_up_to_date() -> None:
    for log_term, index, granted in [(1, 10, False), (2, 2, False), (2, 3, True), (3, 1, True)]:
        node = make_node(2, terms=(1, 2, 2))
        node.step(msg(MessageType.PRE_VOTE, 1, 2, term=3, log_term=log_term, index=index))
        rd = node.ready()
        assert [(m.type, m.reject) for m in rd.messages] == [
            (MessageType.PRE_VOTE_RESP, not granted)
        ]
        # A pre-vote changes neither the term nor the vote.
        assert node.term == 2
        assert node.status().hard_state.vote == 0


def test_node_with_a_stale_log_cannot_win() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    net.propose(1, b"x")
    net.recover()
    net.isolate(1)
    # Node 3 missed "x": node 2 refuses it, so it cannot get a majority.
    net.campaign(3)
    assert net.nodes[3].raw.role is not Role.LEADER
    net.campaign(2)
    assert net.nodes[2].raw.role is Role.LEADER


def test_candidate_steps_down_on_append_from_leader_of_its_term() -> None:
    node = make_node(2, terms=(1,), pre_vote=False)
    node.campaign()
    assert node.role is Role.CANDIDATE and node.term == 2
    node.step(msg(MessageType.APP, 3, 2, term=2, log_term=1, index=1, commit=0))
    assert node.role is Role.FOLLOWER
    assert node.leader_id == 3
    assert node.term == 2


def test_any_role_steps_down_on_a_higher_term() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    term = leader.term
    leader.step(msg(MessageType.APP_RESP, 2, 1, term=term + 5, index=0))
    assert leader.role is Role.FOLLOWER
    assert leader.term == term + 5


def test_restarted_node_keeps_its_term_and_vote() -> None:
    net = Network(3)
    net.campaign(1)
    storage = net.nodes[2].storage
    term = net.nodes[2].raw.term
    restarted = RawNode(Config(id=2), storage, random.Random(0))
    assert restarted.term == term
    assert restarted.status().hard_state == storage.hard_state


def test_new_leaders_first_messages_wait_for_its_term_to_be_durable() -> None:
    # A single voter wins at once; its appends to the learner must not leave before
    # its new term and vote are durable, or after a crash it could be elected
    # again in the same term and send a different entry at the same index.
    net = Network(2, learners=[2])
    net.nodes[1].raw.campaign()
    rd = net.nodes[1].raw.ready()
    assert net.nodes[1].raw.role is Role.LEADER
    assert rd.hard_state is not None and rd.hard_state.vote == 1
    assert rd.must_sync
    assert rd.early_messages == []
    # The learner is sent its first append at once, not a heartbeat later.
    assert [m.type for m in rd.messages] == [MessageType.APP]


def test_node_campaigns_only_once_committed_membership_changes_are_applied() -> None:
    storage = MemoryStorage()
    node = RawNode(Config(id=1), storage, random.Random(0))
    node.bootstrap([ConfChange(ConfChangeType.ADD_NODE, i) for i in (1, 2, 3)])
    node.campaign()  # the membership entries are committed but not yet applied
    assert node.role is Role.FOLLOWER
    rd = drain(node, storage)
    assert [e.type for e in rd.committed_entries] == [EntryType.CONF_CHANGE] * 3
    node.campaign()
    assert node.role is Role.PRE_CANDIDATE


def test_granting_a_vote_restarts_the_election_timer() -> None:
    def node_at_term_2() -> RawNode:
        # Node 3 learns of term 2 from a candidate it refuses (stale log), so it is
        # at term 2 with no vote and no leader.
        node = make_node(3, terms=(1, 1), seed=9)
        node.step(msg(MessageType.VOTE, 1, 3, term=2, log_term=1, index=1))
        node.ready()
        assert node.term == 2 and node.status().hard_state.vote == 0
        return node

    timeout = ticks_until_campaign(node_at_term_2())  # the same seed: the same timeout
    node = node_at_term_2()
    for _ in range(timeout - 1):
        node.tick()
    node.step(msg(MessageType.VOTE, 2, 3, term=2, log_term=1, index=2))
    assert node.status().hard_state.vote == 2
    # Having just voted, it gives the candidate a full election timeout.
    for _ in range(ELECTION_TICK - 1):
        node.tick()
        assert node.role is Role.FOLLOWER
