"""The commit rule (Raft paper 5.3, 5.4.2): count replicas of current-term entries only."""

from __future__ import annotations

import dataclasses
import itertools

from raftkv.raft import Config, Message, MessageType, Role

from .network import Network


def commit_of(net: Network, node_id: int) -> int:
    return net.nodes[node_id].raw.status().hard_state.commit


def test_entry_is_committed_once_a_majority_stores_it() -> None:
    net = Network(5)
    net.campaign(1)
    net.isolate(4)
    net.isolate(5)
    net.propose(1, b"x")  # on 1, 2 and 3: three of five
    assert net.applied_data(1) == [b"x"]
    net.recover()
    net.isolate(3)
    net.isolate(4)
    net.isolate(5)
    before = commit_of(net, 1)
    net.propose(1, b"y")  # on 1 and 2 only
    assert commit_of(net, 1) == before
    assert net.applied_data(1) == [b"x"]


def test_leader_does_not_count_its_own_unpersisted_entries() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    leader = net.nodes[1].raw
    commit = commit_of(net, 1)
    leader.propose(b"x")
    rd = leader.ready()  # the leader's write of "x" is still in flight
    assert [e.data for e in rd.entries] == [b"x"]
    for m in rd.early_messages:
        if m.to == 2:
            net.nodes[2].raw.step(m)
    net.process_node(2)
    for m in net.take(MessageType.APP_RESP, process=False):
        leader.step(m)
    # Node 2 stored "x", but the leader has not: one of three is not a quorum.
    assert leader.status().hard_state.commit == commit
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    assert leader.status().hard_state.commit == commit + 1
    # ...and tells the follower at once, without waiting for a heartbeat.
    rd = leader.ready()
    assert [(m.type, m.to, m.commit) for m in rd.early_messages if m.to == 2] == [
        (MessageType.APP, 2, commit + 1)
    ]


def test_follower_learns_the_commit_index_only_for_entries_it_holds() -> None:
    net = Network(3)
    net.campaign(1)
    net.cut_one_way(1, 3)  # node 3 misses the appends
    net.propose(1, b"x")
    net.recover()
    # A heartbeat must not make node 3 commit an index it does not have.
    leader_commit = commit_of(net, 1)
    net.nodes[1].raw.tick()
    heartbeats = [m for m in net.take() if m.type is MessageType.HEARTBEAT and m.to == 3]
    assert heartbeats and heartbeats[0].commit < leader_commit
    net.nodes[3].raw.step(heartbeats[0])
    assert commit_of(net, 3) <= net.nodes[3].raw.status().last_index


def figure_8_through_c() -> tuple[Network, int]:
    """Raft paper, Figure 8 (a) to (c), with S1..S5 as nodes 1..5.

    Index numbers are offset by the five bootstrap entries and S1's first no-op:
    the paper's index 2 is the second value returned. Check-quorum is off so that a
    "crashed" (isolated) leader stays leader, as in the paper; one entry per
    append, so the appends of one term can be let through and those of the next
    held back.
    """
    net = Network(
        5,
        configure=lambda i: Config(id=i, check_quorum=False, max_size_per_msg_bytes=1),
    )
    net.campaign(1)
    assert net.nodes[1].raw.term == 2
    base = commit_of(net, 1)

    # (a) S1 leads term 2 and replicates "x" at index 2 to S2 only, then crashes.
    net.partition({1, 2}, {3, 4, 5})
    net.propose(1, b"x")
    x_index = base + 1
    assert net.terms_of(2)[-1] == 2 and len(net.terms_of(2)) == base + 1
    net.isolate(1)
    net.isolate(2)

    # (b) S5 is elected for term 3 by S3, S4 and itself, and appends its own entry
    # at index 2 (its no-op), which reaches nobody before it crashes.
    net.filters.append(lambda m: m.frm == 5 and m.type is MessageType.APP and bool(m.entries))
    net.heal(3, 4, 5)
    net.campaign(5)
    assert net.nodes[5].raw.role is Role.LEADER and net.nodes[5].raw.term == 3
    assert net.terms_of(5)[-1] == 3
    assert net.terms_of(3)[-1] == 2 and len(net.terms_of(3)) == base
    net.isolate(5)

    # (c) S1 restarts, is elected for term 4 (S2, S3 and itself) and replicates the
    # term-2 entry to S3, but not yet its own term-4 entry.
    net.recover()
    net.isolate(5)
    net.isolate(4)
    net.rewrites.append(lambda m: without_term(m, 4))
    net.tick_all(1)  # S1 learns from its old followers that term 3 happened
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER and net.nodes[1].raw.term == 4
    net.tick_all(3)
    for node_id in (1, 2, 3):
        assert net.terms_of(node_id)[x_index - 1] == 2
    # S1 knows that S2 and S3 hold "x": a majority counting itself.
    progress = net.nodes[1].raw.status().progress
    assert progress[2].match == progress[3].match == x_index
    return net, x_index


def without_term(m: Message, term: int) -> Message:
    """`m` minus its entries of `term` and after (as if its sender had sent less)."""
    if m.type is not MessageType.APP:
        return m
    kept = tuple(itertools.takewhile(lambda e: e.term != term, m.entries))
    return dataclasses.replace(m, entries=kept)


def test_figure_8_entry_of_an_older_term_on_a_majority_is_not_committed() -> None:
    net, x_index = figure_8_through_c()
    # "x" is stored on three of five servers, but it is of term 2 and S1 leads
    # term 4: counting replicas must not commit it.
    assert commit_of(net, 1) == x_index - 1
    assert all(b"x" not in net.applied_data(i) for i in net.nodes)

    # (d) S1 crashes; S5 comes back, wins with S2, S3 and S4 (its last term, 3, is
    # newer than theirs), and overwrites index 2 everywhere. That is safe only
    # because "x" was never committed.
    net.recover()
    net.isolate(1)
    net.tick_all(1)  # S5 learns from the others' answers that term 4 happened
    assert net.nodes[5].raw.role is Role.FOLLOWER
    net.campaign(5)
    assert net.leader() == 5 and net.nodes[5].raw.term == 5
    for node_id in (2, 3, 4, 5):
        assert net.terms_of(node_id)[x_index - 1] == 3
    assert all(b"x" not in net.applied_data(i) for i in net.nodes)


def test_figure_8_entry_of_the_current_term_on_a_majority_commits_the_older_ones() -> None:
    net, x_index = figure_8_through_c()

    # (e) S1 gets an entry of its own term (its no-op) onto a majority before it
    # crashes: that commits it and, with it, "x".
    net.rewrites.clear()
    net.tick_all(2)
    assert commit_of(net, 1) >= x_index + 1
    assert net.applied_data(1) == [b"x"]

    # S5 can no longer win: S2 and S3 hold a newer last term than its own.
    net.isolate(1)
    net.heal(2, 3, 4, 5)
    net.tick_all(100)
    assert net.nodes[5].raw.role is not Role.LEADER
    leader = net.leader()
    assert leader in (2, 3)
    net.recover()
    net.tick_all(3)
    for node_id in net.nodes:
        assert net.applied_data(node_id)[:1] == [b"x"], node_id


def test_new_leader_commits_entries_of_earlier_terms_through_its_own_no_op() -> None:
    net = Network(3, configure=lambda i: Config(id=i, check_quorum=False))
    net.campaign(1)
    # "x" reaches node 2 but the commit does not: node 1 is cut off first.
    net.cut_one_way(2, 1)
    net.cut_one_way(1, 3)
    net.propose(1, b"x")
    assert commit_of(net, 2) < net.nodes[2].raw.status().last_index
    net.isolate(1)
    net.campaign(2)
    assert net.nodes[2].raw.role is Role.LEADER
    # The no-op of term 3 is committed, and "x" (term 2) with it.
    assert net.applied_data(2) == [b"x"]
    assert net.applied_data(3) == [b"x"]
