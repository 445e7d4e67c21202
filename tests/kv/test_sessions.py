"""Client sessions: exactly-once application, expiry by log time, eviction."""

import pytest

from raftkv.kv import (
    CommandError,
    ErrorCode,
    KvConfig,
    KvStateMachine,
    encode_append,
    encode_batch,
    encode_incr,
    encode_noop,
    encode_put,
    encode_register_session,
    with_session,
    with_timestamp,
)

from .helpers import Applier

HOUR_MS = 3_600_000


def register(apply: Applier, timestamp_ms: int | None = None) -> int:
    data = encode_register_session()
    if timestamp_ms is not None:
        data = with_timestamp(data, timestamp_ms)
    client_id = apply(data)
    assert isinstance(client_id, int)
    return client_id


def error_code(result: object) -> ErrorCode:
    assert isinstance(result, CommandError), result
    return result.code


def test_register_hands_out_distinct_ids() -> None:
    apply = Applier()
    assert [register(apply) for _ in range(3)] == [1, 2, 3]
    assert apply.machine.session_count == 3


def test_duplicate_is_answered_from_the_record_without_reapplying() -> None:
    apply = Applier()
    client = register(apply)
    incr = with_session(encode_incr(b"n"), client, 1)
    assert apply(incr) == 1
    assert apply(incr) == 1
    assert apply(with_timestamp(incr, 5)) == 1
    assert apply.machine.get(b"n") == b"1"
    assert apply(with_session(encode_incr(b"n"), client, 2)) == 2
    assert apply(incr) == 1, "an older retry still within the window gets its own result"
    assert apply.machine.get(b"n") == b"2"


def test_sequence_numbers_may_skip() -> None:
    apply = Applier()
    client = register(apply)
    assert apply(with_session(encode_append(b"k", b"a"), client, 5)) == 1
    assert apply(with_session(encode_append(b"k", b"b"), client, 3)) == CommandError(
        ErrorCode.RESULT_DISCARDED,
        f"request 3 of client session {client} was already applied and its result is no "
        "longer kept (only the last 32 are)",
    )
    assert apply.machine.get(b"k") == b"a"


def test_results_older_than_the_window_are_discarded() -> None:
    apply = Applier(KvConfig(session_results_kept=2))
    client = register(apply)
    for seq in (1, 2, 3):
        assert apply(with_session(encode_incr(b"n"), client, seq)) == seq
    assert apply(with_session(encode_incr(b"n"), client, 3)) == 3
    assert apply(with_session(encode_incr(b"n"), client, 2)) == 2
    assert error_code(apply(with_session(encode_incr(b"n"), client, 1))) == (
        ErrorCode.RESULT_DISCARDED
    )
    assert apply.machine.get(b"n") == b"3"


def test_error_results_are_recorded_too() -> None:
    apply = Applier()
    client = register(apply)
    apply(encode_put(b"n", b"text"))
    tagged = with_session(encode_incr(b"n"), client, 1)
    first = apply(tagged)
    assert error_code(first) == ErrorCode.NOT_AN_INTEGER
    apply(encode_put(b"n", b"7"))
    assert apply(tagged) == first, "the retry must not apply now that it would succeed"
    assert apply.machine.get(b"n") == b"7"


def test_unknown_session_is_refused_not_applied() -> None:
    apply = Applier()
    result = apply(with_session(encode_incr(b"n"), 42, 1))
    assert error_code(result) == ErrorCode.UNKNOWN_SESSION
    assert "register a new session" in result.message  # type: ignore[union-attr]
    assert b"n" not in apply.machine


def test_session_wrapping_a_batch_is_applied_once() -> None:
    apply = Applier()
    client = register(apply)
    tagged = with_session(encode_batch([encode_incr(b"a"), encode_append(b"b", b"x")]), client, 1)
    assert apply(tagged) == [1, 1]
    assert apply(tagged) == [1, 1]
    assert apply.machine.scan() == [(b"a", b"1"), (b"b", b"x")]


def test_batch_of_tagged_commands_from_many_clients() -> None:
    apply = Applier()
    first, second = register(apply), register(apply)
    batch = encode_batch(
        [
            with_session(encode_incr(b"n"), first, 1),
            encode_incr(b"n"),
            with_session(encode_incr(b"n"), second, 1),
            with_session(encode_incr(b"n"), first, 1),
        ]
    )
    assert apply(batch) == [1, 2, 3, 1]
    assert apply.machine.get(b"n") == b"3"


def test_sessions_expire_by_log_time_not_by_wall_clock() -> None:
    apply = Applier(KvConfig(session_ttl_ms=1000))
    idle = register(apply, timestamp_ms=10_000)
    busy = register(apply, timestamp_ms=10_000)
    apply(with_timestamp(with_session(encode_noop(), busy, 1), 10_900))
    # Untimed entries never advance log time, however many there are.
    for _ in range(5):
        apply(encode_noop())
    assert apply.machine.has_session(idle)
    apply(with_timestamp(encode_noop(), 11_000))
    assert apply.machine.has_session(idle), "idle for exactly the TTL is still alive"
    apply(with_timestamp(encode_noop(), 11_001))
    assert not apply.machine.has_session(idle)
    assert apply.machine.has_session(busy)
    result = apply(with_timestamp(with_session(encode_incr(b"n"), idle, 1), 11_002))
    assert error_code(result) == ErrorCode.UNKNOWN_SESSION
    apply(with_timestamp(encode_noop(), 11_901))
    assert apply.machine.session_count == 0


def test_expiry_is_checked_before_the_stamped_command_runs() -> None:
    apply = Applier(KvConfig(session_ttl_ms=1000))
    client = register(apply, timestamp_ms=0)
    late = with_timestamp(with_session(encode_incr(b"n"), client, 1), 5000)
    assert error_code(apply(late)) == ErrorCode.UNKNOWN_SESSION


def test_log_time_never_goes_backwards() -> None:
    apply = Applier(KvConfig(session_ttl_ms=1000))
    apply(with_timestamp(encode_noop(), 50_000))
    # A new leader whose clock is behind stamps an older time.
    client = register(apply, timestamp_ms=20_000)
    assert apply.machine.log_time_ms == 50_000
    apply(with_timestamp(encode_noop(), 50_900))
    assert apply.machine.has_session(client), "its last use was at log time 50,000"


def test_least_recently_used_session_is_evicted_at_the_cap() -> None:
    apply = Applier(KvConfig(max_sessions=2))
    first, second = register(apply), register(apply)
    apply(with_session(encode_noop(), first, 1))
    third = register(apply)
    assert apply.machine.has_session(first)
    assert not apply.machine.has_session(second)
    assert apply.machine.has_session(third)


def test_sessions_survive_snapshot_and_restore() -> None:
    apply = Applier(KvConfig(session_ttl_ms=HOUR_MS))
    client = register(apply, timestamp_ms=1_000)
    other = register(apply, timestamp_ms=2_000)
    tagged = with_session(encode_batch([encode_incr(b"n"), encode_append(b"s", b"x")]), client, 1)
    assert apply(with_timestamp(tagged, 3_000)) == [1, 1]
    snapshot = apply.machine.snapshot()

    restored = KvStateMachine(KvConfig(session_ttl_ms=HOUR_MS))
    restored.restore(snapshot)
    index = apply.index
    assert restored.apply(index + 1, tagged) == [1, 1], "duplicate answered after restore"
    assert restored.get(b"n") == b"1"
    assert restored.apply(index + 2, with_session(encode_incr(b"n"), client, 2)) == 2
    assert restored.apply(index + 3, encode_register_session()) == other + 1
    # The restored session table keeps its use order and log time, so expiry
    # continues exactly where the original would.
    restored.apply(index + 4, with_timestamp(encode_noop(), 2_000 + HOUR_MS + 1))
    assert restored.has_session(client) and not restored.has_session(other)


@pytest.mark.parametrize("seq", [1, 2])
def test_session_command_refreshes_its_last_use(seq: int) -> None:
    apply = Applier(KvConfig(session_ttl_ms=1000))
    client = register(apply, timestamp_ms=0)
    # Both a new command and a duplicate count as use of the session.
    if seq == 2:
        apply(with_timestamp(with_session(encode_noop(), client, 2), 0))
    apply(with_timestamp(with_session(encode_noop(), client, 2), 900))
    apply(with_timestamp(encode_noop(), 1500))
    assert apply.machine.has_session(client)
