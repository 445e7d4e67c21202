"""Exactly-once application of the entries a node re-proposes.

A follower forwards its clients' writes to the leader. If leadership changes before
the write shows up applied, the follower cannot know whether the old leader appended
it (it may still commit) or lost it, so it proposes the write again, under the same
(origin node, request id). `AppliedRequests` remembers which requests were applied
in the last `window_entries` log entries, so the second copy is skipped.

It is part of the replicated state: every replica must skip the same entries, so it
changes only in `record` (driven by the log) and it travels in snapshots.

A retry carries the proposer's applied index at the time of the retry (`base`). The
original, if it exists, is applied after `base`; if the retry is applied more than
`window_entries` after `base`, the window may no longer hold the original, and the
retry is skipped as possibly applied: its client gets an unknown-outcome timeout,
which is the truth, rather than a write applied twice.
# invariant: every key in _index_of has index > last recorded index - window_entries
"""

from __future__ import annotations

import collections
import struct
from typing import Any

#: Header of every entry a node proposes: origin node id, request id, retry base.
HEADER = struct.Struct(">IQQ")
HEADER_BYTES = HEADER.size

DEFAULT_WINDOW_ENTRIES = 100_000


class AppliedRequests:
    """The window, as a dict for the lookups and runs for expiry and snapshots.

    A run (first index, origin, first request id, count) says that request
    `first request id + k` of `origin` was applied at index `first index + k`, for
    k < count. A node's requests get consecutive ids and go into the log in that
    order, so under load the window is a handful of runs however many entries it
    covers, and a snapshot carries those runs rather than a row per entry."""

    __slots__ = ("_index_of", "_open", "_runs", "window_entries")

    def __init__(self, window_entries: int = DEFAULT_WINDOW_ENTRIES) -> None:
        assert window_entries > 0
        self.window_entries = window_entries
        #: (origin << 64 | request id) -> index: an int key, not a tuple, so that the
        #: window's 100,000 keys are not objects the garbage collector tracks.
        self._index_of: dict[int, int] = {}
        #: The closed runs, oldest first, then the newest one, still growing.
        # invariant: runs are in index order and do not overlap.
        self._runs: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self._open: list[int] | None = None

    def __len__(self) -> int:
        return len(self._index_of)

    def should_apply(self, index: int, origin: int, request_id: int, base: int) -> bool:
        """Whether the entry at `index` carrying this request should be applied (and
        then recorded); False for a duplicate or a too-late retry."""
        if (origin << 64 | request_id) in self._index_of:
            return False
        return not (base and index - base > self.window_entries)

    def record(self, index: int, origin: int, request_id: int) -> None:
        """The request was applied at `index` (above every index recorded before)."""
        self._index_of[origin << 64 | request_id] = index
        run = self._open
        if run is not None and (
            run[0] + run[3] == index and run[2] + run[3] == request_id and run[1] == origin
        ):
            run[3] += 1
        else:
            if run is not None:
                self._runs.append((run[0], run[1], run[2], run[3]))
            run = self._open = [index, origin, request_id, 1]
        horizon = index - self.window_entries
        runs = self._runs
        if (runs[0][0] if runs else run[0]) <= horizon:
            self._expire(horizon)

    def _expire(self, horizon: int) -> None:
        """Forget the requests applied at or before `horizon`."""
        index_of = self._index_of
        runs = self._runs
        while runs or self._open is not None:
            first, origin, request_id, count = runs[0] if runs else self._open  # type: ignore[misc]
            if first > horizon:
                return
            gone = min(count, horizon - first + 1)
            key = origin << 64 | request_id
            for k in range(gone):
                if index_of.get(key + k) == first + k:
                    del index_of[key + k]
            if gone < count:
                rest = (first + gone, origin, request_id + gone, count - gone)
                if runs:
                    runs[0] = rest
                else:
                    self._open = list(rest)
                return
            if runs:
                runs.popleft()
            else:
                self._open = None

    def dump(self) -> list[tuple[int, int, int, int]]:
        """The window as runs (first index, origin, first request id, count): a copy
        cheap enough for the event loop, which msgpack serialises as it is."""
        if self._open is None:
            return list(self._runs)
        first, origin, request_id, count = self._open
        return [*self._runs, (first, origin, request_id, count)]

    @classmethod
    def load(cls, rows: list[Any], window_entries: int) -> AppliedRequests:
        """From `dump`'s runs; also reads the rows of a snapshot taken before runs,
        one per request: (index, (origin, request id))."""
        applied = cls(window_entries)
        for row in rows:
            if len(row) == 2:
                index, (origin, request_id) = row
                count = 1
            else:
                index, origin, request_id, count = row
            for k in range(int(count)):
                applied.record(int(index) + k, int(origin), int(request_id) + k)
        return applied
