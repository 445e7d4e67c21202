"""Raft's safety properties, as checkers fed by what the simulation observes.

Each checker keeps the global knowledge it needs (who led which term, which entry
sits at each committed index, which (index, term) pairs were ever written) and
raises `SafetyViolation` the moment an observation contradicts it. They know
nothing of the simulation, so their tests feed them hand-made logs.

Log matching is checked incrementally. The Raft paper's property is "if two logs
hold an entry with the same index and term, they are identical up to it". Its
local form is: an (index, term) pair always names the same entry, and that entry's
predecessor always has the same term. Every entry that reaches any log is checked
against the first one seen with its (index, term); by induction over the index, the
local form on all observed logs implies the paper's property. `check_logs_match`
compares whole logs pairwise, for the end of a run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raftkv.raft import Entry


class SafetyViolation(AssertionError):
    """A Raft safety property does not hold."""


class ElectionSafety:
    """At most one leader per term (Raft paper, figure 3)."""

    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}

    def observe_leader(self, node_id: int, term: int) -> None:
        first = self.leader_of_term.setdefault(term, node_id)
        if first != node_id:
            raise SafetyViolation(
                f"election safety: node {node_id} became leader of term {term}, "
                f"which node {first} already leads"
            )


class LogMatching:
    """(index, term) determines the entry and the term of the entry before it."""

    def __init__(self) -> None:
        self._entry_at: dict[tuple[int, int], Entry] = {}
        self._prev_term_at: dict[tuple[int, int], int] = {}

    def observe_append(self, node_id: int, prev_term: int, entries: Sequence[Entry]) -> None:
        """`entries` now sit in `node_id`'s log right after an entry of `prev_term`."""
        entry_at = self._entry_at
        prev_term_at = self._prev_term_at
        for entry in entries:
            key = (entry.index, entry.term)
            seen = entry_at.setdefault(key, entry)
            if seen != entry:
                raise SafetyViolation(
                    f"log matching: node {node_id} holds {entry!r} but another log holds "
                    f"{seen!r} at the same index and term"
                )
            seen_prev = prev_term_at.setdefault(key, prev_term)
            if seen_prev != prev_term:
                raise SafetyViolation(
                    f"log matching: node {node_id} has term {prev_term} before entry "
                    f"{entry.index} of term {entry.term}, another log has term {seen_prev}"
                )
            if entry.term < prev_term:
                raise SafetyViolation(
                    f"log terms decrease in node {node_id}'s log: term {prev_term} "
                    f"before entry {entry.index} of term {entry.term}"
                )
            prev_term = entry.term


class CommittedLog:
    """The one committed log all nodes share: an index, once committed anywhere,
    always holds the same entry (State Machine Safety), and every leader of a later
    term holds it (Leader Completeness).

    Each observation comes with the observer's term. A node learns of a commit in a
    term no earlier than the one in which it happened, so "known committed in term
    T" bounds the commit from above; a leader of term t must hold everything known
    committed in some term before t. (A leader of an older term can be elected
    late, by votes that were granted before the commit, and need not hold it.)
    """

    def __init__(self) -> None:
        self._term_at: dict[int, int] = {}
        self._entry_at: dict[int, Entry] = {}
        #: term -> highest index known committed by a node in that term.
        self._last_index_known_in: dict[int, int] = {}
        #: Highest index known to be committed.
        self.last_index = 0

    def term_at(self, index: int) -> int | None:
        return self._term_at.get(index)

    def entry_at(self, index: int) -> Entry | None:
        return self._entry_at.get(index)

    def observe_committed(self, node_id: int, entry: Entry, term: int) -> None:
        """`node_id`, in `term`, knows `entry` to be committed (it applies it, or
        its commit index covers it)."""
        seen = self._entry_at.setdefault(entry.index, entry)
        if seen != entry:
            raise SafetyViolation(
                f"committed entry changed: node {node_id} has {entry!r} committed at index "
                f"{entry.index}, where {seen!r} was committed before"
            )
        self.observe_committed_term(node_id, entry.index, entry.term, term)

    def observe_committed_term(self, node_id: int, index: int, entry_term: int, term: int) -> None:
        """`node_id`, in `term`, knows the entry at `index` (of `entry_term`) to be
        committed but not its content, as with the last entry a snapshot covers."""
        seen = self._term_at.setdefault(index, entry_term)
        if seen != entry_term:
            raise SafetyViolation(
                f"committed entry changed: node {node_id} has term {entry_term} committed "
                f"at index {index}, where an entry of term {seen} was committed before"
            )
        if index > self._last_index_known_in.get(term, 0):
            self._last_index_known_in[term] = index
        if index > self.last_index:
            self.last_index = index

    def required_of_leader(self, term: int) -> int:
        """The committed prefix a leader of `term` must hold."""
        known = self._last_index_known_in
        return max((index for t, index in known.items() if t < term), default=0)

    def check_leader_log(self, node_id: int, log: Sequence[Entry], term: int) -> None:
        """`log` (a node's log from some first index on, the compacted part left out)
        is the log of the leader of `term`: it must hold every entry committed
        before that term (Leader Completeness)."""
        required = self.required_of_leader(term)
        last = log[-1].index if log else 0
        if last < required:
            raise SafetyViolation(
                f"leader completeness: node {node_id} leads term {term} with a log ending "
                f"at {last}, before the committed index {required}"
            )
        for entry in log:
            if entry.index > required:
                break
            known = self._entry_at.get(entry.index)
            if known is not None and known != entry:
                raise SafetyViolation(
                    f"leader completeness: node {node_id} leads term {term} holding "
                    f"{entry!r} where {known!r} was committed"
                )
            term_at = self._term_at.get(entry.index)
            if term_at is not None and term_at != entry.term:
                raise SafetyViolation(
                    f"leader completeness: node {node_id} leads term {term} holding "
                    f"{entry!r} where an entry of term {term_at} was committed"
                )


def check_truncation(node_id: int, truncate_from: int, commit: int) -> None:
    """A node may overwrite its log only above what it knows to be committed."""
    if truncate_from <= commit:
        raise SafetyViolation(
            f"committed entry lost: node {node_id} overwrites its log from index "
            f"{truncate_from} but has committed up to {commit}"
        )


def check_apply_order(node_id: int, applied: int, commit: int, entries: Sequence[Entry]) -> None:
    """Committed entries come to be applied in index order, with no gap after the
    last applied one, and never past the commit index."""
    expected = applied + 1
    for entry in entries:
        if entry.index != expected:
            raise SafetyViolation(
                f"apply order: node {node_id} is given entry {entry.index} to apply, "
                f"expected {expected}"
            )
        expected += 1
    if expected - 1 > commit:
        raise SafetyViolation(
            f"applied > committed: node {node_id} applies up to {expected - 1} with "
            f"commit index {commit}"
        )


def check_logs_match(logs: Mapping[int, Sequence[Entry]]) -> None:
    """Pairwise log matching over whole logs. Each log is a node's contiguous
    entries from its first index on (compacted entries are left out)."""
    nodes = sorted(logs)
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            _check_pair_matches(a, logs[a], b, logs[b])


def _check_pair_matches(a: int, log_a: Sequence[Entry], b: int, log_b: Sequence[Entry]) -> None:
    if not log_a or not log_b:
        return
    lo = max(log_a[0].index, log_b[0].index)
    hi = min(log_a[-1].index, log_b[-1].index)
    matched = False
    # Walk down from the top of the common range: once an (index, term) matches,
    # everything below it must be identical.
    for index in range(hi, lo - 1, -1):
        entry_a = log_a[index - log_a[0].index]
        entry_b = log_b[index - log_b[0].index]
        if matched:
            if entry_a != entry_b:
                raise SafetyViolation(
                    f"log matching: nodes {a} and {b} agree above index {index} but hold "
                    f"{entry_a!r} and {entry_b!r} at it"
                )
        elif entry_a.term == entry_b.term:
            if entry_a != entry_b:
                raise SafetyViolation(
                    f"log matching: nodes {a} and {b} hold different entries of term "
                    f"{entry_a.term} at index {index}: {entry_a!r} and {entry_b!r}"
                )
            matched = True
