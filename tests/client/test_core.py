"""The client's retry policy and request building, driven without a network."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import Any

import pytest

from raftkv import errors
from raftkv.client._core import (
    BACKOFF_CAP_S,
    Calls,
    ErrorReply,
    Lost,
    NotSent,
    Outcome,
    Reply,
    Request,
    Requests,
    Send,
    Sleep,
    Step,
    glob_escape,
    parse_endpoints,
    split_error,
)

ENDPOINTS = [("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)]
REQUESTS: Requests[bytes] = Requests(decode=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Runs a call: `answer(step)` decides each send's outcome; sleeps advance a fake
    clock. Records every step."""

    def __init__(self, calls: Calls, clock: FakeClock) -> None:
        self.calls = calls
        self.clock = clock
        self.steps: list[Step] = []

    def run(self, request: Request, answer: Callable[[Send], Outcome]) -> Any:
        steps: Generator[Step, Outcome | None, Any] = self.calls.run(request)
        outcome: Outcome | None = None
        try:
            while True:
                step = steps.send(outcome)
                self.steps.append(step)
                if isinstance(step, Sleep):
                    self.clock.now += step.seconds
                    outcome = None
                else:
                    self.clock.now += 0.001
                    outcome = answer(step)
        except StopIteration as done:
            return done.value

    @property
    def sends(self) -> list[Send]:
        return [step for step in self.steps if isinstance(step, Send)]

    @property
    def sleeps(self) -> list[float]:
        return [step.seconds for step in self.steps if isinstance(step, Sleep)]


def make(sessions: bool = False, timeout_s: float = 10.0) -> Driver:
    clock = FakeClock()
    calls = Calls(ENDPOINTS, timeout_s, sessions, clock=clock, rng=random.Random(1))
    return Driver(calls, clock)


def script(*outcomes: Outcome) -> Callable[[Send], Outcome]:
    remaining = list(outcomes)
    return lambda step: remaining.pop(0)


TRYAGAIN = ErrorReply("TRYAGAIN", "no leader was elected within the request timeout; retry")
REFUSED = NotSent("Connection refused")


def test_a_failed_node_is_skipped_at_once_and_the_next_one_kept() -> None:
    driver = make()
    assert driver.run(REQUESTS.get("k"), script(REFUSED, Reply(b"v"))) == b"v"
    assert [send.endpoint for send in driver.sends] == [0, 1]
    assert driver.sleeps == []
    driver.run(REQUESTS.get("k"), script(Reply(b"v")))
    assert driver.sends[-1].endpoint == 1


def test_backoff_after_each_full_round_doubles_up_to_the_cap() -> None:
    driver = make(timeout_s=60.0)
    outcomes = [REFUSED] * 30 + [Reply(b"v")]
    assert driver.run(REQUESTS.get("k"), script(*outcomes)) == b"v"
    sleeps = driver.sleeps
    assert len(sleeps) == 10  # One per round of three endpoints.
    assert sleeps[0] <= 0.05
    assert sleeps[:5] == sorted(sleeps[:5])  # Jittered, but each base doubles the last.
    assert max(sleeps) <= BACKOFF_CAP_S
    assert sleeps[-1] >= BACKOFF_CAP_S / 2


def test_at_the_deadline_the_last_failure_is_raised_naming_the_endpoints() -> None:
    driver = make(timeout_s=2.0)
    with pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1:1, 127\.0\.0\.1:2") as info:
        driver.run(REQUESTS.get("k"), lambda step: REFUSED)
    assert type(info.value) is errors.Unavailable
    assert driver.clock.now == pytest.approx(2.0, abs=0.01)


def test_tryagain_is_retried_then_reported_as_no_leader() -> None:
    driver = make(timeout_s=1.0)
    with pytest.raises(errors.NoLeader):
        driver.run(REQUESTS.get("k"), lambda step: TRYAGAIN)
    assert len({send.endpoint for send in driver.sends}) == 3


def test_a_lost_reply_is_resent_for_a_read_but_not_for_an_untagged_incr() -> None:
    driver = make()
    assert driver.run(REQUESTS.get("k"), script(Lost("reset"), Reply(b"v"))) == b"v"
    with pytest.raises(errors.Timeout, match="may or may not have been applied"):
        driver.run(REQUESTS.incr("k", 1), script(Lost("reset")))
    with pytest.raises(errors.NoLeader):
        driver.run(REQUESTS.incr("k", 1), script(TRYAGAIN))
    # A refused connection never carried the command: resending is safe; so is a
    # write the node withdrew unapplied.
    assert driver.run(REQUESTS.incr("k", 1), script(REFUSED, Reply(3))) == 3
    withdrawn = ErrorReply("TRYAGAIN", "no leader ...; the write was not applied")
    assert driver.run(REQUESTS.incr("k", 1), script(withdrawn, Reply(4))) == 4
    unknown = ErrorReply("TRYAGAIN", "... a write may or may not have been applied")
    with pytest.raises(errors.Timeout):
        driver.run(REQUESTS.incr("k", 1), script(unknown))


def test_a_tagged_write_registers_a_session_and_resends_with_the_same_seq() -> None:
    driver = make(sessions=True)
    result = driver.run(REQUESTS.incr("k", 2), script(Reply(7), Lost("reset"), TRYAGAIN, Reply(5)))
    assert result == 5
    commands = [send.command for send in driver.sends]
    assert commands[0] == ("RAFT.SESSION",)
    assert commands[1] == ("RAFT.EXEC", 7, 1, "INCRBY", b"k", 2)
    assert commands[2] == commands[1] == commands[3]
    # The next write uses the same session, with the next sequence number.
    assert driver.run(REQUESTS.put("k", "v"), script(Reply(None))) is None
    assert driver.sends[-1].command == ("RAFT.EXEC", 7, 2, "SET", b"k", b"v", "GET")


def test_the_seq_is_used_up_even_when_the_write_fails() -> None:
    driver = make(sessions=True)
    not_an_integer = ErrorReply("ERR", "value is not an integer or out of range")
    with pytest.raises(errors.WrongType):
        driver.run(REQUESTS.incr("k", 1), script(Reply(3), not_an_integer))
    driver.run(REQUESTS.incr("k", 1), script(Reply(1)))
    assert driver.sends[-1].command[:3] == ("RAFT.EXEC", 3, 2)


def test_an_expired_session_is_replaced_and_the_write_sent_again() -> None:
    driver = make(sessions=True)
    expired = ErrorReply("SESSION", "unknown or expired session; register again")
    assert driver.run(REQUESTS.append("k", "x"), script(Reply(4), expired, Reply(9), Reply(1)))
    commands = [send.command for send in driver.sends]
    assert commands[1][:3] == ("RAFT.EXEC", 4, 1)
    assert commands[2] == ("RAFT.SESSION",)
    assert commands[3][:3] == ("RAFT.EXEC", 9, 1)
    assert driver.calls.sessions is not None and len(driver.calls.sessions) == 1


def test_calls_in_flight_at_once_never_share_a_session() -> None:
    driver = make(sessions=True)
    first = driver.calls.run(REQUESTS.incr("a", 1))
    second = driver.calls.run(REQUESTS.incr("b", 1))
    assert next(first) == Send(0, ("RAFT.SESSION",), 10.0)
    assert next(second) == Send(0, ("RAFT.SESSION",), 10.0)
    exec_first = first.send(Reply(1))
    exec_second = second.send(Reply(2))
    assert isinstance(exec_first, Send) and isinstance(exec_second, Send)
    assert exec_first.command[1] != exec_second.command[1]
    for call in (first, second):
        with pytest.raises(StopIteration):
            call.send(Reply(1))
    assert driver.calls.sessions is not None and len(driver.calls.sessions) == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (ErrorReply("ERR", "value is not an integer or out of range"), errors.WrongType),
        (ErrorReply("ERR", "increment or decrement would overflow"), errors.WrongType),
        (ErrorReply("ERR", "value of 9 bytes exceeds --max-value-bytes (4)"), errors.ValueTooLarge),
        (ErrorReply("ERR", "string exceeds maximum allowed size"), errors.ValueTooLarge),
        (ErrorReply("ERR", "unknown command 'X'"), errors.InvalidRequest),
        (ErrorReply("BUSY", "a membership change is pending"), errors.Conflict),
        (ErrorReply("NOPROTO", "unsupported protocol version"), errors.RaftkvError),
    ],
)
def test_error_replies_become_raftkv_errors(reply: ErrorReply, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        make().run(REQUESTS.get("k"), script(reply))
    assert reply.message in str(info.value)


def test_a_removed_node_is_skipped() -> None:
    removed = ErrorReply("ERR", "node 1 was removed from the cluster")
    assert make().run(REQUESTS.get("k"), script(removed, Reply(b"v"))) == b"v"


def test_keys_and_values() -> None:
    with pytest.raises(errors.InvalidRequest, match="empty key"):
        REQUESTS.get("")
    with pytest.raises(errors.InvalidRequest, match="empty key"):
        REQUESTS.put(b"", "v")
    with pytest.raises(TypeError):
        REQUESTS.get(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        REQUESTS.put("k", 1)  # type: ignore[arg-type]
    with pytest.raises(errors.KeyNotFound, match="'gone'"):
        REQUESTS.get("gone").parse(None)
    assert REQUESTS.put("ключ", "значение").command[1:3] == (
        "ключ".encode(),
        "значение".encode(),
    )
    assert Requests(decode=True).get("k").parse(b"\xc3\xa9") == "é"
    assert REQUESTS.cas("k", None, "new").command == ("RAFT.CAS", b"k", "NX", "SET", b"new")
    assert REQUESTS.cas("k", "old", None).command == ("RAFT.CAS", b"k", "IFEQ", b"old", "DEL")


def test_scan_patterns_match_the_prefix_literally() -> None:
    assert glob_escape(b"user:") == b"user:*"
    assert glob_escape(b"a*b?c[d]") == b"a[*]b[?]c[[]d]*"
    assert glob_escape(b"") == b"*"


def test_endpoints() -> None:
    assert parse_endpoints("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_endpoints(["redis://h:3", "[::1]:4"]) == [("h", 3), ("::1", 4)]
    for bad in ("", "host", "host:0", "host:x", ":5"):
        with pytest.raises(errors.InvalidRequest):
            parse_endpoints(bad)


def test_error_codes_split_as_redis_py_leaves_them() -> None:
    assert split_error("no leader", "TRYAGAIN") == ErrorReply("TRYAGAIN", "no leader")
    assert split_error("SESSION unknown session", None) == ErrorReply("SESSION", "unknown session")
    assert split_error("something odd", None) == ErrorReply("ERR", "something odd")
