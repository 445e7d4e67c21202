"""Plain puts skip building a command object per put (`plain_puts`); everything a
client can observe must be what the general decode-then-execute path gives."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    CommandError,
    ErrorCode,
    InvalidCommand,
    KvConfig,
    KvStateMachine,
    PutCondition,
    encode_batch,
    encode_delete,
    encode_put,
)
from raftkv.kv._commands import decode_fields, plain_puts

_KEYS = st.sampled_from([b"a", b"b", b"c", b""])
_VALUES = st.binary(max_size=6)  # max_value_bytes is 4 below: some are too large

# Entries that take the fast path, and near misses that must not.
_PUT = st.builds(lambda k, v: encode_put(k, v), _KEYS, _VALUES)
_NEAR_MISS = st.sampled_from(
    [
        msgpack.packb([True, b"k", b"v", 0]),  # a bool is not opcode 1
        msgpack.packb([1, b"k", b"v", False]),  # nor condition 0
        msgpack.packb([1, "k", b"v", 0]),  # a str key
        msgpack.packb([1, b"k", "v", 0]),  # a str value
        msgpack.packb([1, b"k", b"v", 1]),  # SET NX
        msgpack.packb([1, b"k", b"v"]),  # wrong arity
        encode_delete(b"a"),
    ]
)
_ITEM = st.one_of(_PUT, _PUT, _PUT, _NEAR_MISS)
_ENTRY = st.one_of(_ITEM, st.lists(_ITEM, max_size=6).map(encode_batch))


def _state(machine: KvStateMachine) -> object:
    keys = [key for key, _ in machine.scan()]
    return (
        [(key, machine.get_with_revision(key)) for key in keys],
        machine.revision,
        len(machine),
        machine.applied_index,
    )


def _general_apply(machine: KvStateMachine, data: bytes) -> object:
    try:
        command = decode_fields(msgpack.unpackb(data))
    except InvalidCommand as error:
        return CommandError(ErrorCode.MALFORMED, f"malformed command: {error}")
    return machine._execute(command)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_ENTRY, st.sampled_from(["", "", "freeze", "release"])), max_size=12))
def test_fast_path_matches_the_general_path(steps: list[tuple[bytes, str]]) -> None:
    """Also while a snapshot view borrows the map, and while it is folded back."""
    config = KvConfig(max_value_bytes=4)
    fast, general = KvStateMachine(config), KvStateMachine(config)
    views: list[object] = []
    for index, (data, view_action) in enumerate(steps, 1):
        if view_action == "freeze":
            views.append(fast.freeze())
        elif view_action == "release" and views:
            views.pop(0).release()  # type: ignore[attr-defined]
        expected = _general_apply(general, data)
        general._applied_index = index
        assert fast.apply(index, data) == expected
        assert _state(fast) == _state(general)


def test_only_plain_puts_take_the_fast_path() -> None:
    assert plain_puts(msgpack.unpackb(encode_put(b"k", b"v"))) == [[1, b"k", b"v", 0]]
    batch = encode_batch([encode_put(b"k", b"v"), encode_put(b"j", b"w")])
    assert plain_puts(msgpack.unpackb(batch)) == [[1, b"k", b"v", 0], [1, b"j", b"w", 0]]
    mixed = encode_batch([encode_put(b"k", b"v"), encode_delete(b"k")])
    assert plain_puts(msgpack.unpackb(mixed)) is None
    assert plain_puts(msgpack.unpackb(msgpack.packb([True, b"k", b"v", 0]))) is None


def test_a_batch_with_one_malformed_item_applies_nothing() -> None:
    machine = KvStateMachine()
    bad = encode_batch([encode_put(b"k", b"v"), msgpack.packb([1, b"k", b"v", 9])])
    result = machine.apply(1, bad)
    assert type(result).__name__ == "CommandError"
    assert len(machine) == 0


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 100_000])
@pytest.mark.parametrize("condition", list(PutCondition))
def test_encode_put_is_msgpack_of_the_fields(size: int, condition: PutCondition) -> None:
    key, value = b"k" * (size % 300 + 1), b"v" * size
    assert encode_put(key, value, condition) == msgpack.packb([1, key, value, int(condition)])
