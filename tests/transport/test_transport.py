"""Transports on 127.0.0.1: delivery, coalescing, failures, hostile peers, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket

import pytest

from raftkv.raft import ConfState, Message, MessageType, Snapshot, SnapshotMetadata
from raftkv.transport import ListenError, Transport, TransportError
from raftkv.transport._codec import encode_batch
from raftkv.transport._wire import (
    ACK,
    HELLO,
    FrameKind,
    FrameReader,
    HandshakeStatus,
    SnapshotAssembler,
    decode_ack,
    encode_ack,
    encode_hello,
    frame,
)

from ..ports import free_port
from .harness import (
    CLUSTER_ID,
    FAST,
    Node,
    append,
    async_test,
    closed_by_peer,
    cluster,
    connected,
    heartbeat,
    raw_connection,
    running,
    wait_for,
)

# -- delivery ------------------------------------------------------------------------


@async_test
async def test_messages_flow_both_ways_in_order() -> None:
    async with cluster(2) as (a, b):
        sent = [append(1, 2, index) for index in range(0, 640, 64)]
        a.send(*sent)
        b.send(heartbeat(2, 1, commit=5))
        await wait_for(lambda: len(b.received) == 10 and len(a.received) == 1, "delivery")
        assert b.received == sent
        assert a.received == [heartbeat(2, 1, commit=5)]
        assert a.unreachable == b.unreachable == []


@async_test
async def test_three_nodes_reach_each_other() -> None:
    async with cluster(3) as nodes:
        for node in nodes:
            node.send(*(heartbeat(node.id, other.id) for other in nodes if other is not node))
        await wait_for(lambda: all(len(node.received) == 2 for node in nodes), "all pairs")
        for node in nodes:
            assert sorted(message.frm for message in node.received) == [
                other.id for other in nodes if other is not node
            ]


@async_test
async def test_sends_in_one_loop_turn_coalesce_into_one_frame() -> None:
    async with cluster(2) as (a, b):
        await connected(a, b)
        await asyncio.sleep(0.05)  # let heartbeats still in flight from connected() land
        frames_before = a.transport.stats().frames_sent
        batches_before = len(b.batches)
        for commit in range(1000):
            a.send(heartbeat(1, 2, commit))
        await wait_for(lambda: len(b.batches) > batches_before, "the coalesced batch")
        assert a.transport.stats().frames_sent == frames_before + 1
        assert [message.commit for message in b.batches[-1]] == list(range(1000))


@async_test
async def test_flush_writes_queued_messages_before_the_loop_turn_ends() -> None:
    async with cluster(2) as (a, b):
        await connected(a, b)
        await asyncio.sleep(0.05)
        frames_before = a.transport.stats().frames_sent
        a.send(heartbeat(1, 2, 7))
        a.transport.flush()
        # Written already, while this coroutine still holds the loop.
        assert a.transport.stats().frames_sent == frames_before + 1
        a.send(heartbeat(1, 2, 8))  # queued after a flush: the next frame
        await wait_for(lambda: [m.commit for m in b.received][-2:] == [7, 8], "both")
        assert a.transport.stats().frames_sent == frames_before + 2


@async_test
async def test_messages_queued_while_dialing_go_out_once_connected() -> None:
    b = Node(2)
    async with running(b):
        a = Node(1, {2: b.address})
        a.send(*(heartbeat(1, 2, commit) for commit in range(5)))  # before start
        async with running(a):
            await wait_for(lambda: len(b.received) == 5, "the queued messages")
        assert [message.commit for message in b.received] == list(range(5))


@async_test
async def test_messages_to_unknown_peers_are_dropped() -> None:
    async with cluster(2) as (a, _b):
        a.send(heartbeat(1, 9))
        assert a.transport.stats().messages_dropped == 1


@async_test
async def test_a_failing_on_messages_callback_is_logged_and_delivery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[Message] = []

    def flaky(batch: list[Message]) -> None:
        if not delivered:
            delivered.append(batch[0])
            raise RuntimeError("host bug")
        delivered.extend(batch)

    a, b = Node(1), Node(2, on_messages=flaky)
    async with running(a, b):
        a.transport.add_peer(2, *b.address)
        a.send(heartbeat(1, 2, 1))
        await wait_for(lambda: delivered, "the first batch")
        a.send(heartbeat(1, 2, 2))
        await wait_for(lambda: len(delivered) == 2, "the second batch")
    assert "on_messages callback failed" in caplog.text


# -- failures and recovery -----------------------------------------------------------


@async_test
async def test_a_down_peer_is_reported_once_its_messages_dropped_and_it_is_redialed() -> None:
    port = free_port()
    a = Node(1, {2: ("127.0.0.1", port)})
    async with running(a):
        await wait_for(lambda: a.unreachable == [2], "the unreachable report")
        for _ in range(10):  # several redials happen meanwhile
            a.send(heartbeat(1, 2))
            await asyncio.sleep(0.02)
        stats = a.transport.stats()
        assert a.unreachable == [2], "one report per failure episode"
        assert stats.messages_dropped >= 9
        assert stats.connect_failures >= 2

        assert not a.transport.connected(2)
        b = Node(2, {1: a.address}, port=port)
        async with running(b):
            await connected(a, b)
            await connected(b, a)
            assert a.transport.connected(2)
        # b stopped: a new failure episode begins.
        await wait_for(lambda: a.unreachable == [2, 2], "the second report")
        assert not a.transport.connected(2)
        assert not a.transport.connected(7)  # Not a peer at all.


@async_test
async def test_the_queue_bound_drops_everything_and_reports_unreachable() -> None:
    # A listener that never answers the handshake keeps the peer in DIALING.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = dataclasses.replace(FAST, max_queued_messages=10, connect_timeout_s=5.0)
        a = Node(1, {2: silent.getsockname()}, config=config)
        async with running(a):
            await asyncio.sleep(0.05)
            a.send(*(heartbeat(1, 2) for _ in range(10)))
            assert a.transport.stats().messages_dropped == 0
            a.send(heartbeat(1, 2))
            assert a.transport.stats().messages_dropped == 11
            await wait_for(lambda: a.unreachable == [2], "the unreachable report")


@async_test
async def test_a_peer_of_another_cluster_is_refused_while_good_peers_keep_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="raftkv.transport")
    async with cluster(2) as (a, b):
        stranger = Node(3, {1: a.address}, cluster_id=CLUSTER_ID + 1)
        async with running(stranger):
            stranger.send(heartbeat(3, 1))
            await wait_for(lambda: stranger.unreachable == [1], "the stranger's report")
            await connected(b, a)
            assert all(message.frm == 2 for message in a.received)
            assert a.transport.stats().protocol_errors >= 1
    assert "cluster id mismatch" in caplog.text


@async_test
async def test_a_peer_that_dials_the_wrong_node_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with cluster(2) as (_a, b):
        confused = Node(3, {1: b.address})  # node 1's id, node 2's address
        async with running(confused):
            await wait_for(lambda: confused.unreachable == [1], "the refusal")
        assert b.received == []
    assert "belongs to another node id" in caplog.text


@async_test
async def test_a_removed_peer_is_refused_until_added_again() -> None:
    async with cluster(2) as (a, b):
        await connected(b, a)
        a.transport.remove_peer(2)
        a.send(heartbeat(1, 2))
        assert a.transport.stats().messages_dropped == 1
        await wait_for(lambda: b.unreachable == [1], "node 2 noticing")
        received = len(a.received)
        b.send(heartbeat(2, 1))
        await asyncio.sleep(0.1)
        assert len(a.received) == received
        assert a.unreachable == [], "no reports about a removed peer"

        a.transport.add_peer(2, *b.address)
        await connected(b, a)
        await connected(a, b)


# -- hostile peers -------------------------------------------------------------------

HELLO_FROM_9 = encode_hello(CLUSTER_ID, 9, 1)

GARBAGE = {
    "random bytes instead of a hello": b"\x00garbage" * 8,
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "a frame that is not msgpack": HELLO_FROM_9 + frame(FrameKind.BATCH, b"\xc1\xc1"),
    "a frame with the wrong shape": HELLO_FROM_9 + frame(FrameKind.BATCH, b"\x91\x93\x01\x02\x03"),
    "an unknown frame kind": HELLO_FROM_9 + b"\x00\x00\x00\x01\x2ax",
    "an oversized frame header": HELLO_FROM_9 + b"\xff\xff\xff\xff\x01",
    "a message from a node other than the dialer": HELLO_FROM_9
    + frame(FrameKind.BATCH, encode_batch([heartbeat(3, 1)])),
    "a message for another node": HELLO_FROM_9
    + frame(FrameKind.BATCH, encode_batch([heartbeat(9, 2)])),
    "snapshot data without a head": HELLO_FROM_9 + frame(FrameKind.SNAPSHOT_CHUNK, b"data"),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=list(GARBAGE))
@async_test
async def test_garbage_closes_only_its_connection(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(2) as (a, b):
        await connected(b, a)
        async with raw_connection(a.address) as (reader, writer):
            writer.write(garbage)
            answer = await closed_by_peer(reader)
        assert answer in (b"", encode_ack_ok())
        assert a.transport.stats().protocol_errors == 1
        await connected(b, a)
        assert all(message.frm == 2 for message in a.received)
    assert "closing the connection from" in caplog.text


def encode_ack_ok() -> bytes:
    return encode_ack(HandshakeStatus.OK)


@async_test
async def test_a_silent_connection_is_closed_after_the_handshake_timeout() -> None:
    config = dataclasses.replace(FAST, handshake_timeout_s=0.1)
    a = Node(1, config=config)
    async with running(a), raw_connection(a.address) as (reader, _writer):
        assert await closed_by_peer(reader, timeout_s=2.0) == b""
    assert a.transport.stats().protocol_errors == 1


@async_test
async def test_a_redialing_peer_replaces_its_old_connection() -> None:
    a = Node(1)
    async with running(a), raw_connection(a.address) as (old_reader, old_writer):
        old_writer.write(HELLO_FROM_9)
        assert decode_ack(await old_reader.readexactly(ACK.size)) is HandshakeStatus.OK
        async with raw_connection(a.address) as (new_reader, new_writer):
            new_writer.write(HELLO_FROM_9)
            assert decode_ack(await new_reader.readexactly(ACK.size)) is HandshakeStatus.OK
            assert await closed_by_peer(old_reader) == b""
            new_writer.write(frame(FrameKind.BATCH, encode_batch([heartbeat(9, 1)])))
            await wait_for(lambda: a.received == [heartbeat(9, 1)], "the new connection")


@async_test
async def test_inbound_connections_are_bounded() -> None:
    a = Node(1, config=dataclasses.replace(FAST, max_inbound_connections=2))
    async with (
        running(a),
        raw_connection(a.address),
        raw_connection(a.address),
        raw_connection(a.address) as (third, _writer),
    ):
        assert await closed_by_peer(third) == b""


# -- snapshots -----------------------------------------------------------------------


def snapshot_message(frm: int, to: int, size: int) -> Message:
    data = bytes(range(256)) * (size // 256)
    metadata = SnapshotMetadata(index=500, term=3, conf_state=ConfState(voters=(1, 2, 3)))
    return Message(MessageType.SNAP, to, frm, term=3, snapshot=Snapshot(metadata, data))


@async_test
async def test_a_large_snapshot_is_chunked_without_holding_back_other_messages() -> None:
    config = dataclasses.replace(FAST, snapshot_chunk_bytes=256 * 1024)
    async with cluster(3, config=config) as (a, b, c):
        await connected(a, b)
        frames_before = b.transport.stats().frames_received
        snapshot = snapshot_message(1, 2, 8 * 1024 * 1024)
        a.send(snapshot, heartbeat(1, 2, commit=1), heartbeat(1, 3, commit=1))
        await wait_for(lambda: c.received, "the heartbeat to node 3")
        assert b.transport.stats().snapshots_received == 0, "node 3 did not wait"
        await wait_for(lambda: snapshot in b.received, "the snapshot", timeout_s=8.0)
        assert b.received.index(heartbeat(1, 2, commit=1)) < b.received.index(snapshot)
        assert b.transport.stats().frames_received - frames_before >= 32
        await wait_for(lambda: a.snapshot_status == [(2, True)], "the snapshot status")


@async_test
async def test_a_snapshot_for_an_unreachable_peer_fails() -> None:
    a = Node(1, {2: ("127.0.0.1", free_port())})
    async with running(a):
        await wait_for(lambda: a.unreachable == [2], "the unreachable report")
        a.send(snapshot_message(1, 2, 4096))
        await wait_for(lambda: a.snapshot_status == [(2, False)], "the snapshot failure")


@async_test
async def test_a_snapshot_over_the_receivers_limit_closes_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = Node(1)
    b = Node(2, config=dataclasses.replace(FAST, max_snapshot_bytes=1024))
    async with running(a, b):
        a.transport.add_peer(2, *b.address)
        a.send(snapshot_message(1, 2, 4096))
        await wait_for(lambda: b.transport.stats().protocol_errors == 1, "the refusal")
        assert b.received == []
        await connected(a, b)  # a redials and carries on
    assert "exceeds the receiver's limit" in caplog.text


# -- lifecycle -----------------------------------------------------------------------


@async_test
async def test_a_port_in_use_is_a_clear_error() -> None:
    a = Node(1)
    async with running(a):
        b = Node(2, port=a.address[1])
        with pytest.raises(ListenError, match="already in use"):
            await b.transport.start()
        await b.transport.stop()


@async_test
async def test_start_twice_is_refused() -> None:
    a = Node(1)
    async with running(a):
        with pytest.raises(TransportError, match="only once"):
            await a.transport.start()


def test_bad_ids_are_refused() -> None:
    def make(node_id: int, peers: dict[int, tuple[str, int]]) -> Transport:
        return Transport(node_id, 1, ("127.0.0.1", 0), peers, print, print, print)

    with pytest.raises(ValueError, match="node_id"):
        make(0, {})
    with pytest.raises(ValueError, match="own id"):
        make(1, {1: ("127.0.0.1", 1)})
    with pytest.raises(ValueError, match="positive"):
        make(1, {-2: ("127.0.0.1", 1)})


@async_test
async def test_stop_mid_dial_and_mid_handshake_leaves_nothing_behind() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        a = Node(1, {2: ("127.0.0.1", free_port()), 3: silent.getsockname()})
        await a.transport.start()
        a.send(heartbeat(1, 2), heartbeat(1, 3), snapshot_message(1, 3, 1024))
        await asyncio.sleep(0.05)
        await a.transport.stop()
        await a.transport.stop()  # idempotent
        a.send(heartbeat(1, 3))  # a no-op once stopped
        await asyncio.sleep(0.05)
        assert a.snapshot_status == [], "no callbacks after stop"
    # async_test checks that no task is left and no socket is unclosed.


@async_test
async def test_stop_with_traffic_in_flight_leaves_nothing_behind() -> None:
    async with cluster(3) as nodes:
        for node in nodes:
            await connected(node, nodes[node.id % 3])
        for node in nodes:
            node.send(*(append(node.id, nodes[node.id % 3].id, i) for i in range(0, 6400, 64)))
    # cluster() stopped every node while frames were being written and read.


@async_test
async def test_connections_disable_nagle_and_bound_dead_peer_detection() -> None:
    config = dataclasses.replace(FAST, dead_peer_timeout_s=6.0)
    a, b = Node(1, config=config), Node(2, config=config)
    async with running(a, b):
        a.transport.add_peer(2, *b.address)
        await connected(a, b)
        link = a.transport._peers[2].link
        assert link is not None and link.transport is not None
        sock = link.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 6000
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3


class SlowPeer:
    """A hand-written peer 2: accepts node 1's hello, then reads nothing until told to,
    so that node 1's writes back up into its user-space buffer and pause."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.snapshots: list[Message] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: list[asyncio.Task[object]] = []

    async def __aenter__(self) -> SlowPeer:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        self.drop()
        self.reading.set()  # handlers still waiting to read now see the connection gone
        await asyncio.gather(*self.handlers)
        await self.server.wait_closed()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    def drop(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.append(handler)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readexactly(HELLO.size)
            writer.write(encode_ack(HandshakeStatus.OK))
            await self.reading.wait()
            frames = FrameReader(FAST.max_frame_bytes)
            assembler = SnapshotAssembler(FAST.max_snapshot_bytes)
            while data := await reader.read(1 << 20):
                for kind, payload in frames.feed(data):
                    if kind == FrameKind.SNAPSHOT_HEAD:
                        assembler.on_head(payload)
                    elif kind == FrameKind.SNAPSHOT_CHUNK and (done := assembler.on_chunk(payload)):
                        self.snapshots.append(done)


BACKPRESSURE = dataclasses.replace(
    FAST, write_buffer_high_bytes=256 * 1024, snapshot_chunk_bytes=1024 * 1024
)


@async_test
async def test_a_snapshot_waits_out_a_slow_reader_and_completes() -> None:
    async with SlowPeer() as peer:
        a = Node(1, {2: peer.address}, config=BACKPRESSURE)
        async with running(a):
            snapshot = snapshot_message(1, 2, 24 * 1024 * 1024)
            a.send(snapshot)
            await asyncio.sleep(0.2)  # the kernel buffers fill, then ours: writing pauses
            link = a.transport._peers[2].link
            assert link is not None and link.paused
            assert a.snapshot_status == []
            peer.reading.set()
            await wait_for(lambda: a.snapshot_status == [(2, True)], "the snapshot status")
            await wait_for(lambda: peer.snapshots == [snapshot], "the snapshot")


@async_test
async def test_a_connection_lost_mid_snapshot_fails_it() -> None:
    async with SlowPeer() as peer:
        a = Node(1, {2: peer.address}, config=BACKPRESSURE)
        async with running(a):
            a.send(snapshot_message(1, 2, 24 * 1024 * 1024))
            await asyncio.sleep(0.2)
            peer.drop()
            await wait_for(lambda: a.snapshot_status == [(2, False)], "the snapshot failure")
            await wait_for(lambda: a.unreachable == [2], "the unreachable report")
