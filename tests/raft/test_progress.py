"""Follower progress and the in-flight window (`raftkv.raft._progress`)."""

from __future__ import annotations

import pytest

from raftkv.raft._progress import Inflights, Progress, ProgressState


def test_inflights_bounded_in_count() -> None:
    window = Inflights(3)
    for last_index in (1, 2, 3):
        assert not window.full()
        window.add(last_index, 10)
    assert window.full()
    with pytest.raises(AssertionError):
        window.add(4, 10)


def test_inflights_bounded_in_bytes() -> None:
    window = Inflights(100, max_bytes=25)
    window.add(1, 10)
    window.add(2, 10)
    assert not window.full()
    window.add(3, 10)
    assert window.full()
    assert window.bytes == 30


def test_inflights_free_le_releases_every_message_through_an_index() -> None:
    window = Inflights(10, max_bytes=100)
    for last_index in (2, 4, 6, 8):
        window.add(last_index, 5)
    window.free_le(5)
    assert len(window) == 2
    assert window.bytes == 10
    window.free_le(100)
    assert len(window) == 0
    assert window.bytes == 0


def test_inflights_free_first_one() -> None:
    window = Inflights(2)
    window.add(1, 3)
    window.add(2, 4)
    window.free_first_one()
    assert len(window) == 1
    assert window.bytes == 4
    assert not window.full()


def test_inflights_indexes_must_grow() -> None:
    window = Inflights(5)
    window.add(5, 1)
    with pytest.raises(AssertionError):
        window.add(5, 1)


def new_progress(next_index: int = 10) -> Progress:
    return Progress(next_index, Inflights(4))


def test_probe_pauses_after_one_append() -> None:
    progress = new_progress()
    assert progress.state is ProgressState.PROBE
    assert not progress.is_paused()
    progress.sent_entries(3, 30)
    assert progress.is_paused()
    # Probing does not move `next` optimistically.
    assert progress.next == 10


def test_replicate_advances_next_optimistically_until_the_window_is_full() -> None:
    progress = new_progress()
    progress.maybe_update(9)
    progress.become_replicate()
    assert progress.next == 10
    for _ in range(4):
        assert not progress.is_paused()
        progress.sent_entries(2, 20)
    assert progress.next == 18
    assert progress.is_paused()
    progress.maybe_update(13)
    progress.inflights.free_le(13)
    assert not progress.is_paused()


def test_maybe_update_ignores_old_news() -> None:
    progress = new_progress()
    assert progress.maybe_update(12)
    assert progress.match == 12 and progress.next == 13
    assert not progress.maybe_update(11)
    assert progress.match == 12


def test_probe_rejection_uses_the_hint() -> None:
    progress = new_progress(next_index=100)
    progress.sent_entries(1, 10)
    # The follower refused the append at 99; its log matches at most up to 40.
    assert progress.maybe_decrease_to(99, 40)
    assert progress.next == 41
    assert not progress.is_paused()


def test_stale_probe_rejection_is_ignored() -> None:
    progress = new_progress(next_index=50)
    assert not progress.maybe_decrease_to(80, 10)
    assert progress.next == 50


def test_probe_rejection_never_goes_below_match() -> None:
    progress = new_progress(next_index=50)
    progress.maybe_update(30)
    progress.next = 50
    assert progress.maybe_decrease_to(49, 10)
    assert progress.next == 31


def test_replicate_rejection_falls_back_to_match() -> None:
    progress = new_progress()
    progress.maybe_update(9)
    progress.become_replicate()
    progress.sent_entries(5, 50)
    assert not progress.maybe_decrease_to(9, 0), "a rejection at or below match is stale"
    assert progress.maybe_decrease_to(14, 3)
    assert progress.next == 10


def test_snapshot_state_pauses_and_probe_resumes_after_it() -> None:
    progress = new_progress()
    progress.become_snapshot(500)
    assert progress.is_paused()
    progress.become_probe()
    assert progress.state is ProgressState.PROBE
    assert progress.next == 501
    assert progress.pending_snapshot == 0


def test_failed_snapshot_probes_from_match() -> None:
    progress = new_progress()
    progress.maybe_update(20)
    progress.become_snapshot(500)
    progress.pending_snapshot = 0  # what report_snapshot(ok=False) does
    progress.become_probe()
    assert progress.next == 21
