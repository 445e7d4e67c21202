"""The byte layout of a peer connection, without any I/O.

A connection carries, in order:

1. the dialer's hello (`HELLO`, 30 bytes): magic, protocol version, cluster id, the
   dialer's node id and the node id it expects to reach;
2. the listener's answer (`ACK`, 5 bytes): magic and a `HandshakeStatus`. On anything
   but `OK` the listener closes the connection;
3. frames from the dialer to the listener, and nothing in the other direction. A frame
   is a 5-byte header (payload length, big-endian u32; kind, u8) then the payload:
   - `BATCH`: a message batch (`_codec.encode_batch`);
   - `SNAPSHOT_HEAD`: one message whose snapshot data is left out (`_codec.
     encode_snapshot_head`); exactly that many bytes follow in `SNAPSHOT_CHUNK` frames,
     possibly with `BATCH` frames between them. One snapshot at a time.

Every length is bounded before anything is buffered: a frame by `max_frame_bytes`, a
snapshot by `max_snapshot_bytes`. Any violation raises `FrameError`.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Final

from raftkv.raft import Message

from ._codec import decode_snapshot_head
from ._errors import FrameError

__all__ = [
    "ACK",
    "FRAME_HEADER",
    "HELLO",
    "PROTOCOL_VERSION",
    "FrameKind",
    "FrameReader",
    "HandshakeStatus",
    "Hello",
    "SnapshotAssembler",
    "decode_ack",
    "decode_hello",
    "encode_ack",
    "encode_hello",
    "frame",
]

MAGIC: Final = b"RKVP"
PROTOCOL_VERSION: Final = 1
HELLO: Final = struct.Struct(">4sHQQQ")
ACK: Final = struct.Struct(">4sB")
FRAME_HEADER: Final = struct.Struct(">IB")
#: Frames longer than this cannot be described by the header's u32 length.
MAX_FRAME_BYTES_LIMIT: Final = 2**32 - 1


class FrameKind(enum.IntEnum):
    BATCH = 1
    SNAPSHOT_HEAD = 2
    SNAPSHOT_CHUNK = 3


_FRAME_KINDS: Final = frozenset(int(kind) for kind in FrameKind)


class HandshakeStatus(enum.IntEnum):
    """The listener's verdict on a hello. Each value says what the dialer must fix."""

    OK = 0
    BAD_VERSION = 1
    WRONG_CLUSTER = 2
    WRONG_NODE = 3
    REJECTED_SENDER = 4
    #: The sender was removed from the cluster (the listener applied its removal).
    REMOVED_SENDER = 5

    def describe(self) -> str:
        return _STATUS_TEXT[self]


_STATUS_TEXT: Final = {
    HandshakeStatus.OK: "accepted",
    HandshakeStatus.BAD_VERSION: "unsupported protocol version",
    HandshakeStatus.WRONG_CLUSTER: "cluster id mismatch (the nodes belong to different clusters)",
    HandshakeStatus.WRONG_NODE: "that address belongs to another node id (check --cluster)",
    HandshakeStatus.REJECTED_SENDER: "our node id is not accepted there (it is its own id)",
    HandshakeStatus.REMOVED_SENDER: "this node was removed from the cluster",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    version: int
    cluster_id: int
    sender_id: int
    receiver_id: int


def encode_hello(cluster_id: int, sender_id: int, receiver_id: int) -> bytes:
    return HELLO.pack(MAGIC, PROTOCOL_VERSION, cluster_id, sender_id, receiver_id)


def decode_hello(data: bytes) -> Hello:
    """Decode a hello (`HELLO.size` bytes). The version is returned, not checked: the
    listener answers a wrong version with `BAD_VERSION` rather than a bare close."""
    if len(data) != HELLO.size:
        raise FrameError(f"a hello is {HELLO.size} bytes, not {len(data)}")
    magic, version, cluster_id, sender_id, receiver_id = HELLO.unpack(data)
    if magic != MAGIC:
        raise FrameError(f"not a raftkv peer connection (first bytes {magic!r})")
    return Hello(version, cluster_id, sender_id, receiver_id)


def encode_ack(status: HandshakeStatus) -> bytes:
    return ACK.pack(MAGIC, status)


def decode_ack(data: bytes) -> HandshakeStatus:
    if len(data) != ACK.size:
        raise FrameError(f"a handshake answer is {ACK.size} bytes, not {len(data)}")
    magic, status = ACK.unpack(data)
    if magic != MAGIC:
        raise FrameError(f"the peer did not answer like a raftkv node (first bytes {magic!r})")
    try:
        return HandshakeStatus(status)
    except ValueError:
        raise FrameError(f"unknown handshake status {status}") from None


def frame(kind: FrameKind, payload: bytes | memoryview) -> bytes:
    """One frame, header and payload, as a single buffer (one write per frame)."""
    return b"".join((FRAME_HEADER.pack(len(payload), kind), payload))


class FrameReader:
    """Splits a byte stream into frames.

    `feed` returns the frames completed by the new bytes as (kind, payload) pairs. Frames
    wholly inside one read are returned as views into that read, without copying; the
    reads of a frame that spans several are kept as they are and joined once, when the
    frame is complete.
    """

    __slots__ = ("_max_frame_bytes", "_needed_bytes", "_pending", "_pending_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        # invariant: _pending_bytes < _needed_bytes, the size of the first incomplete
        # unit in _pending (a frame header, or a header plus its payload).
        self._needed_bytes = FRAME_HEADER.size

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        if self._pending_bytes:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes < self._needed_bytes:
                return []
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
        frames: list[tuple[int, memoryview]] = []
        view = memoryview(data)
        size = len(data)
        position = 0
        header_size = FRAME_HEADER.size
        needed = header_size
        while size - position >= header_size:
            length, kind = FRAME_HEADER.unpack_from(data, position)
            if length > self._max_frame_bytes:
                raise FrameError(
                    f"frame of {length} bytes exceeds the limit of {self._max_frame_bytes}"
                )
            if kind not in _FRAME_KINDS:
                raise FrameError(f"unknown frame kind {kind}")
            end = position + header_size + length
            if end > size:
                needed = header_size + length
                break
            frames.append((kind, view[position + header_size : end]))
            position = end
        if position < size:
            self._pending.append(view[position:])
            self._pending_bytes = size - position
            self._needed_bytes = needed
        return frames


class SnapshotAssembler:
    """Rebuilds a snapshot message from its head frame and its data chunk frames.

    States: idle (no head seen) and receiving (a head announced N bytes, fewer arrived).
    A head moves idle to receiving, or straight back to idle for empty data; the chunk
    that completes the data returns the message and moves back to idle. A chunk while
    idle, a head while receiving, data beyond the announced length, or an announced
    length over `max_snapshot_bytes` raise `FrameError`.
    """

    __slots__ = ("_chunks", "_head", "_max_snapshot_bytes", "_remaining_bytes")

    def __init__(self, max_snapshot_bytes: int) -> None:
        self._max_snapshot_bytes = max_snapshot_bytes
        self._head: Message | None = None
        self._remaining_bytes = 0
        self._chunks: list[memoryview] = []

    @property
    def receiving(self) -> bool:
        return self._head is not None

    def on_head(self, payload: memoryview) -> Message | None:
        if self._head is not None:
            raise FrameError("a snapshot head arrived before the previous snapshot completed")
        message, length = decode_snapshot_head(payload)
        if length > self._max_snapshot_bytes:
            raise FrameError(
                f"snapshot of {length} bytes exceeds the receiver's limit of "
                f"{self._max_snapshot_bytes} bytes (raise max_snapshot_bytes)"
            )
        if length == 0:
            return message
        self._head = message
        self._remaining_bytes = length
        return None

    def on_chunk(self, payload: memoryview) -> Message | None:
        head = self._head
        if head is None:
            raise FrameError("snapshot data arrived without a snapshot head")
        if len(payload) > self._remaining_bytes:
            raise FrameError("snapshot data is longer than its head announced")
        self._chunks.append(payload)
        self._remaining_bytes -= len(payload)
        if self._remaining_bytes:
            return None
        data = b"".join(self._chunks)
        self._chunks = []
        self._head = None
        assert head.snapshot is not None  # decode_snapshot_head guarantees a snapshot
        return dataclasses.replace(head, snapshot=dataclasses.replace(head.snapshot, data=data))
