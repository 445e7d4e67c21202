"""Errors raised by durable storage.

They split the way the rest of raftkv's errors do. `DurabilityError` is the
disk's fault and is fatal: the node must stop. `CorruptWALError`,
`CorruptSnapshotError` and `RecoveryError` describe a data directory that cannot
be trusted; the node refuses to start. `DataDirMismatchError` and
`DataDirLockedError` are the operator's to fix. Every message is one line that
names what was wrong and what to do about it.
"""

from __future__ import annotations

import os


class StorageFailure(Exception):
    """Base class of every error raised on purpose by `raftkv.storage`."""


class DurabilityError(StorageFailure):
    """A write or fsync failed, so data may not be on disk.

    Fatal. After a failed fsync the kernel may already have dropped the dirty
    pages, so retrying could report success for data that is gone. The storage
    object that raised this refuses every later call; the process must exit and
    recover from what is on disk.
    """


class CorruptWALError(StorageFailure):
    """A WAL record before the tail is damaged, or the segments do not fit together."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"corrupt WAL: {self.path} at byte offset {offset}: {reason}; "
            f"refusing to start (restore the data directory from a backup, or remove it "
            f"and rejoin the cluster)"
        )


class CorruptSnapshotError(StorageFailure):
    """A snapshot file failed its checksum or does not parse."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"corrupt snapshot file {self.path}: {reason}")


class RecoveryError(StorageFailure):
    """The snapshots and the WAL on disk do not add up to a usable state."""


class DataDirMismatchError(StorageFailure):
    """The data directory belongs to another node id or another cluster."""


class DataDirLockedError(StorageFailure):
    """Another process holds the data directory open."""
