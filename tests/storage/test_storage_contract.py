"""The contract every `Storage` the core reads from must keep, run against
`MemoryStorage` (the reference), `DiskStorage`, and a `DiskStorage` reopened
from disk before each read, so that recovery is held to the same contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.raft import (
    CompactedError,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    Storage,
    UnavailableError,
)
from raftkv.storage import DiskStorage

from .helpers import entries

CONF = ConfState(voters=(1, 2), learners=(3,))


class Harness:
    """One write interface over every implementation; `storage` is what the core
    would read."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.memory = MemoryStorage()
        self.disk: DiskStorage | None = None
        if kind != "memory":
            self.disk = self._open()

    def _open(self) -> DiskStorage:
        return DiskStorage.open(self.directory, 1, 1, catch_up_entries=0, segment_size_bytes=4096)

    @property
    def storage(self) -> Storage:
        if self.disk is None:
            return self.memory
        if self.kind == "disk-reopened":
            self.disk.close()
            self.disk = self._open()
        return self.disk

    def append(self, batch: list[Entry], hard_state: HardState | None = None) -> None:
        if self.disk is None:
            self.memory.append(batch)
            if hard_state is not None:
                self.memory.set_hard_state(hard_state)
        else:
            self.disk.append(batch, hard_state)
            self.disk.sync()

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        (self.disk or self.memory).apply_snapshot(snapshot)

    def create_snapshot(self, index: int, data: bytes = b"state") -> Snapshot:
        return (self.disk or self.memory).create_snapshot(index, CONF, data)

    def compact(self, index: int) -> None:
        (self.disk or self.memory).compact(index)

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()


@pytest.fixture(params=["memory", "disk", "disk-reopened"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "data")
    yield harness
    harness.close()


def compacted_at_5(harness: Harness) -> None:
    """Entries 1..10 of term 1, a snapshot at 5, the log compacted to it."""
    harness.append(entries(1, 10))
    harness.create_snapshot(5)
    harness.compact(5)


def test_an_empty_storage(harness: Harness) -> None:
    storage = harness.storage
    assert (storage.first_index(), storage.last_index()) == (1, 0)
    assert storage.term(0) == 0
    assert storage.entries(1, 1) == []
    assert storage.snapshot().is_empty
    assert storage.initial_state() == (HardState(), ConfState())


def test_entries_returns_the_half_open_range(harness: Harness) -> None:
    harness.append(entries(1, 10))
    assert harness.storage.entries(3, 7) == entries(3, 6)
    assert harness.storage.entries(1, 11) == entries(1, 10)
    assert harness.storage.entries(4, 4) == []


def test_entries_stops_at_max_bytes_but_returns_at_least_one(harness: Harness) -> None:
    harness.append([Entry(1, index, data=b"x" * 84) for index in range(1, 11)])
    # Each entry counts 84 bytes of data plus 16 of overhead.
    assert len(harness.storage.entries(1, 11, max_bytes=300)) == 3
    assert len(harness.storage.entries(1, 11, max_bytes=299)) == 2
    assert len(harness.storage.entries(1, 11, max_bytes=1)) == 1
    assert len(harness.storage.entries(1, 11, max_bytes=0)) == 1
    assert len(harness.storage.entries(1, 11, max_bytes=10_000)) == 10


def test_entries_past_the_last_index_are_unavailable(harness: Harness) -> None:
    harness.append(entries(1, 10))
    with pytest.raises(UnavailableError):
        harness.storage.entries(5, 12)


def test_entries_at_or_before_the_compaction_point_are_compacted(harness: Harness) -> None:
    compacted_at_5(harness)
    storage = harness.storage
    with pytest.raises(CompactedError):
        storage.entries(5, 8)
    with pytest.raises(CompactedError):
        storage.entries(1, 8)
    assert storage.entries(6, 11) == entries(6, 10)


def test_term_covers_the_compaction_point_through_the_last_index(harness: Harness) -> None:
    compacted_at_5(harness)
    storage = harness.storage
    assert [storage.term(index) for index in range(5, 11)] == [1] * 6
    with pytest.raises(CompactedError):
        storage.term(4)
    with pytest.raises(UnavailableError):
        storage.term(11)


def test_first_and_last_index_after_compaction(harness: Harness) -> None:
    compacted_at_5(harness)
    storage = harness.storage
    assert (storage.first_index(), storage.last_index()) == (6, 10)
    snapshot = storage.snapshot()
    assert snapshot.metadata == SnapshotMetadata(index=5, term=1, conf_state=CONF)
    assert snapshot.data == b"state"
    assert storage.initial_state()[1] == CONF


def test_appending_replaces_a_conflicting_suffix(harness: Harness) -> None:
    harness.append(entries(1, 10, term=1))
    harness.append(entries(6, 7, term=2))
    storage = harness.storage
    assert storage.last_index() == 7
    assert storage.entries(1, 8) == entries(1, 5, term=1) + entries(6, 7, term=2)
    assert storage.term(7) == 2


def test_appending_ignores_entries_before_the_first_index(harness: Harness) -> None:
    compacted_at_5(harness)
    harness.append(entries(3, 12))
    storage = harness.storage
    assert (storage.first_index(), storage.last_index()) == (6, 12)
    assert storage.entries(6, 13) == entries(6, 12)


def test_an_applied_snapshot_replaces_the_whole_log(harness: Harness) -> None:
    harness.append(entries(1, 10, term=1))
    received = Snapshot(SnapshotMetadata(index=20, term=4, conf_state=CONF), b"from leader")
    harness.apply_snapshot(received)
    storage = harness.storage
    assert (storage.first_index(), storage.last_index()) == (21, 20)
    assert storage.term(20) == 4
    assert storage.snapshot() == received
    with pytest.raises(CompactedError):
        storage.entries(20, 21)
    harness.append(entries(21, 22, term=4))
    assert harness.storage.entries(21, 23) == entries(21, 22, term=4)


def test_an_older_snapshot_is_refused(harness: Harness) -> None:
    compacted_at_5(harness)
    with pytest.raises(SnapshotOutOfDateError):
        harness.apply_snapshot(Snapshot(SnapshotMetadata(index=3, term=1, conf_state=CONF)))
    with pytest.raises(SnapshotOutOfDateError):
        harness.create_snapshot(5)
    with pytest.raises(UnavailableError):
        harness.create_snapshot(11)


def test_the_hard_state_is_part_of_the_initial_state(harness: Harness) -> None:
    harness.append(entries(1, 3), HardState(term=3, vote=2, commit=3))
    assert harness.storage.initial_state() == (HardState(term=3, vote=2, commit=3), ConfState())
