"""Snapshots: round trips, frozen views, chunking, bad input, determinism."""

import random
import threading

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    SNAPSHOT_FORMAT,
    KvConfig,
    KvSnapshot,
    KvSnapshotError,
    KvStateMachine,
    PutCondition,
    encode_append,
    encode_batch,
    encode_cas,
    encode_cas_revision,
    encode_delete,
    encode_incr,
    encode_noop,
    encode_put,
    encode_register_session,
    with_session,
    with_timestamp,
)

from .helpers import Applier


def populated(keys: int = 100) -> Applier:
    apply = Applier()
    apply(encode_batch([encode_put(b"key%05d" % i, b"value%d" % i) for i in range(keys)]))
    client = apply(with_timestamp(encode_register_session(), 1234))
    assert isinstance(client, int)
    apply(with_session(encode_incr(b"counter", 5), client, 1))
    apply(encode_delete(b"key00003"))
    return apply


def state_of(machine: KvStateMachine) -> tuple[object, ...]:
    keys = [key for key, _ in machine.scan()]
    return (
        machine.applied_index,
        machine.revision,
        machine.log_time_ms,
        machine.session_count,
        [(key, machine.get_with_revision(key)) for key in keys],
    )


def test_round_trip_preserves_everything() -> None:
    apply = populated()
    data = apply.machine.snapshot()
    restored = KvStateMachine()
    restored.restore(data)
    assert state_of(restored) == state_of(apply.machine)
    assert restored.snapshot() == data, "serialising is deterministic and lossless"


def test_empty_machine_round_trips() -> None:
    data = KvStateMachine().snapshot()
    restored = KvStateMachine()
    restored.apply(5, encode_put(b"k", b"v"))
    restored.restore(data)
    assert len(restored) == 0
    assert restored.applied_index == 0
    assert restored.revision == 0


def test_restore_replaces_state_and_rebuilds_the_scan_index() -> None:
    source = populated(10)
    target = Applier()
    target(encode_put(b"zzz", b"gone"))
    assert target.machine.scan() == [(b"zzz", b"gone")]
    target.machine.restore(source.machine.snapshot())
    assert b"zzz" not in target.machine
    assert target.machine.scan(b"key0000") == source.machine.scan(b"key0000")


def test_frozen_view_is_unaffected_by_later_applies() -> None:
    apply = populated(10)
    expected = apply.machine.snapshot()
    frozen = apply.machine.freeze()
    apply(encode_put(b"key00000", b"changed"))
    apply(encode_delete(b"key00001"))
    apply(encode_register_session())
    assert frozen.to_bytes() == expected


def test_frozen_view_serialises_on_another_thread_while_apply_continues() -> None:
    apply = populated(5000)
    expected = apply.machine.snapshot()
    frozen = apply.machine.freeze()
    out: list[bytes] = []
    thread = threading.Thread(target=lambda: out.append(frozen.to_bytes()))
    thread.start()
    for i in range(2000):
        apply(encode_put(b"key%05d" % (i * 3), b"x"))
    thread.join()
    assert out == [expected]


@pytest.mark.parametrize("chunk_keys", [1, 7, 100, 1000])
def test_chunking_does_not_change_the_state(chunk_keys: int) -> None:
    apply = populated(100)
    frozen = apply.machine.freeze()
    chunks = list(frozen.chunks(chunk_keys))
    assert len(chunks) == 1 + -(-len(frozen) // chunk_keys)
    restored = KvStateMachine()
    restored.restore(b"".join(chunks))
    assert state_of(restored) == state_of(apply.machine)


def test_install_takes_over_a_decoded_snapshot() -> None:
    apply = populated(10)
    decoded = KvSnapshot.from_bytes(apply.machine.snapshot())
    other = KvStateMachine()
    other.install(decoded)
    assert state_of(other) == state_of(apply.machine)
    with pytest.raises(AssertionError, match="installed"):
        decoded.to_bytes()


def test_install_copies_a_view() -> None:
    apply = populated(10)
    view = apply.machine.freeze()
    other = KvStateMachine()
    other.install(view)
    other.apply(other.applied_index + 1, encode_put(b"key00000", b"other"))
    apply(encode_put(b"key00001", b"mine"))
    assert other.get(b"key00001") == b"value1"
    assert apply.machine.get(b"key00000") == b"value0"


def test_reads_and_writes_during_a_view_see_the_live_state() -> None:
    apply = populated(10)
    view = apply.machine.freeze()
    apply(encode_put(b"key00000", b"new"))
    apply(encode_delete(b"key00001"))
    apply(encode_put(b"fresh", b"1"))
    apply(encode_delete(b"fresh"))
    apply(encode_put(b"fresh2", b"2"))
    machine = apply.machine
    assert machine.get(b"key00000") == b"new"
    assert machine.get(b"key00001") is None and b"key00001" not in machine
    assert machine.get(b"fresh") is None and machine.get(b"fresh2") == b"2"
    assert len(machine) == 10 + 1 - 1 - 1 + 1
    assert machine.mod_revision(b"fresh2") == machine.revision
    keys = [key for key, _ in machine.scan(b"key0000")]
    assert b"key00001" not in keys and b"key00000" in keys
    assert len(view) == 10, "the view still holds the frozen map"


def test_view_serialises_the_frozen_state_and_the_overlay_folds_back() -> None:
    apply = populated(10)
    expected = apply.machine.snapshot()
    view = apply.machine.freeze()
    apply(encode_put(b"key00000", b"new"))
    apply(encode_delete(b"key00001"))
    apply(encode_put(b"fresh", b"1"))
    live = state_of(apply.machine)
    assert view.to_bytes() == expected
    apply(encode_noop())  # folds the overlay into the map
    assert state_of(apply.machine)[1:] == live[1:]
    with pytest.raises(AssertionError, match="released"):
        view.to_bytes()


def test_a_second_view_while_the_first_is_out_gets_its_own_copy() -> None:
    apply = populated(10)
    first_expected = apply.machine.snapshot()
    first = apply.machine.freeze()
    apply(encode_put(b"key00000", b"new"))
    second_expected_state = state_of(apply.machine)
    second = apply.machine.freeze()
    apply(encode_put(b"key00000", b"newer"))
    assert first.to_bytes() == first_expected
    restored = KvStateMachine()
    restored.restore(second.to_bytes())
    assert state_of(restored)[1:] == second_expected_state[1:]


def test_a_dropped_view_is_released() -> None:
    apply = populated(10)
    apply.machine.freeze()  # dropped at once
    apply(encode_put(b"key00000", b"new"))
    apply(encode_noop())
    assert apply.machine._view is None, "the overlay was folded back into the map"
    view = apply.machine.freeze()
    assert KvSnapshot.from_bytes(view.to_bytes()).revision == apply.machine.revision


def snapshot_with_header(header: list[object], *chunks: object) -> bytes:
    return msgpack.packb(msgpack.packb(header)) + b"".join(msgpack.packb(c) for c in chunks)


BAD_SNAPSHOTS = {
    "empty": b"",
    "garbage": b"\xc1\xc1",
    "header not bin": msgpack.packb([SNAPSHOT_FORMAT, 0, 0, 0, 1, 0, []]),
    "header short": snapshot_with_header([SNAPSHOT_FORMAT, 0, 0]),
    "future format": snapshot_with_header([SNAPSHOT_FORMAT + 1, 0, 0, 0, 1, 0, []]),
    "negative index": snapshot_with_header([SNAPSHOT_FORMAT, -1, 0, 0, 1, 0, []]),
    "missing chunk": snapshot_with_header([SNAPSHOT_FORMAT, 1, 1, 0, 1, 1, []]),
    "chunk not a map": snapshot_with_header([SNAPSHOT_FORMAT, 1, 1, 0, 1, 1, []], [1]),
    "too many keys": snapshot_with_header(
        [SNAPSHOT_FORMAT, 1, 1, 0, 1, 1, []], {b"a": [b"1", 1], b"b": [b"2", 1]}
    ),
    "trailing data": snapshot_with_header([SNAPSHOT_FORMAT, 0, 0, 0, 1, 0, []]) + b"\x00",
    "bad session": snapshot_with_header([SNAPSHOT_FORMAT, 0, 0, 0, 1, 0, [[1, 2]]]),
    "bad session result": snapshot_with_header(
        [SNAPSHOT_FORMAT, 0, 0, 0, 2, 0, [[1, 1, 0, [[b"x", None]]]]]
    ),
}


@pytest.mark.parametrize("data", BAD_SNAPSHOTS.values(), ids=BAD_SNAPSHOTS.keys())
def test_bad_snapshot_is_refused_and_state_kept(data: bytes) -> None:
    apply = populated(5)
    before = state_of(apply.machine)
    with pytest.raises(KvSnapshotError):
        apply.machine.restore(data)
    assert state_of(apply.machine) == before


def test_truncated_snapshots_are_refused() -> None:
    data = populated(50).machine.snapshot()
    for cut in range(0, len(data), max(1, len(data) // 40)):
        with pytest.raises(KvSnapshotError):
            KvSnapshot.from_bytes(data[:cut])


# --------------------------------------------------------------------------- determinism

KEYS = [b"a", b"b", b"c"]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"1", b"-7", b"x", b"12"])
maybe_values = st.none() | values
plain_commands = st.one_of(
    st.builds(encode_put, keys, values, st.sampled_from(list(PutCondition))),
    st.builds(encode_delete, keys),
    st.builds(encode_cas, keys, maybe_values, maybe_values),
    st.builds(encode_cas_revision, keys, st.integers(0, 30), maybe_values),
    st.builds(encode_append, keys, values),
    st.builds(encode_incr, keys, st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3)),
    st.just(encode_noop()),
    st.just(encode_register_session()),
    st.binary(max_size=6),
)


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    command = draw(plain_commands)
    if draw(st.booleans()):
        command = with_session(command, draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    if draw(st.integers(0, 5)) == 0:
        command = encode_batch([command, draw(plain_commands)])
    if draw(st.booleans()):
        command = with_timestamp(command, draw(st.integers(0, 5000)))
    return command


@settings(max_examples=60, deadline=None)
@given(st.lists(entries(), max_size=40), st.integers(0, 40), st.integers(0, 10))
def test_replicas_agree_including_one_restored_from_a_snapshot(
    log: list[bytes], snapshot_at: int, release_after: int
) -> None:
    config = KvConfig(session_ttl_ms=1500, max_sessions=3, session_results_kept=2)
    first, second = KvStateMachine(config), KvStateMachine(config)
    view = None
    for index, data in enumerate(log, start=1):
        result = first.apply(index, data)
        if index == snapshot_at:
            second = KvStateMachine(config)
            second.restore(first.snapshot())
            # Keep a view out on the first replica for a while: applying under it
            # must not change any result or the state.
            view, view_state = first.freeze(), state_of(first)
        else:
            assert second.apply(index, data) == result
        if view is not None and index == snapshot_at + release_after:
            restored = KvStateMachine(config)
            restored.restore(view.to_bytes())
            assert state_of(restored) == view_state
    assert state_of(first) == state_of(second)


@pytest.mark.parametrize("seed", range(3))
def test_views_never_change_what_the_machine_holds(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fold two keys per apply so that writes also land while an overlay is being
    # folded back, and take views at random moments against a machine that never does.
    monkeypatch.setattr(KvStateMachine, "_FOLD_PER_APPLY", 2)
    rng = random.Random(seed)
    plain, viewed = KvStateMachine(), KvStateMachine()
    views: list[tuple[KvSnapshot, bytes]] = []
    for index in range(1, 400):
        key = b"k%d" % rng.randrange(30)
        data = rng.choice(
            [
                encode_put(key, b"%d" % index),
                encode_delete(key),
                encode_append(key, b"+"),
                encode_cas(key, None, b"new"),
            ]
        )
        assert viewed.apply(index, data) == plain.apply(index, data)
        assert len(viewed) == len(plain)
        assert viewed.get(key) == plain.get(key)
        if rng.random() < 0.1:
            views.append((viewed.freeze(), plain.snapshot()))
        if views and rng.random() < 0.1:
            view, expected = views.pop(rng.randrange(len(views)))
            restored, reference = KvStateMachine(), KvStateMachine()
            restored.restore(view.to_bytes())
            reference.restore(expected)
            assert state_of(restored) == state_of(reference)
        if rng.random() < 0.05:
            assert viewed.scan(b"k1") == plain.scan(b"k1")
    assert state_of(viewed) == state_of(plain)
