"""`DiskStorage`: the durable log storage a node runs on.

A data directory holds `wal/` (the `WAL`'s segments) and `snap/` (the
`Snapshotter`'s files). The core reads through an in-memory `MemoryStorage`
cache, rebuilt from the newest usable snapshot plus the WAL on open; every write
goes to disk first and to the cache second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from raftkv.raft import (
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDateError,
    UnavailableError,
)

from ._errors import RecoveryError
from ._files import DirectoryLock, fsync_directory
from ._records import SnapshotMarker, WALMetadata
from ._snap import DEFAULT_SNAPSHOTS_TO_KEEP, Snapshotter
from ._wal import DEFAULT_SEGMENT_SIZE_BYTES, WAL, SyncTicket, WALContents

logger = logging.getLogger("raftkv.storage")

DEFAULT_CATCH_UP_ENTRIES = 5000


class DiskStorage:
    """The `Storage` the core reads, kept durable in a data directory.

    Reads (the `Storage` protocol) are served from memory. The host's write side
    mirrors `MemoryStorage`: `append`, `apply_snapshot`, `create_snapshot` (or its
    three steps `prepare_snapshot`, `write_snapshot_file`, `commit_snapshot`, the
    last of which splits into `mark_snapshot`, `sync`, `prune_snapshots` and
    `finish_snapshot`) and `compact`, plus `sync`, which makes every `append`
    before it durable.

    Thread safety: `sync`, `write_snapshot_file` and `prune_snapshots` may run in a
    worker thread (`asyncio.to_thread`) while the event loop thread keeps calling
    the other methods. Everything else changes the in-memory log the core reads, so it must
    be called from the thread the core runs on (or while the core is not running).
    """

    def __init__(
        self,
        directory: Path,
        lock: DirectoryLock,
        wal: WAL,
        snapshotter: Snapshotter,
        cache: MemoryStorage,
        *,
        is_new: bool,
        catch_up_entries: int,
    ) -> None:
        self.directory = directory
        #: True when the data directory held no WAL: the node starts from nothing
        #: (and may join an existing cluster) instead of recovering.
        self.is_new = is_new
        self._lock = lock
        self._wal = wal
        self._snapshotter = snapshotter
        self._cache = cache
        self._catch_up_entries = catch_up_entries
        # The core reads these dozens of times per write: the cache's own methods,
        # rather than one more call each.
        self.term: Callable[[int], int] = cache.term
        self.first_index: Callable[[], int] = cache.first_index
        self.last_index: Callable[[], int] = cache.last_index

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        node_id: int,
        cluster_id: int,
        *,
        catch_up_entries: int = DEFAULT_CATCH_UP_ENTRIES,
        snapshots_to_keep: int = DEFAULT_SNAPSHOTS_TO_KEEP,
        segment_size_bytes: int = DEFAULT_SEGMENT_SIZE_BYTES,
    ) -> DiskStorage:
        """Open (or create) the data directory of node `node_id` of `cluster_id`.

        `catch_up_entries`: how many entries before the newest snapshot stay in
        memory after `compact`, so that a follower a little behind gets entries
        rather than a whole snapshot; more costs memory. `snapshots_to_keep`: how
        many snapshot files to keep (at least 2 for falling back from a corrupt
        newest one); the WAL is kept back to the oldest of them, so more costs disk.

        Raises `DataDirMismatchError` if the directory belongs to another node or
        cluster, `DataDirLockedError` if another process has it open,
        `CorruptWALError` or `RecoveryError` if it cannot be recovered.
        """
        if catch_up_entries < 0:
            raise ValueError(f"catch_up_entries must be >= 0, not {catch_up_entries}")
        if snapshots_to_keep < 1:
            raise ValueError(f"snapshots_to_keep must be >= 1, not {snapshots_to_keep}")
        path = Path(directory)
        if not path.is_dir():
            path.mkdir(parents=True)
            fsync_directory(path.parent)
        lock = DirectoryLock(path)
        try:
            return cls._open_locked(
                path,
                lock,
                WALMetadata(node_id=node_id, cluster_id=cluster_id),
                catch_up_entries=catch_up_entries,
                snapshots_to_keep=snapshots_to_keep,
                segment_size_bytes=segment_size_bytes,
            )
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(
        cls,
        path: Path,
        lock: DirectoryLock,
        metadata: WALMetadata,
        *,
        catch_up_entries: int,
        snapshots_to_keep: int,
        segment_size_bytes: int,
    ) -> DiskStorage:
        wal_directory = path / "wal"
        if WAL.exists(wal_directory):
            # The WAL is opened first: it refuses another node's directory before
            # anything in it is touched.
            wal, contents = WAL.open(
                wal_directory, segment_size_bytes=segment_size_bytes, expected_metadata=metadata
            )
            try:
                snapshotter = Snapshotter(path / "snap", keep=snapshots_to_keep)
                cache = _recover(contents, snapshotter, catch_up_entries)
            except BaseException:
                wal.close()
                raise
            is_new = False
        else:
            snapshotter = Snapshotter(path / "snap", keep=snapshots_to_keep)
            if snapshotter.files():
                raise RecoveryError(
                    f"{path} holds snapshot files but no WAL; restore the data directory from "
                    f"a backup, or remove it and rejoin the cluster"
                )
            wal = WAL.create(wal_directory, metadata, segment_size_bytes=segment_size_bytes)
            cache = MemoryStorage()
            is_new = True
        return cls(
            path,
            lock,
            wal,
            snapshotter,
            cache,
            is_new=is_new,
            catch_up_entries=catch_up_entries,
        )

    # --- Storage: what the core reads (also `term`, `first_index` and `last_index`,
    # bound in `__init__`) ---------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._cache.initial_state()

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self._cache.entries(lo, hi, max_bytes)

    def snapshot(self) -> Snapshot:
        return self._cache.snapshot()

    @property
    def hard_state(self) -> HardState:
        return self._cache.hard_state

    # --- the host's side -------------------------------------------------------------

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> None:
        """Write `entries` (replacing any conflicting suffix) and `hard_state` to the
        WAL with one write, then to the cache. Durable once `sync` returns: send the
        messages that depend on them only after that. Entries at or before the
        compaction point are ignored, as `MemoryStorage.append` does."""
        first = self._cache.first_index()
        if entries and entries[0].index < first:
            entries = entries[first - entries[0].index :]
        if entries:
            assert entries[0].index <= self._cache.last_index() + 1, (
                f"missing log entries: last {self._cache.last_index()}, "
                f"appending at {entries[0].index}"
            )
        self._wal.save(entries, hard_state)
        if entries:
            self._cache.append(entries if isinstance(entries, list) else list(entries))
        if hard_state is not None:
            self._cache.set_hard_state(hard_state)

    def sync(self) -> None:
        """Make everything appended so far durable (one fsync). May run in a worker
        thread. Raises `DurabilityError`, after which the node must stop."""
        self._wal.sync()

    def begin_sync(self) -> SyncTicket | None:
        """`sync` in two halves, for a host that runs the fdatasync itself (see
        `WAL.begin_sync`): what to sync, or None when `sync` must be used."""
        return self._wal.begin_sync()

    def end_sync(self, ticket: SyncTicket, error: OSError | None = None) -> None:
        """After the ticket's fdatasync returned (or failed with `error`: then this
        raises `DurabilityError`, after which the node must stop)."""
        self._wal.end_sync(ticket, error)

    def abandon_sync(self, ticket: SyncTicket) -> None:
        """Give up a ticket whose fdatasync never ran."""
        self._wal.abandon_sync(ticket)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot received from the leader, replacing the whole log:
        the snapshot file first, then its WAL marker (synced), then the cache.

        All on the calling thread; a host that must not block on the file write
        calls `write_snapshot_file` (any thread) then `install_snapshot`."""
        self._check_installable(snapshot)
        self.write_snapshot_file(snapshot)
        self.install_snapshot(snapshot)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """After `write_snapshot_file` of a received snapshot: its WAL marker
        (synced), then the cache, replaced by the snapshot."""
        self._check_installable(snapshot)
        marker = SnapshotMarker(snapshot.metadata.index, snapshot.metadata.term)
        # Rule 1 of the package docstring: never a marker without its file.
        if not self._snapshotter.path_for(marker).is_file():
            raise ValueError(f"the file of {marker} was not written; call write_snapshot_file")
        self._wal.save_snapshot(marker)
        self._wal.sync()
        self._snapshotter.prune()
        self._cache.apply_snapshot(snapshot)

    def _check_installable(self, snapshot: Snapshot) -> None:
        held = self._cache.snapshot().metadata.index
        if snapshot.metadata.index < held:
            raise SnapshotOutOfDateError(
                f"snapshot at {snapshot.metadata.index} is older than the held one at {held}"
            )

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of `index` (already applied):
        the file first, then its WAL marker (synced), then the cache. Call
        `compact` afterwards to free memory and disk.

        All on the calling thread. A host that must not block on writing a large
        file uses the three steps instead: `prepare_snapshot` (caller's thread),
        `write_snapshot_file` (any thread), `commit_snapshot` (caller's thread)."""
        snapshot = self.prepare_snapshot(index, conf_state, data)
        self.write_snapshot_file(snapshot)
        self.commit_snapshot(snapshot)
        return snapshot

    def prepare_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """The snapshot of `data` as of `index`, checked against the log; writes
        nothing."""
        held = self._cache.snapshot().metadata
        if index <= held.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than the held one at {held.index}"
            )
        if index > self._cache.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index")
        metadata = SnapshotMetadata(
            index=index,
            term=self._cache.term(index),
            conf_state=conf_state if conf_state is not None else held.conf_state,
        )
        return Snapshot(metadata=metadata, data=data)

    def write_snapshot_file(self, snapshot: Snapshot) -> None:
        """Write the snapshot's file (temp file, fsync, rename, fsync of the
        directory). Touches only the snapshot directory, so it may run in a worker
        thread while the WAL keeps being written; the snapshot counts for nothing
        until `commit_snapshot`."""
        self._snapshotter.save(snapshot)

    def commit_snapshot(self, snapshot: Snapshot) -> None:
        """After `write_snapshot_file`: the WAL marker (synced), then the cache.

        The same as `mark_snapshot`, `sync`, `prune_snapshots` and `finish_snapshot`,
        for a caller that wants the sync and the file deletions in a worker thread."""
        self.mark_snapshot(snapshot)
        self._wal.sync()
        self.prune_snapshots()
        self.finish_snapshot(snapshot)

    def mark_snapshot(self, snapshot: Snapshot) -> None:
        """After `write_snapshot_file`: write the snapshot's WAL marker. It counts
        once `sync` has made it durable and `finish_snapshot` has run."""
        metadata = snapshot.metadata
        held = self._cache.snapshot().metadata.index
        if metadata.index <= held:
            raise SnapshotOutOfDateError(
                f"snapshot at {metadata.index} is not newer than the held one at {held}"
            )
        marker = SnapshotMarker(metadata.index, metadata.term)
        # Rule 1 of the package docstring: never a marker without its file.
        if not self._snapshotter.path_for(marker).is_file():
            raise ValueError(f"the file of {marker} was not written; call write_snapshot_file")
        if self._cache.term(metadata.index) != metadata.term:
            raise ValueError(
                f"the log no longer holds index {metadata.index} at term {metadata.term}"
            )
        self._wal.save_snapshot(marker)

    def prune_snapshots(self) -> None:
        """Delete the snapshot files beyond the newest few. Touches only the snapshot
        directory, so it may run in a worker thread (not while `compact` runs)."""
        self._snapshotter.prune()

    def finish_snapshot(self, snapshot: Snapshot) -> None:
        """After `mark_snapshot` and a `sync` (and `prune_snapshots`, when wanted):
        take the snapshot into the in-memory log."""
        created = self._cache.create_snapshot(
            snapshot.metadata.index, snapshot.metadata.conf_state, snapshot.data
        )
        assert created == snapshot

    def compact(self, index: int) -> None:
        """Entries up to `index` (at most the newest snapshot's index) are no longer
        needed: drop them from memory except the last `catch_up_entries`, and delete
        the WAL segments that no kept snapshot needs."""
        snapshot_index = self._cache.snapshot().metadata.index
        if index > snapshot_index:
            raise ValueError(
                f"cannot compact to {index}: the newest durable snapshot is at {snapshot_index}"
            )
        compact_to = index - self._catch_up_entries
        if compact_to >= self._cache.first_index():
            self._cache.compact(compact_to)
        # Release only to the oldest kept snapshot, so that recovery can still fall
        # back to any kept snapshot when a newer one turns out to be corrupt.
        releasable = [
            file.marker.index
            for file in self._snapshotter.files()
            if self._wal.has_snapshot_marker(file.marker.index)
        ]
        if releasable:
            self._wal.release_to(min(releasable))

    def close(self) -> None:
        """Close the WAL and release the directory. Does not sync."""
        self._wal.close()
        self._lock.release()


def _recover(
    contents: WALContents, snapshotter: Snapshotter, catch_up_entries: int
) -> MemoryStorage:
    """Rebuild the cache from the newest snapshot the WAL can replay from."""
    starting_points = set(contents.snapshot_markers)
    snapshot = snapshotter.load_newest(usable=lambda marker: marker in starting_points)
    if snapshot is None:
        try:
            entries = contents.entries_after(None)
        except RecoveryError as error:
            names = ", ".join(file.path.name for file in snapshotter.files()) or "none"
            raise RecoveryError(f"{error} (snapshot files: {names})") from None
        cache = MemoryStorage()
        cache.append(entries)
        _remove_orphans(snapshotter, 0, starting_points)
    else:
        cache = _cache_from_snapshot(contents, snapshot, catch_up_entries)
        _remove_orphans(snapshotter, snapshot.metadata.index, starting_points)
    hard_state = contents.hard_state
    # A snapshot holds committed entries only, so the commit index is at least its
    # index even if the crash came before the hard state saying so was written.
    commit = max(hard_state.commit, cache.snapshot().metadata.index)
    if commit > cache.last_index():
        raise RecoveryError(
            f"the WAL in {contents.directory} has commit index {commit} but entries only up "
            f"to {cache.last_index()}; restore the data directory from a backup, or remove it "
            f"and rejoin the cluster"
        )
    cache.set_hard_state(HardState(term=hard_state.term, vote=hard_state.vote, commit=commit))
    return cache


def _cache_from_snapshot(
    contents: WALContents, snapshot: Snapshot, catch_up_entries: int
) -> MemoryStorage:
    """A cache holding `snapshot` and the log after it, plus up to
    `catch_up_entries` entries before it when the WAL still has them."""
    metadata = snapshot.metadata
    after = contents.entries_after(SnapshotMarker(metadata.index, metadata.term))
    tail_base = max(metadata.index - catch_up_entries, contents.first_index - 1)
    if contents.term_at(tail_base) is None:
        tail_base += 1
    cache = MemoryStorage()
    if tail_base >= metadata.index:
        cache.apply_snapshot(snapshot)
        cache.append(after)
        return cache
    # Start the cache at the tail's base, then record the real snapshot on top:
    # that keeps the entries between them, which apply_snapshot would drop.
    base_term = contents.term_at(tail_base)
    assert base_term is not None
    base = SnapshotMetadata(index=tail_base, term=base_term, conf_state=metadata.conf_state)
    cache.apply_snapshot(Snapshot(metadata=base))
    cache.append(contents.entries_between(tail_base, metadata.index) + after)
    cache.create_snapshot(metadata.index, metadata.conf_state, snapshot.data)
    return cache


def _remove_orphans(
    snapshotter: Snapshotter, loaded_index: int, starting_points: set[SnapshotMarker]
) -> None:
    """Delete snapshot files newer than the loaded one that no WAL marker vouches
    for: a crash came between writing one and its marker. Left alone they would
    count against `snapshots_to_keep` and push out usable snapshots."""
    for file in snapshotter.files():
        if file.marker.index > loaded_index and file.marker not in starting_points:
            logger.warning("removing snapshot %s: no WAL marker refers to it", file.path)
            file.path.unlink()
