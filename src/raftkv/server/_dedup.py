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
    __slots__ = ("_index_of", "_order", "window_entries")

    def __init__(self, window_entries: int = DEFAULT_WINDOW_ENTRIES) -> None:
        assert window_entries > 0
        self.window_entries = window_entries
        self._index_of: dict[tuple[int, int], int] = {}
        self._order: collections.deque[tuple[int, tuple[int, int]]] = collections.deque()

    def __len__(self) -> int:
        return len(self._index_of)

    def should_apply(self, index: int, origin: int, request_id: int, base: int) -> bool:
        """Whether the entry at `index` carrying this request should be applied (and
        then recorded); False for a duplicate or a too-late retry."""
        if (origin, request_id) in self._index_of:
            return False
        return not (base and index - base > self.window_entries)

    def record(self, index: int, origin: int, request_id: int) -> None:
        key = (origin, request_id)
        self._index_of[key] = index
        order = self._order
        order.append((index, key))
        horizon = index - self.window_entries
        index_of = self._index_of
        while order[0][0] <= horizon:
            old_index, old_key = order.popleft()
            if index_of.get(old_key) == old_index:
                del index_of[old_key]

    def dump(self) -> list[tuple[int, tuple[int, int]]]:
        """The window as (index, (origin, request id)) rows: a C-speed copy, cheap
        enough for the event loop; msgpack serialises the rows as they are."""
        return list(self._order)

    @classmethod
    def load(cls, rows: list[Any], window_entries: int) -> AppliedRequests:
        applied = cls(window_entries)
        for index, (origin, request_id) in rows:
            key = (int(origin), int(request_id))
            applied._index_of[key] = int(index)
            applied._order.append((int(index), key))
        return applied
