"""Log replication (Raft paper 5.3): flow control, pipelining, batching, backtracking."""

from __future__ import annotations

from raftkv.raft import Config, Entry, HardState, Message, MessageType, Role
from raftkv.raft._types import entries_size_bytes

from .helpers import make_storage
from .network import Network


def apps_to(messages: list[Message], to: int) -> list[Message]:
    return [m for m in messages if m.type is MessageType.APP and m.to == to]


def progress_state(net: Network, leader: int, follower: int) -> str:
    return net.nodes[leader].raw.status().progress[follower].state


def test_all_nodes_apply_the_same_entries_in_order() -> None:
    net = Network(5)
    net.campaign(1)
    for i in range(20):
        net.propose(1 + i % 5, b"v%d" % i)
    expected = [b"v%d" % i for i in range(20)]
    for node_id in net.nodes:
        assert net.applied_data(node_id) == expected
        assert net.log_of(node_id) == net.log_of(1)


def test_new_leader_probes_then_replicates() -> None:
    net = Network(3)
    net.nodes[1].raw.campaign()
    # Run the election, but hold the new leader's first appends.
    net.filters.append(lambda m: m.type is MessageType.APP)
    net.stabilize()
    assert net.nodes[1].raw.role is Role.LEADER
    assert progress_state(net, 1, 2) == "probe"
    assert progress_state(net, 1, 3) == "probe"
    net.recover()
    net.tick_all(1)
    assert progress_state(net, 1, 2) == "replicate"
    assert progress_state(net, 1, 3) == "replicate"


def test_probe_sends_one_append_at_a_time() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.report_unreachable(3)
    assert progress_state(net, 1, 3) == "probe"
    net.cut(1, 3)
    for i in range(5):
        leader.propose(b"p%d" % i)
    net.process()
    # One probe, then paused until the follower answers (or a heartbeat does).
    assert len(apps_to(net.queue, 3)) == 1
    assert len(apps_to(net.queue, 2)) == 5
    net.stabilize()
    net.recover()
    # A heartbeat response unpauses the probe; the follower then catches up.
    net.tick_all(1)
    assert progress_state(net, 1, 3) == "replicate"
    assert net.applied_data(3) == [b"p%d" % i for i in range(5)]


def test_rejected_append_moves_a_replicating_follower_back_to_probe() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    term = leader.term
    last = net.nodes[1].storage.last_index()
    assert progress_state(net, 1, 2) == "replicate"
    reject = Message(
        MessageType.APP_RESP, to=1, frm=2, term=term, index=last + 3, reject=True, reject_hint=last
    )
    leader.propose_many([b"a", b"b", b"c"])
    net.take()
    leader.step(reject)
    assert progress_state(net, 1, 2) == "probe"


def test_report_unreachable_moves_a_replicating_follower_to_probe() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[1].raw.report_unreachable(2)
    assert progress_state(net, 1, 2) == "probe"
    net.propose(1, b"x")
    assert progress_state(net, 1, 2) == "replicate"
    assert net.applied_data(2) == [b"x"]


def test_replicate_pipelines_up_to_max_inflight_msgs() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_inflight_msgs=3))
    net.campaign(1)
    leader = net.nodes[1].raw
    net.cut_one_way(2, 1)  # node 2's acknowledgements are lost
    for i in range(10):
        leader.propose(b"p%d" % i)
    net.process()
    to_2 = apps_to(net.queue, 2)
    # Optimistic: three appends in flight at once, without waiting for answers.
    assert [len(m.entries) for m in to_2] == [1, 1, 1]
    assert [m.index for m in to_2] == [to_2[0].index, to_2[0].index + 1, to_2[0].index + 2]
    # Node 3's window is as small, but its answers come back and reopen it.
    assert len(apps_to(net.queue, 3)) == 3
    net.stabilize()
    net.recover()
    net.tick_all(1)
    assert net.applied_data(2) == [b"p%d" % i for i in range(10)]


def test_full_window_sends_nothing_more_until_acknowledged() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_inflight_msgs=2))
    net.campaign(1)
    leader = net.nodes[1].raw
    net.cut_one_way(2, 1)
    before = net.count_sent(MessageType.APP, frm=1, to=2)
    for i in range(4):
        leader.propose(b"p%d" % i)
    net.stabilize()
    assert net.count_sent(MessageType.APP, frm=1, to=2) - before == 2
    sent_before = len(net.sent)
    leader.propose(b"more")
    net.stabilize()
    assert not [m for m in net.sent[sent_before:] if m.type is MessageType.APP and m.to == 2]


def test_inflight_window_is_bounded_in_bytes() -> None:
    cap = 1000
    net = Network(
        3,
        configure=lambda i: Config(
            id=i, max_inflight_bytes=cap, max_size_per_msg_bytes=300, max_inflight_msgs=100
        ),
    )
    net.campaign(1)
    leader = net.nodes[1].raw
    net.cut_one_way(2, 1)
    for i in range(20):
        leader.propose(bytes(100) + b"%d" % i)
    net.process()
    to_2 = apps_to(net.queue, 2)
    in_flight = sum(entries_size_bytes(list(m.entries)) for m in to_2)
    assert 0 < in_flight <= cap
    # It stopped because of the bytes, not the message count.
    assert len(to_2) < 20
    assert in_flight > cap - 300
    net.stabilize()
    net.recover()
    net.tick_all(1)
    assert len(net.applied_data(2)) == 20


def test_append_messages_respect_max_size_per_msg_bytes() -> None:
    limit = 500
    net = Network(3, configure=lambda i: Config(id=i, max_size_per_msg_bytes=limit))
    net.campaign(1)
    net.nodes[1].raw.propose_many([bytes(100) for _ in range(20)])
    net.stabilize()
    appends = [m for m in net.sent if m.type is MessageType.APP and m.entries]
    assert appends
    for m in appends:
        assert len(m.entries) == 1 or entries_size_bytes(list(m.entries)) <= limit
    assert max(len(m.entries) for m in appends) == 4  # 4 * (100 + 16) <= 500 < 5 * 116
    assert len(net.applied_data(3)) == 20


def test_single_entry_larger_than_the_message_cap_is_still_sent() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_size_per_msg_bytes=64))
    net.campaign(1)
    net.propose(1, bytes(1000))
    assert net.applied_data(2) == [bytes(1000)]


def test_a_batch_larger_than_one_message_fills_the_window_at_once() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_size_per_msg_bytes=500))
    net.campaign(1)
    net.nodes[1].raw.propose_many([bytes(100) for _ in range(20)])
    net.process()
    # 20 entries of 116 bytes, 4 per message: 5 appends per follower right away,
    # not one append per round trip.
    assert [len(m.entries) for m in apps_to(net.queue, 2)] == [4, 4, 4, 4, 4]


def test_propose_many_is_batched_into_one_append() -> None:
    net = Network(3)
    net.campaign(1)
    before = len(net.sent)
    net.nodes[1].raw.propose_many([b"e%d" % i for i in range(64)])
    net.stabilize()
    appends = [m for m in net.sent[before:] if m.type is MessageType.APP and m.entries]
    assert sorted(m.to for m in appends) == [2, 3]
    assert all(len(m.entries) == 64 for m in appends)
    # The leader persists the whole batch in one Ready, too.
    assert net.applied_data(2) == [b"e%d" % i for i in range(64)]


def test_leader_persists_a_batch_in_one_ready() -> None:
    net = Network(3, record_readies=True)
    net.campaign(1)
    net.nodes[1].readies.clear()
    net.nodes[1].raw.propose_many([b"e%d" % i for i in range(64)])
    net.process()
    first = net.nodes[1].readies[0]
    assert len(first.entries) == 64
    assert first.must_sync
    # A leader's appends may go out before its own write is durable.
    assert {m.type for m in first.early_messages} == {MessageType.APP}


def test_follower_rejects_an_append_that_does_not_match_its_log() -> None:
    net = Network(3, storages={2: make_storage((1, 2, 3), (1, 1))}, bootstrap=False)
    follower = net.nodes[2].raw
    follower.step(Message(MessageType.APP, to=2, frm=1, term=2, log_term=2, index=2, commit=0))
    (answer,) = net.take()
    assert answer.type is MessageType.APP_RESP
    assert answer.reject
    assert answer.index == 2
    assert net.nodes[2].storage.last_index() == 2


def test_follower_truncates_a_conflicting_suffix() -> None:
    storage = make_storage((1, 2, 3), (1, 1, 2, 2))
    net = Network(3, storages={2: storage}, bootstrap=False)
    net.nodes[2].raw.step(
        Message(
            MessageType.APP,
            to=2,
            frm=1,
            term=3,
            log_term=1,
            index=2,
            entries=(Entry(3, 3, data=b"new"),),
            commit=0,
        )
    )
    net.process()
    assert net.terms_of(2) == [1, 1, 3]
    assert net.log_of(2)[-1] == (3, b"new")


def test_follower_answers_an_append_below_its_commit_with_its_commit_index() -> None:
    # A duplicated old append must not make the leader think the follower is behind.
    storage = make_storage((1, 2, 3), (1, 1, 1, 1, 1))
    net = Network(3, storages={2: storage}, bootstrap=False)
    follower = net.nodes[2].raw
    follower.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, commit=5))
    net.take()
    old = Message(
        MessageType.APP,
        to=2,
        frm=1,
        term=1,
        log_term=1,
        index=2,
        entries=(Entry(1, 3), Entry(1, 4)),
        commit=3,
    )
    follower.step(old)
    assert [(m.type, m.index, m.reject) for m in net.take()] == [(MessageType.APP_RESP, 5, False)]


def backtracking_cluster(leader_terms: tuple[int, ...], follower_terms: tuple[int, ...]) -> Network:
    """Node 1 (to be elected), node 2 with a divergent log, node 3 with node 1's log."""
    current = max(leader_terms + follower_terms)
    storages = {
        1: make_storage((1, 2, 3), leader_terms),
        2: make_storage((1, 2, 3), follower_terms),
        3: make_storage((1, 2, 3), leader_terms),
    }
    for storage in storages.values():
        storage.set_hard_state(HardState(term=current))
    return Network(3, storages=storages, bootstrap=False)


def test_divergent_follower_log_is_fixed_in_few_round_trips() -> None:
    # The follower led terms 2 and 3 and appended 200 entries nobody else has.
    leader_terms = (1,) * 5 + (4,) * 50
    follower_terms = (1,) * 5 + (2,) * 100 + (3,) * 100
    net = backtracking_cluster(leader_terms, follower_terms)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    net.stabilize()
    rejections = [m for m in net.delivered if m.type is MessageType.APP_RESP and m.reject]
    assert len(rejections) <= 2, f"{len(rejections)} round trips to find the match"
    assert net.log_of(2) == net.log_of(1)


def test_backtracking_skips_one_term_per_round_trip() -> None:
    # Each side led several terms in turn; the hint skips a whole term at a time.
    leader_terms = (1,) * 3 + (3,) * 40 + (5,) * 40 + (7,) * 40
    follower_terms = (1,) * 3 + (2,) * 40 + (4,) * 40 + (6,) * 40 + (6,) * 40
    net = backtracking_cluster(leader_terms, follower_terms)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    net.stabilize()
    rejections = [m for m in net.delivered if m.type is MessageType.APP_RESP and m.reject]
    assert len(rejections) <= 6, f"{len(rejections)} round trips for 160 divergent entries"
    assert net.log_of(2) == net.log_of(1)


def test_follower_hint_skips_its_own_newer_term_entries() -> None:
    # The follower led term 3 and appended 50 entries; the leader's entries at the
    # same indexes are of the older term 2. The follower's hint must skip its whole
    # term-3 run at once, or the leader would back off one entry per round trip.
    leader_terms = (1,) * 3 + (2,) * 50
    follower_terms = (1,) * 3 + (3,) * 50
    net = backtracking_cluster(leader_terms, follower_terms)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    net.stabilize()
    rejections = [m for m in net.delivered if m.type is MessageType.APP_RESP and m.reject]
    assert len(rejections) <= 2, f"{len(rejections)} round trips for 50 divergent entries"
    assert net.log_of(2) == net.log_of(1)


def test_follower_missing_entries_is_caught_up_in_few_round_trips() -> None:
    leader_terms = (1,) * 300
    net = backtracking_cluster(leader_terms, (1,) * 10)
    net.campaign(1)
    net.stabilize()
    rejections = [m for m in net.delivered if m.type is MessageType.APP_RESP and m.reject]
    assert len(rejections) <= 1
    assert net.log_of(2) == net.log_of(1)


def test_commit_index_reaches_followers() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"x")
    leader_commit = net.nodes[1].raw.status().hard_state.commit
    for node_id in (2, 3):
        assert net.nodes[node_id].raw.status().hard_state.commit == leader_commit


def test_follower_catches_up_after_a_partition_heals() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    for i in range(30):
        net.propose(1, b"%d" % i)
    assert net.applied_data(3) == []
    net.recover()
    net.tick_all(2)
    assert net.applied_data(3) == [b"%d" % i for i in range(30)]


def test_lost_append_is_detected_and_resent() -> None:
    net = Network(3)
    net.campaign(1)
    lost: list[Message] = []

    def lose_first_append_to_2(m: Message) -> bool:
        if m.type is MessageType.APP and m.to == 2 and m.entries and not lost:
            lost.append(m)
            return True
        return False

    net.filters.append(lose_first_append_to_2)
    net.propose(1, b"lost")
    net.propose(1, b"next")
    assert lost
    # The follower saw a gap and refused; the leader backed off and resent.
    assert net.applied_data(2) == [b"lost", b"next"]


def test_lost_acknowledgements_do_not_stall_a_full_window() -> None:
    net = Network(3, configure=lambda i: Config(id=i, max_inflight_msgs=2))
    net.campaign(1)
    net.drop_types.add(MessageType.APP_RESP)
    for i in range(6):
        net.nodes[1].raw.propose(b"%d" % i)
    net.stabilize()
    net.recover()
    net.propose(1, b"after")
    net.tick_all(3)
    expected = [b"%d" % i for i in range(6)] + [b"after"]
    assert net.applied_data(2) == expected
    assert net.applied_data(3) == expected
