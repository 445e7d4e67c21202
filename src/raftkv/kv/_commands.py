"""Commands of the key-value state machine: their wire encoding, decoding and results.

Theory of operation
-------------------
A log entry's data is one msgpack array whose first element is a small integer
opcode. Plain commands act on the map; three wrapper commands carry a plain command
(or a batch) together with the extra facts the state machine needs:

    opcode  command            encoding
    0       Noop               [0]
    1       Put                [1, key, value, condition]      condition: PutCondition
    2       Delete             [2, key]
    3       Cas                [3, key, expected, value]       expected/value: bin or nil
    4       CasRevision        [4, key, expected_revision, value]
    5       Append             [5, key, suffix]
    6       Incr               [6, key, delta]
    7       RegisterSession    [7]
    8       Batch              [8, [command, ...]]
    9       Session            [9, client_id, seq, command]
    10      Stamped            [10, timestamp_ms, command]

Keys and values are msgpack bin (Python bytes); integers are msgpack ints (never
bools). Wrappers nest in exactly one way, checked by the decoder:

    entry     := Stamped(tagged) | tagged
    tagged    := Session(plain | Batch(plain...)) | Batch(item...) | plain
    item      := Session(plain) | plain
    plain     := Noop | Put | Delete | Cas | CasRevision | Append | Incr | RegisterSession

so a decoded entry is at most four levels deep and nothing a peer sends can make the
decoder recurse. The encode functions return bytes, and the wrappers
(`encode_batch`, `with_session`, `with_timestamp`) build their array by concatenating
already-encoded commands behind an array header, which is valid msgpack: a leader can
stamp a forwarded proposal, and a server can batch pipelined requests, without
decoding them again.

Results are plain values (None, bytes, int, bool, lists of results) or one of two
small frozen dataclasses, `CasResult` and `CommandError`; `encode_result` and
`decode_result` carry any of them through msgpack (the dataclasses as ext types) for
a node that needs to forward one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Opcode(enum.IntEnum):
    NOOP = 0
    PUT = 1
    DELETE = 2
    CAS = 3
    CAS_REVISION = 4
    APPEND = 5
    INCR = 6
    REGISTER_SESSION = 7
    BATCH = 8
    SESSION = 9
    STAMPED = 10


class PutCondition(enum.IntEnum):
    """When a `Put` writes. Redis's SET maps onto it: plain SET and GETSET are
    ALWAYS, SET NX is IF_ABSENT, SET XX is IF_PRESENT; SET ... GET just uses the
    previous value the put returns."""

    ALWAYS = 0
    IF_ABSENT = 1
    IF_PRESENT = 2


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Noop:
    """Does nothing and returns None; a leader may use it to commit an entry of its term."""


@dataclass(frozen=True, slots=True)
class Put:
    """Set `key` to `value` if `condition` holds. Returns the previous value (None if
    the key was absent). The put wrote exactly when: ALWAYS, or IF_ABSENT and the
    result is None, or IF_PRESENT and the result is not None."""

    key: bytes
    value: bytes
    condition: PutCondition = PutCondition.ALWAYS


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove `key`. Returns the previous value, None if the key did not exist (so
    this also serves Redis's GETDEL)."""

    key: bytes


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set against the current value: if the value of `key` equals
    `expected` (None: the key must not exist), set it to `value` (None: delete it).
    Returns a `CasResult`."""

    key: bytes
    expected: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class CasRevision:
    """Compare-and-set against the key's mod revision (the store revision of its last
    write; 0 means the key must not exist), as etcd does. Returns a `CasResult`."""

    key: bytes
    expected_revision: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Append:
    """Append `suffix` to the value of `key` (an absent key counts as empty).
    Returns the new length in bytes."""

    key: bytes
    suffix: bytes


@dataclass(frozen=True, slots=True)
class Incr:
    """Add `delta` to the integer stored at `key`, with Redis's semantics: the value
    must be the canonical base-10 text of a signed 64-bit integer (an absent key
    counts as 0), and the sum must fit in 64 bits. Returns the new value as an int,
    or a `CommandError` (NOT_AN_INTEGER, OVERFLOW) leaving the key unchanged."""

    key: bytes
    delta: int


@dataclass(frozen=True, slots=True)
class RegisterSession:
    """Open a client session for exactly-once commands. Returns the new client id,
    which the client then puts in every `Session` wrapper."""


PlainCommand: TypeAlias = Noop | Put | Delete | Cas | CasRevision | Append | Incr | RegisterSession


@dataclass(frozen=True, slots=True)
class Batch:
    """Commands applied in order within one entry, with nothing interleaved. Returns
    the list of their results. Each command succeeds or fails on its own, as in
    Redis's EXEC: a failed INCR does not undo the commands before it. A batch that
    fails to decode is rejected whole, before anything is applied."""

    commands: tuple[PlainCommand | Session, ...]


@dataclass(frozen=True, slots=True)
class Session:
    """Run `command` at most once for sequence number `seq` of session `client_id`.
    A retry whose `seq` is not above the last one applied for that client is
    answered from the session's record instead of being applied again."""

    client_id: int
    seq: int
    command: PlainCommand | Batch


@dataclass(frozen=True, slots=True)
class Stamped:
    """A command with the leader's wall-clock time in milliseconds. Sessions expire
    by this log-carried time, so every node expires the same sessions at the same
    entry whatever its own clock says."""

    timestamp_ms: int
    command: PlainCommand | Batch | Session


Command: TypeAlias = PlainCommand | Batch | Session | Stamped

# --------------------------------------------------------------------------- results


class ErrorCode(enum.IntEnum):
    """Why a command failed. The server translates each into its API's error."""

    MALFORMED = 1  # the entry's data is not a valid command (the proposer's fault)
    NOT_AN_INTEGER = 2  # INCR on a value that is not a base-10 int64
    OVERFLOW = 3  # INCR whose result does not fit in int64
    UNKNOWN_SESSION = 4  # the session was never registered, expired or was evicted
    RESULT_DISCARDED = 5  # a retry too old for the session's record to still hold its result
    VALUE_TOO_LARGE = 6  # the value would exceed KvConfig.max_value_bytes


@dataclass(frozen=True, slots=True)
class CommandError:
    """A command's deterministic failure. It is a result, not an exception: every
    replica computes the same one and keeps going."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class CasResult:
    """Outcome of a compare-and-set: whether it wrote, and the key's value and mod
    revision after the command (so on a mismatch, the value that did not match)."""

    succeeded: bool
    value: bytes | None
    mod_revision: int


Result: TypeAlias = bytes | int | bool | CasResult | CommandError | list[Any] | None

# --------------------------------------------------------------------------- encoding

_packb: Callable[..., bytes] = msgpack.packb


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes((0x90 | length,))
    if length < 0x10000:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


_HEADER_NOOP = _packb([Opcode.NOOP])
_HEADER_REGISTER = _packb([Opcode.REGISTER_SESSION])
_PREFIX_BATCH = _array_header(2) + _packb(Opcode.BATCH)
_PREFIX_SESSION = _array_header(4) + _packb(Opcode.SESSION)
_PREFIX_STAMPED = _array_header(3) + _packb(Opcode.STAMPED)


def encode_noop() -> bytes:
    return _HEADER_NOOP


#: msgpack's bin 8 headers, by length: the common case of `_bin_header`.
_BIN8_HEADERS = [b"\xc4" + bytes((length,)) for length in range(0x100)]
_PUT_OPENING = _array_header(4) + _packb(Opcode.PUT)
_PUT_CLOSINGS = [_packb(condition) for condition in PutCondition]


def _bin_header(length: int) -> bytes:
    if length < 0x100:
        return _BIN8_HEADERS[length]
    if length < 0x10000:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def encode_put(key: bytes, value: bytes, condition: PutCondition = PutCondition.ALWAYS) -> bytes:
    # What msgpack.packb((Opcode.PUT, key, value, condition)) gives, at a third of
    # its cost: every SET and PUT comes through here.
    return b"".join(
        (
            _PUT_OPENING,
            _bin_header(len(key)),
            key,
            _bin_header(len(value)),
            value,
            _PUT_CLOSINGS[condition],
        )
    )


def encode_delete(key: bytes) -> bytes:
    return _packb((Opcode.DELETE, key))


def encode_cas(key: bytes, expected: bytes | None, value: bytes | None) -> bytes:
    return _packb((Opcode.CAS, key, expected, value))


def encode_cas_revision(key: bytes, expected_revision: int, value: bytes | None) -> bytes:
    return _packb((Opcode.CAS_REVISION, key, expected_revision, value))


def encode_append(key: bytes, suffix: bytes) -> bytes:
    return _packb((Opcode.APPEND, key, suffix))


def encode_incr(key: bytes, delta: int = 1) -> bytes:
    return _packb((Opcode.INCR, key, delta))


def encode_register_session() -> bytes:
    return _HEADER_REGISTER


def encode_batch(commands: Sequence[bytes]) -> bytes:
    """A batch of already-encoded commands (plain, or plain wrapped in a session)."""
    return _PREFIX_BATCH + _array_header(len(commands)) + b"".join(commands)


def with_session(command: bytes, client_id: int, seq: int) -> bytes:
    """Wrap an encoded command (plain or batch) for exactly-once application."""
    return _PREFIX_SESSION + _packb(client_id) + _packb(seq) + command


def with_timestamp(command: bytes, timestamp_ms: int) -> bytes:
    """Wrap an encoded entry with the leader's clock; the leader calls this when it
    proposes, so that sessions expire by log time."""
    return _PREFIX_STAMPED + _packb(timestamp_ms) + command


def encode_command(command: Command) -> bytes:
    """Encode a decoded command; `decode_command(encode_command(c)) == c`."""
    match command:
        case Noop():
            return encode_noop()
        case Put(key, value, condition):
            return encode_put(key, value, condition)
        case Delete(key):
            return encode_delete(key)
        case Cas(key, expected, value):
            return encode_cas(key, expected, value)
        case CasRevision(key, expected_revision, value):
            return encode_cas_revision(key, expected_revision, value)
        case Append(key, suffix):
            return encode_append(key, suffix)
        case Incr(key, delta):
            return encode_incr(key, delta)
        case RegisterSession():
            return encode_register_session()
        case Batch(commands):
            return encode_batch([encode_command(c) for c in commands])
        case Session(client_id, seq, inner):
            return with_session(encode_command(inner), client_id, seq)
        case Stamped(timestamp_ms, inner):
            return with_timestamp(encode_command(inner), timestamp_ms)
    raise TypeError(f"not a kv command: {command!r}")


# --------------------------------------------------------------------------- decoding


class InvalidCommand(ValueError):
    """The bytes are not a valid command. The state machine turns this into a
    MALFORMED `CommandError` result; it never escapes `apply`."""


_NOOP = Noop()
_REGISTER = RegisterSession()
_PUT_CONDITIONS = tuple(PutCondition)


def _key(value: object, what: str = "key") -> bytes:
    if type(value) is not bytes:
        raise InvalidCommand(f"{what} must be bytes (msgpack bin), got {type(value).__name__}")
    return value


def _optional_bytes(value: object, what: str) -> bytes | None:
    if value is None:
        return None
    return _key(value, what)


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise InvalidCommand(f"{what} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidCommand(f"{what} {value} is outside [{low}, {high}]")
    return value


def _arity(fields: list[Any], expected: int, name: str) -> None:
    if len(fields) != expected:
        raise InvalidCommand(f"{name} takes {expected - 1} fields, got {len(fields) - 1}")


def _decode_plain(fields: object) -> PlainCommand:
    if type(fields) is not list or not fields:
        raise InvalidCommand("a command must be a non-empty msgpack array")
    op = fields[0]
    if op == Opcode.PUT and type(op) is int:
        _arity(fields, 4, "put")
        condition = _int(fields[3], "put condition", 0, len(_PUT_CONDITIONS) - 1)
        return Put(_key(fields[1]), _key(fields[2], "value"), _PUT_CONDITIONS[condition])
    if type(op) is not int:
        raise InvalidCommand(f"opcode must be an integer, got {type(op).__name__}")
    if op == Opcode.DELETE:
        _arity(fields, 2, "delete")
        return Delete(_key(fields[1]))
    if op == Opcode.CAS:
        _arity(fields, 4, "cas")
        return Cas(
            _key(fields[1]),
            _optional_bytes(fields[2], "expected value"),
            _optional_bytes(fields[3], "value"),
        )
    if op == Opcode.CAS_REVISION:
        _arity(fields, 4, "cas_revision")
        return CasRevision(
            _key(fields[1]),
            _int(fields[2], "expected revision", 0, INT64_MAX),
            _optional_bytes(fields[3], "value"),
        )
    if op == Opcode.APPEND:
        _arity(fields, 3, "append")
        return Append(_key(fields[1]), _key(fields[2], "suffix"))
    if op == Opcode.INCR:
        _arity(fields, 3, "incr")
        return Incr(_key(fields[1]), _int(fields[2], "increment", INT64_MIN, INT64_MAX))
    if op == Opcode.NOOP:
        _arity(fields, 1, "noop")
        return _NOOP
    if op == Opcode.REGISTER_SESSION:
        _arity(fields, 1, "register_session")
        return _REGISTER
    if op in (Opcode.BATCH, Opcode.SESSION, Opcode.STAMPED):
        raise InvalidCommand(f"{Opcode(op).name.lower()} cannot be nested here")
    raise InvalidCommand(f"unknown opcode {op}")


def _decode_session(fields: list[Any], inner_may_batch: bool) -> Session:
    _arity(fields, 4, "session")
    client_id = _int(fields[1], "client id", 1, INT64_MAX)
    seq = _int(fields[2], "sequence number", 1, INT64_MAX)
    inner = fields[3]
    command: PlainCommand | Batch
    if inner_may_batch and _opcode_of(inner) == Opcode.BATCH:
        command = _decode_batch(inner, items_may_session=False)
    else:
        command = _decode_plain(inner)
    return Session(client_id, seq, command)


def _decode_batch(fields: list[Any], items_may_session: bool) -> Batch:
    _arity(fields, 2, "batch")
    items = fields[1]
    if type(items) is not list:
        raise InvalidCommand("a batch holds a msgpack array of commands")
    commands: list[PlainCommand | Session] = []
    for item in items:
        if items_may_session and _opcode_of(item) == Opcode.SESSION:
            commands.append(_decode_session(item, inner_may_batch=False))
        else:
            commands.append(_decode_plain(item))
    return Batch(tuple(commands))


def _opcode_of(fields: object) -> object:
    if type(fields) is list and fields:
        return fields[0]
    return None


def _decode_tagged(fields: object) -> PlainCommand | Batch | Session:
    op = _opcode_of(fields)
    if type(op) is int and op == Opcode.SESSION:
        return _decode_session(fields, inner_may_batch=True)  # type: ignore[arg-type]
    if type(op) is int and op == Opcode.BATCH:
        return _decode_batch(fields, items_may_session=True)  # type: ignore[arg-type]
    return _decode_plain(fields)


def decode_fields(fields: object) -> Command:
    """Decode an already-unpacked msgpack value as an entry's command."""
    op = _opcode_of(fields)
    if type(op) is int and op == Opcode.STAMPED:
        assert type(fields) is list
        _arity(fields, 3, "stamped")
        timestamp_ms = _int(fields[1], "timestamp", 0, INT64_MAX)
        return Stamped(timestamp_ms, _decode_tagged(fields[2]))
    return _decode_tagged(fields)


def unpack_entry(data: bytes) -> object:
    """The msgpack value of an entry's data; raises `InvalidCommand` if it is not
    msgpack. `decode_fields` (or `plain_puts`) takes it from there."""
    try:
        return msgpack.unpackb(data)
    except Exception as error:  # msgpack raises several types for malformed input
        raise InvalidCommand(
            f"entry data is not msgpack ({type(error).__name__}: {error})"
        ) from None


def decode_command(data: bytes) -> Command:
    """Decode an entry's data. Raises `InvalidCommand` for anything that is not
    exactly one well-formed command."""
    return decode_fields(unpack_entry(data))


def _is_plain_put(fields: object) -> bool:
    return (
        type(fields) is list
        and len(fields) == 4
        and type(fields[0]) is int
        and fields[0] == Opcode.PUT
        and type(fields[1]) is bytes
        and type(fields[2]) is bytes
        and type(fields[3]) is int
        and fields[3] == PutCondition.ALWAYS
    )


def plain_puts(fields: object) -> list[list[Any]] | None:
    """The `[opcode, key, value, condition]` items of an unpacked entry that is a
    plain put or a batch of nothing but plain puts (what SET and PUT send), already
    checked exactly as `decode_fields` would check them; None for anything else.

    The state machine applies these without building a `Put` for each: that is most
    of the cost of applying a write."""
    if type(fields) is not list or not fields:
        return None
    if len(fields) == 2 and type(fields[0]) is int and fields[0] == Opcode.BATCH:
        items = fields[1]
        if type(items) is not list:
            return None
        for item in items:
            if not _is_plain_put(item):
                return None
        return items
    if _is_plain_put(fields):
        return [fields]
    return None


# --------------------------------------------------------------------------- result codec

_EXT_ERROR = 1
_EXT_CAS = 2


def _result_default(value: object) -> msgpack.ExtType:
    if type(value) is CommandError:
        return msgpack.ExtType(_EXT_ERROR, _packb((int(value.code), value.message)))
    if type(value) is CasResult:
        return msgpack.ExtType(_EXT_CAS, _packb((value.succeeded, value.value, value.mod_revision)))
    raise TypeError(f"not a kv result: {value!r}")


def _result_ext_hook(code: int, data: bytes) -> object:
    if code == _EXT_ERROR:
        error_code, message = msgpack.unpackb(data)
        return CommandError(ErrorCode(error_code), message)
    if code == _EXT_CAS:
        succeeded, value, mod_revision = msgpack.unpackb(data)
        return CasResult(succeeded, value, mod_revision)
    raise ValueError(f"unknown kv result ext type {code}")


def encode_result(result: Result) -> bytes:
    """Encode a result for a node that forwards it; `decode_result` inverts it."""
    return _packb(result, default=_result_default)


def decode_result(data: bytes) -> Result:
    return msgpack.unpackb(data, ext_hook=_result_ext_hook)  # type: ignore[no-any-return]


def pack_with_results(value: object) -> bytes:
    """msgpack-encode a structure that may contain results (the snapshot's session
    records use it)."""
    return _packb(value, default=_result_default)


def unpack_with_results(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_result_ext_hook)
