"""Majority math (`raftkv.raft._quorum`)."""

from __future__ import annotations

import pytest

from raftkv.raft._quorum import VoteResult, committed_index, has_quorum, majority, vote_result


@pytest.mark.parametrize(("voters", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(voters: int, needed: int) -> None:
    assert majority(voters) == needed


def test_committed_index_is_the_highest_index_a_majority_matched() -> None:
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3}, {1: 5, 2: 5, 3: 1}) == 5
    assert committed_index({1, 2, 3, 4}, {1: 9, 2: 7, 3: 4, 4: 1}) == 4
    assert committed_index({1}, {1: 8}) == 8


def test_committed_index_ignores_non_voters_and_counts_missing_voters_as_zero() -> None:
    # Node 4 is a learner: its match does not count.
    assert committed_index({1, 2, 3}, {1: 9, 4: 9, 2: 1}) == 1
    assert committed_index({1, 2, 3}, {1: 9}) == 0


def test_committed_index_without_voters_is_zero() -> None:
    assert committed_index(set(), {1: 9}) == 0


def test_vote_result() -> None:
    voters = {1, 2, 3, 4, 5}
    assert vote_result(voters, {1: True}) is VoteResult.PENDING
    assert vote_result(voters, {1: True, 2: True, 3: True}) is VoteResult.WON
    assert vote_result(voters, {1: True, 2: False, 3: False, 4: False}) is VoteResult.LOST
    assert vote_result(voters, {1: True, 2: False, 3: False}) is VoteResult.PENDING
    # Votes from non-voters count for nothing.
    assert vote_result({1, 2, 3}, {1: True, 9: True, 8: True}) is VoteResult.PENDING


def test_has_quorum() -> None:
    assert has_quorum({1, 2, 3}, {1, 2})
    assert not has_quorum({1, 2, 3}, {1, 9})
    assert has_quorum({1}, {1})
    assert not has_quorum({1, 2, 3, 4}, {1, 2})
