"""A linearizability checker for histories of key-value operations.

Give `check` the operations that clients issued against a store, each with the time
it was called and the time its answer came back, and it decides whether some single
order of all of them (a linearization) both respects real time (an operation that
returned before another was called comes first) and explains every answer under the
semantics of a register per key. Operations on different keys never constrain each
other, so the history is split by key and each key checked alone (Herlihy and Wing's
locality).

Theory of operation
-------------------
Per key this is the Wing-Gong search with Lowe's memoization, as in porcupine
(Anish Athalye's checker). Calls and returns are sorted by time into one linked list
of events. The search walks the list from the front: at a call, it tries to
linearize that operation now, that is, to apply it to the current register value; if
the model accepts the operation's answer, the call and its return are lifted out of
the list and the walk restarts from the front. Reaching a return means the operation
it belongs to was not linearized before its answer came back, so the search
backtracks: it undoes the last linearized operation and tries the next call after
it. The history is linearizable once every operation with a known answer has been
lifted. Two partial searches that linearized the same set of operations and reached
the same value have the same future, so each (set, value) pair is explored at most
once (the set is kept as a few small ints; see `_Search`).

An operation whose outcome is unknown (a timeout, a crashed client: `return_time`
None) may have taken effect at any time after its call, or never. Its answer is
unconstrained and it never has to be linearized: linearizing it before some other
operation means it took effect, and leaving it out means it did not (or did so
unobserved). A read with an unknown outcome constrains nothing and is dropped.

Three refinements keep the search small; each only skips work whose outcome is
known, and a test compares the verdicts with a brute-force search:

- Eager reads. At each node the search first linearizes every pending read whose
  answer is the current value (and every known failed cas whose expected value
  differs from it), without branching: moving such an operation earlier in a valid
  linearization keeps it valid, since it changes nothing and everything that had to
  precede it already has. This removes the factor of 2^k that k concurrent reads
  would otherwise cost.
- Retiring unknown writes. In a key without appends, a write of unknown outcome
  that would store v only matters while some operation could still observe v: a
  read that returned v, a cas expecting v, or a failed cas whose expected value is
  not v. Past the last return of those observers, taking effect is the same as
  never taking effect, so the write gets a "retirement" event there at which the
  search drops it (or at once if nothing observes v). Without this, every pending
  unknown write would double the search from its call to the end of the history.
  (With appends every value is observable, so unknown operations stay pending.)
- Leaving unknown operations out first. At each node the search tries the known
  operations before the unknown ones, and a node that has linearized an unknown
  operation is pruned when the same node without it has already failed: leaving an
  unknown operation pending never closes an option that taking it opens.

Cost: a few thousand operations per key take tens of milliseconds to a few seconds
when about eight clients run concurrently, passing or failing. What makes a search
expensive is the number of writes in flight at once, and unknown writes that cannot
be retired: give every write a distinct value (as Jepsen-style tests do) so that
their effects can be told apart. With a handful of values, many unknown outcomes
and failed compare-and-sets, proving a violation can take exponential time;
`time_limit_s` bounds it and then reports the key as undecided.

When a key fails, the explanation names the operation the search could never get
past (the latest return at which any branch got stuck) and the values the key could
hold at that point. The reported sub-history starts at the latest quiescent cut the
search reached (a moment when no operation was in flight): at such a moment every
linearization has placed exactly the operations that ended before it, so the rest
of the history must fail from each value the key could then hold; the search
records those values as it passes each cut, and they are reported too.

Operation kinds, per key (reads of a missing key return None):

    kind      input               output
    get       None                the value read (None: key missing)
    put       value               ignored
    delete    None                ignored
    append    suffix              ignored (missing key counts as empty)
    cas       (expected, new)     True if it swapped, False if not; expected None
                                  means "key must be missing"

Values are any hashable, comparable-for-equality objects (bytes, str, int); appends
need values that support `+`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "CheckResult", "Operation", "check"]

#: The operation kinds the register model understands.
KINDS = frozenset({"get", "put", "delete", "append", "cas"})

_GET, _PUT, _DELETE, _APPEND, _CAS = range(5)
_KIND_CODES = {"get": _GET, "put": _PUT, "delete": _DELETE, "append": _APPEND, "cas": _CAS}
#: How many possible values an explanation lists at most.
_MAX_VALUES_SHOWN = 8


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation. `return_time` None means its outcome is unknown."""

    client_id: Hashable
    kind: str
    key: Hashable
    input: Any
    output: Any
    call_time: float
    return_time: float | None

    def describe(self) -> str:
        returned = "unknown outcome" if self.return_time is None else f"{self.return_time}"
        if self.kind == "get":
            what = f"get -> {self.output!r}"
        elif self.kind == "cas":
            what = f"cas{tuple(self.input)!r} -> {self.output!r}"
        elif self.kind == "delete":
            what = "delete"
        else:
            what = f"{self.kind}({self.input!r})"
        return f"{what} by client {self.client_id!r} [{self.call_time}, {returned}]"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict. On failure: the first failing key (in order of first
    appearance), an explanation, and a small failing sub-history (`operations`)
    that fails from each of `initial_values`, the values the key could hold before
    it. `undecided` means the time limit ran out before the search finished (and
    then `ok` is False)."""

    ok: bool
    key: Hashable = None
    explanation: str = ""
    operations: tuple[Operation, ...] = ()
    initial_values: tuple[Any, ...] = ()
    undecided: bool = False


class _Deadline(Exception):
    pass


def check(history: Iterable[Operation], *, time_limit_s: float | None = None) -> CheckResult:
    """Decide whether `history` is linearizable; see the module docstring.

    Raises ValueError for a malformed operation (unknown kind, a return before
    its call, a cas input that is not a pair). `time_limit_s` bounds the whole
    search; without it a pathological history may take exponential time.
    """
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    by_key: dict[Hashable, list[Operation]] = {}
    for operation in history:
        _validate(operation)
        if operation.kind == "get" and operation.return_time is None:
            continue
        by_key.setdefault(operation.key, []).append(operation)
    for key, operations in by_key.items():
        try:
            result = _check_key(key, operations, deadline)
        except _Deadline:
            return CheckResult(
                False,
                key,
                f"gave up on key {key!r} ({len(operations)} operations) after the "
                f"{time_limit_s} s time limit: linearizability undecided",
                tuple(operations),
                (None,),
                undecided=True,
            )
        if not result.ok:
            return result
    return CheckResult(True)


def _validate(operation: Operation) -> None:
    if operation.kind not in KINDS:
        raise ValueError(
            f"unknown operation kind {operation.kind!r} in {operation!r}; "
            f"expected one of {sorted(KINDS)}"
        )
    if operation.return_time is not None and operation.return_time < operation.call_time:
        raise ValueError(f"operation returns before it is called: {operation!r}")
    if operation.kind == "cas" and not (
        isinstance(operation.input, (tuple, list)) and len(operation.input) == 2
    ):
        raise ValueError(f"cas input must be an (expected, new) pair: {operation!r}")


# --------------------------------------------------------------------------- per key


def _check_key(key: Hashable, operations: list[Operation], deadline: float | None) -> CheckResult:
    search = _Search(operations, deadline)
    if search.run((None,)):
        return CheckResult(True)
    blocked = search.events.operation_at(search.frontier_position)
    assert blocked.return_time is not None, "only an operation with a known return blocks"
    after_cut, initial_values = search.latest_cut()
    # Operations called after the blocked one returned play no part in its failure.
    operations_after = [op for op in after_cut if op.call_time <= blocked.return_time]
    return CheckResult(
        False,
        key,
        _explanation(
            key, operations, blocked, search.frontier_states, operations_after, initial_values
        ),
        tuple(sorted(operations_after, key=lambda op: op.call_time)),
        initial_values,
    )


def _explanation(
    key: Hashable,
    operations: list[Operation],
    blocked: Operation,
    stuck_values: set[Any],
    operations_after: list[Operation],
    initial_values: tuple[Any, ...],
) -> str:
    shown = sorted(stuck_values, key=repr)[:_MAX_VALUES_SHOWN]
    values = ", ".join(repr(value) for value in shown)
    if len(stuck_values) > len(shown):
        values += ", ..."
    text = (
        f"key {key!r}: {blocked.describe()} cannot be linearized: in every order of the "
        f"operations before it that respects real time, the key then held one of "
        f"{{{values}}}"
    )
    if _never_written(blocked, operations):
        text += f"; no operation on this key ever wrote {blocked.output!r}"
    count = len(operations_after)
    starts = ", ".join(repr(value) for value in initial_values)
    return text + (
        f". Smallest failing sub-history: {count} operation{'s' if count != 1 else ''} "
        f"starting from a value in {{{starts}}}"
    )


def _never_written(blocked: Operation, operations: list[Operation]) -> bool:
    if blocked.kind != "get" or blocked.output is None:
        return False
    written: set[Any] = set()
    for operation in operations:
        if operation.kind == "append":
            return False
        if operation.kind == "put":
            written.add(operation.input)
        elif operation.kind == "cas":
            written.add(operation.input[1])
    return blocked.output not in written


def _retirement_times(operations: Sequence[Operation]) -> list[float]:
    """Each operation's end: the return time of a known one; for one of unknown
    outcome, the time after which taking effect can no longer matter (see
    "Retiring unknown writes" in the module docstring), never before its call,
    and infinity when that cannot be bounded."""
    times = [math.inf if op.return_time is None else op.return_time for op in operations]
    unknown = [n for n, op in enumerate(operations) if op.return_time is None]
    if not unknown or any(op.kind == "append" for op in operations):
        return times
    # Values the key can ever hold; a failed cas expecting anything else fails
    # whatever the key holds, so it observes nothing.
    possible: set[Any] = {None}
    for op in operations:
        if op.kind == "put":
            possible.add(op.input)
        elif op.kind == "cas":
            possible.add(op.input[1])
    # Latest return of a known observer of each value; unknown cas operations by
    # the value they expect; latest failed known cas by its expected value.
    seen_by: dict[Any, float] = {}
    unknown_expecting: dict[Any, list[int]] = {}
    failed_expecting: dict[Any, float] = {}
    for number, op in enumerate(operations):
        if op.kind == "get" and op.return_time is not None:
            seen_by[op.output] = max(seen_by.get(op.output, -math.inf), op.return_time)
        elif op.kind == "cas":
            expected = op.input[0]
            if op.return_time is None:
                unknown_expecting.setdefault(expected, []).append(number)
            elif op.output:
                seen_by[expected] = max(seen_by.get(expected, -math.inf), op.return_time)
            elif expected in possible:
                failed_expecting[expected] = max(
                    failed_expecting.get(expected, -math.inf), op.return_time
                )
    latest_failed: list[tuple[float, Any]] = sorted(
        ((t, e) for e, t in failed_expecting.items()), key=lambda pair: pair[0]
    )[-2:]

    def written(op: Operation) -> Any:
        return op.input if op.kind == "put" else op.input[1] if op.kind == "cas" else None

    def known_bound(value: Any) -> float:
        bound: float = seen_by.get(value, -math.inf)
        for failed_at, expected in reversed(latest_failed):
            if expected != value:  # it failed because the key did not hold `expected`
                return bound if bound > failed_at else failed_at
        return bound

    bounds = {number: known_bound(written(operations[number])) for number in unknown}
    # Start from "unbounded" and tighten: an unknown cas observing the value is
    # settled once it is retired itself, so the bound waits just past its
    # retirement. Bounds only shrink, and each is computed from bounds at least as
    # large as the final ones, so every intermediate answer is safe; the rounds are
    # capped because chains of unknown cas operations are rare.
    retire = dict.fromkeys(unknown, math.inf)
    for _ in range(8):
        changed = False
        for number in unknown:
            bound = bounds[number]
            for other in unknown_expecting.get(written(operations[number]), ()):
                if other != number and retire[other] > -math.inf:
                    bound = max(bound, math.nextafter(retire[other], math.inf))
            if bound < retire[number]:
                retire[number] = bound
                changed = True
        if not changed:
            break
    for number in unknown:
        times[number] = max(retire[number], operations[number].call_time)
    return times


_CALL, _RETURN, _RETIRE = 0, 1, 2


class _Events:
    """The sorted events of one key's operations, as a doubly linked list over
    positions 1..m, with sentinels HEAD = 0 and TAIL = m + 1. Each operation has a
    call and either a return (known outcome) or a retirement (unknown outcome)."""

    __slots__ = ("call_of", "event", "match", "next", "operation_of", "operations", "prev")

    def __init__(self, operations: Sequence[Operation]) -> None:
        self.operations = operations
        raw: list[tuple[float, int, int]] = []
        for number, (operation, end) in enumerate(
            zip(operations, _retirement_times(operations), strict=True)
        ):
            # At equal times calls sort first, so such operations count as
            # concurrent (the reading that lets more histories pass), and
            # retirements last, after the returns of the observers they wait for.
            raw.append((operation.call_time, _CALL, number))
            raw.append((end, _RETURN if operation.return_time is not None else _RETIRE, number))
        raw.sort()
        size = len(raw)
        self.operation_of = [0] * (size + 2)
        self.event = [_RETURN] * (size + 2)
        self.match = [0] * (size + 2)
        self.call_of = [0] * len(operations)
        end_of = [0] * len(operations)
        for position, (_, event, number) in enumerate(raw, start=1):
            self.operation_of[position] = number
            self.event[position] = event
            if event == _CALL:
                self.call_of[number] = position
            else:
                end_of[number] = position
        for number, position in enumerate(self.call_of):
            self.match[position] = end_of[number]
        self.next = list(range(1, size + 3))
        self.prev = [-1, *range(size + 1)]

    def operation_at(self, position: int) -> Operation:
        return self.operations[self.operation_of[position]]

    def lift(self, call: int) -> None:
        """Take an operation's call and its end out of the list."""
        nxt, prv = self.next, self.prev
        end = self.match[call]
        nxt[prv[call]] = nxt[call]
        prv[nxt[call]] = prv[call]
        nxt[prv[end]] = nxt[end]
        prv[nxt[end]] = prv[end]

    def unlift(self, call: int) -> None:
        """Put them back exactly where they were (the reverse of the last lift)."""
        nxt, prv = self.next, self.prev
        end = self.match[call]
        nxt[prv[end]] = end
        prv[nxt[end]] = end
        nxt[prv[call]] = call
        prv[nxt[call]] = call


# How the search reached a node: by choosing an operation (on backtracking, try the
# next one instead) or by a forced move (an eager read or a retirement: backtracking
# past it means the node before it failed too).
_CHOICE, _FORCED = 0, 1
_EAGER, _WALK, _BACKTRACK = 0, 1, 2


def _progressed(
    known: bool, slot: int, low: int, window: int, unknown_mask: int
) -> tuple[int, int, int]:
    """The linearized set after adding one operation (see `_Search`)."""
    if not known:
        return low, window, unknown_mask | 1 << slot
    window |= 1 << (slot - low)
    if slot == low:
        ones = (window ^ (window + 1)).bit_length() - 1
        window >>= ones
        low += ones
    return low, window, unknown_mask


class _Search:
    """One Wing-Gong/Lowe search over one key's operations.

    The set of operations linearized (or retired) so far is kept in three small
    ints. Known operations are numbered in call order, and a search linearizes them
    roughly in that order, so that part of the set is "every known operation
    numbered below `low`" plus the bitmask `window` (bit i: known operation
    low + i). Unknown operations can stay pending for the whole history, so they
    get their own bitmask, `unknown_mask`, instead of holding `low` back. The memo
    key (low, window, unknown_mask, value) then hashes in time independent of the
    history's length, and a quiescent cut is reached exactly when window == 0 and
    (low, unknown_mask) are the operations called before it.
    """

    # Dominance probes per node: checking the most recently called unknown
    # operations catches nearly all of the pruning at a bounded cost.
    _MAX_DOMINANCE_PROBES = 8

    def __init__(self, operations: Sequence[Operation], deadline: float | None) -> None:
        self.operations = sorted(operations, key=lambda op: op.call_time)
        self.events = _Events(self.operations)
        self.deadline = deadline
        self.known = [op.return_time is not None for op in self.operations]
        # Per operation: its number among the known, or among the unknown ones.
        self.slot: list[int] = []
        counts = [0, 0]
        for is_known in self.known:
            self.slot.append(counts[is_known])
            counts[is_known] += 1
        self.frontier_position = 0
        self.frontier_states: set[Any] = set()
        # Quiescent cuts: (low, unknown_mask) there -> the values a linearization
        # of exactly the operations called before the cut can end in; and, in
        # order, each cut's key with the number of operations called before it.
        self.cut_states: dict[tuple[int, int], set[Any]] = {}
        self.cuts: list[tuple[tuple[int, int], int]] = []
        self._find_cuts()

    def _find_cuts(self) -> None:
        events = self.events
        self.cut_states[(0, 0)] = set()
        self.cuts.append(((0, 0), 0))
        open_calls = 0
        called = [0, 0]
        unknown_mask = 0
        for position in range(1, len(events.event) - 1):
            if events.event[position] == _CALL:
                number = events.operation_of[position]
                open_calls += 1
                called[self.known[number]] += 1
                if not self.known[number]:
                    unknown_mask |= 1 << self.slot[number]
            else:
                open_calls -= 1
                if open_calls == 0:
                    key = (called[True], unknown_mask)
                    self.cut_states[key] = set()
                    self.cuts.append((key, called[True] + called[False]))

    def latest_cut(self) -> tuple[list[Operation], tuple[Any, ...]]:
        """The operations after the latest cut the search reached, and the values
        the key can hold there."""
        for key, called in reversed(self.cuts):
            values = self.cut_states[key]
            if values:
                return self.operations[called:], tuple(sorted(values, key=repr))
        raise AssertionError("the search reached no cut, not even the start")

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def run(self, initial_values: Iterable[Any]) -> bool:
        """True if the operations linearize from any of `initial_values`. A failed
        run leaves the event list whole; the memo is shared between starting
        values because a (set, value) node that failed fails whatever came before."""
        cache: set[tuple[int, int, int, Any]] = set()
        return any(self._run_from(value, cache) for value in initial_values)

    def _run_from(self, initial: Any, cache: set[tuple[int, int, int, Any]]) -> bool:
        events = self.events
        operations = self.operations
        nxt, event_kind, operation_of = events.next, events.event, events.operation_of
        call_of, lift, unlift = events.call_of, events.lift, events.unlift
        known, slot = self.known, self.slot
        kinds = [_KIND_CODES[op.kind] for op in operations]
        inputs = [op.input for op in operations]
        outputs = [op.output for op in operations]
        # Operations that never change the value: a read, a cas that failed.
        eager = [
            known[n] and (kinds[n] == _GET or (kinds[n] == _CAS and not outputs[n]))
            for n in range(len(operations))
        ]
        any_unknown = not all(known)
        known_remaining = sum(known)
        cut_states = self.cut_states
        cut_states[(0, 0)].add(initial)
        on_path: set[tuple[int, int, int, Any]] = set()
        max_probes = self._MAX_DOMINANCE_PROBES

        def fresh(memo: tuple[int, int, int, Any], taken: int) -> bool:
            """Whether the node `memo`, which has linearized the unknown operations
            in `taken`, still needs exploring."""
            if memo in cache:
                return False
            # Having linearized an unknown operation never opens an option that
            # leaving it pending would not: if the same node without it failed, so
            # does this one. (Retired operations are not probed: the node without
            # one is the node that retired it, still on the path.)
            low, window, unknown_mask, state = memo
            remaining = taken
            for _ in range(max_probes):
                if not remaining:
                    break
                bit = 1 << (remaining.bit_length() - 1)
                remaining ^= bit
                without = (low, window, unknown_mask ^ bit, state)
                if without in cache and without not in on_path:
                    return False
            return True

        # (call event, value before, how it was reached, linearized set and taken
        # unknown operations before, walk phase to resume in)
        stack: list[tuple[int, Any, int, int, int, int, int, int]] = []
        state = initial
        low = window = unknown_mask = taken = 0
        root = (low, window, unknown_mask, state)
        cache.add(root)
        on_path.add(root)
        entry = 0
        mode = _EAGER
        phase = 0
        steps = 0
        while True:
            steps += 1
            if (steps & 0x3FFF) == 0 and self._past_deadline():
                raise _Deadline
            if mode == _WALK:
                kind_of_event = event_kind[entry]
                number = operation_of[entry]
                if kind_of_event == _CALL:
                    # Phase 0 tries the known operations, phase 1 the unknown ones,
                    # so that leaving an unknown one out is explored first.
                    if eager[number] or known[number] != (phase == 0):
                        entry = nxt[entry]
                        continue
                    # The register model: the value a write leaves, and whether a
                    # known cas's answer fits the value it found.
                    kind = kinds[number]
                    if kind == _PUT:
                        new_state = inputs[number]
                    elif kind == _CAS:
                        expected, new = inputs[number]
                        if state == expected:
                            new_state = new
                        elif known[number]:
                            entry = nxt[entry]  # a known successful cas needs a match
                            continue
                        else:
                            new_state = state
                    elif kind == _APPEND:
                        suffix = inputs[number]
                        new_state = suffix if state is None else state + suffix
                    else:
                        new_state = None
                    memo = (
                        *_progressed(known[number], slot[number], low, window, unknown_mask),
                        new_state,
                    )
                    new_taken = taken if known[number] else taken | 1 << slot[number]
                    if not (fresh(memo, new_taken) if any_unknown else memo not in cache):
                        entry = nxt[entry]
                        continue
                    cache.add(memo)
                    on_path.add(memo)
                    stack.append((entry, state, _CHOICE, low, window, unknown_mask, taken, phase))
                    lift(entry)
                    low, window, unknown_mask, state = memo
                    taken = new_taken
                    known_remaining -= known[number]
                    if not window and (low, unknown_mask) in cut_states:
                        cut_states[(low, unknown_mask)].add(state)
                    mode = _EAGER
                    continue
                if phase == 0 and any_unknown:
                    phase = 1
                    entry = nxt[0]
                    continue
                if kind_of_event == _RETIRE:
                    # An unknown operation not linearized by now never mattered.
                    memo = (low, window, unknown_mask | 1 << slot[number], state)
                    if fresh(memo, taken):
                        cache.add(memo)
                        on_path.add(memo)
                        call = call_of[number]
                        stack.append(
                            (call, state, _FORCED, low, window, unknown_mask, taken, phase)
                        )
                        lift(call)
                        unknown_mask = memo[2]
                        if not window and (low, unknown_mask) in cut_states:
                            cut_states[(low, unknown_mask)].add(state)
                        mode = _EAGER
                        continue
                elif entry > self.frontier_position:
                    # A return: its operation was not linearized in time on this
                    # branch. Remember the furthest one for the explanation.
                    self.frontier_position = entry
                    self.frontier_states = {state}
                elif entry == self.frontier_position:
                    self.frontier_states.add(state)
                mode = _BACKTRACK
                continue
            if mode == _EAGER:
                # A new node. Linearize every pending read that fits the value now:
                # moving a read that fits earlier never spoils a linearization, so
                # no alternative needs trying.
                mode = _WALK
                phase = 0
                entry = nxt[0]
                while event_kind[entry] == _CALL:
                    number = operation_of[entry]
                    if eager[number] and (
                        outputs[number] == state
                        if kinds[number] == _GET
                        else state != inputs[number][0]
                    ):
                        memo = (*_progressed(True, slot[number], low, window, unknown_mask), state)
                        if not (fresh(memo, taken) if any_unknown else memo not in cache):
                            mode = _BACKTRACK
                            break
                        cache.add(memo)
                        on_path.add(memo)
                        stack.append(
                            (entry, state, _FORCED, low, window, unknown_mask, taken, phase)
                        )
                        lift(entry)
                        low, window = memo[0], memo[1]
                        known_remaining -= 1
                        if not window and (low, unknown_mask) in cut_states:
                            cut_states[(low, unknown_mask)].add(state)
                        # The value did not change, so the reads already passed
                        # over still do not fit: carry on from the entry that now
                        # follows this one's predecessor.
                        entry = nxt[events.prev[entry]]
                    else:
                        entry = nxt[entry]
                if not known_remaining:
                    self._restore_list(stack)
                    return True
                entry = nxt[0]
                continue
            # _BACKTRACK: undo forced moves, then the latest choice, and try the
            # next call after that choice.
            while True:
                if not stack:
                    return False
                on_path.discard((low, window, unknown_mask, state))
                call, state, move, low, window, unknown_mask, taken, phase = stack.pop()
                unlift(call)
                known_remaining += known[operation_of[call]]
                if move == _CHOICE:
                    entry = nxt[call]
                    break
            mode = _WALK

    def _restore_list(self, stack: list[tuple[int, Any, int, int, int, int, int, int]]) -> None:
        # Undo the lifts of a successful branch so the list is whole for a rerun.
        while stack:
            call = stack.pop()[0]
            self.events.unlift(call)
