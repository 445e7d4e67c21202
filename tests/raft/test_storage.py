"""The Storage contract, checked against MemoryStorage, and log compaction on request.

`STORAGES` lists the implementations under test; the contract tests take the
storage from the `storage` fixture, so another implementation joins by adding its
factory there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from raftkv.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    UnavailableError,
)
from raftkv.raft._types import entry_size_bytes

from .network import Network

STORAGES: dict[str, Callable[[], MemoryStorage]] = {"memory": MemoryStorage}


@pytest.fixture(params=sorted(STORAGES))
def storage(request: pytest.FixtureRequest) -> MemoryStorage:
    """A storage holding entries 1..5 (terms 1, 1, 2, 2, 3), each with a 10-byte
    payload."""
    storage = STORAGES[request.param]()
    storage.append([Entry(term, index, data=bytes(10)) for index, term in ENTRIES])
    return storage


ENTRIES = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]
ENTRY_BYTES = entry_size_bytes(Entry(0, 0, data=bytes(10)))


def indexes(entries: list[Entry]) -> list[int]:
    return [e.index for e in entries]


def test_empty_storage() -> None:
    for factory in STORAGES.values():
        storage = factory()
        assert storage.first_index() == 1
        assert storage.last_index() == 0
        assert storage.term(0) == 0
        assert storage.initial_state() == (HardState(), ConfState())
        assert storage.snapshot().is_empty
        assert storage.entries(1, 1) == []


def test_first_last_and_term(storage: MemoryStorage) -> None:
    assert storage.first_index() == 1
    assert storage.last_index() == 5
    assert [storage.term(i) for i in range(6)] == [0, 1, 1, 2, 2, 3]


def test_entries_in_range(storage: MemoryStorage) -> None:
    assert indexes(storage.entries(2, 5)) == [2, 3, 4]
    assert indexes(storage.entries(1, 6)) == [1, 2, 3, 4, 5]
    assert storage.entries(3, 3) == []


def test_entries_past_the_last_index_are_unavailable(storage: MemoryStorage) -> None:
    with pytest.raises(UnavailableError):
        storage.entries(4, 7)
    with pytest.raises(UnavailableError):
        storage.term(6)


def test_entries_max_bytes(storage: MemoryStorage) -> None:
    assert indexes(storage.entries(1, 6, max_bytes=2 * ENTRY_BYTES)) == [1, 2]
    assert indexes(storage.entries(1, 6, max_bytes=2 * ENTRY_BYTES + 1)) == [1, 2]
    assert indexes(storage.entries(1, 6, max_bytes=3 * ENTRY_BYTES - 1)) == [1, 2]
    assert indexes(storage.entries(1, 6, max_bytes=10 * ENTRY_BYTES)) == [1, 2, 3, 4, 5]


def test_entries_max_bytes_always_returns_at_least_one(storage: MemoryStorage) -> None:
    assert indexes(storage.entries(2, 6, max_bytes=0)) == [2]
    assert indexes(storage.entries(2, 6, max_bytes=1)) == [2]


def test_compact(storage: MemoryStorage) -> None:
    storage.compact(3)
    assert storage.first_index() == 4
    assert storage.last_index() == 5
    # The term of the last compacted entry stays known, for the append check.
    assert storage.term(3) == 2
    assert indexes(storage.entries(4, 6)) == [4, 5]


def test_compacted_indexes_raise(storage: MemoryStorage) -> None:
    storage.compact(3)
    with pytest.raises(CompactedError):
        storage.entries(3, 5)
    with pytest.raises(CompactedError):
        storage.entries(1, 5)
    with pytest.raises(CompactedError):
        storage.term(2)


def test_compact_refuses_an_already_compacted_or_unknown_index(storage: MemoryStorage) -> None:
    storage.compact(3)
    with pytest.raises(CompactedError):
        storage.compact(3)
    with pytest.raises(CompactedError):
        storage.compact(1)
    with pytest.raises(UnavailableError):
        storage.compact(6)
    assert storage.first_index() == 4


def test_compact_everything(storage: MemoryStorage) -> None:
    storage.compact(5)
    assert storage.first_index() == 6
    assert storage.last_index() == 5
    assert storage.term(5) == 3
    storage.append([Entry(3, 6)])
    assert indexes(storage.entries(6, 7)) == [6]


def test_append_truncates_a_conflicting_suffix(storage: MemoryStorage) -> None:
    storage.append([Entry(4, 3, data=b"new"), Entry(4, 4)])
    assert storage.last_index() == 4
    assert [storage.term(i) for i in range(1, 5)] == [1, 1, 4, 4]
    assert storage.entries(3, 4)[0].data == b"new"


def test_append_extends(storage: MemoryStorage) -> None:
    storage.append([Entry(3, 6), Entry(3, 7)])
    assert storage.last_index() == 7


def test_append_ignores_entries_before_the_compaction_point(storage: MemoryStorage) -> None:
    storage.compact(3)
    storage.append([Entry(2, 3), Entry(2, 4), Entry(5, 5), Entry(5, 6)])
    assert storage.first_index() == 4
    assert [storage.term(i) for i in range(3, 7)] == [2, 2, 5, 5]
    storage.append([Entry(1, 1), Entry(1, 2)])  # wholly compacted: nothing happens
    assert storage.last_index() == 6


def test_append_with_a_gap_is_a_bug(storage: MemoryStorage) -> None:
    with pytest.raises(AssertionError):
        storage.append([Entry(3, 7)])


def test_create_snapshot(storage: MemoryStorage) -> None:
    snapshot = storage.create_snapshot(4, ConfState((1, 2, 3)), b"state")
    assert snapshot.metadata == SnapshotMetadata(4, 2, ConfState((1, 2, 3)))
    assert storage.snapshot() == snapshot
    assert storage.initial_state()[1] == ConfState((1, 2, 3))
    # The log is not compacted until the host asks.
    assert storage.first_index() == 1
    # Without a new membership, the previous one is kept.
    later = storage.create_snapshot(5, None, b"later")
    assert later.metadata.conf_state == ConfState((1, 2, 3))


def test_create_snapshot_refuses_old_or_unknown_indexes(storage: MemoryStorage) -> None:
    storage.create_snapshot(4, ConfState((1,)), b"")
    with pytest.raises(SnapshotOutOfDateError):
        storage.create_snapshot(4, None, b"")
    with pytest.raises(SnapshotOutOfDateError):
        storage.create_snapshot(2, None, b"")
    with pytest.raises(UnavailableError):
        storage.create_snapshot(6, None, b"")


def test_apply_snapshot_replaces_the_log(storage: MemoryStorage) -> None:
    snapshot = Snapshot(SnapshotMetadata(10, 4, ConfState((1, 2))), b"data")
    storage.apply_snapshot(snapshot)
    assert storage.snapshot() == snapshot
    assert storage.first_index() == 11
    assert storage.last_index() == 10
    assert storage.term(10) == 4
    with pytest.raises(CompactedError):
        storage.term(5)
    assert storage.initial_state()[1] == ConfState((1, 2))


def test_apply_snapshot_refuses_an_older_one(storage: MemoryStorage) -> None:
    storage.apply_snapshot(Snapshot(SnapshotMetadata(10, 4, ConfState((1,)))))
    with pytest.raises(SnapshotOutOfDateError):
        storage.apply_snapshot(Snapshot(SnapshotMetadata(8, 4, ConfState((1,)))))
    assert storage.snapshot().metadata.index == 10


def test_hard_state_round_trip(storage: MemoryStorage) -> None:
    storage.set_hard_state(HardState(term=7, vote=2, commit=4))
    assert storage.initial_state()[0] == HardState(term=7, vote=2, commit=4)


# --- log compaction in a running cluster -------------------------------------------


def test_log_compaction_on_request_keeps_the_cluster_running() -> None:
    net = Network(3)
    net.campaign(1)
    for i in range(20):
        net.propose(1, b"%d" % i)
    for node_id in (1, 2, 3):
        net.compact(node_id, net.nodes[node_id].raw.status().applied - 5)
    for i in range(20, 25):
        net.propose(1, b"%d" % i)
    for node_id in (1, 2, 3):
        assert net.applied_data(node_id) == [b"%d" % i for i in range(25)]
    # Followers within the kept tail need no snapshot.
    assert net.count_sent(MessageType.SNAP) == 0


def test_compaction_keeps_a_tail_for_a_slow_follower() -> None:
    net = Network(3)
    net.campaign(1)
    net.propose(1, b"first")
    net.isolate(3)
    for i in range(10):
        net.propose(1, b"%d" % i)
    # Compact only what node 3 already has: it catches up from the log.
    match = net.nodes[1].raw.status().progress[3].match
    net.compact(1, match)
    net.recover()
    net.tick_all(2)
    assert net.count_sent(MessageType.SNAP) == 0
    assert net.applied_data(3) == [b"first"] + [b"%d" % i for i in range(10)]


def test_new_leader_over_compacted_logs_keeps_working() -> None:
    net = Network(3)
    net.campaign(1)
    for i in range(10):
        net.propose(1, b"%d" % i)
    net.compact(1, net.nodes[1].raw.status().applied)
    net.compact(2, net.nodes[2].raw.status().applied)
    net.compact(3, net.nodes[3].raw.status().applied)
    net.nodes[1].raw.transfer_leader(2)
    net.stabilize()
    assert net.leader() == 2
    net.propose(2, b"after")
    for node_id in (1, 2, 3):
        assert net.applied_data(node_id)[-1] == b"after"
