"""What the sync and async clients share: requests, replies, errors and the retry
policy, with no I/O.

Theory of operation. A client call is a `Request`: the RESP command to send, how to
read its reply, and whether it may be sent twice. `Calls.run(request)` is a
generator that decides everything about the call and leaves only the I/O to its
driver (`Client` runs it with blocking sockets, `AsyncClient` with asyncio): it
yields `Send(endpoint, command, timeout_s)` and receives one outcome back —
`Reply`, `ErrorReply`, `NotSent` (the connection failed before the command left)
or `Lost` (the connection failed after it may have left) — or yields
`Sleep(seconds)` and receives None. It returns the call's result, or raises one of
`raftkv.errors`.

Failover. Any node serves any request (followers forward writes to the leader), so
the client keeps using one node until it fails. On a connection failure, a
`-TRYAGAIN` reply (no leader in time) or a node that was removed from the cluster,
it moves to the next endpoint, and after every full round of failed endpoints it
sleeps a capped, jittered exponential backoff; at the call's deadline it raises
`NoLeader`, `Timeout` or `Unavailable`, whichever the last failure was.

Exactly once. A write that would do harm if applied twice is *tagged*: it is sent
as `RAFT.EXEC client-id seq COMMAND ...` under a client session, and every resend
of it carries the same (client id, seq), so the state machine applies it once and
answers resends from its session record. A session serves one request at a time
(the state machine refuses a seq below the last one it applied for that session), so
the client keeps a pool of sessions, registers one (`RAFT.SESSION`) whenever a call
finds the pool empty, and re-registers when the cluster answers `-SESSION` (the
session expired). A tagged request's seq is used up whether the call succeeds or
not, so a request given up on and applied later can never be confused with the
next one. With sessions off, a request that is not idempotent is resent only when
it cannot have applied: after a refused connection, or a `-TRYAGAIN` saying that the
write was withdrawn unapplied; a lost reply raises `Timeout` (outcome unknown).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from .. import errors

Key: TypeAlias = str | bytes
Value: TypeAlias = str | bytes
Arg: TypeAlias = bytes | str | int
Endpoint: TypeAlias = tuple[str, int]
V = TypeVar("V", bytes, str)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
#: A read waits at least this long even right at the deadline, so that the last
#: attempt can still succeed.
MIN_ATTEMPT_S = 0.05


# --- endpoints -----------------------------------------------------------------------


def parse_endpoints(endpoints: str | Sequence[str]) -> list[Endpoint]:
    """`"host:port"` strings (or one comma separated string) as (host, port) pairs.
    `redis://host:port` and `[v6 address]:port` are accepted too."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = [parse_endpoint(item) for item in items if item.strip()]
    if not parsed:
        raise errors.InvalidRequest("no endpoints given: pass at least one 'host:port'")
    return parsed


def parse_endpoint(text: str, *, any_port: bool = False) -> Endpoint:
    """One "host:port"; `any_port` accepts port 0 too (a server picks a free one)."""
    item = text.strip()
    if item.startswith("redis://"):
        item = item[len("redis://") :].rstrip("/")
    host, colon, port_text = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    lowest = 0 if any_port else 1
    if not colon or not host or not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise errors.InvalidRequest(f"invalid endpoint {text!r}: expected 'host:port'")
    return host, int(port_text)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- keys and values -----------------------------------------------------------------


def key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    elif not isinstance(key, bytes):
        raise TypeError(f"a key is str or bytes, not {type(key).__name__}")
    if not key:
        raise errors.InvalidRequest("empty key: a raftkv key is at least one byte long")
    return key


def show_key(key: bytes) -> str:
    """A key in a message: quoted text, or a bytes literal if it is not UTF-8."""
    try:
        return repr(key.decode())
    except UnicodeDecodeError:
        return repr(key)


def value_bytes(value: Value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"a value is str or bytes, not {type(value).__name__}")
    return value


def decoder(decode: bool) -> Callable[[bytes], Any]:
    """How a client returns the bytes it reads: as they are, or as UTF-8 text."""
    if decode:
        return lambda raw: raw.decode()
    return lambda raw: raw


def glob_escape(prefix: bytes) -> bytes:
    """`prefix` as a SCAN MATCH pattern that matches exactly the keys starting with it:
    the glob characters in it become one-character sets (`*` -> `[*]`)."""
    escaped = prefix.replace(b"[", b"[[]").replace(b"*", b"[*]").replace(b"?", b"[?]")
    return escaped + b"*"


# --- cluster information -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """A member of the cluster: its node id, peer URL, and whether it is a learner
    (a non-voting member that receives the log)."""

    id: int
    url: str
    learner: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """One node's view of the cluster (`RAFT.STATUS` on the node that answered)."""

    id: int
    role: str
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    members: tuple[Member, ...]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def as_map(reply: Any) -> dict[str, Any]:
    """A RESP map as a dict with str keys: RESP3 gives a dict, RESP2 a flat list."""
    if isinstance(reply, Mapping):
        return {_text(k): v for k, v in reply.items()}
    if isinstance(reply, list) and len(reply) % 2 == 0:
        return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}
    raise errors.RaftkvError(f"unexpected reply from the server: {reply!r}")


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def parse_member(reply: Any) -> Member:
    fields = as_map(reply)
    return Member(_int(fields.get("id")), _text(fields.get("url", "")), bool(fields.get("learner")))


def parse_members(reply: Any) -> list[Member]:
    return [parse_member(item) for item in reply]


def parse_status(reply: Any) -> Status:
    fields = as_map(reply)
    return Status(
        id=_int(fields.get("id")),
        role=_text(fields.get("role", "")),
        term=_int(fields.get("term")),
        leader=_int(fields.get("leader")),
        commit=_int(fields.get("commit")),
        applied=_int(fields.get("applied")),
        last_index=_int(fields.get("last_index")),
        snapshot_index=_int(fields.get("snapshot_index")),
        members=tuple(parse_members(fields.get("members") or [])),
    )


# --- requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One RESP command and what the client makes of its reply.

    `tagged`: sent as `RAFT.EXEC client-id seq ...` when the client has sessions on,
    so that any number of resends applies once. `resend`: whether the command may
    be resent untagged once it may have reached a node (reads, idempotent writes).
    """

    command: tuple[Arg, ...]
    parse: Callable[[Any], Any]
    tagged: bool = False
    resend: bool = True


def _ok(_: Any) -> None:
    return None


class Requests(Generic[V]):
    """Builds the request for each client method; `decode` says how values come back."""

    def __init__(self, decode: bool) -> None:
        self.decode: Callable[[bytes], V] = decoder(decode)

    def _optional(self, reply: Any) -> V | None:
        return None if reply is None else self.decode(reply)

    def put(self, key: Key, value: Value) -> Request:
        return Request(
            ("SET", key_bytes(key), value_bytes(value), "GET"), self._optional, tagged=True
        )

    def get(self, key: Key) -> Request:
        raw_key = key_bytes(key)

        def parse(reply: Any) -> V:
            if reply is None:
                raise errors.KeyNotFound(f"key not found: {show_key(raw_key)}")
            return self.decode(reply)

        return Request(("GET", raw_key), parse)

    def delete(self, key: Key) -> Request:
        return Request(("DEL", key_bytes(key)), lambda reply: bool(reply), tagged=True)

    def append(self, key: Key, value: Value) -> Request:
        command = ("APPEND", key_bytes(key), value_bytes(value))
        return Request(command, int, tagged=True, resend=False)

    def incr(self, key: Key, by: int) -> Request:
        if not isinstance(by, int) or isinstance(by, bool):
            raise TypeError(f"incr's `by` is an int, not {type(by).__name__}")
        return Request(("INCRBY", key_bytes(key), by), int, tagged=True, resend=False)

    def cas(self, key: Key, expected: Value | None, new: Value | None) -> Request:
        compare: tuple[Arg, ...] = ("NX",) if expected is None else ("IFEQ", value_bytes(expected))
        swap: tuple[Arg, ...] = ("DEL",) if new is None else ("SET", value_bytes(new))
        command = ("RAFT.CAS", key_bytes(key), *compare, *swap)
        return Request(command, lambda reply: bool(reply), tagged=True, resend=False)

    def scan_page(self, prefix: Key, cursor: bytes, count: int) -> Request:
        raw_prefix = prefix.encode() if isinstance(prefix, str) else prefix
        if not isinstance(raw_prefix, bytes):
            raise TypeError(f"a prefix is str or bytes, not {type(prefix).__name__}")
        if count <= 0:
            raise errors.InvalidRequest(f"scan page size must be positive, got {count}")
        command = ("SCAN", cursor, "MATCH", glob_escape(raw_prefix), "COUNT", count)

        def parse(reply: Any) -> tuple[bytes, list[bytes]]:
            next_cursor, keys = reply
            return next_cursor, list(keys)

        return Request(command, parse)

    def mget(self, keys: Sequence[bytes]) -> Request:
        return Request(("MGET", *keys), list)

    def members(self) -> Request:
        return Request(("RAFT.MEMBERS",), parse_members)

    def status(self) -> Request:
        return Request(("RAFT.STATUS",), parse_status)

    def add_member(self, node_id: int, url: str, learner: bool) -> Request:
        extra: tuple[Arg, ...] = ("LEARNER",) if learner else ()
        command = ("RAFT.ADD", _node_id(node_id), url, *extra)
        return Request(command, _ok, resend=False)

    def remove_member(self, node_id: int) -> Request:
        return Request(("RAFT.REMOVE", _node_id(node_id)), _ok, resend=False)

    def transfer_leader(self, node_id: int) -> Request:
        return Request(("RAFT.TRANSFER", _node_id(node_id)), _ok)


def _node_id(node_id: int) -> int:
    if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id <= 0:
        raise errors.InvalidRequest(f"a node id is a positive integer, got {node_id!r}")
    return node_id


# --- outcomes and steps --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send `command` to endpoint number `endpoint` and read one reply, waiting at
    most `timeout_s` for it."""

    endpoint: int
    command: tuple[Arg, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reply:
    value: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A RESP error reply: its code (ERR, TRYAGAIN, ...) and the rest of the message."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class NotSent:
    """The connection failed before the command was sent: it cannot have applied."""

    reason: str


@dataclass(frozen=True, slots=True)
class Lost:
    """The connection failed after the command may have been sent."""

    reason: str


Outcome: TypeAlias = Reply | ErrorReply | NotSent | Lost
Step: TypeAlias = Send | Sleep


def split_error(message: str, status_code: str | None) -> ErrorReply:
    """redis-py strips the code of the error replies it knows (ERR, TRYAGAIN) into
    `status_code`, and leaves it in the message of the others."""
    if status_code:
        return ErrorReply(status_code, message)
    head, _, rest = message.partition(" ")
    if head.isupper():
        return ErrorReply(head, rest)
    return ErrorReply("ERR", message)


# The server's messages that the client must tell apart (see raftkv.server._resp).
_NOT_AN_INTEGER = ("not an integer", "would overflow")
_TOO_LARGE = ("exceeds --max-value-bytes", "exceeds maximum allowed size")
_REMOVED = "was removed from the cluster"
_NOT_APPLIED = "the write was not applied"


def error_for(reply: ErrorReply) -> errors.RaftkvError:
    """The exception a client raises for an error reply it does not retry."""
    code, message = reply.code, reply.message
    if code == "TRYAGAIN":
        if "no leader" in message:
            return errors.NoLeader(message)
        if "may or may not" in message:
            return errors.Timeout(message)
        return errors.Unavailable(message)
    if code == "BUSY":
        return errors.Conflict(message)
    if code == "ERR":
        if any(text in message for text in _NOT_AN_INTEGER):
            return errors.WrongType(message)
        if any(text in message for text in _TOO_LARGE):
            return errors.ValueTooLarge(message)
        if _REMOVED in message:
            return errors.Removed(message)
        return errors.InvalidRequest(message)
    return errors.RaftkvError(f"{code} {message}")


def _is_retryable(reply: ErrorReply) -> bool:
    return reply.code == "TRYAGAIN" or (reply.code == "ERR" and _REMOVED in reply.message)


def _never_applied(reply: ErrorReply) -> bool:
    """Whether the node promises that the write it refused will never apply (it was
    withdrawn before being proposed, or refused by a removed node), so that even a
    command that is not idempotent may be sent again."""
    if reply.code == "TRYAGAIN":
        return _NOT_APPLIED in reply.message
    return reply.code == "ERR" and _REMOVED in reply.message


# --- sessions ------------------------------------------------------------------------


class SessionSlot:
    """A registered client session and the next sequence number to use in it."""

    __slots__ = ("client_id", "next_seq")

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.next_seq = 1


class SessionPool:
    """Idle sessions. Each call takes one and gives it back when done, so no two
    requests in flight share a session. Thread-safe."""

    def __init__(self) -> None:
        self._idle: list[SessionSlot] = []
        self._lock = threading.Lock()

    def take(self) -> SessionSlot | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give(self, slot: SessionSlot) -> None:
        with self._lock:
            self._idle.append(slot)

    def __len__(self) -> int:
        return len(self._idle)


# --- the retry loop ------------------------------------------------------------------


class Calls:
    """The retry policy of one client, shared by all its calls (see the module
    docstring). `clock` and `rng` are injectable so that tests can drive it."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        timeout_s: float,
        sessions: bool,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise errors.InvalidRequest(f"timeout must be positive, got {timeout_s}")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.sessions: SessionPool | None = SessionPool() if sessions else None
        self.current = 0
        self._clock = clock
        self._rng = rng or random.Random()

    def run(self, request: Request) -> Generator[Step, Outcome | None, Any]:
        deadline = self._clock() + self.timeout_s
        pool = self.sessions
        if pool is None or not request.tagged:
            return (yield from self._attempts(request, deadline, None))
        slot = pool.take()
        while True:
            if self._clock() >= deadline:
                raise errors.Unavailable("the cluster keeps refusing this client's sessions")
            if slot is None:
                client_id = yield from self._attempts(_REGISTER, deadline, None)
                slot = SessionSlot(client_id)
            try:
                return (yield from self._attempts(request, deadline, slot))
            except _SessionExpired:
                slot = None  # Register a new one; the old one is gone from the cluster.
            finally:
                if slot is not None:
                    slot.next_seq += 1
                    pool.give(slot)

    def _attempts(
        self, request: Request, deadline: float, slot: SessionSlot | None
    ) -> Generator[Step, Outcome | None, Any]:
        command = request.command
        if slot is not None:
            command = ("RAFT.EXEC", slot.client_id, slot.next_seq, *command)
        resend = request.resend or slot is not None
        backoff = BACKOFF_BASE_S
        failures_in_round = 0
        while True:
            timeout_s = max(deadline - self._clock(), MIN_ATTEMPT_S)
            outcome = yield Send(self.current, command, timeout_s)
            failure: errors.RaftkvError
            if type(outcome) is Reply:
                return request.parse(outcome.value)
            if type(outcome) is ErrorReply:
                if outcome.code == "SESSION" and slot is not None:
                    raise _SessionExpired
                if not _is_retryable(outcome) or not (resend or _never_applied(outcome)):
                    raise error_for(outcome)
                failure = error_for(outcome)
            elif type(outcome) is NotSent:
                failure = errors.Unavailable(f"{self._where()}: {outcome.reason}")
            elif type(outcome) is Lost:
                failure = errors.Timeout(
                    f"{self._where()}: connection lost before the reply ({outcome.reason}); "
                    "the request may or may not have been applied"
                )
                if not resend:
                    raise failure
            else:
                raise AssertionError(f"unexpected outcome {outcome!r}")
            self.current = (self.current + 1) % len(self.endpoints)
            failures_in_round += 1
            if self._clock() >= deadline:
                raise self._give_up(failure)
            if failures_in_round >= len(self.endpoints):
                failures_in_round = 0
                pause = min(backoff * self._rng.uniform(0.5, 1.0), deadline - self._clock())
                backoff = min(backoff * 2, BACKOFF_CAP_S)
                if pause > 0:
                    yield Sleep(pause)

    def _where(self) -> str:
        return format_endpoint(self.endpoints[self.current])

    def _give_up(self, last: errors.RaftkvError) -> errors.RaftkvError:
        tried = ", ".join(format_endpoint(e) for e in self.endpoints)
        message = f"gave up after {self.timeout_s:g} s trying {tried}; last error: {last}"
        return type(last)(message)


class _SessionExpired(Exception):
    """The cluster no longer knows the client's session."""


_REGISTER: Request = Request(("RAFT.SESSION",), int)
