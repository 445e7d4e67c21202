"""Each command's semantics and errors, revisions, reads and scans."""

import random

import pytest

from raftkv.kv import (
    INT64_MAX,
    INT64_MIN,
    CasResult,
    CommandError,
    ErrorCode,
    KvConfig,
    KvStateMachine,
    PutCondition,
    encode_append,
    encode_batch,
    encode_cas,
    encode_cas_revision,
    encode_delete,
    encode_incr,
    encode_noop,
    encode_put,
    parse_int64,
)

from .helpers import Applier


@pytest.fixture
def apply() -> Applier:
    return Applier()


def test_put_returns_previous_value_and_bumps_revision(apply: Applier) -> None:
    assert apply(encode_put(b"k", b"1")) is None
    assert apply(encode_put(b"k", b"2")) == b"1"
    assert apply.machine.get(b"k") == b"2"
    assert apply.machine.revision == 2
    assert apply.machine.mod_revision(b"k") == 2


def test_put_if_absent_writes_only_a_new_key(apply: Applier) -> None:
    assert apply(encode_put(b"k", b"1", PutCondition.IF_ABSENT)) is None
    assert apply(encode_put(b"k", b"2", PutCondition.IF_ABSENT)) == b"1"
    assert apply.machine.get(b"k") == b"1"
    assert apply.machine.revision == 1


def test_put_if_present_writes_only_an_existing_key(apply: Applier) -> None:
    assert apply(encode_put(b"k", b"1", PutCondition.IF_PRESENT)) is None
    assert b"k" not in apply.machine
    assert apply.machine.revision == 0
    apply(encode_put(b"k", b"1"))
    assert apply(encode_put(b"k", b"2", PutCondition.IF_PRESENT)) == b"1"
    assert apply.machine.get(b"k") == b"2"


def test_empty_value_is_a_value_not_absence(apply: Applier) -> None:
    apply(encode_put(b"k", b""))
    assert apply.machine.get(b"k") == b""
    assert apply(encode_put(b"k", b"x", PutCondition.IF_ABSENT)) == b""
    assert apply(encode_delete(b"k")) == b""


def test_delete_returns_previous_value_or_none(apply: Applier) -> None:
    apply(encode_put(b"k", b"v"))
    assert apply(encode_delete(b"k")) == b"v"
    assert apply.machine.get(b"k") is None
    assert apply.machine.revision == 2
    assert apply(encode_delete(b"k")) is None
    assert apply.machine.revision == 2, "deleting a missing key changes nothing"


def test_cas_on_value_succeeds_only_on_match(apply: Applier) -> None:
    assert apply(encode_cas(b"k", b"x", b"1")) == CasResult(False, None, 0)
    assert apply(encode_cas(b"k", None, b"1")) == CasResult(True, b"1", 1)
    assert apply(encode_cas(b"k", None, b"2")) == CasResult(False, b"1", 1)
    assert apply(encode_cas(b"k", b"2", b"3")) == CasResult(False, b"1", 1)
    assert apply(encode_cas(b"k", b"1", b"3")) == CasResult(True, b"3", 2)
    assert apply.machine.get(b"k") == b"3"
    assert apply.machine.revision == 2


def test_cas_with_none_value_deletes(apply: Applier) -> None:
    apply(encode_put(b"k", b"1"))
    assert apply(encode_cas(b"k", b"1", None)) == CasResult(True, None, 0)
    assert b"k" not in apply.machine
    assert apply.machine.revision == 2
    assert apply(encode_cas(b"k", None, None)) == CasResult(True, None, 0)
    assert apply.machine.revision == 2


def test_cas_on_revision(apply: Applier) -> None:
    assert apply(encode_cas_revision(b"k", 5, b"1")) == CasResult(False, None, 0)
    assert apply(encode_cas_revision(b"k", 0, b"1")) == CasResult(True, b"1", 1)
    apply(encode_put(b"other", b"x"))
    assert apply(encode_cas_revision(b"k", 2, b"2")) == CasResult(False, b"1", 1)
    assert apply(encode_cas_revision(b"k", 1, b"2")) == CasResult(True, b"2", 3)
    assert apply(encode_cas_revision(b"k", 3, None)) == CasResult(True, None, 0)
    assert b"k" not in apply.machine


def test_append_returns_new_length(apply: Applier) -> None:
    assert apply(encode_append(b"k", b"ab")) == 2
    assert apply(encode_append(b"k", b"cde")) == 5
    assert apply(encode_append(b"k", b"")) == 5
    assert apply.machine.get(b"k") == b"abcde"
    assert apply.machine.revision == 3


def test_incr_of_missing_key_starts_at_zero(apply: Applier) -> None:
    assert apply(encode_incr(b"n")) == 1
    assert apply(encode_incr(b"n", 41)) == 42
    assert apply(encode_incr(b"n", -50)) == -8
    assert apply.machine.get(b"n") == b"-8"


@pytest.mark.parametrize(
    "stored",
    [
        b"",
        b"abc",
        b"1.5",
        b" 1",
        b"1 ",
        b"+1",
        b"01",
        b"-0",
        b"-",
        b"0x10",
        b"1e3",
        b"\xd9\xa1",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"1" * 21,
    ],
)
def test_incr_of_non_integer_is_an_error_and_changes_nothing(apply: Applier, stored: bytes) -> None:
    apply(encode_put(b"n", stored))
    result = apply(encode_incr(b"n"))
    assert result == CommandError(
        ErrorCode.NOT_AN_INTEGER, "value is not an integer or out of range"
    )
    assert apply.machine.get(b"n") == stored
    assert apply.machine.revision == 1


@pytest.mark.parametrize(
    ("start", "delta"), [(INT64_MAX, 1), (INT64_MIN, -1), (-1, INT64_MIN), (1, INT64_MAX)]
)
def test_incr_overflow_is_an_error(apply: Applier, start: int, delta: int) -> None:
    apply(encode_put(b"n", str(start).encode()))
    result = apply(encode_incr(b"n", delta))
    assert isinstance(result, CommandError)
    assert result.code == ErrorCode.OVERFLOW
    assert apply.machine.get(b"n") == str(start).encode()


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"0", 0),
        (b"-1", -1),
        (b"9223372036854775807", INT64_MAX),
        (b"-9223372036854775808", INT64_MIN),
        (b"10", 10),
    ],
)
def test_parse_int64_accepts_canonical_integers(raw: bytes, value: int) -> None:
    assert parse_int64(raw) == value


def test_incr_to_the_int64_limits(apply: Applier) -> None:
    apply(encode_put(b"n", b"9223372036854775806"))
    assert apply(encode_incr(b"n")) == INT64_MAX
    apply(encode_put(b"m", b"-9223372036854775807"))
    assert apply(encode_incr(b"m", -1)) == INT64_MIN


def test_values_over_the_cap_are_refused() -> None:
    apply = Applier(KvConfig(max_value_bytes=4))
    assert apply(encode_put(b"k", b"1234")) is None
    too_large = apply(encode_append(b"k", b"5"))
    assert isinstance(too_large, CommandError)
    assert too_large.code == ErrorCode.VALUE_TOO_LARGE
    for data in (encode_put(b"k", b"12345"), encode_cas(b"k", b"1234", b"12345")):
        result = apply(data)
        assert isinstance(result, CommandError)
        assert result.code == ErrorCode.VALUE_TOO_LARGE
    assert apply.machine.get(b"k") == b"1234"
    assert apply.machine.revision == 1


def test_batch_applies_in_order_and_returns_each_result(apply: Applier) -> None:
    results = apply(
        encode_batch(
            [
                encode_put(b"a", b"1"),
                encode_incr(b"a", 2),
                encode_append(b"a", b"x"),
                encode_incr(b"a"),  # fails: "3x" is not an integer
                encode_put(b"b", b"2"),
                encode_delete(b"a"),
                encode_noop(),
            ]
        )
    )
    assert results == [
        None,
        3,
        2,
        CommandError(ErrorCode.NOT_AN_INTEGER, "value is not an integer or out of range"),
        None,
        b"3x",
        None,
    ]
    assert apply.machine.scan() == [(b"b", b"2")]
    assert apply.machine.revision == 5


def test_malformed_batch_applies_nothing(apply: Applier) -> None:
    data = encode_batch([encode_put(b"a", b"1"), b"\x91\x63"])
    result = apply(data)
    assert isinstance(result, CommandError)
    assert result.code == ErrorCode.MALFORMED
    assert len(apply.machine) == 0


@pytest.mark.parametrize("data", [b"\xc1", b"\x93\x01\x02", b"\x91\xcc\xff", b"\x92\x01"])
def test_bad_data_is_an_error_result_not_an_exception(apply: Applier, data: bytes) -> None:
    result = apply(data)
    assert isinstance(result, CommandError)
    assert result.code == ErrorCode.MALFORMED
    assert result.message.startswith("malformed command: ")
    assert apply.machine.applied_index == 1
    assert apply.machine.revision == 0


def test_empty_entry_is_a_noop_that_advances_applied_index(apply: Applier) -> None:
    assert apply(b"") is None
    assert apply(encode_noop()) is None
    assert apply.machine.applied_index == 2
    assert apply.machine.revision == 0


def test_applied_index_may_skip_but_never_go_back() -> None:
    machine = KvStateMachine()
    machine.apply(3, encode_noop())
    machine.apply(7, encode_noop())
    assert machine.applied_index == 7
    with pytest.raises(AssertionError, match="log order"):
        machine.apply(7, encode_noop())


def test_get_with_revision(apply: Applier) -> None:
    assert apply.machine.get_with_revision(b"k") is None
    apply(encode_put(b"k", b"v"))
    assert apply.machine.get_with_revision(b"k") == (b"v", 1)
    assert apply.machine.mod_revision(b"missing") == 0


def test_config_validation_rejects_nonsense() -> None:
    for bad in (
        KvConfig(session_ttl_ms=0),
        KvConfig(max_sessions=0),
        KvConfig(session_results_kept=0),
        KvConfig(max_value_bytes=0),
    ):
        with pytest.raises(ValueError, match="must be positive"):
            KvStateMachine(bad)


# --------------------------------------------------------------------------- scans


def fill(apply: Applier, keys: list[bytes]) -> None:
    apply(encode_batch([encode_put(key, key.upper()) for key in keys]))


def test_scan_returns_sorted_prefix_matches(apply: Applier) -> None:
    fill(apply, [b"b2", b"a", b"b1", b"c", b"b", b"ba"])
    assert apply.machine.scan(b"b") == [
        (b"b", b"B"),
        (b"b1", b"B1"),
        (b"b2", b"B2"),
        (b"ba", b"BA"),
    ]
    assert [key for key, _ in apply.machine.scan()] == [b"a", b"b", b"b1", b"b2", b"ba", b"c"]
    assert apply.machine.scan(b"z") == []


def test_scan_pages_with_limit_and_start_after(apply: Applier) -> None:
    fill(apply, [b"k%02d" % i for i in range(10)])
    first = apply.machine.scan(b"k", limit=4)
    assert [key for key, _ in first] == [b"k00", b"k01", b"k02", b"k03"]
    second = apply.machine.scan(b"k", limit=4, start_after=first[-1][0])
    assert [key for key, _ in second] == [b"k04", b"k05", b"k06", b"k07"]
    assert apply.machine.scan(b"k", limit=0) == []
    assert apply.machine.scan(b"k", start_after=b"a") == apply.machine.scan(b"k")
    assert apply.machine.scan(b"k", start_after=b"k09") == []
    assert apply.machine.scan(b"k", start_after=b"l") == []


def test_scan_sees_inserts_and_deletes_made_after_the_index_was_built(apply: Applier) -> None:
    fill(apply, [b"k%03d" % i for i in range(0, 100, 2)])
    assert len(apply.machine.scan()) == 50
    expected = {b"k%03d" % i for i in range(0, 100, 2)}
    # A few changes are merged by bisect, many by one sort; exercise both.
    for round_size in (3, 200):
        for i in range(round_size):
            key = b"k%03d" % ((i * 7) % 150)
            if key in expected:
                apply(encode_delete(key))
                expected.discard(key)
            else:
                apply(encode_put(key, key.upper()))
                expected.add(key)
        assert [key for key, _ in apply.machine.scan()] == sorted(expected)
    # A key deleted and re-added between scans, and one added and deleted.
    apply(encode_delete(b"k000"))
    apply(encode_put(b"k000", b"again"))
    apply(encode_put(b"zzz", b"1"))
    apply(encode_delete(b"zzz"))
    keys = [key for key, _ in apply.machine.scan()]
    assert keys == sorted(expected | {b"k000"})
    assert apply.machine.scan(b"k000") == [(b"k000", b"again")]


@pytest.mark.parametrize("seed", range(2))
def test_scan_agrees_with_a_sorted_model_under_random_writes(seed: int) -> None:
    # Enough churn between scans to cross the index's fold and reset thresholds.
    rng = random.Random(seed)
    apply = Applier()
    model: dict[bytes, bytes] = {}
    key_space = [b"%x" % rng.randrange(1 << 16) for _ in range(3000)]
    for round_number in range(30):
        for _ in range(rng.choice([0, 1, 5, 300, 5000])):
            key = rng.choice(key_space)
            if rng.random() < 0.4:
                apply(encode_delete(key))
                model.pop(key, None)
            else:
                value = b"%d" % round_number
                apply(encode_put(key, value))
                model[key] = value
        for _ in range(3):
            prefix = rng.choice([b"", b"a", b"1", b"f0", rng.choice(key_space)[:2]])
            start_after = rng.choice([None, b"", rng.choice(key_space)])
            limit = rng.choice([None, 1, 7, 100])
            expected = sorted(
                (key, value)
                for key, value in model.items()
                if key.startswith(prefix) and (start_after is None or key > start_after)
            )[:limit]
            assert apply.machine.scan(prefix, limit, start_after) == expected


def test_scan_after_more_changes_than_the_index_tracks(apply: Applier) -> None:
    fill(apply, [b"k%d" % i for i in range(10)])
    assert len(apply.machine.scan()) == 10
    fill(apply, [b"n%05d" % i for i in range(5000)])
    for i in range(4500):
        apply(encode_delete(b"n%05d" % i))
    assert [key for key, _ in apply.machine.scan(b"n")] == [b"n%05d" % i for i in range(4500, 5000)]
    for i in range(4500, 5000):
        apply(encode_delete(b"n%05d" % i))
    assert len(apply.machine.scan()) == 10
