"""Framing, handshake encoding and snapshot reassembly, without sockets."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import raftkv.transport
from raftkv.raft import ConfState, Message, MessageType, Snapshot, SnapshotMetadata
from raftkv.transport import FrameError, TransportConfig
from raftkv.transport._codec import encode_snapshot_head
from raftkv.transport._wire import (
    ACK,
    HELLO,
    PROTOCOL_VERSION,
    FrameKind,
    FrameReader,
    HandshakeStatus,
    Hello,
    SnapshotAssembler,
    decode_ack,
    decode_hello,
    encode_ack,
    encode_hello,
    frame,
)


def test_public_names_are_pinned() -> None:
    assert set(raftkv.transport.__all__) == {
        "Address",
        "FrameError",
        "ListenError",
        "OnMessages",
        "OnSnapshotStatus",
        "OnUnreachable",
        "Transport",
        "TransportConfig",
        "TransportError",
        "TransportStats",
        "decode_batch",
        "encode_batch",
    }


# -- frames --------------------------------------------------------------------------

FRAMES = [
    (FrameKind.BATCH, b"first"),
    (FrameKind.SNAPSHOT_HEAD, b""),
    (FrameKind.SNAPSHOT_CHUNK, bytes(range(256)) * 3),
    (FrameKind.BATCH, b"last"),
]
STREAM = b"".join(frame(kind, payload) for kind, payload in FRAMES)


def _read_all(reader: FrameReader, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    return [(kind, bytes(payload)) for piece in pieces for kind, payload in reader.feed(piece)]


def test_frames_in_one_read_come_out_in_order() -> None:
    assert _read_all(FrameReader(1024), [STREAM]) == FRAMES


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
@settings(max_examples=100, deadline=None)
def test_frames_split_across_reads_anywhere_come_out_whole(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[start:end] for start, end in itertools.pairwise(bounds)]
    assert _read_all(FrameReader(1024), pieces) == FRAMES


def test_a_frame_fed_one_byte_at_a_time_comes_out_whole() -> None:
    pieces = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert _read_all(FrameReader(1024), pieces) == FRAMES


def test_a_frame_over_the_limit_is_refused_from_its_header() -> None:
    reader = FrameReader(max_frame_bytes=100)
    # Only the header has arrived: the reader must refuse before buffering the payload.
    with pytest.raises(FrameError, match="exceeds the limit"):
        reader.feed(frame(FrameKind.BATCH, bytes(101))[:5])


def test_an_unknown_frame_kind_is_refused() -> None:
    with pytest.raises(FrameError, match="unknown frame kind"):
        FrameReader(100).feed(b"\x00\x00\x00\x01\x09x")


# -- handshake -----------------------------------------------------------------------


def test_hello_round_trips() -> None:
    data = encode_hello(cluster_id=2**64 - 1, sender_id=3, receiver_id=1)
    assert len(data) == HELLO.size
    assert decode_hello(data) == Hello(PROTOCOL_VERSION, 2**64 - 1, 3, 1)


def test_hello_with_wrong_magic_is_refused() -> None:
    with pytest.raises(FrameError, match="not a raftkv peer"):
        decode_hello(b"GET / HTTP/1.1\r\nHost: xy\r\n\r\n\r\n")


def test_hello_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(FrameError, match="30 bytes"):
        decode_hello(encode_hello(1, 2, 3)[:-1])


@pytest.mark.parametrize("status", list(HandshakeStatus), ids=lambda status: status.name)
def test_ack_round_trips_and_explains_itself(status: HandshakeStatus) -> None:
    data = encode_ack(status)
    assert len(data) == ACK.size
    assert decode_ack(data) is status
    assert status.describe()


@pytest.mark.parametrize(
    "data", [b"HTTP/", b"RKVP\x63", b"RKVP"], ids=["wrong magic", "unknown status", "short"]
)
def test_malformed_ack_is_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_ack(data)


# -- snapshot reassembly -------------------------------------------------------------

SNAP = Message(
    MessageType.SNAP,
    to=2,
    frm=1,
    term=3,
    snapshot=Snapshot(SnapshotMetadata(40, 3, ConfState((1, 2, 3))), data=bytes(range(200)) * 50),
)
HEAD = memoryview(encode_snapshot_head(SNAP))


def _chunks(data: bytes, size: int) -> list[memoryview]:
    return [memoryview(data)[i : i + size] for i in range(0, len(data), size)]


def test_snapshot_is_rebuilt_from_head_and_chunks() -> None:
    assembler = SnapshotAssembler(max_snapshot_bytes=1 << 20)
    assert SNAP.snapshot is not None
    assert assembler.on_head(HEAD) is None
    chunks = _chunks(SNAP.snapshot.data, 3000)
    assert [assembler.on_chunk(chunk) for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert assembler.receiving
    assert assembler.on_chunk(chunks[-1]) == SNAP
    assert not assembler.receiving


def test_a_snapshot_with_empty_data_completes_at_its_head() -> None:
    empty = dataclasses.replace(SNAP, snapshot=Snapshot(SnapshotMetadata(5, 1), b""))
    assembler = SnapshotAssembler(max_snapshot_bytes=10)
    assert assembler.on_head(memoryview(encode_snapshot_head(empty))) == empty


def test_a_snapshot_over_the_limit_is_refused_at_its_head() -> None:
    with pytest.raises(FrameError, match="exceeds the receiver's limit"):
        SnapshotAssembler(max_snapshot_bytes=9999).on_head(HEAD)


def test_a_chunk_without_a_head_is_refused() -> None:
    with pytest.raises(FrameError, match="without a snapshot head"):
        SnapshotAssembler(1 << 20).on_chunk(memoryview(b"data"))


def test_a_second_head_before_the_data_completes_is_refused() -> None:
    assembler = SnapshotAssembler(1 << 20)
    assembler.on_head(HEAD)
    with pytest.raises(FrameError, match="before the previous snapshot completed"):
        assembler.on_head(HEAD)


def test_data_beyond_the_announced_length_is_refused() -> None:
    assembler = SnapshotAssembler(1 << 20)
    assembler.on_head(HEAD)
    with pytest.raises(FrameError, match="longer than its head announced"):
        assembler.on_chunk(memoryview(bytes(10_001)))


# -- configuration -------------------------------------------------------------------


def test_default_config_is_valid() -> None:
    TransportConfig().validate()


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"max_frame_bytes": 10}, "max_frame_bytes"),
        ({"max_frame_bytes": 2**32}, "max_frame_bytes"),
        ({"snapshot_chunk_bytes": 32 << 20}, "snapshot_chunk_bytes"),
        ({"max_queued_messages": 0}, "max_queued_messages"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, "backoff_max_s"),
    ],
)
def test_unsafe_configs_are_rejected(changes: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        dataclasses.replace(TransportConfig(), **changes).validate()
