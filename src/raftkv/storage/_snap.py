"""Snapshot files: the state machine's bytes with the metadata that describes them.

A snapshot file is named `<index>-<term>.snap` (16 hex digits each, so names sort
by index) and holds, little-endian:

    magic "RKVSNAP" + format version byte
    index u64, term u64, conf state length u32, data length u64
    conf state: msgpack [voters, learners]
    data
    CRC32C of everything above, u32

The index and the state machine's bytes share one file and one CRC, so a snapshot
can never describe state from another index than the one it claims.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import crc32c
import msgpack

from raftkv.raft import ConfState, Snapshot, SnapshotMetadata

from ._errors import CorruptSnapshotError, DurabilityError
from ._files import fsync_directory, remove_temporary_files, write_file_durably
from ._records import SnapshotMarker

logger = logging.getLogger("raftkv.storage")

_MAGIC = b"RKVSNAP\x01"
_HEAD = struct.Struct("<QQIQ")
_CRC = struct.Struct("<I")
_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.snap")

DEFAULT_SNAPSHOTS_TO_KEEP = 3


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    marker: SnapshotMarker
    path: Path


def encode_snapshot(snapshot: Snapshot) -> list[bytes]:
    """The file's contents, in chunks (the data is not copied)."""
    metadata = snapshot.metadata
    conf: bytes = msgpack.packb(
        [list(metadata.conf_state.voters), list(metadata.conf_state.learners)]
    )
    head = _MAGIC + _HEAD.pack(metadata.index, metadata.term, len(conf), len(snapshot.data))
    crc = crc32c.crc32c(snapshot.data, crc32c.crc32c(head + conf))
    return [head + conf, snapshot.data, _CRC.pack(crc)]


def decode_snapshot(content: bytes) -> Snapshot:
    """The inverse of `encode_snapshot`. Raises ValueError if the content is damaged."""
    fixed = len(_MAGIC) + _HEAD.size
    if len(content) < fixed + _CRC.size or not content.startswith(_MAGIC):
        raise ValueError("not a snapshot file (bad magic or too short)")
    (crc,) = _CRC.unpack_from(content, len(content) - _CRC.size)
    if crc32c.crc32c(memoryview(content)[: -_CRC.size]) != crc:
        raise ValueError("checksum mismatch")
    index, term, conf_size, data_size = _HEAD.unpack_from(content, len(_MAGIC))
    if fixed + conf_size + data_size + _CRC.size != len(content):
        raise ValueError("the sizes in the header do not match the file size")
    voters, learners = msgpack.unpackb(content[fixed : fixed + conf_size])
    conf_state = ConfState(voters=tuple(voters), learners=tuple(learners))
    data = content[fixed + conf_size : fixed + conf_size + data_size]
    return Snapshot(metadata=SnapshotMetadata(index, term, conf_state), data=data)


class Snapshotter:
    """Saves and loads snapshot files in one directory, keeping the newest few.

    Thread safety: `save` touches only its own temporary file and the final name,
    so it may run in a worker thread while the owning thread uses the other
    methods; otherwise use it from one thread at a time.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, keep: int = DEFAULT_SNAPSHOTS_TO_KEEP
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 snapshot, not {keep}")
        self.directory = Path(directory)
        self.keep = keep
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True)
            fsync_directory(self.directory.parent)
        remove_temporary_files(self.directory)

    def save(self, snapshot: Snapshot) -> SnapshotFile:
        """Write `snapshot` atomically and durably (temp file, fsync, rename, fsync
        of the directory). When this returns the file survives a crash."""
        metadata = snapshot.metadata
        assert metadata.index > 0, "an empty snapshot is never saved"
        marker = SnapshotMarker(metadata.index, metadata.term)
        path = self.path_for(marker)
        write_file_durably(path, encode_snapshot(snapshot))
        return SnapshotFile(marker, path)

    def path_for(self, marker: SnapshotMarker) -> Path:
        """Where the snapshot file for (index, term) is, or would be."""
        return self.directory / f"{marker.index:016x}-{marker.term:016x}.snap"

    def files(self) -> list[SnapshotFile]:
        """Every snapshot file, newest (highest index) first."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.fullmatch(path.name)
            if match:
                marker = SnapshotMarker(index=int(match[1], 16), term=int(match[2], 16))
                found.append(SnapshotFile(marker, path))
        return sorted(found, key=lambda file: file.marker, reverse=True)

    def load(self, file: SnapshotFile) -> Snapshot:
        """Read and check one snapshot file. Raises `CorruptSnapshotError`."""
        try:
            content = file.path.read_bytes()
        except OSError as error:
            raise CorruptSnapshotError(file.path, f"cannot read it: {error}") from error
        try:
            snapshot = decode_snapshot(content)
        except (ValueError, TypeError, struct.error, msgpack.UnpackException) as error:
            raise CorruptSnapshotError(file.path, str(error)) from error
        found = SnapshotMarker(snapshot.metadata.index, snapshot.metadata.term)
        if found != file.marker:
            raise CorruptSnapshotError(
                file.path, f"it holds index {found.index} term {found.term}, unlike its name"
            )
        return snapshot

    def load_newest(
        self, usable: Callable[[SnapshotMarker], bool] = lambda marker: True
    ) -> Snapshot | None:
        """The newest readable snapshot whose (index, term) is `usable`, or None.

        A corrupt file is skipped with a warning and an older one tried: the caller's
        `usable` must accept only snapshots it can bring up to date (for a node, those
        the WAL can replay from).
        """
        for file in self.files():
            if not usable(file.marker):
                continue
            try:
                return self.load(file)
            except CorruptSnapshotError as error:
                logger.warning("%s; falling back to an older snapshot", error)
        return None

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` snapshot files; returns what was deleted."""
        doomed = [file.path for file in self.files()[self.keep :]]
        for path in doomed:
            try:
                path.unlink()
            except OSError as error:
                raise DurabilityError(f"cannot delete old snapshot {path}: {error}") from error
        return doomed
