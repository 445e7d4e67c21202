"""The transport's errors: whose fault it was decides the class.

- `FrameError`: the peer's fault. Bytes that arrived on a connection are not a valid
  handshake, frame or message batch. The transport logs it and closes that connection;
  it never reaches the host.
- `ListenError`: the operator's fault. The peer address cannot be bound (most often:
  the port is in use). Raised by `Transport.start()`.
- `TransportError`: the base of both, and what a caller gets for misusing the API
  (for example starting a transport twice).
"""

from __future__ import annotations

__all__ = ["FrameError", "ListenError", "TransportError"]


class TransportError(Exception):
    """Base class of every error raised by `raftkv.transport`."""


class FrameError(TransportError):
    """Bytes received from a peer are malformed: wrong types, wrong lengths, unknown
    enum values, oversized frames, or a broken handshake."""


class ListenError(TransportError):
    """The transport could not listen on its peer address."""
