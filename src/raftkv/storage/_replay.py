"""Rebuilding the live log from WAL records, in the order they were written.

Theory of operation. The live log is a base (index, term) followed by entries with
consecutive indexes. Three kinds of record change it:

- ENTRIES appends a batch. A batch that starts at or before the end of the log
  first cuts the log there: that is how a follower's log is truncated after a
  leader change, and why a later record at the same index wins. Entries at or
  before the base are ignored.
- SNAPSHOT (a marker) says a snapshot exists at (index, term). If the log holds
  that entry with that term, the marker agrees with the log and nothing else
  changes: this is a snapshot the node took of its own state machine, and the
  entries after it stay valid. Otherwise the snapshot came from the leader and
  replaced the whole log: the base moves to the marker and every entry is dropped,
  exactly as `MemoryStorage.apply_snapshot` does.
- HARD_STATE replaces the hard state; the last one wins.

The base is unknown until the first record that sets it. Once segments before the
newest snapshot are released, the remaining WAL starts in the middle of the log,
so its first ENTRIES record sets the base to the index before it, with the term
unknown. A snapshot is a valid starting point for recovery if its marker agrees
with the final log: the log reaches its index with its term. What never happens:
an ENTRIES record leaving a gap after the end of the log (that means a segment is
missing), or a marker moving the base backwards.
"""

from __future__ import annotations

from raftkv.raft import Entry, HardState

from ._records import SnapshotMarker


class ReplayGapError(Exception):
    """An ENTRIES record starts after the end of the rebuilt log."""


class LogReplay:
    def __init__(self) -> None:
        self.hard_state: HardState | None = None
        # invariant: entries[k].index == base_index + 1 + k
        self.base_index: int | None = None
        self.base_term: int | None = None
        self.entries: list[Entry] = []
        self._markers: list[SnapshotMarker] = []

    def last_index(self) -> int:
        assert self.base_index is not None
        return self.base_index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when the log does not know it."""
        if self.base_index is None or index < self.base_index:
            return None
        if index == self.base_index:
            return self.base_term
        position = index - self.base_index - 1
        return self.entries[position].term if position < len(self.entries) else None

    def add_entries(self, batch: list[Entry]) -> None:
        if not batch:
            return
        if self.base_index is None:
            self.base_index = batch[0].index - 1
            # Index 0 is the empty log's base, whose term is 0 by definition.
            self.base_term = 0 if self.base_index == 0 else None
        base = self.base_index
        if batch[-1].index <= base:
            return
        if batch[0].index <= base:
            batch = batch[base + 1 - batch[0].index :]
        position = batch[0].index - base - 1
        if position > len(self.entries):
            raise ReplayGapError(
                f"entries {self.last_index() + 1}..{batch[0].index - 1} are missing"
            )
        del self.entries[position:]
        self.entries.extend(batch)

    def add_snapshot_marker(self, marker: SnapshotMarker) -> None:
        self._markers.append(marker)
        if self.base_index is None:
            self.base_index, self.base_term = marker.index, marker.term
            return
        if marker.index < self.base_index:
            # Older than everything this WAL still holds: it cannot be replayed from,
            # and it cannot have replaced the log (a node only installs snapshots
            # newer than its own).
            return
        if marker.index == self.base_index and self.base_term is None:
            self.base_term = marker.term
            return
        if self.term_at(marker.index) != marker.term:
            self.base_index, self.base_term = marker.index, marker.term
            self.entries.clear()

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def starting_points(self) -> list[SnapshotMarker]:
        """The markers recovery may start from, oldest first, without duplicates."""
        usable = {m for m in self._markers if self.term_at(m.index) == m.term}
        return sorted(usable)

    def entries_after(self, index: int) -> list[Entry]:
        """The live entries after `index`, which must be within the log."""
        assert self.base_index is not None and self.base_index <= index <= self.last_index()
        return self.entries[index - self.base_index :]
