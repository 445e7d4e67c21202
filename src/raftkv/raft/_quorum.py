"""Majority math: the commit index a set of voters has reached, and vote tallies.

Pure functions over plain collections, so that every rule is easy to test alone.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(voter_count: int) -> int:
    """The smallest number of voters that forms a quorum."""
    return voter_count // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The largest index that a majority of `voters` has durably matched.

    With no voters the answer is 0: nothing can be committed without a quorum.
    """
    if not voters:
        return 0
    matched = sorted([match.get(voter, 0) for voter in voters], reverse=True)
    return matched[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    granted = sum(1 for voter in voters if votes.get(voter) is True)
    rejected = sum(1 for voter in voters if votes.get(voter) is False)
    needed = majority(len(voters))
    if granted >= needed:
        return VoteResult.WON
    if len(voters) - rejected < needed:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], members: Collection[int]) -> bool:
    """Whether `members` contains a majority of `voters`."""
    return sum(1 for voter in voters if voter in members) >= majority(len(voters))
