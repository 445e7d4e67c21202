"""The write-ahead log: segment files of checksummed records.

Theory of operation. The WAL is a directory of segment files named
`<seq>-<first index>.wal` (both 16 hex digits). `seq` counts segments from 0 with
no gaps; `first index` is the index the log would have next when the segment was
started, so every live entry in a segment is below the next segment's first
index. Each segment begins with a METADATA record (format version, node id,
cluster id, seq) and a HARD_STATE record, so that any suffix of the segments is a
complete WAL. A segment is prepared ahead as `spare.tmp`, zero-filled to
`segment_size_bytes` and fsynced, in the background once the current segment is
half full (see `_spare`); it becomes a segment once its
first records are written and fsynced, by a rename and an fsync of the
directory. So a segment file that exists has an intact beginning, and a segment
may end in zeros, which are not records.

Writing: `save` appends records at the end of the last segment with one
vectored write; `sync` fdatasyncs it. Once the last segment is past
`segment_size_bytes` after a sync, `sync` starts the next one. `release_to`
deletes segments that a durable snapshot made unnecessary, oldest first.

Reading (`WAL.open`): segments are read in order and their records fed to
`LogReplay`. A damaged record (bad CRC, cut short) at the end of the last
segment is a torn write: everything from it on is zeroed and the WAL continues
there. A damaged record anywhere else (an earlier segment, or with an intact
record after it) is corruption, and opening fails with the file and offset.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raftkv.raft import Entry, HardState

from . import _records as records
from ._errors import CorruptWALError, DataDirMismatchError, DurabilityError, RecoveryError
from ._files import (
    DirectoryLock,
    durability_error,
    fsync_directory,
    fsync_fd,
    remove_temporary_files,
)
from ._records import RecordType, SnapshotMarker, WALMetadata
from ._replay import LogReplay, ReplayGapError
from ._spare import SPARE_NAME, SpareSegment, zero_filled_file

DEFAULT_SEGMENT_SIZE_BYTES = 64 * 1024 * 1024

_SEGMENT_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.wal")
_ZERO_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Segment:
    seq: int
    first_index: int
    path: Path


def _segment_path(directory: Path, seq: int, first_index: int) -> Path:
    return directory / f"{seq:016x}-{first_index:016x}.wal"


def _list_segments(directory: Path) -> list[_Segment]:
    segments = []
    for path in directory.iterdir():
        match = _SEGMENT_NAME.fullmatch(path.name)
        if match:
            segments.append(_Segment(int(match[1], 16), int(match[2], 16), path))
    return sorted(segments, key=lambda segment: segment.seq)


class WALContents:
    """What `WAL.open` read back: the metadata, the last hard state, and the log
    as it can be replayed from each snapshot marker."""

    def __init__(self, directory: Path, metadata: WALMetadata, replay: LogReplay) -> None:
        self.directory = directory
        self.metadata = metadata
        self.hard_state = replay.hard_state if replay.hard_state is not None else HardState()
        #: Snapshots recovery may start from (their markers agree with the log), oldest
        #: first. Only these can be paired with a snapshot file.
        self.snapshot_markers: tuple[SnapshotMarker, ...] = tuple(replay.starting_points())
        self._replay = replay

    @property
    def first_index(self) -> int:
        """The first index the WAL holds an entry (or a snapshot base) for."""
        base = self._replay.base_index
        return 1 if base is None else base + 1

    @property
    def last_index(self) -> int:
        return 0 if self._replay.base_index is None else self._replay.last_index()

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if the WAL does not know it."""
        if index == 0:
            return 0
        return self._replay.term_at(index)

    def entries_after(self, marker: SnapshotMarker | None) -> list[Entry]:
        """The log after the snapshot `marker` (or the whole log, with None).

        Raises `RecoveryError` if the WAL cannot be replayed from there: the marker
        is not among `snapshot_markers`, or (with None) the WAL no longer starts at
        index 1.
        """
        if marker is None:
            if self._replay.base_index not in (None, 0):
                raise RecoveryError(
                    f"the WAL in {self.directory} starts after index {self._replay.base_index} "
                    f"and no readable snapshot covers the entries before it; restore the data "
                    f"directory from a backup, or remove it and rejoin the cluster"
                )
            return list(self._replay.entries)
        if marker not in self.snapshot_markers:
            raise RecoveryError(
                f"the WAL in {self.directory} cannot be replayed from the snapshot at index "
                f"{marker.index} term {marker.term}; restore the data directory from a "
                f"backup, or remove it and rejoin the cluster"
            )
        return self._replay.entries_after(marker.index)

    def entries_between(self, after_index: int, last_index: int) -> list[Entry]:
        """Entries in (after_index, last_index]; both ends must be within the log."""
        entries = self._replay.entries_after(after_index)
        return entries[: last_index - after_index]


@dataclass(frozen=True, slots=True)
class SyncTicket:
    """What `WAL.begin_sync` asks its caller to fdatasync: `fd` (a duplicate
    descriptor of segment `seq`, open until `end_sync` or `abandon_sync`), up to
    `offset`."""

    seq: int
    path: Path
    fd: int
    offset: int


class WAL:
    """A write-ahead log of Raft entries, hard states and snapshot markers.

    Thread safety: every method may be called from any thread. The intended use
    is one thread calling `save` (the event loop) while a worker thread calls
    `sync` (`asyncio.to_thread`): `save` does not wait for a running fsync, and
    records saved while it runs are made durable by the next `sync` (group
    commit). Only one `sync` runs at a time; segment rotation and `release_to`
    are serialized with it. A caller that runs the fdatasync itself uses
    `begin_sync` and `end_sync` instead of `sync`.

    Durability: a record is durable once a `sync` that started after its `save`
    returned has returned (or `end_sync` of a ticket taken after it, without an
    error). A failed write or fsync raises `DurabilityError` and
    the WAL refuses every later call, because after a failed fsync the kernel may
    have dropped the dirty pages and a retry could falsely succeed.
    """

    def __init__(
        self,
        directory: Path,
        lock: DirectoryLock,
        metadata: WALMetadata,
        segments: list[_Segment],
        segment_size_bytes: int,
    ) -> None:
        self._directory = directory
        self._lock_file = lock
        self._metadata = metadata
        # invariant: seqs are consecutive; the last segment is the one being written.
        self._segments = segments
        self._segment_size_bytes = segment_size_bytes
        self._fd = -1
        # invariant: _synced_offset <= _offset; bytes before _synced_offset are durable.
        self._offset = 0
        self._synced_offset = 0
        self._hard_state = HardState()
        # The live log's last index as far as the WAL can tell. It is only used to
        # name the next segment, so it may overestimate but never underestimate.
        self._last_index = 0
        #: Where the newest marker for each snapshot index is: (segment seq, offset
        #: just past the marker record).
        self._markers: dict[int, tuple[int, int]] = {}
        self._spare: SpareSegment | None = None
        self._failed: DurabilityError | None = None
        self._closed = False
        # _sync_lock serializes sync, rotation and release; _lock guards the write
        # position and is held only briefly. Order: _sync_lock, then _lock.
        self._sync_lock = threading.Lock()
        self._lock = threading.Lock()

    # --- creating and opening --------------------------------------------------------

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        """Whether `directory` holds a WAL (at least one segment file)."""
        path = Path(directory)
        return path.is_dir() and bool(_list_segments(path))

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        metadata: WALMetadata,
        *,
        segment_size_bytes: int = DEFAULT_SEGMENT_SIZE_BYTES,
    ) -> WAL:
        """Create a new, empty WAL in `directory` (created if missing)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        fsync_directory(path.parent)
        lock = DirectoryLock(path)
        try:
            if _list_segments(path):
                raise FileExistsError(f"{path} already holds a WAL; open it instead")
            remove_temporary_files(path)
            wal = cls(path, lock, metadata, [], segment_size_bytes)
            wal._start_segment(seq=0, first_index=1)
        except BaseException:
            lock.release()
            raise
        return wal

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_size_bytes: int = DEFAULT_SEGMENT_SIZE_BYTES,
        expected_metadata: WALMetadata | None = None,
    ) -> tuple[WAL, WALContents]:
        """Open the WAL in `directory`: read it all back, repair a torn tail, and
        make what was read durable before returning it (a record read back after a
        crash of the process may still be only in the page cache).

        With `expected_metadata`, a WAL that belongs to another node or cluster is
        refused with `DataDirMismatchError` before anything is written."""
        path = Path(directory)
        lock = DirectoryLock(path)
        try:
            segments = _list_segments(path)
            if not segments:
                raise FileNotFoundError(f"{path} holds no WAL segment; create one instead")
            _check_sequence(segments)
            reader = _Reader(segments)
            if expected_metadata is not None and reader.metadata != expected_metadata:
                raise _mismatch(path, found=reader.metadata, expected=expected_metadata)
            remove_temporary_files(path)
            wal = cls(path, lock, reader.metadata, segments, segment_size_bytes)
            wal._resume(reader)
        except BaseException:
            lock.release()
            raise
        return wal, WALContents(path, reader.metadata, reader.replay)

    def _resume(self, reader: _Reader) -> None:
        last = self._segments[-1]
        try:
            self._fd = os.open(last.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise durability_error("open", last.path, error) from error
        try:
            if reader.torn_from is not None:
                self._zero(last.path, reader.torn_from, reader.data_end)
            fsync_fd(self._fd, last.path)
            fsync_directory(self._directory)
        except BaseException:
            os.close(self._fd)
            raise
        self._offset = self._synced_offset = reader.end_offset
        replay = reader.replay
        self._hard_state = replay.hard_state if replay.hard_state is not None else HardState()
        self._last_index = 0 if replay.base_index is None else replay.last_index()
        self._markers = reader.markers

    def _zero(self, path: Path, start: int, end: int) -> None:
        """Overwrite [start, end) with zeros: the remains of a torn write."""
        zeros = bytes(_ZERO_CHUNK_BYTES)
        try:
            for offset in range(start, end, _ZERO_CHUNK_BYTES):
                os.pwrite(self._fd, zeros[: min(_ZERO_CHUNK_BYTES, end - offset)], offset)
        except OSError as error:
            raise durability_error("repair of the torn tail", path, error) from error

    # --- writing ---------------------------------------------------------------------

    @property
    def metadata(self) -> WALMetadata:
        return self._metadata

    def save(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> int:
        """Append `entries` (consecutive indexes; they replace any entries from the
        first one's index on) and then `hard_state`, with one write. Not durable
        until `sync` returns. Returns the number of bytes written."""
        if entries:
            parts = records.frame(RecordType.ENTRIES, records.encode_entries(entries))
            if hard_state is not None:
                parts.append(records.hard_state_record(hard_state))
        elif hard_state is not None:
            parts = [records.hard_state_record(hard_state)]
        else:
            return 0
        with self._lock:
            # A gap would make the WAL unreadable on recovery: refuse it before writing.
            assert not entries or entries[0].index <= self._last_index + 1, (
                f"entries from {entries[0].index} would leave a gap after {self._last_index}"
            )
            size = self._write(parts)
            if entries:
                self._last_index = entries[-1].index
            if hard_state is not None:
                self._hard_state = hard_state
        return size

    def save_snapshot(self, marker: SnapshotMarker) -> None:
        """Record that a snapshot file for (index, term) is durable. Write the file
        first: recovery trusts a marker to have its file. Not durable until `sync`."""
        payload = records.encode_snapshot_marker(marker)
        with self._lock:
            self._write(records.frame(RecordType.SNAPSHOT, [payload]))
            self._markers[marker.index] = (self._segments[-1].seq, self._offset)
            self._last_index = max(self._last_index, marker.index)

    def _write(self, parts: list[bytes]) -> int:
        self._check_usable()
        size = sum(map(len, parts))
        try:
            written = os.pwritev(self._fd, parts, self._offset)
        except OSError as error:
            raise self._fail(durability_error("write", self._segments[-1].path, error)) from error
        if written != size:
            raise self._fail(
                DurabilityError(
                    f"short write to {self._segments[-1].path} ({written} of {size} bytes; is "
                    f"the disk full?); this node must stop"
                )
            )
        self._offset += size
        return size

    def sync(self) -> None:
        """Make every record saved before this call durable (one fdatasync), then
        start a new segment if the current one is full."""
        with self._sync_lock:
            with self._lock:
                self._check_usable()
                fd, target = self._fd, self._offset
            if target != self._synced_offset:
                try:
                    os.fdatasync(fd)
                except OSError as error:
                    with self._lock:
                        path = self._segments[-1].path
                        raise self._fail(durability_error("fsync", path, error)) from error
            with self._lock:
                # Only this method rotates, so the segment is still the one synced.
                self._synced_to(target)
                if self._offset >= self._segment_size_bytes:
                    self._rotate()

    def begin_sync(self) -> SyncTicket | None:
        """The first half of `sync`, for a caller that runs the fdatasync itself
        (the node hands it to io_uring, see `_uring`): what to sync, or None when
        the caller must use `sync` instead because the segment is full and the
        next one must start after this sync. Call `end_sync` with the outcome.

        Tickets do not take the sync lock (a ticket outlives the call that made
        it), so they may overlap each other and `sync`: each only ever raises the
        synced offset of the segment it was taken on."""
        with self._lock:
            self._check_usable()
            if self._offset >= self._segment_size_bytes:
                return None
            current = self._segments[-1]
            try:
                # A descriptor of its own: the segment's may be closed by a rotation
                # while the caller's fdatasync is still to run.
                fd = os.dup(self._fd)
            except OSError as error:
                raise self._fail(durability_error("fsync", current.path, error)) from error
            return SyncTicket(current.seq, current.path, fd, self._offset)

    def end_sync(self, ticket: SyncTicket, error: OSError | None = None) -> None:
        """The second half of `sync`: the ticket's fdatasync returned, or failed
        with `error`, which is fatal (`DurabilityError`) as in `sync`. Closes the
        ticket's descriptor."""
        os.close(ticket.fd)
        with self._lock:
            if error is not None:
                raise self._fail(durability_error("fsync", ticket.path, error)) from error
            self._check_usable()
            if ticket.seq == self._segments[-1].seq:
                self._synced_to(ticket.offset)
            # Else `sync` rotated meanwhile, after syncing that segment to its end.

    def abandon_sync(self, ticket: SyncTicket) -> None:
        """Give up a ticket whose fdatasync never ran: closes its descriptor and
        promises nothing."""
        os.close(ticket.fd)

    def _synced_to(self, offset: int) -> None:
        """Bytes before `offset` of the current segment are durable. Called holding
        `_lock`."""
        if offset > self._synced_offset:
            self._synced_offset = offset
        half = self._segment_size_bytes // 2
        if self._spare is None and half <= offset and self._offset < self._segment_size_bytes:
            # Prepare the next segment while the second half of this one fills: a
            # WAL that never gets that far never pays for a spare.
            self._spare = SpareSegment(self._directory, self._segment_size_bytes)

    def _rotate(self) -> None:
        """Start the next segment. Called holding both locks."""
        current = self._segments[-1]
        try:
            if self._offset != self._synced_offset:
                fsync_fd(self._fd, current.path, data_only=True)
            os.close(self._fd)
            self._fd = -1
            self._start_segment(current.seq + 1, self._last_index + 1)
        except DurabilityError as error:
            raise self._fail(error) from error.__cause__

    def _start_segment(self, seq: int, first_index: int) -> None:
        """Make segment `seq` the one being written: take the zero-filled spare (or
        make one now), write its METADATA and HARD_STATE records, fsync, rename it
        to its segment name, and fsync the directory."""
        path = _segment_path(self._directory, seq, first_index)
        if self._spare is None:
            temporary = self._directory / SPARE_NAME
            fd = zero_filled_file(temporary, self._segment_size_bytes)
        else:
            temporary = self._spare.path
            fd = self._spare.take()
            self._spare = None
        metadata = records.encode_metadata(self._metadata, seq)
        header = records.encode_record(RecordType.METADATA, metadata) + records.hard_state_record(
            self._hard_state
        )
        try:
            os.pwrite(fd, header, 0)
            fsync_fd(fd, temporary)
            os.rename(temporary, path)
        except OSError as error:
            os.close(fd)
            raise durability_error("create", path, error) from error
        except BaseException:
            os.close(fd)
            raise
        fsync_directory(self._directory)
        self._segments.append(_Segment(seq, first_index, path))
        self._fd = fd
        self._offset = self._synced_offset = len(header)

    # --- releasing -------------------------------------------------------------------

    def release_to(self, index: int) -> int:
        """Delete the segments that the snapshot at `index` makes unnecessary: those
        before the segment holding its marker whose entries are all at or before
        `index`. The marker must be durable (saved and synced). Returns how many
        segments were deleted."""
        with self._sync_lock:
            with self._lock:
                self._check_usable()
                if index not in self._markers:
                    raise ValueError(f"no snapshot marker at index {index} in this WAL")
                marker_seq, marker_end = self._markers[index]
                if marker_seq == self._segments[-1].seq and self._synced_offset < marker_end:
                    raise ValueError(f"the snapshot marker at index {index} is not synced yet")
                doomed = []
                for segment, following in itertools.pairwise(self._segments):
                    if segment.seq >= marker_seq or following.first_index - 1 > index:
                        break
                    doomed.append(segment)
            # Oldest first, each removal durable before the next: a crash leaves a
            # suffix of the segments, never a WAL with a hole in it.
            for segment in doomed:
                try:
                    segment.path.unlink()
                except OSError as error:
                    raise self._fail(durability_error("unlink", segment.path, error)) from error
                try:
                    fsync_directory(self._directory)
                except DurabilityError as error:
                    raise self._fail(error) from error.__cause__
                with self._lock:
                    del self._segments[0]
            with self._lock:
                first_seq = self._segments[0].seq
                for marker_index, (seq, _) in list(self._markers.items()):
                    if seq < first_seq:
                        del self._markers[marker_index]
        return len(doomed)

    def has_snapshot_marker(self, index: int) -> bool:
        """Whether a snapshot marker at `index` is in the segments still kept."""
        with self._lock:
            return index in self._markers

    def segment_paths(self) -> list[Path]:
        """The segment files, oldest first (for tests and operators)."""
        with self._lock:
            return [segment.path for segment in self._segments]

    # --- failure and closing ---------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise DurabilityError(str(self._failed)) from self._failed
        if self._closed:
            raise ValueError("the WAL is closed")

    def _fail(self, error: DurabilityError) -> DurabilityError:
        if self._failed is None:
            self._failed = error
        return error

    def close(self) -> None:
        """Close the files and release the directory. Does not sync: call `sync`
        first for anything that must be durable."""
        with self._sync_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            if self._spare is not None:
                self._spare.cancel()
                self._spare = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._lock_file.release()


def _mismatch(path: Path, *, found: WALMetadata, expected: WALMetadata) -> DataDirMismatchError:
    return DataDirMismatchError(
        f"{path} belongs to node {found.node_id} of cluster {found.cluster_id:x}, not to node "
        f"{expected.node_id} of cluster {expected.cluster_id:x}; start with the matching node "
        f"id and cluster, or use another data directory"
    )


def _check_sequence(segments: list[_Segment]) -> None:
    for segment, following in itertools.pairwise(segments):
        if following.seq != segment.seq + 1:
            raise CorruptWALError(
                following.path,
                0,
                f"segments {segment.seq + 1}..{following.seq - 1} are missing before it",
            )


class _Reader:
    """Reads all segments back through `LogReplay` (used once, by `WAL.open`)."""

    def __init__(self, segments: list[_Segment]) -> None:
        self.replay = LogReplay()
        self.markers: dict[int, tuple[int, int]] = {}
        self._metadata: WALMetadata | None = None
        # Where writing resumes in the last segment, and the torn tail to zero.
        self.end_offset = 0
        self.torn_from: int | None = None
        self.data_end = 0
        for position, segment in enumerate(segments):
            self._read_segment(segment, is_last=position == len(segments) - 1)

    @property
    def metadata(self) -> WALMetadata:
        assert self._metadata is not None, "every segment starts with a metadata record"
        return self._metadata

    def _read_segment(self, segment: _Segment, *, is_last: bool) -> None:
        try:
            data = segment.path.read_bytes()
        except OSError as error:
            raise RecoveryError(f"cannot read WAL segment {segment.path}: {error}") from error
        data_end = _data_end(data)
        offset = 0
        while offset < data_end:
            record = records.read_record(data, offset)
            if record is None:
                break
            self._apply(segment, offset, record)
            offset = record.next_offset
        if offset == 0 or (offset < data_end and not is_last):
            raise CorruptWALError(segment.path, offset, "damaged record (bad CRC or cut short)")
        if offset < data_end:
            intact = records.find_intact_record(data, offset + records.ALIGNMENT_BYTES, data_end)
            if intact is not None:
                raise CorruptWALError(
                    segment.path,
                    offset,
                    f"damaged record (bad CRC or cut short) followed by an intact record at "
                    f"offset {intact}",
                )
            self.torn_from, self.data_end = offset, data_end
        self.end_offset = offset

    def _apply(self, segment: _Segment, offset: int, record: records.Record) -> None:
        kind = record.type
        try:
            if offset == 0:
                if kind is not RecordType.METADATA:
                    raise ValueError("the segment does not start with a metadata record")
                self._check_metadata(segment, record.payload)
            elif kind is RecordType.ENTRIES:
                self.replay.add_entries(records.decode_entries(record.payload))
            elif kind is RecordType.HARD_STATE:
                self.replay.set_hard_state(records.decode_hard_state(record.payload))
            elif kind is RecordType.SNAPSHOT:
                marker = records.decode_snapshot_marker(record.payload)
                self.replay.add_snapshot_marker(marker)
                self.markers[marker.index] = (segment.seq, record.next_offset)
            else:
                raise ValueError(f"unexpected {kind.name} record")
        except (ValueError, IndexError, struct.error, ReplayGapError) as error:
            raise CorruptWALError(segment.path, offset, str(error)) from error

    def _check_metadata(self, segment: _Segment, payload: bytes) -> None:
        version, metadata, seq = records.decode_metadata(payload)
        if version != records.WAL_FORMAT_VERSION:
            raise ValueError(
                f"WAL format version {version}; this build reads {records.WAL_FORMAT_VERSION}"
            )
        if seq != segment.seq:
            raise ValueError(f"the segment says it is number {seq}, its name says {segment.seq}")
        if self._metadata is not None and metadata != self._metadata:
            raise ValueError(f"metadata {metadata} differs from earlier segments' {self._metadata}")
        self._metadata = metadata


def _data_end(data: bytes) -> int:
    """The offset just past the last non-zero byte (segments may end in zeros)."""
    end = len(data)
    while end > 0:
        start = max(0, end - _ZERO_CHUNK_BYTES)
        kept = len(data[start:end].rstrip(b"\0"))
        if kept:
            return start + kept
        end = start
    return 0
