"""The command wire format: encoders, the decoder, and the result codec."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    INT64_MAX,
    INT64_MIN,
    Append,
    Batch,
    Cas,
    CasResult,
    CasRevision,
    CommandError,
    Delete,
    ErrorCode,
    Incr,
    InvalidCommand,
    KvStateMachine,
    Noop,
    Opcode,
    Put,
    PutCondition,
    RegisterSession,
    Session,
    Stamped,
    decode_command,
    decode_result,
    encode_append,
    encode_batch,
    encode_cas,
    encode_cas_revision,
    encode_command,
    encode_delete,
    encode_incr,
    encode_noop,
    encode_put,
    encode_register_session,
    encode_result,
    with_session,
    with_timestamp,
)

EVERY_COMMAND = [
    Noop(),
    Put(b"k", b"v"),
    Put(b"k", b"", PutCondition.IF_ABSENT),
    Put(b"", b"v", PutCondition.IF_PRESENT),
    Delete(b"k"),
    Cas(b"k", None, b"v"),
    Cas(b"k", b"old", None),
    CasRevision(b"k", 0, b"v"),
    CasRevision(b"k", 17, None),
    Append(b"k", b"tail"),
    Incr(b"k", 1),
    Incr(b"k", INT64_MIN),
    Incr(b"k", INT64_MAX),
    RegisterSession(),
    Batch(()),
    Batch((Put(b"a", b"1"), Session(3, 4, Incr(b"n", -2)), Delete(b"b"))),
    Session(1, 1, Append(b"k", b"x")),
    Session(1, 2, Batch((Put(b"a", b"1"), Put(b"b", b"2")))),
    Stamped(0, Noop()),
    Stamped(1_700_000_000_000, Session(5, 9, Cas(b"k", b"a", b"b"))),
    Stamped(12, Batch((Session(1, 1, Noop()),))),
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=repr)
def test_every_command_round_trips(command: object) -> None:
    assert decode_command(encode_command(command)) == command  # type: ignore[arg-type]


def test_encoders_match_the_documented_arrays() -> None:
    assert msgpack.unpackb(encode_noop()) == [0]
    assert msgpack.unpackb(encode_put(b"k", b"v")) == [1, b"k", b"v", 0]
    assert msgpack.unpackb(encode_put(b"k", b"v", PutCondition.IF_ABSENT)) == [1, b"k", b"v", 1]
    assert msgpack.unpackb(encode_delete(b"k")) == [2, b"k"]
    assert msgpack.unpackb(encode_cas(b"k", None, b"v")) == [3, b"k", None, b"v"]
    assert msgpack.unpackb(encode_cas_revision(b"k", 5, None)) == [4, b"k", 5, None]
    assert msgpack.unpackb(encode_append(b"k", b"s")) == [5, b"k", b"s"]
    assert msgpack.unpackb(encode_incr(b"k")) == [6, b"k", 1]
    assert msgpack.unpackb(encode_register_session()) == [7]
    batch = encode_batch([encode_noop(), encode_delete(b"k")])
    assert msgpack.unpackb(batch) == [8, [[0], [2, b"k"]]]
    assert msgpack.unpackb(with_session(encode_noop(), 3, 4)) == [9, 3, 4, [0]]
    assert msgpack.unpackb(with_timestamp(encode_noop(), 99)) == [10, 99, [0]]


def test_a_put_of_a_short_key_and_value_is_compact() -> None:
    assert len(encode_put(b"key", b"value")) == 1 + 1 + 2 + 3 + 2 + 5 + 1


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x90"),
        (15, b"\x9f"),
        (16, b"\xdc\x00\x10"),
        (65535, b"\xdc\xff\xff"),
        (65536, b"\xdd\x00\x01\x00\x00"),
    ],
)
def test_batch_array_headers_at_every_size_boundary(length: int, header: bytes) -> None:
    data = encode_batch([encode_noop()] * length)
    assert data[2 : 2 + len(header)] == header
    assert msgpack.unpackb(data) == [Opcode.BATCH, [[0]] * length]
    if length < 100:
        assert decode_command(data) == Batch((Noop(),) * length)


BAD_ENTRIES = {
    "not msgpack": b"\xc1",
    "truncated": encode_put(b"k", b"v")[:-1],
    "trailing bytes": encode_noop() + b"\x00",
    "not an array": msgpack.packb(1),
    "empty array": msgpack.packb([]),
    "unknown opcode": msgpack.packb([99]),
    "negative opcode": msgpack.packb([-1]),
    "string opcode": msgpack.packb(["put", b"k", b"v", 0]),
    "bool opcode": msgpack.packb([True, b"k", b"v", 0]),
    "float opcode": msgpack.packb([1.0, b"k", b"v", 0]),
    "put missing condition": msgpack.packb([Opcode.PUT, b"k", b"v"]),
    "put extra field": msgpack.packb([Opcode.PUT, b"k", b"v", 0, 0]),
    "put str key": msgpack.packb([Opcode.PUT, "k", b"v", 0]),
    "put nil value": msgpack.packb([Opcode.PUT, b"k", None, 0]),
    "put bad condition": msgpack.packb([Opcode.PUT, b"k", b"v", 3]),
    "delete without key": msgpack.packb([Opcode.DELETE]),
    "cas int expected": msgpack.packb([Opcode.CAS, b"k", 1, b"v"]),
    "cas_revision negative": msgpack.packb([Opcode.CAS_REVISION, b"k", -1, b"v"]),
    "cas_revision bytes revision": msgpack.packb([Opcode.CAS_REVISION, b"k", b"1", b"v"]),
    "append nil suffix": msgpack.packb([Opcode.APPEND, b"k", None]),
    "incr too big": msgpack.packb([Opcode.INCR, b"k", INT64_MAX + 1]),
    "incr bool": msgpack.packb([Opcode.INCR, b"k", True]),
    "incr float": msgpack.packb([Opcode.INCR, b"k", 1.5]),
    "noop with field": msgpack.packb([Opcode.NOOP, 1]),
    "batch not a list": msgpack.packb([Opcode.BATCH, b"x"]),
    "batch of garbage": msgpack.packb([Opcode.BATCH, [1]]),
    "nested batch": msgpack.packb([Opcode.BATCH, [[Opcode.BATCH, []]]]),
    "stamped inside batch": msgpack.packb([Opcode.BATCH, [[Opcode.STAMPED, 1, [0]]]]),
    "session in session": msgpack.packb([Opcode.SESSION, 1, 1, [Opcode.SESSION, 1, 1, [0]]]),
    "session in batch in session": msgpack.packb(
        [Opcode.SESSION, 1, 1, [Opcode.BATCH, [[Opcode.SESSION, 1, 2, [0]]]]]
    ),
    "batch in session in batch": msgpack.packb(
        [Opcode.BATCH, [[Opcode.SESSION, 1, 1, [Opcode.BATCH, []]]]]
    ),
    "session client id 0": msgpack.packb([Opcode.SESSION, 0, 1, [0]]),
    "session seq 0": msgpack.packb([Opcode.SESSION, 1, 0, [0]]),
    "stamped twice": msgpack.packb([Opcode.STAMPED, 1, [Opcode.STAMPED, 1, [0]]]),
    "stamped negative": msgpack.packb([Opcode.STAMPED, -5, [0]]),
    "stamped missing command": msgpack.packb([Opcode.STAMPED, 5]),
    "ext type": msgpack.packb(msgpack.ExtType(1, b"")),
    "map": msgpack.packb({b"op": 1}),
    "deep nesting": b"\x91" * 100_000 + b"\xc0",
}


@pytest.mark.parametrize("data", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_entries_raise_invalid_command(data: bytes) -> None:
    with pytest.raises(InvalidCommand):
        decode_command(data)


RESULTS = [
    None,
    b"",
    b"value",
    0,
    -(2**63),
    True,
    False,
    CasResult(True, b"v", 3),
    CasResult(False, None, 0),
    CommandError(ErrorCode.NOT_AN_INTEGER, "value is not an integer or out of range"),
    [None, b"x", 1, [CasResult(False, b"y", 2)], CommandError(ErrorCode.MALFORMED, "bad")],
]


@pytest.mark.parametrize("result", RESULTS, ids=repr)
def test_results_round_trip_through_msgpack(result: object) -> None:
    decoded = decode_result(encode_result(result))  # type: ignore[arg-type]
    assert decoded == result
    assert type(decoded) is type(result)


def test_encode_result_refuses_non_results() -> None:
    with pytest.raises(TypeError):
        encode_result(object())  # type: ignore[arg-type]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=4)
    | st.text(max_size=3)
    | st.sampled_from(list(Opcode)),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40) | msgpack_values.map(msgpack.packb))
def test_arbitrary_bytes_never_escape_as_anything_but_invalid_command(data: bytes) -> None:
    KvStateMachine().apply(1, data)  # never raises, whatever the bytes
    try:
        command = decode_command(data)
    except InvalidCommand:
        return
    assert decode_command(encode_command(command)) == command
