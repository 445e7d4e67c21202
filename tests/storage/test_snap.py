"""Snapshot files: atomic saves, checked loads, falling back, pruning."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.raft import ConfState, Snapshot, SnapshotMetadata
from raftkv.storage import CorruptSnapshotError, SnapshotMarker, Snapshotter

from .helpers import cut, flip_bit


def snapshot(index: int, term: int = 1, data: bytes | None = None) -> Snapshot:
    conf_state = ConfState(voters=(1, 2, 3), learners=(4,))
    return Snapshot(
        metadata=SnapshotMetadata(index=index, term=term, conf_state=conf_state),
        data=data if data is not None else f"state at {index}".encode(),
    )


def test_a_snapshot_round_trips(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path)
    original = snapshot(42, term=3, data=bytes(range(256)) * 4096)
    file = snapshotter.save(original)
    assert file.marker == SnapshotMarker(42, 3)
    assert snapshotter.load(file) == original
    assert snapshotter.load_newest() == original
    assert list(tmp_path.iterdir()) == [file.path]  # no temp file left behind


def test_files_are_listed_newest_first(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path, keep=10)
    for index in (5, 300, 17):
        snapshotter.save(snapshot(index))
    assert [file.marker.index for file in snapshotter.files()] == [300, 17, 5]


def test_a_corrupt_newest_snapshot_falls_back_to_an_older_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshotter = Snapshotter(tmp_path)
    snapshotter.save(snapshot(10))
    newest = snapshotter.save(snapshot(20))
    flip_bit(newest.path, 40)
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        assert snapshotter.load_newest() == snapshot(10)
    assert "falling back to an older snapshot" in caplog.text


def test_only_usable_snapshots_are_loaded(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path)
    snapshotter.save(snapshot(10))
    snapshotter.save(snapshot(20))
    assert snapshotter.load_newest(lambda marker: marker.index < 15) == snapshot(10)
    assert snapshotter.load_newest(lambda marker: False) is None


def test_no_readable_snapshot_loads_none(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path)
    assert snapshotter.load_newest() is None
    cut(snapshotter.save(snapshot(10)).path, 30)
    assert snapshotter.load_newest() is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: flip_bit(path, path.stat().st_size - 20), "checksum mismatch"),
        (lambda path: cut(path, path.stat().st_size - 1), "checksum mismatch"),
        (lambda path: cut(path, 10), "bad magic or too short"),
        (lambda path: path.write_bytes(b"something else entirely"), "bad magic"),
    ],
)
def test_a_damaged_file_is_refused_by_name(
    tmp_path: Path, damage: Callable[[Path], object], reason: str
) -> None:
    snapshotter = Snapshotter(tmp_path)
    file = snapshotter.save(snapshot(10))
    damage(file.path)
    with pytest.raises(CorruptSnapshotError, match=reason) as caught:
        snapshotter.load(file)
    assert caught.value.path == str(file.path)


def test_a_file_whose_content_disagrees_with_its_name_is_refused(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path)
    file = snapshotter.save(snapshot(10, term=2))
    renamed = file.path.rename(tmp_path / f"{11:016x}-{2:016x}.snap")
    (listed,) = snapshotter.files()
    assert listed.path == renamed
    with pytest.raises(CorruptSnapshotError, match="holds index 10 term 2, unlike its name"):
        snapshotter.load(listed)


def test_pruning_keeps_the_newest_few(tmp_path: Path) -> None:
    snapshotter = Snapshotter(tmp_path, keep=2)
    for index in (1, 2, 3, 4):
        snapshotter.save(snapshot(index))
    removed = snapshotter.prune()
    assert sorted(path.name for path in removed) == [
        f"{1:016x}-{1:016x}.snap",
        f"{2:016x}-{1:016x}.snap",
    ]
    assert [file.marker.index for file in snapshotter.files()] == [4, 3]


def test_keeping_no_snapshot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Snapshotter(tmp_path, keep=0)


def test_an_interrupted_save_leaves_nothing_that_is_read(tmp_path: Path) -> None:
    (tmp_path / f"{9:016x}-{1:016x}.snap.tmp").write_bytes(b"half written")
    snapshotter = Snapshotter(tmp_path)
    assert snapshotter.files() == []
    assert list(tmp_path.iterdir()) == []
