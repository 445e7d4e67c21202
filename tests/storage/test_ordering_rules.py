"""One test per rule of the ordering that keeps recovery safe, numbered as in the
`raftkv.storage` package docstring."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.raft import ConfState, HardState
from raftkv.storage import (
    WAL,
    DiskStorage,
    DurabilityError,
    SnapshotMarker,
    WALMetadata,
    _files,
    _wal,
)
from raftkv.storage import _records as records

from .helpers import entries

CONF = ConfState(voters=(1,))


class Crash(Exception):
    """Stands for the process dying at this point."""


def open_storage(directory: Path) -> DiskStorage:
    return DiskStorage.open(directory, 1, 1, catch_up_entries=0, segment_size_bytes=4096)


def filled(directory: Path, last: int) -> DiskStorage:
    storage = open_storage(directory)
    for first in range(1, last + 1, 10):
        storage.append(entries(first, first + 9), HardState(1, 1, first - 1))
        storage.sync()
    return storage


def path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every fsync and fdatasync from now on, as (call, path), except those of the
    spare segment's preparation, which runs in the background at its own pace."""
    calls: list[tuple[str, str]] = []
    for name in ("fsync", "fdatasync"):
        real: Callable[[int], None] = getattr(os, name)

        def spy(fd: int, name: str = name, real: Callable[[int], None] = real) -> None:
            if threading.current_thread().name != "raftkv-wal-spare":
                calls.append((name, path_of(fd)))
            real(fd)

        monkeypatch.setattr(os, name, spy)
    yield calls


def test_rule_1_a_snapshot_file_is_durable_before_its_marker_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsyncs: list[tuple[str, str]]
) -> None:
    storage = filled(tmp_path, 100)
    snap_directory = tmp_path / "snap"
    seen_at_marker: list[list[str]] = []

    def crash_at_marker(wal: WAL, marker: SnapshotMarker) -> None:
        seen_at_marker.append(sorted(path.name for path in snap_directory.iterdir()))
        raise Crash

    fsyncs.clear()
    monkeypatch.setattr(WAL, "save_snapshot", crash_at_marker)
    with pytest.raises(Crash):
        storage.create_snapshot(50, CONF, b"state at 50")
    name = f"{50:016x}-{1:016x}.snap"
    # When the marker was about to be written, the file was in place under its own
    # name, and it and its directory had been fsynced.
    assert seen_at_marker == [[name]]
    assert ("fsync", str(snap_directory / (name + ".tmp"))) in fsyncs
    assert ("fsync", str(snap_directory)) in fsyncs
    # A crash between the two leaves an unused file; recovery is as before.
    monkeypatch.undo()
    storage.close()
    storage = open_storage(tmp_path)
    assert storage.snapshot().is_empty
    assert storage.entries(1, 101) == entries(1, 100)
    assert list(snap_directory.iterdir()) == []  # the orphan was removed
    storage.close()


def test_rule_2_append_does_not_sync_and_sync_does_once(
    tmp_path: Path, fsyncs: list[tuple[str, str]]
) -> None:
    storage = open_storage(tmp_path)
    fsyncs.clear()
    storage.append(entries(1, 100), HardState(1, 1, 0))
    storage.append(entries(101, 101), HardState(1, 1, 100))
    assert fsyncs == []  # nothing is durable yet: send nothing that depends on it
    storage.sync()
    (segment,) = (tmp_path / "wal").glob("*.wal")
    assert fsyncs == [("fdatasync", str(segment))]
    storage.sync()
    assert len(fsyncs) == 1  # nothing new, nothing to sync
    storage.close()
    # That a record whose sync returned survives a crash is test_crash.py's to show.


def test_rule_3_the_snapshot_index_is_stored_with_the_state_it_describes(
    tmp_path: Path,
) -> None:
    storage = filled(tmp_path, 100)
    storage.create_snapshot(30, CONF, b"state at 30")
    newest = storage.create_snapshot(60, CONF, b"state at 60")
    storage.close()
    path = tmp_path / "snap" / f"{60:016x}-{1:016x}.snap"
    content = bytearray(path.read_bytes())
    assert content[8:16] == (60).to_bytes(8, "little")
    content[8:16] = (61).to_bytes(8, "little")  # the state, claiming another index
    path.with_name(f"{61:016x}-{1:016x}.snap").write_bytes(content)
    path.unlink()
    storage = open_storage(tmp_path)
    # One CRC covers index and data: the altered file is not used at all.
    assert storage.snapshot().metadata.index == 30
    assert storage.snapshot().data == b"state at 30"
    assert newest.metadata.index == 60
    storage.close()


def test_rule_4_a_release_needs_a_synced_marker_and_deletes_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = WAL.create(tmp_path, WALMetadata(1, 1), segment_size_bytes=4096)
    for first in range(1, 1001, 10):
        wal.save(entries(first, first + 9))
        wal.sync()
    wal.save_snapshot(SnapshotMarker(900, 1))
    with pytest.raises(ValueError, match="not synced"):
        wal.release_to(900)
    wal.sync()
    segments = wal.segment_paths()
    events: list[str] = []
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        events.append(path.name)
        if len(events) == 3:
            raise Crash  # dies after the first removal was made durable
        real_unlink(path, missing_ok)

    def fsync_directory(path: Path) -> None:
        events.append("fsync")
        _files.fsync_directory(path)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(_wal, "fsync_directory", fsync_directory)
    with pytest.raises(Crash):
        wal.release_to(900)
    monkeypatch.undo()
    assert events == [segments[0].name, "fsync", segments[1].name]
    wal.close()
    # What is left is a suffix of the segments, and it replays.
    wal, contents = WAL.open(tmp_path, segment_size_bytes=4096)
    assert wal.segment_paths() == segments[1:]
    assert contents.entries_after(SnapshotMarker(900, 1)) == entries(901, 1000)
    assert wal.release_to(900) > 0
    wal.close()


def test_rule_5_a_segment_is_complete_before_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsyncs: list[tuple[str, str]]
) -> None:
    wal = WAL.create(tmp_path, WALMetadata(1, 1), segment_size_bytes=4096)
    renames: list[tuple[str, list[records.RecordType], list[tuple[str, str]]]] = []
    real_rename = os.rename

    def rename(source: str | Path, target: str | Path) -> None:
        data = Path(source).read_bytes()
        first = records.read_record(data, 0)
        assert first is not None
        second = records.read_record(data, first.next_offset)
        assert second is not None
        renames.append((str(source), [first.type, second.type], list(fsyncs)))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    previous = wal.segment_paths()[-1]
    fsyncs.clear()
    while len(wal.segment_paths()) == 1:
        wal.save(entries(1, 50), HardState(3, 1, 0))
        wal.sync()
    (source, types, synced_before), *_ = renames
    assert types == [records.RecordType.METADATA, records.RecordType.HARD_STATE]
    assert synced_before[-1] == ("fsync", source)
    assert ("fdatasync", str(previous)) in synced_before
    wal.close()
    # And the new segment's first records are what makes any suffix a whole WAL.
    wal, contents = WAL.open(tmp_path, segment_size_bytes=4096)
    assert contents.hard_state == HardState(3, 1, 0)
    wal.close()


def test_rule_6_recovery_makes_what_it_read_durable(
    tmp_path: Path, fsyncs: list[tuple[str, str]]
) -> None:
    wal = WAL.create(tmp_path, WALMetadata(1, 1))
    wal.save(entries(1, 3), HardState(2, 2, 0))  # never synced: only in the page cache
    (segment,) = wal.segment_paths()
    wal.close()
    fsyncs.clear()
    wal, contents = WAL.open(tmp_path)
    assert contents.hard_state == HardState(2, 2, 0)
    assert fsyncs[:2] == [("fsync", str(segment)), ("fsync", str(tmp_path))]
    wal.close()


def test_rule_7_a_failed_fsync_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = filled(tmp_path, 10)

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    storage.append(entries(11, 11))
    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", fail)
        with pytest.raises(DurabilityError, match="must stop"):
            storage.sync()
    with pytest.raises(DurabilityError):
        storage.append(entries(12, 12))
    storage.close()
    # A snapshot whose file cannot be made durable gets no marker.
    storage = open_storage(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", fail)
        with pytest.raises(DurabilityError):
            storage.create_snapshot(5, CONF, b"state")
    storage.close()
    storage = open_storage(tmp_path)
    assert storage.snapshot().is_empty
    storage.close()
