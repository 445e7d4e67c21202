"""The next WAL segment, zero-filled and fsynced ahead of time in a background thread.

Why: appending to a file makes every fdatasync also commit the file system's
journal (the file's size and block allocation changed), and makes every write
allocate page-cache pages. Overwriting blocks that already exist and are durable
needs neither, so a sync is a pure data flush. etcd (its "file pipeline") and
PostgreSQL prepare WAL segments ahead for the same reason; `fallocate` alone would
not do, because the first write to an unwritten extent is itself a metadata
change.

The price: every segment is written twice, once with zeros. That happens off the
write path, while the second half of the current segment fills, so it costs disk
bandwidth and a little CPU but not latency; on a disk whose bandwidth, rather
than its flush latency, is the bottleneck it would cost throughput. The zeros go
to disk one flushed megabyte at a time, so that a WAL fsync never waits behind
more than that (flushed at once, the 64 MiB made every node's fsyncs take 26 to 35
ms instead of under 1 ms, all at once, as all nodes reach the same log position
together).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from ._errors import DurabilityError
from ._files import durability_error, fsync_fd

SPARE_NAME = "spare.tmp"
_CHUNK_BYTES = 1 << 20
_ZEROS = bytes(_CHUNK_BYTES)


def zero_filled_file(
    path: Path, size_bytes: int, cancelled: Callable[[], bool] = lambda: False
) -> int:
    """Create `path` holding `size_bytes` zero bytes, fsynced, and return a file
    descriptor open for reading and writing (the caller closes it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise durability_error("create", path, error) from error
    try:
        for offset in range(0, size_bytes, _CHUNK_BYTES):
            if cancelled():
                return fd
            os.pwrite(fd, _ZEROS[: min(_CHUNK_BYTES, size_bytes - offset)], offset)
            os.fdatasync(fd)  # A chunk at a time: see the module docstring.
        fsync_fd(fd, path)
    except OSError as error:
        os.close(fd)
        raise durability_error("zero-fill", path, error) from error
    except BaseException:
        os.close(fd)
        raise
    return fd


class SpareSegment:
    """One zero-filled file being prepared in a background thread for the WAL's
    next segment. `take` waits for it; `cancel` abandons it."""

    def __init__(self, directory: Path, size_bytes: int) -> None:
        self.path = directory / SPARE_NAME
        self._size_bytes = size_bytes
        self._fd: int | None = None
        self._error: DurabilityError | None = None
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._prepare, name="raftkv-wal-spare", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        try:
            self._fd = zero_filled_file(self.path, self._size_bytes, self._cancelled.is_set)
        except DurabilityError as error:
            self._error = error

    def take(self) -> int:
        """Wait until the file is ready and return its descriptor, which the caller
        now owns. Raises `DurabilityError` if preparing it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        fd, self._fd = self._fd, None
        assert fd is not None, "a spare segment is taken once"
        return fd

    def cancel(self) -> None:
        """Stop preparing, close the file and remove it."""
        self._cancelled.set()
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)
