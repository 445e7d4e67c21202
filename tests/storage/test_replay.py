"""Rebuilding the live log from WAL records, one test per rule of `LogReplay`."""

from __future__ import annotations

import pytest

from raftkv.raft import HardState
from raftkv.storage import SnapshotMarker
from raftkv.storage._replay import LogReplay, ReplayGapError

from .helpers import entries


def terms(replay: LogReplay) -> list[tuple[int, int]]:
    return [(entry.index, entry.term) for entry in replay.entries]


def test_batches_append_in_order() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 3))
    replay.add_entries(entries(4, 5))
    assert replay.base_index == 0 and replay.base_term == 0
    assert replay.entries == entries(1, 5)


def test_a_later_batch_at_the_same_index_wins() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 5, term=1))
    replay.add_entries(entries(3, 4, term=2))
    assert terms(replay) == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_a_batch_after_a_gap_means_a_missing_segment() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 3))
    with pytest.raises(ReplayGapError, match=r"entries 4\.\.5 are missing"):
        replay.add_entries(entries(6, 7))


def test_a_wal_that_starts_mid_log_has_a_base_of_unknown_term() -> None:
    replay = LogReplay()
    replay.add_entries(entries(101, 103, term=4))
    assert (replay.base_index, replay.base_term) == (100, None)
    assert replay.term_at(100) is None
    assert replay.term_at(102) == 4


def test_a_marker_that_agrees_with_the_log_keeps_the_entries_after_it() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 10, term=2))
    replay.add_snapshot_marker(SnapshotMarker(index=6, term=2))
    assert replay.entries == entries(1, 10, term=2)
    assert replay.starting_points() == [SnapshotMarker(6, 2)]
    assert replay.entries_after(6) == entries(7, 10, term=2)


def test_a_marker_that_disagrees_with_the_log_replaces_it() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 10, term=1))
    replay.add_snapshot_marker(SnapshotMarker(index=8, term=3))
    assert (replay.base_index, replay.base_term, replay.entries) == (8, 3, [])
    replay.add_entries(entries(5, 10, term=3))
    assert replay.entries == entries(9, 10, term=3)


def test_a_marker_past_the_end_of_the_log_replaces_it() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 3))
    replay.add_snapshot_marker(SnapshotMarker(index=50, term=5))
    assert (replay.base_index, replay.entries) == (50, [])


def test_a_marker_older_than_the_wal_changes_nothing_and_is_no_starting_point() -> None:
    replay = LogReplay()
    replay.add_entries(entries(101, 103, term=4))
    replay.add_snapshot_marker(SnapshotMarker(index=90, term=3))
    assert replay.entries == entries(101, 103, term=4)
    assert replay.starting_points() == []


def test_a_marker_at_the_base_of_unknown_term_sets_it() -> None:
    replay = LogReplay()
    replay.add_entries(entries(101, 103, term=4))
    replay.add_snapshot_marker(SnapshotMarker(index=100, term=4))
    assert replay.base_term == 4
    assert replay.starting_points() == [SnapshotMarker(100, 4)]


def test_a_marker_replaced_by_a_later_one_is_no_starting_point() -> None:
    replay = LogReplay()
    replay.add_entries(entries(1, 10, term=1))
    replay.add_snapshot_marker(SnapshotMarker(index=5, term=1))
    replay.add_snapshot_marker(SnapshotMarker(index=20, term=2))
    assert replay.starting_points() == [SnapshotMarker(20, 2)]


def test_the_last_hard_state_wins() -> None:
    replay = LogReplay()
    replay.set_hard_state(HardState(1, 1, 0))
    replay.set_hard_state(HardState(2, 0, 3))
    assert replay.hard_state == HardState(2, 0, 3)
