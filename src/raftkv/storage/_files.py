"""Small file-system helpers shared by the WAL and the snapshotter.

Every fsync goes through here, so that a failed one always becomes a
`DurabilityError` (never an OSError a caller might catch and carry on after).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ._errors import DataDirLockedError, DurabilityError


def fsync_fd(fd: int, path: Path, *, data_only: bool = False) -> None:
    """fsync (or fdatasync) an open file; a failure is fatal."""
    try:
        if data_only:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
    except OSError as error:
        raise durability_error("fsync", path, error) from error


def fsync_directory(path: Path) -> None:
    """Make the directory's entries (created, renamed, removed files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise durability_error("open for fsync", path, error) from error
    try:
        fsync_fd(fd, path)
    finally:
        os.close(fd)


def durability_error(operation: str, path: Path, error: OSError) -> DurabilityError:
    return DurabilityError(
        f"{operation} of {path} failed ({error.strerror or error}); written data may not "
        f"be on disk, so this node must stop (check the disk, then restart to recover)"
    )


def write_file_durably(path: Path, data: bytes | list[bytes]) -> None:
    """Create `path` with `data`, atomically and durably: write a temporary file in
    the same directory, fsync it, rename it over `path`, fsync the directory."""
    temporary = path.with_name(path.name + ".tmp")
    chunks = [data] if isinstance(data, bytes) else data
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise durability_error("create", temporary, error) from error
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        fsync_fd(fd, temporary)
    except OSError as error:
        raise durability_error("write", temporary, error) from error
    finally:
        os.close(fd)
    try:
        os.rename(temporary, path)
    except OSError as error:
        raise durability_error("rename", temporary, error) from error
    fsync_directory(path.parent)


def remove_temporary_files(directory: Path) -> None:
    """Remove leftovers of writes that a crash interrupted before their rename."""
    for leftover in directory.glob("*.tmp"):
        leftover.unlink()


class DirectoryLock:
    """An exclusive advisory lock on a directory, held until `release`, so that two
    processes never write the same data directory."""

    def __init__(self, directory: Path) -> None:
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DataDirLockedError(
                f"{directory} is in use by another process; stop it first, or use another directory"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
