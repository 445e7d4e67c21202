"""The message batch codec: round trips, compactness, and hostile input."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from raftkv.transport import FrameError, decode_batch, encode_batch
from raftkv.transport._codec import decode_snapshot_head, encode_snapshot_head

from .strategies import messages, msgpack_values

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SNAPSHOT = Snapshot(
    SnapshotMetadata(index=120, term=4, conf_state=ConfState(voters=(1, 2, 3), learners=(4,))),
    data=b"state machine bytes" * 10,
)
ENTRIES = tuple(Entry(3, 11 + i, EntryType.NORMAL, b"v%d" % i) for i in range(3))

#: One realistic message per type, using the fields that type uses.
TYPICAL = {
    MessageType.APP: Message(MessageType.APP, 2, 1, 3, 3, 10, ENTRIES, 12),
    MessageType.APP_RESP: Message(MessageType.APP_RESP, 1, 2, 3, index=13),
    MessageType.VOTE: Message(MessageType.VOTE, 2, 1, 4, log_term=3, index=13),
    MessageType.VOTE_RESP: Message(MessageType.VOTE_RESP, 1, 2, 4, reject=True),
    MessageType.PRE_VOTE: Message(MessageType.PRE_VOTE, 2, 1, 5, log_term=3, index=13),
    MessageType.PRE_VOTE_RESP: Message(MessageType.PRE_VOTE_RESP, 1, 2, 5),
    MessageType.HEARTBEAT: Message(MessageType.HEARTBEAT, 2, 1, 3, commit=12, context=b"rd1"),
    MessageType.HEARTBEAT_RESP: Message(MessageType.HEARTBEAT_RESP, 1, 2, 3, context=b"rd1"),
    MessageType.SNAP: Message(MessageType.SNAP, 2, 1, 4, snapshot=SNAPSHOT),
    MessageType.PROP: Message(
        MessageType.PROP, 1, 2, entries=(Entry(0, 0, EntryType.CONF_CHANGE, b"cc"),)
    ),
    MessageType.READ_INDEX: Message(MessageType.READ_INDEX, 1, 2, 3, context=b"req-7"),
    MessageType.READ_INDEX_RESP: Message(
        MessageType.READ_INDEX_RESP, 2, 1, 3, index=12, context=b"req-7"
    ),
    MessageType.TIMEOUT_NOW: Message(MessageType.TIMEOUT_NOW, 2, 1, 3),
    MessageType.TRANSFER_LEADER: Message(MessageType.TRANSFER_LEADER, 1, 3, 3),
}


def test_every_message_type_has_a_typical_example() -> None:
    assert set(TYPICAL) == set(MessageType)


@pytest.mark.parametrize("kind", list(MessageType), ids=lambda kind: kind.name)
def test_each_message_type_round_trips(kind: MessageType) -> None:
    message = TYPICAL[kind]
    assert decode_batch(encode_batch([message])) == [message]


def test_a_batch_of_every_type_round_trips_in_order() -> None:
    batch = list(TYPICAL.values())
    assert decode_batch(encode_batch(batch)) == batch


def test_an_empty_batch_round_trips() -> None:
    assert decode_batch(encode_batch([])) == []


def test_decoded_enums_are_the_enum_members() -> None:
    message = TYPICAL[MessageType.PROP]
    (decoded,) = decode_batch(encode_batch([message]))
    assert decoded.type is MessageType.PROP
    assert decoded.entries[0].type is EntryType.CONF_CHANGE
    assert type(decoded.entries[0]) is Entry


def test_irregular_entries_round_trip() -> None:
    # Gaps in indexes, changing terms and mixed types use the per-entry columns.
    entries = (
        Entry(1, 5, EntryType.NORMAL, b"a"),
        Entry(2, 9, EntryType.CONF_CHANGE, b""),
        Entry(2, 7, EntryType.NORMAL, b"c"),
    )
    message = Message(MessageType.APP, 2, 1, 2, 1, 4, entries, 3)
    assert decode_batch(encode_batch([message])) == [message]


@given(st.lists(messages, max_size=8))
@settings(max_examples=40, deadline=None)
def test_any_batch_round_trips(batch: list[Message]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


@given(messages.filter(lambda m: m.snapshot is not None))
@settings(max_examples=30, deadline=None)
def test_snapshot_head_carries_everything_but_the_data(message: Message) -> None:
    assert message.snapshot is not None
    head, length = decode_snapshot_head(encode_snapshot_head(message))
    assert length == len(message.snapshot.data)
    assert head.snapshot is not None
    assert head.snapshot.data == b""
    assert head.snapshot.metadata == message.snapshot.metadata
    assert head == Message(**{**_fields(message), "snapshot": head.snapshot})


def test_snapshot_head_needs_a_snapshot() -> None:
    with pytest.raises(ValueError, match="snapshot"):
        encode_snapshot_head(TYPICAL[MessageType.APP])


def _fields(message: Message) -> dict[str, object]:
    return {name: getattr(message, name) for name in Message.__dataclass_fields__}


# -- compactness ---------------------------------------------------------------------


def test_an_append_of_64_entries_costs_little_beyond_its_data() -> None:
    entries = tuple(Entry(7, 1000 + i, EntryType.NORMAL, bytes(100)) for i in range(64))
    payload = encode_batch([Message(MessageType.APP, 2, 1, 7, 7, 999, entries, 990)])
    data_bytes = 64 * 100
    # Each data string has a 2-byte bin header; everything else fits in 32 bytes.
    assert len(payload) <= data_bytes + 64 * 2 + 32


def test_a_heartbeat_costs_a_dozen_bytes() -> None:
    payload = encode_batch([Message(MessageType.HEARTBEAT, 2, 1, 7, commit=990)])
    assert len(payload) <= 12


# -- hostile input -------------------------------------------------------------------


def _message_fields(**changes: object) -> list[object]:
    fields: dict[str, object] = {
        "type": 0,
        "to": 2,
        "frm": 1,
        "term": 3,
        "log_term": 3,
        "index": 10,
        "commit": 12,
        "entries": [11, 3, 0, [b"a", b"b"]],
        "reject": False,
        "reject_hint": 0,
        "context": b"",
        "snapshot": None,
    }
    fields.update(changes)
    return list(fields.values())


def _batch(*messages: object) -> bytes:
    payload: bytes = msgpack.packb(list(messages))
    return payload


MALFORMED = {
    "not msgpack": b"\xc1",
    "truncated": encode_batch([TYPICAL[MessageType.APP]])[:-3],
    "trailing bytes": encode_batch([TYPICAL[MessageType.APP]]) + b"\x00",
    "a map, not an array": msgpack.packb({"type": 0}),
    "an integer batch": msgpack.packb(7),
    "a message that is not an array": _batch(b"message"),
    "too few fields": _batch([0, 2, 1]),
    "9 fields": _batch(_message_fields()[:9]),
    "13 fields": _batch([*_message_fields(), 0]),
    "unknown message type": _batch(_message_fields(type=99)),
    "negative message type": _batch(_message_fields(type=-1)),
    "message type as text": _batch(_message_fields(type="APP")),
    "message type as bool": _batch(_message_fields(type=True)),
    "to as text": _batch(_message_fields(to="2")),
    "frm as bytes": _batch(_message_fields(frm=b"\x01")),
    "term as float": _batch(_message_fields(term=3.0)),
    "index as bool": _batch(_message_fields(index=True)),
    "negative commit": _batch(_message_fields(commit=-1)),
    "reject as int": _batch(_message_fields(reject=1)),
    "reject_hint as None": _batch(_message_fields(reject_hint=None)),
    "context as text": _batch(_message_fields(context="ctx")),
    "entries as bytes": _batch(_message_fields(entries=b"entries")),
    "entries with 3 columns": _batch(_message_fields(entries=[11, 3, [b"a"]])),
    "entries with no data": _batch(_message_fields(entries=[11, 3, 0, []])),
    "entry data as text": _batch(_message_fields(entries=[11, 3, 0, ["a"]])),
    "entry data as int": _batch(_message_fields(entries=[11, 3, 0, [b"a", 5]])),
    "negative first index": _batch(_message_fields(entries=[-1, 3, 0, [b"a"]])),
    "index column too short": _batch(_message_fields(entries=[[11], 3, 0, [b"a", b"b"]])),
    "index column of text": _batch(_message_fields(entries=[["a", "b"], 3, 0, [b"a", b"b"]])),
    "term column with bool": _batch(_message_fields(entries=[11, [3, True], 0, [b"a", b"b"]])),
    "term column negative": _batch(_message_fields(entries=[11, [3, -3], 0, [b"a", b"b"]])),
    "unknown entry type": _batch(_message_fields(entries=[11, 3, 9, [b"a", b"b"]])),
    "unknown entry type in column": _batch(_message_fields(entries=[11, 3, [0, 7], [b"a", b"b"]])),
    "entry types as map": _batch(_message_fields(entries=[11, 3, {"a": 1}, [b"a", b"b"]])),
    "snapshot as bytes": _batch(_message_fields(snapshot=b"snap")),
    "snapshot with 4 fields": _batch(_message_fields(snapshot=[1, 1, [], []])),
    "snapshot data as text": _batch(_message_fields(snapshot=[1, 1, [], [], "data"])),
    "snapshot voters as int": _batch(_message_fields(snapshot=[1, 1, 1, [], b""])),
    "snapshot learner negative": _batch(_message_fields(snapshot=[1, 1, [], [-4], b""])),
    "snapshot index as text": _batch(_message_fields(snapshot=["1", 1, [], [], b""])),
    "ext type": _batch(_message_fields(context=msgpack.ExtType(5, b"x"))),
    "invalid utf-8 text": b"\x91\xa2\xff\xfe",
    "deep nesting": b"\x91" * 100_000,
    "huge declared array": b"\xdd\xff\xff\xff\xff",
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_batches_raise_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode_batch(payload)


SNAPSHOT_HEAD = encode_snapshot_head(TYPICAL[MessageType.SNAP])

MALFORMED_HEADS = {
    "a plain batch": encode_batch([TYPICAL[MessageType.SNAP]]),
    "short message": msgpack.packb(_message_fields()[:8]),
    "no snapshot": msgpack.packb(_message_fields()),
    "data instead of length": msgpack.packb(_message_fields(snapshot=[1, 1, [], [], b"x"])),
    "negative length": msgpack.packb(_message_fields(snapshot=[1, 1, [], [], -1])),
    "bad metadata": msgpack.packb(_message_fields(snapshot=[1, "1", [], [], 5])),
    "truncated": SNAPSHOT_HEAD[:-1],
}


@pytest.mark.parametrize("payload", MALFORMED_HEADS.values(), ids=list(MALFORMED_HEADS))
def test_malformed_snapshot_heads_raise_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode_snapshot_head(payload)


def _decodes_or_frame_error(payload: bytes) -> None:
    try:
        batch = decode_batch(payload)
    except FrameError:
        return
    assert all(type(message) is Message for message in batch)


@given(st.binary(max_size=200))
@FUZZ
def test_random_bytes_decode_or_raise_frame_error(payload: bytes) -> None:
    _decodes_or_frame_error(payload)


@given(msgpack_values)
@FUZZ
def test_arbitrary_msgpack_values_decode_or_raise_frame_error(value: object) -> None:
    _decodes_or_frame_error(msgpack.packb([value]))
    _decodes_or_frame_error(msgpack.packb([[0, 2, 1, 3, 3, 10, 12, value]]))


@given(st.data())
@FUZZ
def test_message_shaped_garbage_decodes_or_raises_frame_error(data: st.DataObject) -> None:
    # A valid message with some fields (or entry columns) replaced by arbitrary values.
    columns: list[object] = [11, 3, 0, [b"a", b"b"]]
    fields = _message_fields(entries=columns)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        target = data.draw(st.sampled_from(["field", "column"]))
        if target == "field":
            fields[data.draw(st.integers(0, len(fields) - 1))] = data.draw(msgpack_values)
        else:
            columns[data.draw(st.integers(0, 3))] = data.draw(msgpack_values)
    length = data.draw(st.sampled_from([8, 12, len(fields)]))
    _decodes_or_frame_error(msgpack.packb([fields[:length]]))


@given(messages, st.data())
@FUZZ
def test_mutated_valid_batches_decode_or_raise_frame_error(
    message: Message, data: st.DataObject
) -> None:
    payload = bytearray(encode_batch([message]))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            payload[position] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif action == "insert":
            payload[position:position] = struct.pack("B", data.draw(st.integers(0, 255)))
        elif len(payload) > 1:
            del payload[position]
    _decodes_or_frame_error(bytes(payload))
    with contextlib.suppress(FrameError):
        decode_snapshot_head(bytes(payload))
