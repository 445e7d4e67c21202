"""The log storage interface the core reads from, and an in-memory implementation.

The core never writes to storage: the host appends what a `Ready` tells it to
persist, and the core only reads (`Storage`). `MemoryStorage` is both the reference
implementation of that interface (every other implementation must pass the same
contract tests) and the host-side cache used by the server in front of the WAL.

Layout: `_entries[0]` is a dummy entry holding the index and term of the last
compacted entry (or of the snapshot); real entries follow it.
# invariant: _entries[k].index == _entries[0].index + k
"""

from __future__ import annotations

from typing import Protocol

from ._errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from ._types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
    entries_size_bytes,
    entry_size_bytes,
)


class Storage(Protocol):
    """What the core reads. Indexes are absolute log indexes."""

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi). With `max_bytes`, stop once the total would pass it,
        but always return at least one entry. Raises `CompactedError` if lo is at or
        before the compaction point, `UnavailableError` if hi > last_index() + 1."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at index; valid for first_index()-1 .. last_index()."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of `entries` within `max_bytes` (never fewer than one)."""
    if max_bytes is None or len(entries) <= 1 or entries_size_bytes(entries) <= max_bytes:
        return entries
    total = 0
    for count, entry in enumerate(entries):
        total += entry_size_bytes(entry)
        if total > max_bytes and count > 0:
            return entries[:count]
    return entries


class MemoryStorage:
    """A `Storage` kept in memory, with the write side a host needs."""

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot: Snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # --- Storage -----------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is past the last index {self.last_index()}")
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"index {index} is past the last index {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- the host's side -----------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log with `snapshot` (a follower installing one)."""
        if snapshot.metadata.index < self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {snapshot.metadata.index} is older than the held one at "
                f"{self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.metadata.term, index=snapshot.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine as of `index` (already applied)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than the held one at "
                f"{self._snapshot.metadata.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot index {index} is past the last index")
        metadata = SnapshotMetadata(
            index=index,
            term=self.term(index),
            conf_state=conf_state if conf_state is not None else self._snapshot.metadata.conf_state,
        )
        self._snapshot = Snapshot(metadata=metadata, data=data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries up to and including `compact_index`."""
        offset = self._entries[0].index
        if compact_index <= offset:
            raise CompactedError(f"index {compact_index} is already compacted")
        if compact_index > self.last_index():
            raise UnavailableError(f"compact index {compact_index} is past the last index")
        keep_from = compact_index - offset
        dummy = Entry(term=self._entries[keep_from].term, index=compact_index)
        self._entries = [dummy, *self._entries[keep_from + 1 :]]

    def append(self, entries: list[Entry]) -> None:
        """Append entries, truncating any conflicting suffix first. Entries at or
        before the compaction point are ignored."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._entries[0].index
        assert offset <= len(self._entries), (
            f"missing log entries: last {self.last_index()}, appending at {entries[0].index}"
        )
        del self._entries[offset:]
        self._entries.extend(entries)
