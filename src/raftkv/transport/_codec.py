"""Encoding of raft message batches for the wire.

A batch is one msgpack array holding one compact array per message. Field names
never travel, only positions. The layout:

    message  = [type, to, frm, term, log_term, index, commit, entries]
             | [type, to, frm, term, log_term, index, commit, entries,
                reject, reject_hint, context, snapshot]
    entries  = []                                  no entries
             | [indexes, terms, types, datas]      columns, one item per entry
    indexes  = first_index  (when consecutive)     | [index, ...]
    terms    = term         (when all equal)       | [term, ...]
    types    = entry type   (when all equal)       | [type, ...]
    datas    = [bytes, ...]                        (its length is the entry count)
    snapshot = nil | [index, term, voters, learners, data]

The short 8-field form is used when the last four fields hold their defaults: appends,
heartbeats without a read context, votes and most responses. Entries travel as columns
because an append's entries nearly always have consecutive indexes, one term and one
type: those collapse to one integer each, so the encoder packs a single array of byte
strings and the decoder rebuilds the other columns from `range` and `repeat` with no
per-entry checks or allocations besides the entries themselves.

A snapshot message sent with `encode_snapshot_head` carries the length of the snapshot
data in place of the data; the transport streams the data after the head in chunks
(see `_wire.SnapshotAssembler`), so a large snapshot is never copied into one frame.

Decoding treats its input as hostile: the type of every field, every length and every
enum value is checked, and anything malformed raises `FrameError`, never another
exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any, Final

import msgpack

from raftkv.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

from ._errors import FrameError

__all__ = ["decode_batch", "decode_snapshot_head", "encode_batch", "encode_snapshot_head"]

# Entries are rebuilt with `tuple.__new__`, which is about twice as cheap as calling the
# NamedTuple's Python-level constructor once per entry. That relies on Entry's shape:
# fail at import, loudly, rather than build wrong entries if the core ever changes it.
if not (issubclass(Entry, tuple) and Entry._fields == ("term", "index", "type", "data")):
    raise ImportError(
        "raftkv.transport._codec expects raftkv.raft.Entry to be a NamedTuple of "
        "(term, index, type, data); update the codec to match the new Entry"
    )

_MESSAGE_TYPES: Final[dict[int, MessageType]] = {int(t): t for t in MessageType}
_ENTRY_TYPES: Final[dict[int, EntryType]] = {int(t): t for t in EntryType}
_INT_ONLY: Final = {int}
_BYTES_ONLY: Final = {bytes}
_SHORT_FIELD_COUNT: Final = 8
_LONG_FIELD_COUNT: Final = 12
_tuple_new: Final = tuple.__new__


# -- encoding (trusted input: messages made by our own core) --------------------------


def encode_batch(messages: Iterable[Message]) -> bytes:
    """Encode messages as one batch payload (without the frame header)."""
    payload: bytes = msgpack.packb([_encode_message(m) for m in messages])
    return payload


def encode_snapshot_head(message: Message) -> bytes:
    """Encode a message that carries a snapshot, with the snapshot data left out and
    its length in its place. The caller sends the data itself after this head."""
    snapshot = message.snapshot
    if snapshot is None:
        raise ValueError(f"a snapshot head needs a message with a snapshot, got {message.type!r}")
    fields = _short_fields(message)
    fields += (
        message.reject,
        message.reject_hint,
        message.context,
        _snapshot_fields(snapshot, len(snapshot.data)),
    )
    payload: bytes = msgpack.packb(fields)
    return payload


def _encode_message(message: Message) -> list[Any]:
    fields = _short_fields(message)
    snapshot = message.snapshot
    if snapshot is None and not message.reject and not message.reject_hint and not message.context:
        return fields
    fields += (
        message.reject,
        message.reject_hint,
        message.context,
        None if snapshot is None else _snapshot_fields(snapshot, snapshot.data),
    )
    return fields


def _short_fields(message: Message) -> list[Any]:
    entries = message.entries
    return [
        message.type,
        message.to,
        message.frm,
        message.term,
        message.log_term,
        message.index,
        message.commit,
        _entry_columns(entries) if entries else (),
    ]


def _entry_columns(entries: Sequence[Entry]) -> list[Any]:
    # One C-level transpose instead of four attribute lookups per entry.
    terms, indexes, types, datas = zip(*entries, strict=False)
    count = len(datas)
    first_index = indexes[0]
    return [
        first_index if indexes == tuple(range(first_index, first_index + count)) else indexes,
        terms[0] if terms.count(terms[0]) == count else terms,
        types[0] if types.count(types[0]) == count else types,
        datas,
    ]


def _snapshot_fields(snapshot: Snapshot, data: bytes | int) -> list[Any]:
    metadata = snapshot.metadata
    conf_state = metadata.conf_state
    return [metadata.index, metadata.term, conf_state.voters, conf_state.learners, data]


# -- decoding (untrusted input: bytes from the network) -------------------------------


def decode_batch(payload: bytes | memoryview) -> list[Message]:
    """Decode one batch payload. Raises `FrameError` if it is malformed in any way."""
    items = _unpack(payload)
    if type(items) is not tuple:
        raise FrameError(f"a batch must be an array of messages, got {type(items).__name__}")
    return [_decode_message(fields) for fields in items]


def decode_snapshot_head(payload: bytes | memoryview) -> tuple[Message, int]:
    """Decode a snapshot head: the message, with empty snapshot data, and the length of
    the data that follows. Raises `FrameError` if it is malformed in any way."""
    fields = _unpack(payload)
    if type(fields) is not tuple or len(fields) != _LONG_FIELD_COUNT:
        raise FrameError("a snapshot head must be a message array of 12 fields")
    snapshot_fields = fields[-1]
    if type(snapshot_fields) is not tuple or len(snapshot_fields) != 5:
        raise FrameError("a snapshot head must carry snapshot metadata and a data length")
    data_length = snapshot_fields[4]
    if type(data_length) is not int or data_length < 0:
        raise FrameError(f"a snapshot data length must be an unsigned integer: {data_length!r}")
    message = _decode_message((*fields[:-1], (*snapshot_fields[:4], b"")))
    return message, data_length


def _unpack(payload: bytes | memoryview) -> object:
    try:
        return msgpack.unpackb(payload, use_list=False, raw=False)
    except Exception as exc:
        # msgpack signals malformed input with many exception types (ValueError,
        # ExtraData, StackError, UnicodeDecodeError, ...): all of them mean the same.
        raise FrameError(f"payload is not a msgpack document: {exc}") from exc


def _decode_message(fields: object) -> Message:
    if type(fields) is not tuple:
        raise FrameError(f"a message must be an array, got {type(fields).__name__}")
    if len(fields) == _SHORT_FIELD_COUNT:
        kind, to, frm, term, log_term, index, commit, entries = fields
        reject, reject_hint, context, snapshot = False, 0, b"", None
    elif len(fields) == _LONG_FIELD_COUNT:
        kind, to, frm, term, log_term, index, commit, entries = fields[:8]
        reject, reject_hint, context, snapshot_fields = fields[8:]
        if type(reject) is not bool:
            raise FrameError(f"message field reject must be a boolean: {reject!r}")
        if type(context) is not bytes:
            raise FrameError(f"message field context must be bytes: {context!r}")
        snapshot = None if snapshot_fields is None else _decode_snapshot(snapshot_fields)
    else:
        raise FrameError(f"a message has 8 or 12 fields, not {len(fields)}")
    if (
        not (
            type(to) is int
            and type(frm) is int
            and type(term) is int
            and type(log_term) is int
            and type(index) is int
            and type(commit) is int
            and type(reject_hint) is int
        )
        or min(to, frm, term, log_term, index, commit, reject_hint) < 0
    ):
        raise FrameError(
            "message fields to, frm, term, log_term, index, commit and reject_hint "
            f"must be unsigned integers: {fields!r:.200}"
        )
    message_type = _MESSAGE_TYPES.get(kind) if type(kind) is int else None
    if message_type is None:
        raise FrameError(f"unknown message type {kind!r}")
    if type(entries) is not tuple:
        raise FrameError(f"message entries must be an array, got {type(entries).__name__}")
    # Positional arguments: measurably cheaper than keywords for a 12-field dataclass.
    return Message(
        message_type,
        to,
        frm,
        term,
        log_term,
        index,
        _decode_entries(entries) if entries else (),
        commit,
        reject,
        reject_hint,
        snapshot,
        context,
    )


def _decode_entries(columns: tuple[object, ...]) -> tuple[Entry, ...]:
    if len(columns) != 4:
        raise FrameError(f"entries must be 4 columns, not {len(columns)}")
    indexes, terms, types, datas = columns
    if type(datas) is not tuple or not datas or set(map(type, datas)) != _BYTES_ONLY:
        raise FrameError("entry data must be a non-empty array of byte strings")
    count = len(datas)
    index_column: Iterable[int]
    if type(indexes) is int and indexes >= 0:
        index_column = range(indexes, indexes + count)
    else:
        index_column = _uint_column(indexes, count, "entry indexes")
    term_column: Iterable[int]
    if type(terms) is int and terms >= 0:
        term_column = repeat(terms, count)
    else:
        term_column = _uint_column(terms, count, "entry terms")
    type_column: Iterable[EntryType | None]
    if type(types) is int:
        type_column = repeat(_ENTRY_TYPES.get(types), count)
        unknown_type = types not in _ENTRY_TYPES
    else:
        type_column = tuple(map(_ENTRY_TYPES.get, _uint_column(types, count, "entry types")))
        unknown_type = None in type_column
    if unknown_type:
        raise FrameError(f"unknown entry type in {types!r:.200}")
    entries: tuple[Entry, ...] = tuple(
        map(
            _tuple_new,
            repeat(Entry, count),
            zip(term_column, index_column, type_column, datas, strict=True),
        )
    )
    return entries


def _uint_column(values: object, count: int, what: str) -> tuple[int, ...]:
    if (
        type(values) is not tuple
        or len(values) != count
        or set(map(type, values)) != _INT_ONLY
        or min(values) < 0
    ):
        raise FrameError(f"{what} must be an unsigned integer or an array of {count} of them")
    return values


def _decode_snapshot(fields: object) -> Snapshot:
    if type(fields) is not tuple or len(fields) != 5:
        raise FrameError("a snapshot must be an array of 5 fields")
    index, term, voters, learners, data = fields
    if not (type(index) is int and type(term) is int) or min(index, term) < 0:
        raise FrameError(f"snapshot index and term must be unsigned integers: {fields!r:.200}")
    if type(data) is not bytes:
        raise FrameError(f"snapshot data must be bytes, got {type(data).__name__}")
    conf_state = ConfState(
        voters=_uint_array(voters, "snapshot voters"),
        learners=_uint_array(learners, "snapshot learners"),
    )
    return Snapshot(SnapshotMetadata(index=index, term=term, conf_state=conf_state), data)


def _uint_array(values: object, what: str) -> tuple[int, ...]:
    if type(values) is not tuple:
        raise FrameError(f"{what} must be an array of unsigned integers")
    if values and (set(map(type, values)) != _INT_ONLY or min(values) < 0):
        raise FrameError(f"{what} must be an array of unsigned integers")
    return values
