"""raftkv.transport: peer messaging between raftkv nodes over TCP.

`Transport` keeps one persistent connection to each peer, handshakes it (protocol
version, cluster id, sender and receiver ids), and sends length-prefixed frames, each a
batch of raft messages coalesced from everything queued since the previous write.
Snapshots are streamed in chunks. See `_transport` for the theory of operation and
`_codec` / `_wire` for the byte layout.
"""

from ._codec import decode_batch, encode_batch
from ._config import TransportConfig, TransportStats
from ._errors import FrameError, ListenError, TransportError
from ._transport import Address, OnMessages, OnSnapshotStatus, OnUnreachable, Transport

__all__ = [
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
]
