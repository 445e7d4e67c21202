from __future__ import annotations

import collections
import gc

from hypothesis import given
from hypothesis import strategies as st

from raftkv.server._dedup import AppliedRequests


def test_a_retry_of_an_applied_request_is_skipped() -> None:
    applied = AppliedRequests(window_entries=100)
    assert applied.should_apply(10, origin=2, request_id=7, base=0)
    applied.record(10, 2, 7)
    assert not applied.should_apply(12, origin=2, request_id=7, base=9)
    assert applied.should_apply(12, origin=3, request_id=7, base=9)


def test_a_retry_of_a_lost_request_is_applied() -> None:
    applied = AppliedRequests(window_entries=100)
    assert applied.should_apply(15, origin=2, request_id=8, base=9)


def test_a_retry_too_far_past_its_base_is_skipped_as_possibly_applied() -> None:
    applied = AppliedRequests(window_entries=100)
    assert not applied.should_apply(200, origin=2, request_id=8, base=99)
    assert applied.should_apply(199, origin=2, request_id=8, base=99)


def test_records_older_than_the_window_are_forgotten() -> None:
    applied = AppliedRequests(window_entries=10)
    for index in range(1, 31):
        applied.record(index, 1, index)
    assert len(applied) == 10
    assert applied.should_apply(31, 1, 5, 0)  # Forgotten: index 5 is out of the window.
    assert not applied.should_apply(31, 1, 25, 0)


def test_dump_and_load_round_trip_gives_the_same_decisions() -> None:
    applied = AppliedRequests(window_entries=50)
    for index in range(1, 80):
        applied.record(index, index % 3, index * 7)
    restored = AppliedRequests.load(applied.dump(), 50)
    assert restored.dump() == applied.dump()
    for request in range(0, 600, 7):
        assert restored.should_apply(80, request // 7 % 3, request, 0) == applied.should_apply(
            80, request // 7 % 3, request, 0
        )


def test_consecutive_requests_of_one_origin_are_one_run() -> None:
    applied = AppliedRequests(window_entries=1_000)
    for k in range(500):
        applied.record(10 + k, 2, 7_000 + k)
    applied.record(600, 3, 1)  # another origin
    applied.record(601, 2, 7_500)  # back to the first, after a gap in the log
    assert applied.dump() == [(10, 2, 7_000, 500), (600, 3, 1, 1), (601, 2, 7_500, 1)]


def test_a_run_never_spans_two_origins() -> None:
    applied = AppliedRequests(window_entries=100)
    applied.record(1, 2, 101)
    applied.record(2, 1, 101)
    applied.record(3, 2, 102)  # Consecutive index and id, but origin 2 after 1.
    assert applied.dump() == [(1, 2, 101, 1), (2, 1, 101, 1), (3, 2, 102, 1)]


def test_snapshot_rows_of_one_request_each_still_load() -> None:
    old_rows = [[10, [2, 7]], [11, [2, 8]], [13, [3, 1]]]  # (index, (origin, request id))
    applied = AppliedRequests.load(old_rows, 100)
    assert applied.dump() == [(10, 2, 7, 2), (13, 3, 1, 1)]
    assert not applied.should_apply(20, 2, 8, 0)


class Reference:
    """The window as first written, one row per request: the runs must decide
    exactly as this does."""

    def __init__(self, window_entries: int) -> None:
        self.window_entries = window_entries
        self.index_of: dict[tuple[int, int], int] = {}
        self.order: collections.deque[tuple[int, tuple[int, int]]] = collections.deque()

    def should_apply(self, index: int, origin: int, request_id: int, base: int) -> bool:
        if (origin, request_id) in self.index_of:
            return False
        return not (base and index - base > self.window_entries)

    def record(self, index: int, origin: int, request_id: int) -> None:
        self.index_of[(origin, request_id)] = index
        self.order.append((index, (origin, request_id)))
        while self.order[0][0] <= index - self.window_entries:
            old_index, old_key = self.order.popleft()
            if self.index_of.get(old_key) == old_index:
                del self.index_of[old_key]


step = st.tuples(
    st.integers(0, 3),  # entries without a request before this one (no-ops, changes)
    st.integers(1, 3),  # origin
    st.sampled_from(["next", "next", "next", "jump", "retry"]),
    st.integers(0, 40),  # how far back a retry's request id or base reaches
)


@given(window=st.integers(1, 30), steps=st.lists(step, max_size=300))
def test_runs_decide_exactly_as_one_row_per_request(window: int, steps: list) -> None:  # type: ignore[type-arg]
    applied = AppliedRequests(window)
    reference = Reference(window)
    last_id = {1: 100, 2: 100, 3: 100}  # Close: one origin may continue another run.
    index = 0
    for gap, origin, kind, back in steps:
        index += gap + 1
        if kind == "retry":
            request_id, base = last_id[origin] - back, max(0, index - back)
        else:
            last_id[origin] += 1 if kind == "next" else 2 + back
            request_id, base = last_id[origin], 0
        decision = reference.should_apply(index, origin, request_id, base)
        assert applied.should_apply(index, origin, request_id, base) == decision
        if decision:
            reference.record(index, origin, request_id)
            applied.record(index, origin, request_id)
        assert len(applied) == len(reference.index_of)
    restored = AppliedRequests.load(applied.dump(), window)
    old_format = AppliedRequests.load([[i, list(key)] for i, key in reference.order], window)
    for origin, newest in last_id.items():
        for request_id in range(newest - 50, newest + 1):
            expected = reference.should_apply(index + 1, origin, request_id, 0)
            assert restored.should_apply(index + 1, origin, request_id, 0) == expected
            assert old_format.should_apply(index + 1, origin, request_id, 0) == expected


def test_recording_requests_gives_the_garbage_collector_nothing_to_track() -> None:
    """The window holds 100,000 requests by default, and a busy node records
    thousands a second: objects the collector tracks would make its young
    collections take tens of milliseconds (seen as the REST bench's p99)."""
    applied = AppliedRequests(window_entries=1_000)
    gc.disable()
    try:
        before = gc.get_count()[0]
        for k in range(5_000):
            applied.record(10 + k, 2, 7 + k)
        tracked = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert tracked < 50
