"""Snapshots (Raft paper section 7): a follower behind the compacted log is sent one."""

from __future__ import annotations

import random

from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    MemoryStorage,
    MessageType,
    RawNode,
    Role,
    Snapshot,
    SnapshotMetadata,
    SnapshotTemporarilyUnavailable,
)

from .helpers import make_node, make_storage, msg
from .network import Network


def lagging_follower_cluster(report_snapshots: bool = True) -> Network:
    """Node 1 leads; node 3 missed ten entries that node 1 has compacted away."""
    net = Network(3, report_snapshots=report_snapshots)
    net.campaign(1)
    net.isolate(3)
    for i in range(10):
        net.propose(1, b"%d" % i)
    applied = net.nodes[1].raw.status().applied
    net.compact(1, applied)
    assert net.nodes[1].storage.first_index() == applied + 1
    return net


def test_follower_behind_the_compacted_log_is_sent_a_snapshot() -> None:
    net = lagging_follower_cluster()
    net.recover()
    net.tick_all(2)
    assert net.count_sent(MessageType.SNAP, frm=1, to=3) == 1
    assert net.applied_data(3) == [b"%d" % i for i in range(10)]
    snapshot_index = net.nodes[1].storage.first_index() - 1
    assert net.nodes[3].storage.snapshot().metadata.index == snapshot_index
    assert net.nodes[3].raw.status().applied == snapshot_index


def test_replication_resumes_after_a_snapshot_is_installed() -> None:
    net = lagging_follower_cluster()
    net.recover()
    net.tick_all(2)
    net.propose(1, b"after")
    assert net.nodes[1].raw.status().progress[3].state == "replicate"
    assert net.applied_data(3) == [b"%d" % i for i in range(10)] + [b"after"]
    assert net.log_of(3)[-1] == net.log_of(1)[-1]
    # Only one snapshot was ever needed.
    assert net.count_sent(MessageType.SNAP) == 1


def test_installing_a_snapshot_discards_a_conflicting_log() -> None:
    net = Network(3)
    net.campaign(3)
    # Node 3 leads term 2 alone for a while and appends entries nobody else has.
    net.isolate(3)
    for i in range(5):
        net.nodes[3].raw.propose(b"lost%d" % i)
    net.process()
    assert len(net.log_of(3)) > len(net.log_of(1))
    net.tick_until(lambda: net.leader() in (1, 2))
    leader = net.leader()
    assert leader is not None
    for i in range(10):
        net.propose(leader, b"%d" % i)
    net.compact(leader, net.nodes[leader].raw.status().applied)
    net.recover()
    net.tick_all(3)
    assert net.count_sent(MessageType.SNAP, to=3) == 1
    assert net.applied_data(3) == [b"%d" % i for i in range(10)]
    assert all(not data.startswith(b"lost") for _, data in net.log_of(3))
    net.propose(leader, b"after")
    assert net.log_of(3) == net.log_of(leader)


def test_snapshot_state_pauses_appends_to_that_follower() -> None:
    net = lagging_follower_cluster(report_snapshots=False)
    net.recover()
    net.drop_types.add(MessageType.SNAP)
    net.tick_all(2)
    assert net.nodes[1].raw.status().progress[3].state == "snapshot"
    before = net.count_sent(MessageType.APP, frm=1, to=3)
    net.propose(1, b"more")
    net.tick_all(3)
    assert net.count_sent(MessageType.APP, frm=1, to=3) == before
    assert net.count_sent(MessageType.SNAP, frm=1, to=3) == 1


def test_failed_snapshot_is_retried_after_report_snapshot_failure() -> None:
    net = lagging_follower_cluster(report_snapshots=False)
    net.recover()
    net.drop_types.add(MessageType.SNAP)
    net.tick_all(2)
    assert net.count_sent(MessageType.SNAP, frm=1, to=3) == 1
    net.nodes[1].raw.report_snapshot(3, ok=False)
    assert net.nodes[1].raw.status().progress[3].state == "probe"
    net.drop_types.clear()
    net.tick_all(3)
    assert net.count_sent(MessageType.SNAP, frm=1, to=3) == 2
    assert net.applied_data(3) == [b"%d" % i for i in range(10)]


def test_report_snapshot_success_waits_for_the_follower_to_answer() -> None:
    net = lagging_follower_cluster(report_snapshots=False)
    net.recover()
    # The follower installs the snapshot, but its answers are lost from then on.
    installed = net.nodes[3].storage.snapshot
    net.filters.append(lambda m: m.frm == 3 and installed().metadata.index > 0)
    net.tick_all(2)
    assert net.nodes[3].storage.snapshot().metadata.index > 0
    leader = net.nodes[1].raw
    assert leader.status().progress[3].state == "snapshot"
    leader.report_snapshot(3, ok=True)
    progress = leader.status().progress[3]
    assert progress.state == "probe"
    assert progress.next == net.nodes[1].storage.first_index()
    net.recover()
    net.tick_all(2)
    assert leader.status().progress[3].state == "replicate"
    assert net.count_sent(MessageType.SNAP) == 1


def test_report_snapshot_is_ignored_when_no_snapshot_is_in_flight() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[1].raw.report_snapshot(2, ok=False)
    net.nodes[1].raw.report_snapshot(9, ok=True)
    net.nodes[2].raw.report_snapshot(3, ok=True)
    assert net.nodes[1].raw.status().progress[2].state == "replicate"
    net.propose(1, b"x")
    assert net.applied_data(2) == [b"x"]


def test_snapshot_is_not_sent_to_a_follower_not_heard_from() -> None:
    net = Network(3)
    net.campaign(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.tick_all(30)  # node 3 has not answered for three election timeouts
    leader = net.nodes[1].raw
    leader.report_unreachable(3)  # probe it from its last known match
    net.compact(1, leader.status().applied)
    net.propose(1, b"more")
    net.tick_all(3)
    # No snapshot into the void; once node 3 answers a heartbeat, it gets one.
    assert net.count_sent(MessageType.SNAP) == 0
    net.recover()
    net.tick_all(2)
    assert net.count_sent(MessageType.SNAP, to=3) == 1
    assert net.applied_data(3)[-1] == b"more"


def test_snapshot_older_than_the_followers_commit_is_ignored() -> None:
    node = make_node(2, terms=(1, 1, 1, 1, 1))
    node.step(msg(MessageType.HEARTBEAT, 1, 2, term=1, commit=5))
    old = Snapshot(SnapshotMetadata(index=3, term=1, conf_state=ConfState((1, 2, 3))))
    node.step(msg(MessageType.SNAP, 1, 2, term=1, snapshot=old))
    rd = node.ready()
    assert rd.snapshot is None
    answers = [(m.type, m.index) for m in rd.messages if m.type is MessageType.APP_RESP]
    assert answers == [(MessageType.APP_RESP, 5)]


def test_snapshot_matching_the_followers_log_only_advances_commit() -> None:
    storage = make_storage((1, 2, 3), (1, 1, 1, 1, 1))
    node = make_node(2, storage=storage)
    snap = Snapshot(SnapshotMetadata(index=4, term=1, conf_state=ConfState((1, 2, 3))))
    node.step(msg(MessageType.SNAP, 1, 2, term=1, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None
    assert node.status().hard_state.commit == 4
    assert node.status().last_index == 5
    assert [(m.type, m.index) for m in rd.messages] == [(MessageType.APP_RESP, 4)]


def test_snapshot_brings_its_membership() -> None:
    node = make_node(4, voters=())
    snap = Snapshot(
        SnapshotMetadata(index=10, term=3, conf_state=ConfState((1, 2, 3), (4,))), b"state"
    )
    node.step(msg(MessageType.SNAP, 1, 4, term=3, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap
    assert rd.must_sync
    assert node.status().conf_state == ConfState((1, 2, 3), (4,))
    assert node.status().hard_state.commit == 10
    # The answer (sent after the snapshot is durable) acknowledges its index.
    assert [(m.type, m.index) for m in rd.messages] == [(MessageType.APP_RESP, 10)]


def test_node_with_an_unpersisted_snapshot_does_not_campaign() -> None:
    node = make_node(2, voters=(1, 2, 3))
    snap = Snapshot(SnapshotMetadata(index=10, term=3, conf_state=ConfState((1, 2, 3))))
    node.step(msg(MessageType.SNAP, 1, 2, term=3, snapshot=snap))
    node.campaign()
    assert node.role is Role.FOLLOWER


def test_restart_from_a_snapshot_delivers_only_later_entries() -> None:
    net = lagging_follower_cluster()
    net.propose(1, b"tail")
    node = net.nodes[1]
    snapshot_index = node.storage.snapshot().metadata.index
    restarted = RawNode(Config(id=1, applied=snapshot_index), node.storage, random.Random(1))
    rd = restarted.ready()
    assert [e.data for e in rd.committed_entries if e.data] == [b"tail"]
    assert all(e.index > snapshot_index for e in rd.committed_entries)
    assert restarted.status().conf_state == ConfState((1, 2, 3))


def test_new_member_catches_up_through_a_snapshot() -> None:
    net = Network(3)
    net.campaign(1)
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.compact(1, net.nodes[1].raw.status().applied)
    net.add_node(4)  # empty storage: it learns everything from the leader
    net.propose_conf_change(1, ConfChange(ConfChangeType.ADD_NODE, 4))
    net.tick_all(3)
    assert net.count_sent(MessageType.SNAP, to=4) == 1
    assert net.applied_data(4) == [b"%d" % i for i in range(5)]
    assert 4 in net.nodes[4].raw.status().conf_state.voters
    net.propose(1, b"next")
    assert net.applied_data(4)[-1] == b"next"


class FlakySnapshotStorage(MemoryStorage):
    """A storage that cannot produce a snapshot the first `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def snapshot(self) -> Snapshot:
        if self.failures > 0:
            self.failures -= 1
            raise SnapshotTemporarilyUnavailable("snapshot is being written")
        return super().snapshot()


def test_snapshot_temporarily_unavailable_is_retried_later() -> None:
    net = Network(3, storages={1: FlakySnapshotStorage(failures=2)}, bootstrap=False)
    members = [ConfChange(ConfChangeType.ADD_NODE, i) for i in (1, 2, 3)]
    for node in net.nodes.values():
        node.raw.bootstrap(members)
    net.process()
    net.campaign(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.compact(1, net.nodes[1].raw.status().applied)
    net.recover()
    net.tick_all(5)
    assert net.count_sent(MessageType.SNAP, to=3) == 1
    assert net.applied_data(3) == [b"%d" % i for i in range(5)]
