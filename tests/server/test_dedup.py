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
