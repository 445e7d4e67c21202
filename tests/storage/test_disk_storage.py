"""DiskStorage: opening, recovering, snapshots, compaction and refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftkv.raft import (
    ConfState,
    HardState,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    UnavailableError,
)
from raftkv.storage import (
    DataDirLockedError,
    DataDirMismatchError,
    DiskStorage,
    RecoveryError,
)

from .helpers import entries, flip_bit

NODE, CLUSTER = 1, 0xC1
CONF = ConfState(voters=(1, 2, 3))


def open_storage(directory: Path, **options: int) -> DiskStorage:
    options.setdefault("segment_size_bytes", 8192)
    return DiskStorage.open(directory, NODE, CLUSTER, **options)


def reopened(storage: DiskStorage, **options: int) -> DiskStorage:
    storage.close()
    return open_storage(storage.directory, **options)


def filled(directory: Path, last: int, **options: int) -> DiskStorage:
    storage = open_storage(directory, **options)
    for first in range(1, last + 1, 50):
        storage.append(entries(first, min(first + 49, last)), HardState(1, 1, first - 1))
        storage.sync()
    return storage


def test_a_new_directory_is_new_and_an_existing_one_is_not(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "data")
    assert storage.is_new
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["snap", "wal"]
    assert (storage.first_index(), storage.last_index()) == (1, 0)
    assert storage.initial_state() == (HardState(), ConfState())
    storage = reopened(storage)
    assert not storage.is_new
    storage.close()


def test_appended_entries_and_hard_state_survive_a_reopen(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    storage.append(entries(1, 5), HardState(term=2, vote=3, commit=4))
    storage.append(entries(4, 6, term=2))
    storage.sync()
    storage = reopened(storage)
    assert storage.entries(1, 7) == entries(1, 3) + entries(4, 6, term=2)
    assert storage.hard_state == HardState(term=2, vote=3, commit=4)
    storage.close()


def test_another_nodes_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    open_storage(tmp_path).close()
    with pytest.raises(DataDirMismatchError) as caught:
        DiskStorage.open(tmp_path, 2, CLUSTER)
    assert "belongs to node 1 of cluster c1, not to node 2 of cluster c1" in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataDirMismatchError, match="not to node 1 of cluster c2"):
        DiskStorage.open(tmp_path, NODE, 0xC2)
    open_storage(tmp_path).close()  # the refusals changed nothing


def test_a_directory_in_use_is_refused(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)
    with pytest.raises(DataDirLockedError):
        open_storage(tmp_path)
    storage.close()


def test_snapshot_files_without_a_wal_are_refused(tmp_path: Path) -> None:
    storage = filled(tmp_path, 10)
    storage.create_snapshot(10, CONF, b"state")
    storage.close()
    for segment in (tmp_path / "wal").iterdir():
        segment.unlink()
    with pytest.raises(RecoveryError, match="snapshot files but no WAL"):
        open_storage(tmp_path)


def test_an_installed_snapshot_replaces_the_log_and_survives_a_reopen(tmp_path: Path) -> None:
    storage = filled(tmp_path, 20)
    received = Snapshot(SnapshotMetadata(index=100, term=5, conf_state=CONF), b"leader state")
    storage.apply_snapshot(received)
    storage.append(entries(101, 105, term=5), HardState(5, 2, 103))
    storage.sync()
    storage = reopened(storage)
    assert storage.snapshot() == received
    assert (storage.first_index(), storage.last_index()) == (101, 105)
    assert storage.term(100) == 5
    assert storage.initial_state() == (HardState(5, 2, 103), CONF)
    storage.close()


def test_the_commit_index_is_at_least_the_snapshot_index_after_a_reopen(tmp_path: Path) -> None:
    storage = filled(tmp_path, 20)
    storage.apply_snapshot(Snapshot(SnapshotMetadata(index=50, term=3, conf_state=CONF), b"s"))
    # The crash came before the hard state saying commit=50 was written.
    storage = reopened(storage)
    assert storage.hard_state.commit == 50
    storage.close()


def test_compaction_keeps_a_catch_up_tail_in_memory_and_releases_segments(
    tmp_path: Path,
) -> None:
    storage = filled(tmp_path, 1000, catch_up_entries=100)
    segments_before = len(list((tmp_path / "wal").glob("*.wal")))
    storage.create_snapshot(800, CONF, b"state at 800")
    storage.compact(800)
    assert storage.first_index() == 701
    assert len(list((tmp_path / "wal").glob("*.wal"))) < segments_before
    storage = reopened(storage, catch_up_entries=100)
    assert storage.snapshot().metadata == SnapshotMetadata(800, 1, CONF)
    assert (storage.first_index(), storage.last_index()) == (701, 1000)
    assert storage.entries(701, 1001) == entries(701, 1000)
    storage.close()


def test_compacting_past_the_newest_snapshot_is_refused(tmp_path: Path) -> None:
    storage = filled(tmp_path, 100)
    storage.create_snapshot(50, CONF, b"s")
    with pytest.raises(ValueError, match="newest durable snapshot is at 50"):
        storage.compact(60)
    storage.close()


def test_snapshot_creation_refuses_old_and_future_indexes(tmp_path: Path) -> None:
    storage = filled(tmp_path, 100)
    storage.create_snapshot(50, CONF, b"s")
    with pytest.raises(SnapshotOutOfDateError):
        storage.create_snapshot(50, CONF, b"s")
    with pytest.raises(UnavailableError):
        storage.create_snapshot(101, CONF, b"s")
    with pytest.raises(SnapshotOutOfDateError):
        storage.apply_snapshot(Snapshot(SnapshotMetadata(40, 1, CONF), b"old"))
    storage.close()


def test_a_corrupt_newest_snapshot_falls_back_to_an_older_one(tmp_path: Path) -> None:
    storage = filled(tmp_path, 1000, catch_up_entries=0)
    for index in (300, 600, 900):
        storage.create_snapshot(index, CONF, f"state at {index}".encode())
        storage.compact(index)
    storage.close()
    newest = max((tmp_path / "snap").iterdir())
    flip_bit(newest, 50)
    storage = open_storage(tmp_path, catch_up_entries=0)
    assert storage.snapshot().data == b"state at 600"
    assert (storage.first_index(), storage.last_index()) == (601, 1000)
    assert storage.entries(601, 1001) == entries(601, 1000)
    storage.close()


def test_no_usable_snapshot_and_a_wal_that_starts_later_is_refused(tmp_path: Path) -> None:
    storage = filled(tmp_path, 1000, snapshots_to_keep=1)
    storage.create_snapshot(900, CONF, b"state at 900")
    storage.compact(900)
    storage.close()
    (only,) = (tmp_path / "snap").iterdir()
    flip_bit(only, 50)
    with pytest.raises(RecoveryError) as caught:
        open_storage(tmp_path, snapshots_to_keep=1)
    message = str(caught.value)
    assert "starts after index" in message and only.name in message and "\n" not in message


def test_unsafe_options_are_refused_before_the_directory_is_touched(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="catch_up_entries must be >= 0"):
        open_storage(tmp_path / "data", catch_up_entries=-1)
    with pytest.raises(ValueError, match="snapshots_to_keep must be >= 1"):
        open_storage(tmp_path / "data", snapshots_to_keep=0)
    assert not (tmp_path / "data").exists()


def test_sync_runs_in_a_worker_thread(tmp_path: Path) -> None:
    storage = open_storage(tmp_path)

    async def run() -> None:
        for first in range(1, 201, 10):
            storage.append(entries(first, first + 9), HardState(1, 1, first))
            await asyncio.to_thread(storage.sync)

    asyncio.run(run())
    storage = reopened(storage)
    assert storage.entries(1, 201) == entries(1, 200)
    storage.close()


def test_a_snapshot_file_written_in_a_worker_counts_once_committed(tmp_path: Path) -> None:
    storage = filled(tmp_path, 100)
    snapshot = storage.prepare_snapshot(60, CONF, b"state at 60")
    asyncio.run(asyncio.to_thread(storage.write_snapshot_file, snapshot))
    assert storage.snapshot().is_empty  # written, but not yet committed
    storage = reopened(storage)  # a crash before the commit: the file is not used
    assert storage.snapshot().is_empty
    assert list((tmp_path / "snap").iterdir()) == []
    snapshot = storage.prepare_snapshot(60, CONF, b"state at 60")
    storage.write_snapshot_file(snapshot)
    storage.commit_snapshot(snapshot)
    assert storage.snapshot() == snapshot
    storage = reopened(storage)
    assert storage.snapshot() == snapshot
    storage.close()


def test_a_snapshot_is_not_committed_without_its_file(tmp_path: Path) -> None:
    storage = filled(tmp_path, 100)
    snapshot = storage.prepare_snapshot(60, CONF, b"state at 60")
    with pytest.raises(ValueError, match="was not written"):
        storage.commit_snapshot(snapshot)
    storage.close()


def test_a_snapshot_overtaken_while_its_file_was_written_is_not_committed(
    tmp_path: Path,
) -> None:
    storage = filled(tmp_path, 100)
    older = storage.prepare_snapshot(50, CONF, b"state at 50")
    storage.write_snapshot_file(older)
    storage.create_snapshot(70, CONF, b"state at 70")
    with pytest.raises(SnapshotOutOfDateError):
        storage.commit_snapshot(older)
    assert storage.snapshot().metadata.index == 70
    storage.close()


def test_a_snapshot_committed_in_steps_counts_once_finished(tmp_path: Path) -> None:
    storage = filled(tmp_path, 100)
    snapshot = storage.prepare_snapshot(60, CONF, b"state at 60")
    storage.write_snapshot_file(snapshot)
    storage.mark_snapshot(snapshot)
    assert storage.snapshot().is_empty  # marked, not yet synced and finished
    asyncio.run(asyncio.to_thread(storage.sync))
    asyncio.run(asyncio.to_thread(storage.prune_snapshots))
    storage.finish_snapshot(snapshot)
    assert storage.snapshot() == snapshot
    storage = reopened(storage)
    assert storage.snapshot() == snapshot
    storage.close()
