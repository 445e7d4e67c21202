"""The byte layout of WAL records: pure functions, no I/O.

A record is a 16-byte header, the payload, then zero padding up to the next
multiple of 8 bytes. All integers are little-endian.

    offset  size  field
    0       4     payload length in bytes
    4       1     record type (`RecordType`)
    5       3     zero
    8       4     CRC32C of the payload
    12      4     CRC32C of header bytes 0..12

The header carries its own CRC so that a damaged length field is seen as damage
rather than trusted: a flipped bit that made a record in the middle claim to run
past the end of the file would otherwise look exactly like a torn tail, and
recovery would silently drop every record after it. The padding keeps records
8-byte aligned, which bounds the search for an intact record after a damaged one
(see `find_intact_record`).

An ENTRIES payload stores a batch column by column, so that encoding costs a few
C-level passes over the batch instead of a Python loop per entry:

    first_index u64, term u64, count u32, flags u8, 3 zero bytes
    [count x u64 terms]      when flags & TERMS_VARY (else every entry has `term`)
    [count x u8 types]       when flags & TYPES_PRESENT (else every entry is NORMAL)
    msgpack array of the entries' data (bin values), in index order
"""

from __future__ import annotations

import enum
import re
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c
import msgpack

from raftkv.raft import Entry, EntryType, HardState

#: Bumped when the layout of records or payloads changes incompatibly.
WAL_FORMAT_VERSION = 1

HEADER_SIZE_BYTES = 16
ALIGNMENT_BYTES = 8
#: The largest payload one record may carry (the length field is 32 bits).
MAX_PAYLOAD_BYTES = (1 << 32) - 1


class RecordType(enum.IntEnum):
    METADATA = 1
    ENTRIES = 2
    HARD_STATE = 3
    SNAPSHOT = 4


_RECORD_TYPES = frozenset(int(kind) for kind in RecordType)

_HEAD = struct.Struct("<IB3xI")
_U32 = struct.Struct("<I")
_PADDING = tuple(bytes(size) for size in range(ALIGNMENT_BYTES))

_crc = crc32c.crc32c


def checksum(data: bytes | memoryview) -> int:
    value: int = _crc(data)
    return value


def frame(record_type: RecordType, payload: list[bytes]) -> list[bytes]:
    """The record as a list of buffers (header, payload parts, padding) for one
    vectored write: the payload is never copied into a bigger buffer."""
    if len(payload) == 1:
        length, payload_crc = len(payload[0]), _crc(payload[0])
    else:
        length, payload_crc = 0, 0
        for part in payload:
            length += len(part)
            payload_crc = _crc(part, payload_crc)
    assert length <= MAX_PAYLOAD_BYTES, f"record payload of {length} bytes is too large"
    head = _HEAD.pack(length, record_type, payload_crc)
    return [head + _U32.pack(_crc(head)), *payload, _PADDING[-length & 7]]


def encode_record(record_type: RecordType, payload: bytes) -> bytes:
    return b"".join(frame(record_type, [payload]))


@dataclass(frozen=True, slots=True)
class Record:
    type: RecordType
    payload: bytes
    #: Offset of the next record: this one's end, padding included.
    next_offset: int


def read_record(buffer: bytes, offset: int) -> Record | None:
    """The intact record at `offset`, or None if it is damaged or cut short.

    A record whose CRCs hold but whose type is unknown is also None: it cannot be
    told apart from damage, and a newer format would have changed the version in
    the segment's metadata record first.
    """
    payload_start = offset + HEADER_SIZE_BYTES
    if payload_start > len(buffer):
        return None
    length, kind, payload_crc = _HEAD.unpack_from(buffer, offset)
    (header_crc,) = _U32.unpack_from(buffer, offset + 12)
    if _crc(buffer[offset : offset + 12]) != header_crc or kind not in _RECORD_TYPES:
        return None
    payload_end = payload_start + length
    if payload_end > len(buffer):
        return None
    payload = buffer[payload_start:payload_end]
    if _crc(payload) != payload_crc:
        return None
    return Record(RecordType(kind), payload, payload_end + (-length & 7))


# A header's type byte followed by its three zero bytes. A record can only start
# where this pattern sits at offset 4 of an aligned position, so the search for an
# intact record runs in C and checks CRCs only at those few candidates.
_CANDIDATE = re.compile(rb"[\x01-\x04]\x00\x00\x00")


def find_intact_record(buffer: bytes, start: int, end: int) -> int | None:
    """The offset of the first intact record that starts in [start, end) at an
    aligned offset, or None."""
    for match in _CANDIDATE.finditer(buffer, start + 4, end + 4):
        offset = match.start() - 4
        if offset % ALIGNMENT_BYTES == 0 and read_record(buffer, offset) is not None:
            return offset
    return None


# --- payloads -------------------------------------------------------------------------

_ENTRIES_HEAD = struct.Struct("<QQIB3x")
_TERMS_VARY = 1
_TYPES_PRESENT = 2
_LITTLE_ENDIAN = sys.byteorder == "little"
_ENTRY_TYPES = tuple(EntryType)
_NORMAL = EntryType.NORMAL


def _packed(values: array[int]) -> bytes:
    if not _LITTLE_ENDIAN:
        values.byteswap()
    return values.tobytes()


def _unpacked(typecode: str, data: bytes) -> array[int]:
    values = array(typecode)
    values.frombytes(data)
    if not _LITTLE_ENDIAN:
        values.byteswap()
    return values


def encode_entries(entries: Sequence[Entry]) -> list[bytes]:
    """One ENTRIES payload, in parts, for a batch with consecutive indexes.

    `Entry` is a NamedTuple, so `zip(*entries)` splits the batch into its columns
    in one C-level pass; the data column is packed by msgpack, which writes each
    length and bytes in C too. Per entry, no Python code runs.
    """
    count = len(entries)
    terms, indexes, types, datas = zip(*entries, strict=False)  # every Entry has 4 fields
    first_index = indexes[0]
    assert indexes[-1] - first_index == count - 1, (
        f"entries {first_index}..{indexes[-1]} are not {count} consecutive indexes"
    )
    flags = 0
    parts = [b""]
    if terms.count(terms[0]) != count:
        flags |= _TERMS_VARY
        parts.append(_packed(array("Q", terms)))
    if types.count(_NORMAL) != count:
        flags |= _TYPES_PRESENT
        parts.append(bytes(types))
    parts[0] = _ENTRIES_HEAD.pack(first_index, terms[0], count, flags)
    parts.append(msgpack.packb(datas))
    return parts


def decode_entries(payload: bytes) -> list[Entry]:
    """The inverse of `encode_entries`. Raises ValueError if the payload is malformed."""
    first_index, term, count, flags = _ENTRIES_HEAD.unpack_from(payload)
    position = _ENTRIES_HEAD.size
    if flags & _TERMS_VARY:
        terms: Sequence[int] = _unpacked("Q", payload[position : position + 8 * count])
        position += 8 * count
    else:
        terms = (term,) * count
    if flags & _TYPES_PRESENT:
        types = [_ENTRY_TYPES[kind] for kind in payload[position : position + count]]
        position += count
    else:
        types = [_NORMAL] * count
    datas = msgpack.unpackb(payload[position:], use_list=True)
    if not (len(terms) == len(types) == len(datas) == count) or not all(
        type(data) is bytes for data in datas
    ):
        raise ValueError(f"ENTRIES payload of {len(payload)} bytes does not hold {count} entries")
    indexes = range(first_index, first_index + count)
    return list(map(Entry, terms, indexes, types, datas))


_HARD_STATE = struct.Struct("<QQQ")


def encode_hard_state(hard_state: HardState) -> bytes:
    return _HARD_STATE.pack(hard_state.term, hard_state.vote, hard_state.commit)


def hard_state_record(hard_state: HardState) -> bytes:
    """The whole HARD_STATE record (it needs no padding), built without the
    generality of `frame`: one is written with almost every batch."""
    payload = _HARD_STATE.pack(hard_state.term, hard_state.vote, hard_state.commit)
    head = _HEAD.pack(_HARD_STATE.size, RecordType.HARD_STATE, _crc(payload))
    return head + _U32.pack(_crc(head)) + payload


def decode_hard_state(payload: bytes) -> HardState:
    term, vote, commit = _HARD_STATE.unpack(payload)
    return HardState(term=term, vote=vote, commit=commit)


@dataclass(frozen=True, slots=True, order=True)
class SnapshotMarker:
    """A WAL record saying that a snapshot file exists as of (index, term)."""

    index: int
    term: int


_SNAPSHOT = struct.Struct("<QQ")


def encode_snapshot_marker(marker: SnapshotMarker) -> bytes:
    return _SNAPSHOT.pack(marker.index, marker.term)


def decode_snapshot_marker(payload: bytes) -> SnapshotMarker:
    index, term = _SNAPSHOT.unpack(payload)
    return SnapshotMarker(index=index, term=term)


@dataclass(frozen=True, slots=True)
class WALMetadata:
    """What binds a WAL to one node of one cluster."""

    node_id: int
    cluster_id: int


_METADATA = struct.Struct("<IQQQ")


def encode_metadata(metadata: WALMetadata, segment_seq: int) -> bytes:
    return _METADATA.pack(WAL_FORMAT_VERSION, metadata.node_id, metadata.cluster_id, segment_seq)


def decode_metadata(payload: bytes) -> tuple[int, WALMetadata, int]:
    """(format version, metadata, segment sequence number)."""
    version, node_id, cluster_id, segment_seq = _METADATA.unpack(payload)
    return version, WALMetadata(node_id=node_id, cluster_id=cluster_id), segment_seq
