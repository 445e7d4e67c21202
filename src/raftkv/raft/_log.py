"""The replicated log as the core sees it: durable storage plus an unstable tail.

Theory of operation. Entries live in two places. `storage` holds what the host has
made durable; `_Unstable` holds what the core has accepted (a leader's proposals, a
follower's appends, a received snapshot) but the host has not yet persisted. A
`Ready` hands the unstable part to the host; `advance` moves it to stable.

    storage: [first_index .. stabled]   unstable: [offset .. last_index]

The unstable part may overwrite a suffix of storage (a follower truncating a
conflicting tail): lookups prefer the unstable part for indexes >= offset.
# invariant: applied <= committed <= last_index
"""

from __future__ import annotations

from ._errors import CompactedError, UnavailableError
from ._storage import Storage, limit_size
from ._types import Entry, Snapshot, has_conf_change


class _Unstable:
    __slots__ = ("entries", "offset", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        # invariant: entries[k].index == offset + k
        self.offset = offset

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            snapshot = self.snapshot
            if snapshot is not None and snapshot.metadata.index == index:
                return snapshot.metadata.term
            return None
        position = index - self.offset
        if position < len(self.entries):
            return self.entries[position].term
        return None

    def stable_to(self, index: int, term: int) -> None:
        if self.maybe_term(index) != term or index < self.offset:
            # The entry was overwritten by a newer append while the host wrote it;
            # the newer entries stay unstable until their own Ready is persisted.
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.metadata.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable, and possibly a stable suffix too.
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(entries)


class RaftLog:
    __slots__ = ("applied", "committed", "max_applying_bytes", "storage", "unstable")

    def __init__(self, storage: Storage, max_applying_bytes: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = _Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_applying_bytes = max_applying_bytes

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable_offset={self.unstable.offset}, unstable={len(self.unstable.entries)})"
        )

    # --- reading ---------------------------------------------------------------------

    # Asked dozens of times per write: the unstable part is looked at in line.

    def first_index(self) -> int:
        snapshot = self.unstable.snapshot
        if snapshot is not None:
            return snapshot.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        unstable = self.unstable
        if unstable.entries:
            return unstable.offset + len(unstable.entries) - 1
        if unstable.snapshot is not None:
            return unstable.snapshot.metadata.index
        return self.storage.last_index()

    def stabled_index(self) -> int:
        """The last index the host has made durable."""
        return self.unstable.offset - 1 if self.unstable.snapshot is None else 0

    def term(self, index: int) -> int:
        """The term at `index`. Raises CompactedError/UnavailableError outside the log."""
        unstable = self.unstable
        offset = unstable.offset
        if index >= offset:
            position = index - offset
            if position < len(unstable.entries):
                return unstable.entries[position].term
            raise UnavailableError(f"index {index} is past the last index")
        snapshot = unstable.snapshot
        if snapshot is not None:
            # A snapshot not yet persisted: the log starts right after it.
            if index == snapshot.metadata.index:
                return snapshot.metadata.term
            raise CompactedError(f"index {index} is compacted")
        # Below the unstable tail an index is in storage (a truncating append moves
        # the tail's offset down, never up past storage's last entry).
        if index < self.storage.first_index() - 1:
            raise CompactedError(f"index {index} is compacted")
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        return self.term_or_zero(index) == term

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (last_index, term) is at least as up to date as ours
        (Raft paper section 5.4.1)."""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry]:
        unstable = self.unstable
        if lo >= unstable.offset and unstable.snapshot is None:
            # All in the unstable tail (a leader sending what it just proposed).
            return limit_size(unstable.entries[lo - unstable.offset :], max_bytes)
        last = self.last_index()
        if lo > last:
            return []
        return self.slice(lo, last + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries in [lo, hi), from storage and the unstable tail."""
        assert lo <= hi, f"invalid slice {lo} > {hi}"
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        assert hi <= self.last_index() + 1, f"slice [{lo}, {hi}) out of bound"
        if lo == hi:
            return []
        offset = self.unstable.offset
        result: list[Entry] = []
        if lo < offset:
            result = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(result) < min(hi, offset) - lo:
                return result  # Stopped by the size limit.
        if hi > offset:
            unstable = self.unstable.entries[max(lo, offset) - offset : hi - offset]
            result = unstable if not result else [*result, *unstable]
        return limit_size(result, max_bytes)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied and self.committed >= self.first_index()

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet applied, bounded by `max_applying_bytes`."""
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1, self.max_applying_bytes)

    def has_pending_conf_change(self, committed_only: bool = True) -> bool:
        """Whether an unapplied entry is a membership change: a committed one, or
        with `committed_only` false, any in the log."""
        hi = self.committed if committed_only else self.last_index()
        lo = max(self.applied + 1, self.first_index())
        if hi < lo:
            return False
        return has_conf_change(self.slice(lo, hi + 1, None))

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def find_conflict(self, entries: list[Entry]) -> int:
        """The index of the first entry whose term differs from ours, or 0."""
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term`: where a follower's log
        may match a leader's entry at (index, term)."""
        index = min(index, self.last_index())
        while index > 0:
            try:
                our_term = self.term(index)
            except CompactedError:
                return index
            if our_term <= term:
                return index
            index -= 1
        return 0

    # --- writing ---------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        if not entries:
            return self.last_index()
        assert entries[0].index - 1 >= self.committed, (
            f"append after {entries[0].index - 1} would overwrite committed {self.committed}"
        )
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: list[Entry]
    ) -> int | None:
        """A follower's append: if our log matches at (index, log_term), append the
        entries (truncating any conflicting suffix) and return the new last index;
        otherwise None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, (
                f"entry {conflict} conflicts with committed entry (committed {self.committed})"
            )
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), (
                f"commit {index} is past the last index {self.last_index()}"
            )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to `index` if it is in `term`: a leader commits only entries of its
        own term by counting replicas (Raft paper section 5.4.2)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        assert self.applied <= index <= self.committed, (
            f"applied {index} is out of range [{self.applied}, {self.committed}]"
        )
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snapshot_to(self, index: int) -> None:
        self.unstable.stable_snapshot_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.metadata.index
        self.unstable.restore(snapshot)
