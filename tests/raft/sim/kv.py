"""The small key-value state machine the simulated nodes apply committed entries to.

A command carries a unique operation id; the store remembers the ids it applied and
ignores a second copy, since a duplicated proposal message can put the same command
in the log twice. That record is part of the snapshot, as the real store's client
sessions are.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

PUT = "put"
APPEND = "append"
GET = "get"


@dataclass(frozen=True, slots=True)
class Command:
    op_id: str
    kind: str
    key: str
    value: str

    def __post_init__(self) -> None:
        assert self.kind in (PUT, APPEND), f"not a write: {self.kind}"

    def encode(self) -> bytes:
        data: bytes = msgpack.packb([self.op_id, self.kind, self.key, self.value])
        return data

    @classmethod
    def decode(cls, data: bytes) -> Command:
        op_id, kind, key, value = msgpack.unpackb(data)
        return cls(op_id, kind, key, value)


class KVStore:
    """Keys to string values, with exactly-once application of commands."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.applied_op_ids: set[str] = set()
        #: Index of the last log entry applied (or restored from a snapshot).
        self.applied_index = 0

    def apply(self, index: int, command: Command | None) -> bool:
        """Apply the entry at `index` (`None` for a no-op or a membership change).
        Returns False when the command was a duplicate and changed nothing."""
        assert index == self.applied_index + 1, f"applying index {index} after {self.applied_index}"
        self.applied_index = index
        if command is None:
            return True
        if command.op_id in self.applied_op_ids:
            return False
        self.applied_op_ids.add(command.op_id)
        if command.kind == PUT:
            self.values[command.key] = command.value
        else:
            self.values[command.key] = self.values.get(command.key, "") + command.value
        return True

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def snapshot(self) -> bytes:
        data: bytes = msgpack.packb([self.applied_index, self.values, sorted(self.applied_op_ids)])
        return data

    @classmethod
    def restore(cls, data: bytes) -> KVStore:
        store = cls()
        if data:
            applied_index, values, op_ids = msgpack.unpackb(data)
            store.applied_index = applied_index
            store.values = dict(values)
            store.applied_op_ids = set(op_ids)
        return store
