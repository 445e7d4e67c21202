"""raftkv.storage: durability for a node, a write-ahead log and snapshot files.

`DiskStorage` is what the server runs on: it opens a data directory, recovers the
newest usable snapshot plus the WAL into memory, serves the core's reads (the
`raftkv.raft.Storage` protocol) from memory, and writes through to disk. `WAL`
and `Snapshotter` are its two halves, usable on their own.

The ordering that keeps recovery safe. Each rule has a test named for it in
`tests/storage/test_ordering_rules.py`.

1. A snapshot file is durable (temp file, fsync, rename, fsync of the directory)
   before its WAL marker is written. Recovery only starts from a snapshot that
   has a marker, so a crash in between leaves an unused file, never a marker
   whose file is missing.
2. The WAL is synced before anything that depends on it leaves the node.
   `append` only writes; the host calls `sync` and sends the messages that
   promise what was written (a vote, an append acknowledgement) after it returns.
   A record is durable once a `sync` that started after it was saved returns.
3. The applied index is stored with the state it describes: a snapshot file holds
   index, term, membership and the state machine's bytes under one CRC, and is
   replaced whole, so no crash pairs state with another index.
4. A snapshot marker is synced before any WAL segment it makes unnecessary is
   deleted, and segments are deleted oldest first, each removal made durable
   before the next: a crash during a release leaves a contiguous suffix.
5. A segment is complete before it exists: it is written under a temp name with
   its metadata and hard state records, fsynced, renamed, and the directory
   fsynced; and the previous segment is synced before the new one receives a
   record. So only the last segment can end in a torn write; damage anywhere
   else is corruption and recovery refuses it.
6. Recovery makes what it read durable (fsync of the last segment) before the
   node acts on it: after a process crash, writes that were never synced may
   still be in the page cache, and a vote read back from there must not be lost
   to a later power failure.
7. A failed write or fsync is fatal. It raises `DurabilityError` and the storage
   refuses every later call: after a failed fsync the kernel may have dropped the
   dirty pages, and a retry could report success for data that is gone.
"""

from ._disk import DEFAULT_CATCH_UP_ENTRIES, DiskStorage
from ._errors import (
    CorruptSnapshotError,
    CorruptWALError,
    DataDirLockedError,
    DataDirMismatchError,
    DurabilityError,
    RecoveryError,
    StorageFailure,
)
from ._records import SnapshotMarker, WALMetadata
from ._snap import DEFAULT_SNAPSHOTS_TO_KEEP, SnapshotFile, Snapshotter
from ._uring import FsyncRing
from ._wal import DEFAULT_SEGMENT_SIZE_BYTES, WAL, SyncTicket, WALContents

__all__ = [
    "DEFAULT_CATCH_UP_ENTRIES",
    "DEFAULT_SEGMENT_SIZE_BYTES",
    "DEFAULT_SNAPSHOTS_TO_KEEP",
    "WAL",
    "CorruptSnapshotError",
    "CorruptWALError",
    "DataDirLockedError",
    "DataDirMismatchError",
    "DiskStorage",
    "DurabilityError",
    "FsyncRing",
    "RecoveryError",
    "SnapshotFile",
    "SnapshotMarker",
    "Snapshotter",
    "StorageFailure",
    "SyncTicket",
    "WALContents",
    "WALMetadata",
]
