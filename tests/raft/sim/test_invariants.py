"""The safety checkers, fed hand-made logs that do and do not satisfy Raft."""

from __future__ import annotations

import pytest

from raftkv.raft import Entry

from .invariants import (
    CommittedLog,
    ElectionSafety,
    LogMatching,
    SafetyViolation,
    check_apply_order,
    check_logs_match,
    check_truncation,
)


def log(*terms: int, first: int = 1, tag: str = "") -> list[Entry]:
    """Entries first, first+1, ... of the given terms, with data naming index and term."""
    return [
        Entry(term, index, data=f"{tag}{index}@{term}".encode())
        for index, term in enumerate(terms, start=first)
    ]


# --- election safety ------------------------------------------------------------------


def test_one_leader_per_term_passes() -> None:
    safety = ElectionSafety()
    safety.observe_leader(1, 2)
    safety.observe_leader(1, 2)
    safety.observe_leader(2, 3)


def test_two_leaders_in_one_term_is_a_violation() -> None:
    safety = ElectionSafety()
    safety.observe_leader(1, 2)
    with pytest.raises(SafetyViolation, match="term 2"):
        safety.observe_leader(3, 2)


# --- log matching ---------------------------------------------------------------------


def test_logs_that_diverge_only_in_uncommitted_terms_match() -> None:
    matching = LogMatching()
    matching.observe_append(1, 0, log(1, 1, 2, 2))
    matching.observe_append(2, 0, log(1, 1, 3))
    # Node 2 later takes node 1's entries of term 2 after its own entry 2.
    matching.observe_append(2, 1, log(2, 2, first=3))


def test_same_index_and_term_with_different_data_is_a_violation() -> None:
    matching = LogMatching()
    matching.observe_append(1, 0, log(1, 1, 2))
    with pytest.raises(SafetyViolation, match="same index and term"):
        matching.observe_append(2, 0, log(1, 1, 2, tag="other-"))


def test_same_index_and_term_after_a_different_predecessor_is_a_violation() -> None:
    matching = LogMatching()
    matching.observe_append(1, 0, log(1, 1, 3))
    # Node 2 has entry 3 of term 3 (identical) but after an entry of term 2.
    with pytest.raises(SafetyViolation, match="term 2 before entry 3"):
        matching.observe_append(2, 2, [log(1, 1, 3)[2]])


def test_terms_decreasing_inside_a_log_is_a_violation() -> None:
    with pytest.raises(SafetyViolation, match="decrease"):
        LogMatching().observe_append(1, 0, log(1, 3, 2))


def test_whole_log_comparison_accepts_a_common_prefix_and_divergent_tails() -> None:
    check_logs_match(
        {
            1: log(1, 1, 2, 2),
            2: log(1, 1, 3),
            3: log(1, 2, 2, first=2),
            4: [],
        }
    )


def test_whole_log_comparison_finds_a_difference_below_a_matching_entry() -> None:
    broken = log(1, 1, 2)
    broken[0] = Entry(1, 1, data=b"forged")
    with pytest.raises(SafetyViolation, match="agree above index 1"):
        check_logs_match({1: log(1, 1, 2), 2: broken})


def test_whole_log_comparison_finds_different_entries_of_one_term() -> None:
    with pytest.raises(SafetyViolation, match="different entries of term 2"):
        check_logs_match({1: log(1, 2), 2: log(1, 2, tag="x")})


# --- committed log --------------------------------------------------------------------


def test_the_same_committed_entry_seen_twice_passes() -> None:
    committed = CommittedLog()
    for entry in log(1, 1, 2):
        committed.observe_committed(1, entry, term=2)
        committed.observe_committed(2, entry, term=3)
    assert committed.last_index == 3


def test_a_committed_entry_that_changes_is_a_violation() -> None:
    committed = CommittedLog()
    committed.observe_committed(1, Entry(1, 1, data=b"a"), term=1)
    with pytest.raises(SafetyViolation, match="committed entry changed"):
        committed.observe_committed(2, Entry(1, 1, data=b"b"), term=1)


def test_a_snapshot_over_a_committed_index_of_another_term_is_a_violation() -> None:
    committed = CommittedLog()
    committed.observe_committed(1, Entry(2, 5), term=2)
    with pytest.raises(SafetyViolation, match="term 3 committed at index 5"):
        committed.observe_committed_term(2, 5, 3, term=3)


def test_a_leader_log_with_every_committed_entry_passes() -> None:
    committed = CommittedLog()
    for entry in log(1, 1, 2):
        committed.observe_committed(1, entry, term=2)
    committed.check_leader_log(2, log(1, 1, 2, 4), term=4)
    # A leader whose log starts after a snapshot covers only what it still holds.
    committed.check_leader_log(2, log(1, 2, 4, first=2), term=4)


def test_a_leader_missing_a_committed_entry_is_a_violation() -> None:
    committed = CommittedLog()
    for entry in log(1, 1, 2):
        committed.observe_committed(1, entry, term=2)
    with pytest.raises(SafetyViolation, match="ending at 2"):
        committed.check_leader_log(2, log(1, 1), term=3)
    with pytest.raises(SafetyViolation, match=r"holding Entry\(term=3, index=3"):
        committed.check_leader_log(3, log(1, 1, 3), term=3)
    # Only the term is known where a snapshot covers the committed entry.
    snapshot_only = CommittedLog()
    snapshot_only.observe_committed_term(1, 3, 2, term=2)
    with pytest.raises(SafetyViolation, match="entry of term 2 was committed"):
        snapshot_only.check_leader_log(3, log(1, 1, 3), term=3)


def test_a_leader_of_an_older_term_need_not_hold_later_commits() -> None:
    committed = CommittedLog()
    for entry in log(1, 1, 3):
        committed.observe_committed(1, entry, term=3)
    # Elected in term 2 by votes granted before term 3 committed entry 3.
    committed.check_leader_log(2, log(1, 1, 2), term=2)
    # Entries committed before term 2 still bind it.
    committed.observe_committed(1, Entry(1, 1, data=b"1@1"), term=1)
    with pytest.raises(SafetyViolation, match="ending at 0"):
        committed.check_leader_log(4, [], term=2)


def test_truncating_above_the_commit_index_is_allowed_and_at_it_is_not() -> None:
    check_truncation(1, truncate_from=6, commit=5)
    with pytest.raises(SafetyViolation, match="committed entry lost"):
        check_truncation(1, truncate_from=5, commit=5)


# --- apply order ----------------------------------------------------------------------


def test_contiguous_entries_up_to_the_commit_index_apply() -> None:
    check_apply_order(1, applied=2, commit=5, entries=log(1, 1, 1, first=3))
    check_apply_order(1, applied=2, commit=2, entries=[])


def test_a_gap_in_applied_entries_is_a_violation() -> None:
    with pytest.raises(SafetyViolation, match="expected 3"):
        check_apply_order(1, applied=2, commit=9, entries=log(1, first=4))


def test_applying_past_the_commit_index_is_a_violation() -> None:
    with pytest.raises(SafetyViolation, match="applied > committed"):
        check_apply_order(1, applied=2, commit=3, entries=log(1, 1, first=3))
