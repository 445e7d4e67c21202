"""Peer transport: persistent TCP connections between raft nodes, on asyncio.

Theory of operation
-------------------
Each node dials every peer and sends only on the connection it dialed; connections it
accepts are receive-only. So every ordered pair of nodes has exactly one connection,
no tie-breaking between simultaneous dials is needed, and a connection's two
directions never contend.

Outbound, one `_Peer` per peer, driven by its dial task:

    DIALING   --handshake accepted------------>  CONNECTED
    DIALING   --refused, timed out, rejected-->  BACKOFF
    CONNECTED --connection lost--------------->  BACKOFF
    BACKOFF   --jittered, doubling delay------>  DIALING

Messages are queued (bounded) while DIALING or CONNECTED and dropped at once in
BACKOFF. Entering BACKOFF drops the queue, fails queued snapshots and tells the host
the peer is unreachable, once per failure episode (a successful handshake, or a
successful write, ends the episode). While CONNECTED, `send` only appends to the queue
and schedules one flush for the next loop turn; the flush encodes everything queued
since the previous write into one frame and writes it. When the connection's
user-space buffer passes its high-water mark, flushing waits for `resume_writing`
while messages keep coalescing in the queue. Snapshot messages wait in a queue of
their own and are streamed one chunk per loop turn, between batches, so a large
snapshot delays neither this peer's heartbeats nor any other peer.

Inbound, one `_InboundLink` per accepted connection: the first bytes are the dialer's
hello; the listener checks it (version, cluster id, that it is the node the dialer
wanted) and answers. From then on it only reads frames and hands each decoded batch to
the host. A malformed handshake or frame is logged at warning level and closes that
connection and nothing else. A peer that reconnects replaces its older connection.

Callbacks run on the event loop and never inside a call to a Transport method:
`on_messages` straight from the socket's read callback, `on_unreachable` and
`on_snapshot_status` through `call_soon`. After `stop()` starts, no callback runs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import errno
import logging
import random
import socket
import typing
from collections.abc import Callable, Iterable, Mapping

from raftkv.raft import Message

from ._codec import decode_batch, encode_batch, encode_snapshot_head
from ._config import TransportConfig, TransportStats
from ._errors import FrameError, ListenError, TransportError
from ._wire import (
    ACK,
    FRAME_HEADER,
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

__all__ = ["Address", "OnMessages", "OnSnapshotStatus", "OnUnreachable", "Transport"]

logger = logging.getLogger("raftkv.transport")

Address = tuple[str, int]
OnMessages = Callable[[list[Message]], None]
OnUnreachable = Callable[[int], None]
OnSnapshotStatus = Callable[[int, bool], None]

_UINT64_LIMIT = 2**64


class Transport:
    """Sends raft messages to peers and delivers theirs, over TCP.

    `node_id` is this node's id, `cluster_id` must be the same on every node of the
    cluster (a connection from another cluster is refused), `listen` is the (host,
    port) peers dial (port 0 picks a free port, see `address`), and `peers` maps each
    peer's id to the (host, port) it listens on.

    Callbacks (see the module docstring for when they run):

    - `on_messages(messages)`: one decoded inbound batch, in arrival order.
    - `on_unreachable(peer_id)`: messages to that peer were dropped, or it cannot be
      reached; pass it to the core's `report_unreachable`.
    - `on_snapshot_status(peer_id, ok)`: a snapshot message was fully written (True) or
      failed (False); pass it to the core's `report_snapshot`.
    - `on_removed(peer_id)` (optional): that peer refused our handshake because it has
      removed this node from the cluster (a node removed while it was down learns it
      this way, since no peer sends it the log entry of its removal).

    Errors: `start()` raises `ListenError` when it cannot listen; bad ids raise
    ValueError; calling `start()` twice raises `TransportError`. Nothing a peer sends
    raises: a malformed handshake or frame only closes that connection (logged).
    `send()` never raises for an unknown, removed or unreachable peer: it drops.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: int,
        listen: Address,
        peers: Mapping[int, Address],
        on_messages: OnMessages,
        on_unreachable: OnUnreachable,
        on_snapshot_status: OnSnapshotStatus,
        *,
        config: TransportConfig | None = None,
        rng: random.Random | None = None,
        on_removed: Callable[[int], None] | None = None,
    ) -> None:
        if not 1 <= node_id < _UINT64_LIMIT:
            raise ValueError(f"node_id must be a positive 64-bit integer, got {node_id}")
        if not 0 <= cluster_id < _UINT64_LIMIT:
            raise ValueError(f"cluster_id must be an unsigned 64-bit integer, got {cluster_id}")
        self._config = config if config is not None else TransportConfig()
        self._config.validate()
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._listen = listen
        self._on_messages = on_messages
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_removed = on_removed
        self._rng = rng if rng is not None else random.Random()
        self._stats = TransportStats()
        self._peers: dict[int, _Peer] = {}
        #: Peers removed with `remove_peer`: their hellos are refused until re-added.
        self._removed: set[int] = set()
        #: Every open connection, both directions, so that `stop` can close and await it.
        self._links: set[_OutboundLink | _InboundLink] = set()
        self._inbound: set[_InboundLink] = set()
        self._inbound_by_peer: dict[int, _InboundLink] = {}
        #: Dial tasks of removed peers, until they finish cancelling.
        self._retired_tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        for peer_id, address in peers.items():
            self._check_peer_id(peer_id)
            self._peers[peer_id] = _Peer(self, peer_id, address)

    # -- public API ---------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    @property
    def config(self) -> TransportConfig:
        return self._config

    @property
    def address(self) -> Address:
        """The (host, port) the listener is bound to; after `start()` only."""
        if self._server is None or not self._server.sockets:
            raise TransportError("the transport is not listening; call start() first")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def peers(self) -> dict[int, Address]:
        return {peer_id: peer.address for peer_id, peer in self._peers.items()}

    def connected(self, peer_id: int) -> bool:
        """Whether the connection to `peer_id` is up now."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.state is _State.CONNECTED

    def stats(self) -> TransportStats:
        return dataclasses.replace(self._stats)

    async def start(self) -> None:
        """Listen for peers and start dialing them. Raises `ListenError` when the
        listen address cannot be bound (most often: the port is in use)."""
        if self._loop is not None:
            raise TransportError("start() may be called only once per Transport")
        self._loop = asyncio.get_running_loop()
        host, port = self._listen
        try:
            self._server = await self._loop.create_server(
                lambda: _InboundLink(self), host, port, reuse_address=True
            )
        except OSError as exc:
            self._closed = True
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(
                    f"cannot listen for peers on {host}:{port}: the port is already in use "
                    "(is another raftkvd running?); pick a free port for this node"
                ) from exc
            raise ListenError(
                f"cannot listen for peers on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        for peer in self._peers.values():
            peer.start(self._loop)

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their peers (by `to`) and return at once. Everything queued
        for a peer during this loop turn goes out as one frame. Messages to an unknown
        or unreachable peer are dropped (see the module docstring)."""
        if self._closed:
            return
        peers = self._peers
        for message in messages:
            peer = peers.get(message.to)
            if peer is None:
                self._stats.messages_dropped += 1
                logger.debug("dropped a %s message to unknown peer %d", message.type, message.to)
                continue
            peer.push(message)

    def flush(self) -> None:
        """Write what `send` queued now, instead of later in this loop turn: for a
        caller about to hold the loop (applying entries, say) while its messages
        should already be on their way."""
        for peer in self._peers.values():
            if peer.flush_handle is not None:
                peer.flush()

    def add_peer(self, peer_id: int, host: str, port: int) -> None:
        """Start talking to a new peer, or move a known peer to a new address."""
        self._check_peer_id(peer_id)
        self._removed.discard(peer_id)
        existing = self._peers.get(peer_id)
        if existing is not None:
            if existing.address == (host, port):
                return
            self._retire_peer(existing)
        peer = _Peer(self, peer_id, (host, port))
        self._peers[peer_id] = peer
        if self._loop is not None and not self._closed:
            peer.start(self._loop)

    def remove_peer(self, peer_id: int) -> None:
        """Stop talking to a peer: drop what is queued for it (without callbacks), close
        both connections with it, and refuse its connections until it is added again."""
        self._removed.add(peer_id)
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            self._retire_peer(peer)
        inbound = self._inbound_by_peer.pop(peer_id, None)
        if inbound is not None:
            inbound.abort()

    async def stop(self) -> None:
        """Close the listener and every connection, and wait until all are closed and
        every task the transport started has finished. Queued messages are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
            # Let connections accepted just before the close reach connection_made,
            # which closes them, so that they are awaited below.
            await asyncio.sleep(0)
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        tasks += self._retired_tasks
        for task in tasks:
            task.cancel()
        for link in list(self._links):
            link.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._links:
            await asyncio.gather(*(link.closed for link in list(self._links)))
        if self._server is not None:
            await self._server.wait_closed()
        # One more loop step: asyncio closes the socket of an abandoned dial in a
        # connection_lost callback that is already scheduled.
        await asyncio.sleep(0)

    # -- internals shared with the peers and links ----------------------------------------

    def _check_peer_id(self, peer_id: int) -> None:
        if not 1 <= peer_id < _UINT64_LIMIT:
            raise ValueError(f"peer ids must be positive 64-bit integers, got {peer_id}")
        if peer_id == self._node_id:
            raise ValueError(f"peer id {peer_id} is this node's own id")

    def _retire_peer(self, peer: _Peer) -> None:
        task = peer.retire()
        if task is not None:
            self._retired_tasks.add(task)
            task.add_done_callback(self._retired_tasks.discard)

    def _check_hello(self, hello: Hello) -> HandshakeStatus:
        if hello.version != PROTOCOL_VERSION:
            return HandshakeStatus.BAD_VERSION
        if hello.cluster_id != self._cluster_id:
            return HandshakeStatus.WRONG_CLUSTER
        if hello.receiver_id != self._node_id:
            return HandshakeStatus.WRONG_NODE
        sender = hello.sender_id
        if sender in self._removed:
            return HandshakeStatus.REMOVED_SENDER
        if sender == 0 or sender == self._node_id:
            return HandshakeStatus.REJECTED_SENDER
        return HandshakeStatus.OK

    def _deliver(self, messages: list[Message]) -> None:
        if self._closed:
            return
        try:
            self._on_messages(messages)
        except Exception:
            logger.exception("the on_messages callback failed on a batch of %d", len(messages))

    def _report_unreachable(self, peer_id: int) -> None:
        if self._loop is None:
            return  # not started: the host has nothing to be told yet
        self._loop.call_soon(self._run_callback, self._on_unreachable, peer_id)

    def _report_removed(self, peer_id: int) -> None:
        if self._on_removed is not None and self._loop is not None and not self._closed:
            self._loop.call_soon(self._run_callback, self._on_removed, peer_id)

    def _report_snapshot(self, peer_id: int, ok: bool) -> None:
        if ok:
            self._stats.snapshots_sent += 1
        else:
            self._stats.snapshots_failed += 1
        if self._loop is None:
            return  # not started: the host has nothing to be told yet
        self._loop.call_soon(self._run_callback, self._on_snapshot_status, peer_id, ok)

    def _run_callback(self, callback: Callable[..., None], *args: object) -> None:
        if self._closed:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("transport callback %r%r failed", callback, args)


class _State(enum.Enum):
    DIALING = "dialing"
    CONNECTED = "connected"
    BACKOFF = "backoff"


@dataclasses.dataclass(slots=True)
class _OutgoingSnapshot:
    message: Message
    data: memoryview
    offset_bytes: int = 0


class _Peer:
    """The sending side towards one peer: its queues and its dial task."""

    __slots__ = (
        "address",
        "failing",
        "flush_handle",
        "id",
        "link",
        "loop",
        "outgoing",
        "owner",
        "queue",
        "retired",
        "snapshots",
        "state",
        "task",
        "unconfirmed_snapshot",
        "unreachable_reported",
    )

    def __init__(self, owner: Transport, peer_id: int, address: Address) -> None:
        self.owner = owner
        self.id = peer_id
        self.address = address
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.state = _State.DIALING
        # invariant: link is not None exactly when state is CONNECTED.
        self.link: _OutboundLink | None = None
        # invariant: len(queue) <= config.max_queued_messages after every push.
        self.queue: list[Message] = []
        self.snapshots: collections.deque[Message] = collections.deque()
        self.outgoing: _OutgoingSnapshot | None = None
        #: The last chunk of a snapshot was written while the link was paused; it
        #: counts as written once the link drains below its high-water mark.
        self.unconfirmed_snapshot: Message | None = None
        #: The pending `flush` call, while one is scheduled.
        self.flush_handle: asyncio.Handle | None = None
        self.unreachable_reported = False
        #: In a failure episode (logged once at warning, ended by a handshake).
        self.failing = False
        self.retired = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task = loop.create_task(self._dial_forever(), name=f"raftkv-dial-peer-{self.id}")

    def retire(self) -> asyncio.Task[None] | None:
        """Forget this peer: cancel dialing, close its connection, drop its queues."""
        self.retired = True
        self.owner._stats.messages_dropped += len(self.queue)
        self.queue.clear()
        self.snapshots.clear()
        self.outgoing = None
        self.unconfirmed_snapshot = None
        for link in list(self.owner._links):
            if isinstance(link, _OutboundLink) and link.peer is self:
                link.abort()
        self.link = None
        self.state = _State.BACKOFF
        if self.task is not None:
            self.task.cancel()
        return self.task

    # -- sending --------------------------------------------------------------------------

    def push(self, message: Message) -> None:
        if self.state is _State.BACKOFF:
            self.owner._stats.messages_dropped += 1
            if message.snapshot is not None:
                self.owner._report_snapshot(self.id, False)
            self.report_unreachable()
            return
        if message.snapshot is not None:
            if len(self.snapshots) >= self.owner._config.max_queued_snapshots:
                logger.warning("refused a snapshot for peer %d: too many queued", self.id)
                self.owner._report_snapshot(self.id, False)
                return
            self.snapshots.append(message)
        else:
            queue = self.queue
            queue.append(message)
            if len(queue) > self.owner._config.max_queued_messages:
                self.drop_queue("its send queue is full (it is not keeping up)")
                return
        if self.link is not None and self.flush_handle is None:
            self.schedule_flush()

    def schedule_flush(self) -> None:
        assert self.loop is not None
        self.flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        handle = self.flush_handle
        if handle is not None:
            # Called early (`Transport.flush`): the scheduled call would find nothing.
            handle.cancel()
            self.flush_handle = None
        link = self.link
        if link is None or link.paused or link.closing:
            return  # not connected, resume_writing will flush, or connection_lost is due
        if self.queue:
            batch = self.queue
            self.queue = []
            self.write_batch(link, batch)
            self.unreachable_reported = False
        if (self.outgoing is not None or self.snapshots) and not link.paused:
            self.write_snapshot_part(link)
            if (self.outgoing is not None or self.snapshots) and self.flush_handle is None:
                self.schedule_flush()

    def write_batch(self, link: _OutboundLink, batch: list[Message]) -> None:
        payload = encode_batch(batch)
        if len(payload) > self.owner._config.max_frame_bytes:
            self.write_split(link, batch)
            return
        link.write(frame(FrameKind.BATCH, payload))
        stats = self.owner._stats
        stats.frames_sent += 1
        stats.messages_sent += len(batch)
        stats.bytes_sent += len(payload) + FRAME_HEADER.size

    def write_split(self, link: _OutboundLink, batch: list[Message]) -> None:
        if len(batch) == 1:
            self.owner._stats.messages_dropped += 1
            logger.error(
                "dropped a %s message to peer %d: it does not fit in a %d-byte frame "
                "(keep the core's message size limit below max_frame_bytes)",
                batch[0].type.name,
                self.id,
                self.owner._config.max_frame_bytes,
            )
            return
        half = len(batch) // 2
        self.write_batch(link, batch[:half])
        self.write_batch(link, batch[half:])

    def write_snapshot_part(self, link: _OutboundLink) -> None:
        """Write the next snapshot head or data chunk (one frame)."""
        outgoing = self.outgoing
        if outgoing is None:
            message = self.snapshots.popleft()
            assert message.snapshot is not None
            link.write(frame(FrameKind.SNAPSHOT_HEAD, encode_snapshot_head(message)))
            outgoing = _OutgoingSnapshot(message, memoryview(message.snapshot.data))
            self.outgoing = outgoing
        else:
            start = outgoing.offset_bytes
            end = start + self.owner._config.snapshot_chunk_bytes
            link.write(frame(FrameKind.SNAPSHOT_CHUNK, outgoing.data[start:end]))
            outgoing.offset_bytes = min(end, len(outgoing.data))
        if outgoing.offset_bytes < len(outgoing.data):
            return
        self.outgoing = None
        if link.paused:
            self.unconfirmed_snapshot = outgoing.message
        else:
            self.owner._report_snapshot(self.id, True)

    def on_resume(self) -> None:
        if self.unconfirmed_snapshot is not None:
            self.unconfirmed_snapshot = None
            self.owner._report_snapshot(self.id, True)
        if self.flush_handle is None and (self.queue or self.snapshots or self.outgoing):
            self.schedule_flush()

    # -- failures -------------------------------------------------------------------------

    def report_unreachable(self) -> None:
        if not self.unreachable_reported and not self.retired:
            self.unreachable_reported = True
            self.owner._report_unreachable(self.id)

    def drop_queue(self, reason: str) -> None:
        dropped = len(self.queue)
        self.queue.clear()
        self.owner._stats.messages_dropped += dropped
        if not self.unreachable_reported:
            logger.warning("dropped %d messages for peer %d: %s", dropped, self.id, reason)
        self.report_unreachable()

    def fail(self, reason: str) -> None:
        """Enter BACKOFF: drop everything queued, fail snapshots, tell the host."""
        self.state = _State.BACKOFF
        self.link = None
        if not self.failing:
            self.failing = True
            host, port = self.address
            logger.warning(
                "peer %d at %s:%d is unreachable: %s; redialing with backoff up to %.2f s",
                self.id,
                host,
                port,
                reason,
                self.owner._config.backoff_max_s,
            )
        self.owner._stats.messages_dropped += len(self.queue)
        self.queue.clear()
        failed_snapshots = len(self.snapshots)
        self.snapshots.clear()
        if self.outgoing is not None or self.unconfirmed_snapshot is not None:
            failed_snapshots += 1
        self.outgoing = None
        self.unconfirmed_snapshot = None
        if not self.retired:
            for _ in range(failed_snapshots):
                self.owner._report_snapshot(self.id, False)
        self.report_unreachable()

    def on_link_lost(self, link: _OutboundLink, exc: Exception | None) -> None:
        if self.link is link and not self.owner._closed:
            self.fail(f"connection lost ({exc or 'closed by the peer'})")

    # -- dialing --------------------------------------------------------------------------

    async def _dial_forever(self) -> None:
        config = self.owner._config
        backoff_s = config.backoff_initial_s
        while True:
            self.state = _State.DIALING
            link, failure = await self._dial()
            if link is not None:
                self._on_connected(link)
                backoff_s = config.backoff_initial_s
                await link.closed
                if self.link is link:  # lost before _on_connected saw it
                    self.fail("connection lost right after the handshake")
            else:
                self.owner._stats.connect_failures += 1
                self.fail(failure)
            # Full delay at most, half at least: peers restarted together do not redial
            # in lockstep.
            await asyncio.sleep(backoff_s * (1.0 - 0.5 * self.owner._rng.random()))
            backoff_s = min(backoff_s * 2, config.backoff_max_s)

    async def _dial(self) -> tuple[_OutboundLink | None, str]:
        assert self.loop is not None
        host, port = self.address
        link = _OutboundLink(self.owner, self)
        timeout_s = self.owner._config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    await self.loop.create_connection(lambda: link, host, port)
                except BaseException:  # refused, timed out or cancelled: see abandon()
                    link.abandon()
                    raise
                status = await link.answer
        except TimeoutError:
            link.abort()
            return None, f"no handshake answer within {timeout_s} s"
        except OSError as exc:
            return None, exc.strerror or str(exc)
        if status is None:
            return None, link.failure or "the connection closed during the handshake"
        if status is not HandshakeStatus.OK:
            link.abort()
            if status is HandshakeStatus.REMOVED_SENDER:
                self.owner._report_removed(self.id)
            return None, f"it refused our handshake: {status.describe()}"
        return link, ""

    def _on_connected(self, link: _OutboundLink) -> None:
        self.state = _State.CONNECTED
        self.link = link
        self.unreachable_reported = False
        if self.failing:
            self.failing = False
            logger.info("peer %d is reachable again", self.id)
        if (self.queue or self.snapshots) and self.flush_handle is None:
            self.schedule_flush()


def _tune_socket(transport: asyncio.BaseTransport, dead_peer_timeout_s: float) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    # Raft messages are latency-bound (heartbeats, votes, acks): never wait for Nagle.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux: probe an idle connection after half
        # the timeout, then three times in the other half.
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(dead_peer_timeout_s / 2))
        )
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(dead_peer_timeout_s / 6))
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: bound unacknowledged sends
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_peer_timeout_s * 1000)
        )


class _OutboundLink(asyncio.Protocol):
    """A connection we dialed: we write the hello, read the answer, then only write."""

    def __init__(self, owner: Transport, peer: _Peer) -> None:
        assert peer.loop is not None
        self.owner = owner
        self.peer = peer
        self.loop = peer.loop
        self.transport: asyncio.Transport | None = None
        self.paused = False
        #: The listener's answer, or None if the connection closed before a valid one.
        self.answer: asyncio.Future[HandshakeStatus | None] = peer.loop.create_future()
        self.closed: asyncio.Future[None] = peer.loop.create_future()
        self.failure = ""
        self._received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = typing.cast(asyncio.Transport, transport)
        self.owner._links.add(self)
        _tune_socket(transport, self.owner._config.dead_peer_timeout_s)
        self.transport.set_write_buffer_limits(high=self.owner._config.write_buffer_high_bytes)
        # Nothing here may close the transport: uvloop never calls connection_lost for
        # a transport closed inside connection_made, and stop() waits for that call.
        # A write can fail and close it, so the hello goes out on the next loop step.
        self.loop.call_soon(self._send_hello)

    def _send_hello(self) -> None:
        assert self.transport is not None
        if not self.closed.done() and not self.transport.is_closing():
            owner = self.owner
            self.transport.write(encode_hello(owner.cluster_id, owner.node_id, self.peer.id))

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            self._fail("it sent data after the handshake on a send-only connection")
            return
        self._received += data
        if len(self._received) < ACK.size:
            return
        if len(self._received) > ACK.size:
            self._fail("it sent data after the handshake on a send-only connection")
            return
        try:
            status = decode_ack(bytes(self._received))
        except FrameError as exc:
            self._fail(str(exc))
            return
        self.answer.set_result(status)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        logger.warning("closing connection to peer %d: %s", self.peer.id, reason)
        self.abort()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.peer.link is self:
            self.peer.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_down()
        self.peer.on_link_lost(self, exc)

    def abandon(self) -> None:
        """Close a link whose create_connection did not return. When that call is
        cancelled after connection_made ran, uvloop closes the transport without ever
        calling connection_lost (asyncio does call it), so the link closes its books here."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self._closed_down()

    def _closed_down(self) -> None:
        self.owner._links.discard(self)
        if not self.answer.done():
            self.answer.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _InboundLink(asyncio.Protocol):
    """A connection a peer dialed: we read its hello, answer, then only read frames."""

    def __init__(self, owner: Transport) -> None:
        assert owner._loop is not None
        self.owner = owner
        self.loop = owner._loop
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = owner._loop.create_future()
        #: The sender's node id, once its hello was accepted.
        self.peer_id = 0
        self._hello = bytearray()
        self._reader = FrameReader(owner._config.max_frame_bytes)
        self._snapshot = SnapshotAssembler(owner._config.max_snapshot_bytes)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = typing.cast(asyncio.Transport, transport)
        owner = self.owner
        owner._links.add(self)
        # Closing is deferred to the next loop step: uvloop never calls connection_lost
        # for a transport closed inside connection_made, and stop() waits for that call.
        if owner._closed:
            self._closing = True
            self.loop.call_soon(self.abort)
            return
        if len(owner._inbound) >= owner._config.max_inbound_connections:
            logger.warning(
                "refused a peer connection from %s: %d inbound connections already open",
                self._remote(),
                len(owner._inbound),
            )
            self._closing = True
            self.loop.call_soon(self.abort)
            return
        owner._inbound.add(self)
        _tune_socket(transport, owner._config.dead_peer_timeout_s)
        self._handshake_timer = self.loop.call_later(
            owner._config.handshake_timeout_s, self._handshake_timed_out
        )

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            if not self.peer_id:
                data = self._read_hello(data)
                if not data:
                    return
            self._read_frames(data)
        except FrameError as exc:
            self._fail(str(exc))

    def _read_hello(self, data: bytes) -> bytes:
        """Consume hello bytes; return the bytes after the hello once it is accepted."""
        self._hello += data
        if len(self._hello) < HELLO.size:
            return b""
        hello = decode_hello(bytes(self._hello[: HELLO.size]))
        rest = bytes(self._hello[HELLO.size :])
        self._hello = bytearray()
        status = self.owner._check_hello(hello)
        assert self.transport is not None
        self.transport.write(encode_ack(status))
        if status is not HandshakeStatus.OK:
            self.owner._stats.protocol_errors += 1
            logger.warning(
                "refused a peer connection from %s claiming node %d of cluster %d "
                "(protocol %d): %s; we are node %d of cluster %d",
                self._remote(),
                hello.sender_id,
                hello.cluster_id,
                hello.version,
                status.describe(),
                self.owner.node_id,
                self.owner.cluster_id,
            )
            self._closing = True
            self.transport.close()  # close, not abort: the answer must go out first
            return b""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.peer_id = hello.sender_id
        previous = self.owner._inbound_by_peer.get(hello.sender_id)
        self.owner._inbound_by_peer[hello.sender_id] = self
        if previous is not None:
            # The peer dialed again, so it gave up on the old connection.
            previous.abort()
        return rest

    def _read_frames(self, data: bytes) -> None:
        owner = self.owner
        stats = owner._stats
        node_id = owner.node_id
        peer_id = self.peer_id
        for kind, payload in self._reader.feed(data):
            stats.frames_received += 1
            stats.bytes_received += len(payload) + FRAME_HEADER.size
            if kind == FrameKind.BATCH:
                messages = decode_batch(payload)
            else:
                message = (
                    self._snapshot.on_head(payload)
                    if kind == FrameKind.SNAPSHOT_HEAD
                    else self._snapshot.on_chunk(payload)
                )
                if message is None:
                    continue
                stats.snapshots_received += 1
                messages = [message]
            for message in messages:
                if message.to != node_id or message.frm != peer_id:
                    raise FrameError(
                        f"a message from {message.frm} to {message.to} arrived on the "
                        f"connection from node {peer_id} to node {node_id}"
                    )
            stats.messages_received += len(messages)
            owner._deliver(messages)
            if self._closing:
                return  # the host stopped the transport or removed this peer

    def _fail(self, reason: str) -> None:
        self.owner._stats.protocol_errors += 1
        who = f"node {self.peer_id}" if self.peer_id else "an unidentified dialer"
        logger.warning("closing the connection from %s (%s): %s", who, self._remote(), reason)
        self.abort()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._fail(f"no handshake within {self.owner._config.handshake_timeout_s} s")

    def _remote(self) -> str:
        peername = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peername[0]}:{peername[1]}" if peername else "an unknown address"

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        owner._links.discard(self)
        owner._inbound.discard(self)
        if self.peer_id and owner._inbound_by_peer.get(self.peer_id) is self:
            del owner._inbound_by_peer[self.peer_id]
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._closing = True
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
