"""What a leader knows about each follower's log, and how fast it may send to it.

Theory of operation. A follower's `Progress` is in one of three states:

- PROBE: the leader does not know where the follower's log matches. It sends one
  append at a time (`probe_sent` pauses it) and backs `next` off on each rejection,
  using the follower's conflict hint to skip whole terms. A heartbeat response
  unpauses it, so a lost probe is retried once per heartbeat.
- REPLICATE: the follower accepted an append; the leader streams appends
  optimistically, advancing `next` as it sends, within a window of in-flight
  messages bounded in count and bytes (`Inflights`).
- SNAPSHOT: the entries the follower needs are compacted away; a snapshot is in
  flight and nothing else is sent until it is reported done or failed.

Transitions: PROBE -> REPLICATE on the first accepted append; REPLICATE -> PROBE on a
rejection or when the follower is unreachable; any -> SNAPSHOT when the log it needs
is gone; SNAPSHOT -> PROBE when the snapshot is applied (match >= pending snapshot)
or reported failed.
# invariant: 0 <= match < next
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A window of appends sent but not yet acknowledged, bounded in count and bytes.

    Each element is (last index of the message, its size in bytes). `max_bytes` of 0
    means no byte bound.
    """

    __slots__ = ("_items", "bytes", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        assert max_count > 0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, last_index: int, size_bytes: int) -> None:
        assert not self.full(), "adding to a full in-flight window"
        assert not self._items or self._items[-1][0] < last_index, "in-flight indexes must grow"
        self._items.append((last_index, size_bytes))
        self.bytes += size_bytes

    def free_le(self, index: int) -> None:
        """Forget every in-flight message whose last index is <= index."""
        items = self._items
        while items and items[0][0] <= index:
            self.bytes -= items.popleft()[1]

    def free_first_one(self) -> None:
        if self._items:
            self.bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.max_count or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes
        )

    def reset(self) -> None:
        self._items.clear()
        self.bytes = 0


class Progress:
    __slots__ = (
        "awaited_commit",
        "inflights",
        "is_learner",
        "last_heard_tick",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "state",
    )

    def __init__(self, next_index: int, inflights: Inflights, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        # The leader's tick count when this follower last answered; check-quorum
        # and the snapshot gate ask whether that is within an election timeout.
        self.last_heard_tick = 0
        self.inflights = inflights
        self.is_learner = is_learner
        # With `Config.eager_commit` off: the commit index this follower waits on
        # (for a proposal it forwarded, a read index it asked for, or a membership
        # change) and has not been sent yet; 0 if none.
        self.awaited_commit = 0

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.value}, "
            f"inflight={len(self.inflights)})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """Record that the follower matches up to `index`; False if that is old news."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejection of the append at `rejected`. False if it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, entry_count: int, size_bytes: int) -> None:
        """Update after sending an append carrying `entry_count` entries."""
        if self.state is ProgressState.REPLICATE:
            if entry_count > 0:
                self.next += entry_count
                self.inflights.add(self.next - 1, size_bytes)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
        assert self.match < self.next
