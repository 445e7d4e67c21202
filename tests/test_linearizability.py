"""The linearizability checker: it must pass every history a correct store can
produce and fail the classic anomalies."""

import itertools
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raftkv.linearizability
from raftkv.linearizability import CheckResult, Operation, check


def op(
    kind: str,
    call: float,
    ret: float | None,
    input: Any = None,
    output: Any = None,
    client: int = 0,
    key: str = "x",
) -> Operation:
    return Operation(client, kind, key, input, output, call, ret)


def put(value: Any, call: float, ret: float | None, client: int = 0, key: str = "x") -> Operation:
    return op("put", call, ret, input=value, client=client, key=key)


def get(value: Any, call: float, ret: float | None, client: int = 1, key: str = "x") -> Operation:
    return op("get", call, ret, output=value, client=client, key=key)


def fails_from_its_initial_values(result: CheckResult) -> bool:
    """The reported sub-history, run from each reported starting value, fails."""
    for value in result.initial_values:
        setup = put(value, -2, -1) if value is not None else op("delete", -2, -1)
        if check([setup, *result.operations]).ok:
            return False
    return True


def test_public_names_are_exactly_all() -> None:
    module = raftkv.linearizability
    defined_here = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
    }
    assert set(module.__all__) == defined_here | {"KINDS"}


# --------------------------------------------------------------------------- passing


def test_empty_history_passes() -> None:
    assert check([]) == CheckResult(True)


def test_read_of_missing_key_is_none() -> None:
    assert check([get(None, 0, 1)]).ok


def test_sequential_history_passes() -> None:
    history = [put(1, 0, 1), get(1, 2, 3), put(2, 4, 5), get(2, 6, 7), op("delete", 8, 9)]
    assert check([*history, get(None, 10, 11)]).ok


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in (1, 2):
        assert check([put(1, 0, 1), put(2, 2, 6), get(seen, 3, 4)]).ok


def test_concurrent_writes_may_land_in_either_order() -> None:
    writes = [put(1, 0, 10, client=1), put(2, 0, 10, client=2)]
    assert check([*writes, get(1, 11, 12)]).ok
    assert check([*writes, get(2, 11, 12)]).ok


def test_reads_must_agree_on_the_order_of_concurrent_writes() -> None:
    writes = [put(1, 0, 10, client=1), put(2, 0, 10, client=2)]
    history = [*writes, get(1, 1, 2, client=3), get(2, 3, 4, client=3), get(1, 5, 6, client=3)]
    assert not check(history).ok


def test_touching_intervals_count_as_concurrent() -> None:
    assert check([put(1, 0, 5), get(None, 5, 6)]).ok


def test_cas_semantics() -> None:
    history = [
        op("cas", 0, 1, input=(None, 1), output=True),
        op("cas", 2, 3, input=(None, 2), output=False),
        op("cas", 4, 5, input=(1, 3), output=True),
        get(3, 6, 7),
    ]
    assert check(history).ok
    wrong = [op("cas", 0, 1, input=(None, 1), output=False)]
    assert not check(wrong).ok


def test_append_semantics() -> None:
    history = [
        op("append", 0, 1, input=b"a"),
        op("append", 2, 6, input=b"b", client=2),
        op("append", 2, 6, input=b"c", client=3),
        get(b"acb", 7, 8),
    ]
    assert check(history).ok
    assert not check([*history[:3], get(b"abcx", 7, 8)]).ok


def test_keys_are_independent() -> None:
    history = [put(1, 0, 1, key="a"), put(2, 0, 1, key="b"), get(2, 2, 3, key="b")]
    assert check([*history, get(1, 2, 3, key="a")]).ok
    result = check([*history, get(2, 2, 3, key="a")])
    assert not result.ok
    assert result.key == "a"


# --------------------------------------------------------------------------- failing


def test_stale_read_fails() -> None:
    result = check([put(1, 0, 1), put(2, 2, 3), get(1, 4, 5)])
    assert not result.ok
    assert result.key == "x"
    assert "get -> 1 by client 1 [4, 5] cannot be linearized" in result.explanation
    assert "held one of {2}" in result.explanation
    assert result.operations == (get(1, 4, 5),)
    assert result.initial_values == (2,)
    assert fails_from_its_initial_values(result)


def test_lost_write_fails() -> None:
    # An acknowledged write that a later read does not see.
    result = check([put(1, 0, 1), put(2, 2, 3, client=2), get(1, 4, 5), get(1, 6, 7)])
    assert not result.ok
    lost = check([put(1, 0, 1), get(None, 2, 3)])
    assert not lost.ok
    assert "get -> None" in lost.explanation
    assert fails_from_its_initial_values(lost)


def test_read_of_a_value_never_written_fails() -> None:
    result = check([put(1, 0, 1), get(1, 2, 3), get(7, 4, 5)])
    assert not result.ok
    assert "no operation on this key ever wrote 7" in result.explanation
    assert fails_from_its_initial_values(result)


def test_read_that_goes_back_in_time_fails() -> None:
    # A write concurrent with two reads: once one read sees it, a later one must.
    history = [put(1, 0, 10, client=0), get(1, 1, 2, client=1), get(None, 3, 4, client=2)]
    result = check(history)
    assert not result.ok
    assert len(result.operations) == 3
    assert fails_from_its_initial_values(result)


def test_failure_sub_history_is_cut_at_the_last_quiet_moment() -> None:
    prefix = [put(i, 10 * i, 10 * i + 1) for i in range(50)]
    result = check([*prefix, put("a", 600, 610), get("a", 601, 602), get(48, 603, 604)])
    assert not result.ok
    assert result.initial_values == (49,)
    assert len(result.operations) == 3
    assert fails_from_its_initial_values(result)


# --------------------------------------------------------------------------- unknown outcomes


def test_unknown_write_may_have_taken_effect() -> None:
    assert check([put(1, 0, None), get(1, 5, 6)]).ok


def test_unknown_write_may_never_have_taken_effect() -> None:
    assert check([put(1, 0, None), get(None, 5, 6)]).ok


def test_unknown_write_once_seen_stays_seen() -> None:
    assert not check([put(1, 0, None), get(1, 5, 6), get(None, 7, 8)]).ok


def test_unknown_write_cannot_take_effect_before_its_call() -> None:
    assert not check([get(1, 5, 6), put(1, 10, None)]).ok


def test_unknown_cas_either_way() -> None:
    cas = op("cas", 0, None, input=(None, 1), output=None)
    assert check([cas, get(1, 5, 6)]).ok
    assert check([cas, get(None, 5, 6)]).ok
    assert not check([put(2, -3, -2), cas, get(1, 5, 6)]).ok, "expected value did not match"


def test_unknown_read_constrains_nothing() -> None:
    assert check([put(1, 0, 1), get(99, 2, None)]).ok


def test_unknown_write_does_not_hide_a_stale_read() -> None:
    history = [put(1, 0, 1), put(2, 2, 3), put(3, 2.5, None), get(1, 4, 5)]
    assert not check(history).ok


# --------------------------------------------------------------------------- bad input and limits


@pytest.mark.parametrize(
    "bad",
    [
        op("increment", 0, 1),
        put(1, 5, 4),
        op("cas", 0, 1, input=1, output=True),
    ],
    ids=["unknown kind", "returns before call", "cas input not a pair"],
)
def test_malformed_operations_are_rejected(bad: Operation) -> None:
    with pytest.raises(ValueError):
        check([bad])


def test_time_limit_gives_an_undecided_result() -> None:
    # Twenty concurrent writes of distinct values, then impossible reads: proving
    # failure means exploring every subset of the writes.
    writes = [put(i, 0, 100, client=i) for i in range(20)]
    reads = [get(i, 101 + 2 * i, 102 + 2 * i, client=99) for i in range(20)]
    start = time.monotonic()
    result = check([*writes, *reads, get(-1, 200, 201)], time_limit_s=0.2)
    assert time.monotonic() - start < 5
    assert not result.ok
    assert result.undecided
    assert "undecided" in result.explanation


# --------------------------------------------------------------------------- generated histories


def run_history(
    rng: random.Random,
    operations: int,
    keys: int,
    max_width: float,
    unknown_fraction: float,
) -> list[Operation]:
    """Execute random operations one at a time on a real register per key, then give
    each an interval around the instant it took effect (or, for an unknown outcome,
    an open interval; it took effect or not at random)."""
    state: dict[str, Any] = {}
    history: list[Operation] = []
    for number in range(operations):
        key = f"k{rng.randrange(keys)}"
        instant = float(number)
        call = instant - rng.uniform(0, max_width)
        ret: float | None = instant + rng.uniform(0, max_width)
        unknown = rng.random() < unknown_fraction
        takes_effect = not unknown or rng.random() < 0.5
        current = state.get(key)
        kind = rng.choice(["get", "get", "put", "put", "append", "cas", "delete"])
        input: Any = None
        output: Any = None
        new = current
        if kind == "get":
            output = current
        elif kind == "put":
            input = new = rng.randrange(5).to_bytes(1, "big")
        elif kind == "append":
            input = rng.choice([b"a", b"b"])
            new = input if current is None else current + input
        elif kind == "delete":
            new = None
        else:
            expected = rng.choice([None, current, b"\x00", b"\x01"])
            replacement = rng.randrange(5).to_bytes(1, "big")
            input = (expected, replacement)
            output = current == expected
            new = replacement if output else current
        if unknown:
            ret = None
            output = None
        if takes_effect:
            state[key] = new
        if kind == "get" and not takes_effect:
            continue
        history.append(Operation(rng.randrange(8), kind, key, input, output, call, ret))
    rng.shuffle(history)
    return history


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    operations=st.integers(0, 60),
    keys=st.integers(1, 3),
    max_width=st.sampled_from([0.0, 0.5, 2.0, 6.0]),
    unknown_fraction=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_histories_of_a_real_execution_pass(
    seed: int, operations: int, keys: int, max_width: float, unknown_fraction: float
) -> None:
    history = run_history(random.Random(seed), operations, keys, max_width, unknown_fraction)
    result = check(history)
    assert result.ok, result.explanation


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), operations=st.integers(2, 40))
def test_a_corrupted_read_is_caught_or_still_explainable(seed: int, operations: int) -> None:
    # Change one read's answer to a value nothing wrote: always a violation.
    rng = random.Random(seed)
    history = run_history(rng, operations, 1, 2.0, 0.0)
    reads = [i for i, operation in enumerate(history) if operation.kind == "get"]
    if not reads:
        return
    victim = history[rng.choice(reads)]
    history[history.index(victim)] = Operation(
        victim.client_id, "get", victim.key, None, b"never", victim.call_time, victim.return_time
    )
    result = check(history)
    assert not result.ok
    assert fails_from_its_initial_values(result)


def brute_force_linearizable(history: list[Operation]) -> bool:
    """Try every order (no memo, no pruning beyond real time); an unknown-outcome
    write may also be left out."""
    known = [op for op in history if op.return_time is not None]
    unknown = [op for op in history if op.return_time is None and op.kind != "get"]
    for taken in itertools.product([False, True], repeat=len(unknown)):
        chosen = known + [op for op, take in zip(unknown, taken, strict=True) if take]
        if some_order_explains(chosen, None):
            return True
    return False


def some_order_explains(remaining: list[Operation], value: Any) -> bool:
    if not remaining:
        return True
    for operation in remaining:
        must_wait = any(
            other.return_time is not None and other.return_time < operation.call_time
            for other in remaining
        )
        if must_wait:
            continue
        fits, after = apply_to_register(operation, value)
        rest = [other for other in remaining if other is not operation]
        if fits and some_order_explains(rest, after):
            return True
    return False


def apply_to_register(operation: Operation, value: Any) -> tuple[bool, Any]:
    known = operation.return_time is not None
    if operation.kind == "get":
        return operation.output == value, value
    if operation.kind == "put":
        return True, operation.input
    if operation.kind == "delete":
        return True, None
    if operation.kind == "append":
        return True, operation.input if value is None else value + operation.input
    expected, new = operation.input
    swapped = value == expected
    return not known or operation.output == swapped, new if swapped else value


@st.composite
def arbitrary_operations(draw: st.DrawFn) -> Operation:
    kind = draw(st.sampled_from(["get", "get", "put", "delete", "append", "cas"]))
    call = draw(st.integers(0, 8))
    ret = draw(st.none() | st.integers(call, 10))
    written = st.sampled_from([b"a", b"b"])
    input: Any = None
    output: Any = None
    if kind == "get":
        output = draw(st.sampled_from([None, b"a", b"b", b"ab"]))
    elif kind in ("put", "append"):
        input = draw(written)
    elif kind == "cas":
        input = (draw(st.sampled_from([None, b"a", b"b"])), draw(written))
        output = draw(st.booleans())
    return Operation(0, kind, "x", input, output, call, ret)


@settings(max_examples=150, deadline=None)
@given(st.lists(arbitrary_operations(), max_size=5))
def test_verdict_matches_brute_force_on_small_histories(history: list[Operation]) -> None:
    result = check(history)
    assert result.ok == brute_force_linearizable(history), result.explanation
    if not result.ok:
        assert fails_from_its_initial_values(result)
        assert set(result.operations) <= set(history)


def run_clients(
    rng: random.Random, operations: int, clients: int, unknown_fraction: float
) -> list[Operation]:
    """Like run_history, but each client waits for one answer before its next call,
    as real clients do, and every write stores a fresh value."""
    free_at = [rng.uniform(0, 1) for _ in range(clients)]
    planned = []
    for _ in range(operations):
        client = rng.randrange(clients)
        call = free_at[client]
        ret = call + rng.uniform(0.1, 3.0)
        free_at[client] = ret + rng.uniform(0, 0.5)
        planned.append((rng.uniform(call, ret), client, call, ret))
    planned.sort()
    value: Any = None
    history = []
    for number, (_, client, call, ret) in enumerate(planned):
        kind = rng.choice(["get"] * 4 + ["put"] * 4 + ["cas"] * 2 + ["delete"])
        unknown = rng.random() < unknown_fraction
        input: Any = None
        output: Any = None
        new = value
        if kind == "get":
            output = value
        elif kind == "put":
            input = new = number
        elif kind == "delete":
            new = None
        else:
            expected = rng.choice([value, value, -1])
            input = (expected, number)
            output = value == expected
            new = number if output else value
        if unknown and kind == "get":
            continue
        if not unknown or rng.random() < 0.5:
            value = new
        history.append(
            Operation(
                client,
                kind,
                "x",
                input,
                None if unknown else output,
                call,
                None if unknown else ret,
            )
        )
    return history


def test_thousands_of_operations_per_key_are_checked_quickly() -> None:
    history = run_history(random.Random(7), 3000, 1, 3.0, 0.02)
    start = time.monotonic()
    result = check(history)
    elapsed = time.monotonic() - start
    assert result.ok, result.explanation
    assert elapsed < 5, f"checking 3000 operations took {elapsed:.1f} s"


def test_a_violation_among_thousands_of_operations_is_found_quickly() -> None:
    history = run_clients(random.Random(11), 1500, 8, 0.03)
    assert check(history).ok
    reads = sorted(
        (op for op in history if op.kind == "get" and op.return_time is not None),
        key=lambda op: op.call_time,
    )
    victim = reads[len(reads) // 2]
    stale = Operation(victim.client_id, "get", "x", None, -5, victim.call_time, victim.return_time)
    start = time.monotonic()
    result = check([stale if op is victim else op for op in history])
    elapsed = time.monotonic() - start
    assert not result.ok
    assert result.operations[-1] == stale or stale in result.operations
    assert "no operation on this key ever wrote -5" in result.explanation
    assert elapsed < 10, f"finding the violation took {elapsed:.1f} s"
