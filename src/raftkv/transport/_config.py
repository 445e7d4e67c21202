"""Knobs and counters of the peer transport."""

from __future__ import annotations

import dataclasses

from ._wire import FRAME_HEADER, MAX_FRAME_BYTES_LIMIT

__all__ = ["TransportConfig", "TransportStats"]

_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class TransportConfig:
    """Bounds and timings of a `Transport`. Every queue and buffer has a bound here,
    and each docstring says what happens when it is hit."""

    max_frame_bytes: int = 16 * _MiB
    """Largest frame payload sent or accepted. A larger inbound frame closes the
    connection. Outbound batches are split to fit; a single non-snapshot message that
    does not fit is dropped and logged, so keep the core's per-message size limit well
    below this. Higher costs memory per connection; it must match across the cluster."""

    snapshot_chunk_bytes: int = 1 * _MiB
    """Snapshot data is sent in frames of this size, one per event-loop turn per peer.
    Smaller chunks interleave better with other traffic; larger ones cost fewer
    syscalls. Must not exceed `max_frame_bytes`."""

    max_snapshot_bytes: int = 4096 * _MiB
    """Largest snapshot a receiver reassembles (the whole snapshot is held in memory).
    A larger announced snapshot closes the connection."""

    max_queued_messages: int = 10_000
    """Messages queued for one peer and not yet written. When exceeded (the peer is not
    reading, or is still being dialed) the whole queue is dropped and the host is told
    the peer is unreachable; the core then falls back to probing it."""

    max_queued_snapshots: int = 2
    """Snapshot messages waiting to be streamed to one peer. More are refused at once
    with `on_snapshot_status(peer, False)`."""

    write_buffer_high_bytes: int = 4 * _MiB
    """Bytes a connection may buffer in user space before writing pauses (messages then
    wait in the peer's queue). Lower bounds memory per peer; higher absorbs bursts."""

    backoff_initial_s: float = 0.05
    """Delay before redialing a peer after a failure; doubles per failure."""

    backoff_max_s: float = 1.0
    """Cap of the redial delay: how long at most a recovered peer waits to be dialed.
    Each delay is jittered down by up to half to avoid synchronised redials."""

    connect_timeout_s: float = 2.0
    """Time allowed to connect to a peer and get its handshake answer."""

    handshake_timeout_s: float = 5.0
    """Time an inbound connection has to send its hello before it is closed."""

    dead_peer_timeout_s: float = 10.0
    """How long sent bytes may stay unacknowledged, or an idle connection's keepalive
    probes unanswered, before the kernel declares the connection dead (Linux
    TCP_USER_TIMEOUT and keepalive); the peer is then redialed. Without it a peer that
    vanished without a reset would be noticed only after many minutes. Lower notices
    sooner; too low drops healthy connections over a congested network."""

    max_inbound_connections: int = 256
    """Inbound connections held at once (pending handshakes included); more are closed
    at once. Each established peer holds one; a reconnecting peer replaces its old one."""

    def validate(self) -> None:
        """Raise ValueError naming the first knob that is out of range."""
        if not 1024 <= self.max_frame_bytes <= MAX_FRAME_BYTES_LIMIT - FRAME_HEADER.size:
            raise ValueError(
                f"max_frame_bytes must be between 1024 and {MAX_FRAME_BYTES_LIMIT - 5}, "
                f"got {self.max_frame_bytes}"
            )
        if not 1 <= self.snapshot_chunk_bytes <= self.max_frame_bytes:
            raise ValueError(
                "snapshot_chunk_bytes must be positive and at most max_frame_bytes, "
                f"got {self.snapshot_chunk_bytes}"
            )
        for name in (
            "max_snapshot_bytes",
            "max_queued_messages",
            "max_queued_snapshots",
            "write_buffer_high_bytes",
            "max_inbound_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "backoff_initial_s",
            "connect_timeout_s",
            "handshake_timeout_s",
            "dead_peer_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.backoff_max_s >= self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )


@dataclasses.dataclass(slots=True)
class TransportStats:
    """Counters since the transport was created (`Transport.stats()` returns a copy)."""

    frames_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    #: Messages dropped: peer unreachable, queue bound hit, unknown peer, too large.
    messages_dropped: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    snapshots_received: int = 0
    #: Dial attempts that failed (refused, timed out, or handshake rejected).
    connect_failures: int = 0
    #: Inbound connections closed for a malformed handshake or frame.
    protocol_errors: int = 0
