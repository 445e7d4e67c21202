"""The simulation's key-value state machine."""

from __future__ import annotations

from .kv import APPEND, PUT, Command, KVStore


def test_commands_round_trip_through_bytes() -> None:
    command = Command("c1.7", APPEND, "k", "v")
    assert Command.decode(command.encode()) == command


def test_put_overwrites_and_append_concatenates() -> None:
    store = KVStore()
    store.apply(1, Command("a", PUT, "k", "x"))
    store.apply(2, Command("b", APPEND, "k", "y"))
    store.apply(3, Command("c", APPEND, "other", "z"))
    assert store.get("k") == "xy"
    assert store.get("other") == "z"
    assert store.get("missing") is None


def test_a_duplicated_command_is_applied_once() -> None:
    store = KVStore()
    assert store.apply(1, Command("a", APPEND, "k", "x"))
    assert not store.apply(2, Command("a", APPEND, "k", "x"))
    assert store.get("k") == "x"
    assert store.applied_index == 2


def test_no_ops_advance_the_applied_index_only() -> None:
    store = KVStore()
    store.apply(1, None)
    assert store.applied_index == 1
    assert store.values == {}


def test_snapshot_restores_values_applied_ids_and_index() -> None:
    store = KVStore()
    store.apply(1, Command("a", PUT, "k", "x"))
    store.apply(2, None)
    restored = KVStore.restore(store.snapshot())
    assert restored.values == store.values
    assert restored.applied_op_ids == {"a"}
    assert restored.applied_index == 2
    assert not restored.apply(3, Command("a", PUT, "k", "x"))


def test_restoring_an_empty_snapshot_gives_an_empty_store() -> None:
    restored = KVStore.restore(b"")
    assert restored.values == {}
    assert restored.applied_index == 0
