"""The core's view of the log (`raftkv.raft._log`): storage plus an unstable tail."""

from __future__ import annotations

import pytest

from raftkv.raft import (
    CompactedError,
    ConfState,
    Entry,
    Snapshot,
    SnapshotMetadata,
    UnavailableError,
)
from raftkv.raft._log import RaftLog

from .helpers import make_storage


def log_with(stable: tuple[int, ...], unstable: tuple[int, ...] = ()) -> RaftLog:
    """A log whose stored entries have the terms `stable` and whose unstable tail
    follows with the terms `unstable`."""
    log = RaftLog(make_storage((1,), stable), max_applying_bytes=1 << 20)
    start = len(stable) + 1
    log.append([Entry(term, index) for index, term in enumerate(unstable, start)])
    return log


def terms(log: RaftLog) -> list[int]:
    return [log.term(i) for i in range(log.first_index(), log.last_index() + 1)]


def test_reads_span_storage_and_the_unstable_tail() -> None:
    log = log_with((1, 1, 2), (3, 3))
    assert log.first_index() == 1
    assert log.last_index() == 5
    assert log.stabled_index() == 3
    assert terms(log) == [1, 1, 2, 3, 3]
    assert [e.index for e in log.slice(2, 6, None)] == [2, 3, 4, 5]


def test_out_of_range_reads_raise() -> None:
    log = log_with((1, 1))
    with pytest.raises(UnavailableError):
        log.term(3)
    assert log.term_or_zero(3) == 0
    log.storage.compact(1)  # type: ignore[attr-defined]
    with pytest.raises(CompactedError):
        log.slice(1, 2, None)


def test_unstable_append_overwrites_a_stable_suffix() -> None:
    log = log_with((1, 1, 1, 1))
    log.append([Entry(2, 3), Entry(2, 4), Entry(2, 5)])
    assert terms(log) == [1, 1, 2, 2, 2]
    assert log.stabled_index() == 2
    assert [e.index for e in log.unstable_entries()] == [3, 4, 5]


def test_stable_to_ignores_entries_overwritten_meanwhile() -> None:
    log = log_with((1,), (1, 1))
    log.append([Entry(2, 3)])  # overwrites index 3 while the host writes (3, term 1)
    log.stable_to(3, 1)
    assert log.stabled_index() == 1
    log.stable_to(3, 2)
    assert log.stabled_index() == 3


def test_append_never_overwrites_a_committed_entry() -> None:
    log = log_with((1, 1, 1))
    log.commit_to(3)
    with pytest.raises(AssertionError):
        log.append([Entry(2, 3)])


def test_maybe_append_checks_the_previous_entry() -> None:
    log = log_with((1, 1, 2))
    assert log.maybe_append(3, 1, 0, [Entry(3, 4)]) is None
    assert log.maybe_append(5, 2, 0, []) is None
    assert log.maybe_append(3, 2, 2, [Entry(3, 4)]) == 4
    assert log.committed == 2


def test_maybe_append_keeps_matching_entries_and_truncates_at_a_conflict() -> None:
    log = log_with((1, 1, 2, 2, 2))
    # A stale, shorter append that matches must not truncate the longer log.
    assert log.maybe_append(1, 1, 0, [Entry(1, 2)]) == 2
    assert log.last_index() == 5
    # A conflicting one replaces the suffix from the conflict on.
    assert log.maybe_append(2, 1, 0, [Entry(2, 3), Entry(3, 4)]) == 4
    assert terms(log) == [1, 1, 2, 3]


def test_maybe_append_commits_at_most_the_last_new_entry() -> None:
    log = log_with((1, 1, 1, 1, 1))
    assert log.maybe_append(2, 1, 100, []) == 2
    assert log.committed == 2


def test_commit_only_for_an_entry_of_the_current_term() -> None:
    log = log_with((1, 1, 2))
    assert not log.maybe_commit(2, 2)
    assert log.committed == 0
    assert log.maybe_commit(3, 2)
    assert log.committed == 3
    assert not log.maybe_commit(2, 1), "commit never goes backwards"


def test_find_conflict_by_term() -> None:
    log = log_with((1, 1, 2, 2, 4, 4, 4))
    assert log.find_conflict_by_term(7, 4) == 7
    assert log.find_conflict_by_term(7, 3) == 4
    assert log.find_conflict_by_term(7, 1) == 2
    assert log.find_conflict_by_term(7, 0) == 0
    assert log.find_conflict_by_term(20, 5) == 7  # beyond the log: its last index


def test_is_up_to_date() -> None:
    log = log_with((1, 2, 2))
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(4, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(9, 1)


def test_next_committed_entries_respects_max_applying_bytes() -> None:
    log = RaftLog(make_storage((1,), (1,) * 10), max_applying_bytes=40)
    log.commit_to(10)
    first = log.next_committed_entries()
    assert [e.index for e in first] == [1, 2]  # 16 bytes each, at least one
    log.applied_to(first[-1].index)
    assert [e.index for e in log.next_committed_entries()] == [3, 4]


def test_restore_from_a_snapshot() -> None:
    log = log_with((1, 1, 1), (2,))
    snapshot = Snapshot(SnapshotMetadata(10, 3, ConfState((1,))))
    log.restore(snapshot)
    assert log.first_index() == 11
    assert log.last_index() == 10
    assert log.term(10) == 3
    assert log.committed == 10
    assert log.stabled_index() == 0  # nothing is durable until the snapshot is
    assert not log.has_next_committed_entries()
    log.stable_snapshot_to(10)
    assert log.unstable.snapshot is None


def test_applied_never_passes_committed() -> None:
    log = log_with((1, 1, 1))
    log.commit_to(2)
    with pytest.raises(AssertionError):
        log.applied_to(3)
