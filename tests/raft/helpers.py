"""Small builders for tests that drive one RawNode by hand."""

from __future__ import annotations

import random
from typing import Any

from raftkv.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Ready,
    Snapshot,
    SnapshotMetadata,
)


def make_storage(
    voters: tuple[int, ...] = (1, 2, 3),
    terms: tuple[int, ...] = (),
    *,
    learners: tuple[int, ...] = (),
    hard_state: HardState | None = None,
) -> MemoryStorage:
    """A storage whose membership is `voters`/`learners` and whose log holds one entry
    per element of `terms` (index 1, 2, ...), with that term."""
    storage = MemoryStorage()
    storage.apply_snapshot(
        Snapshot(SnapshotMetadata(index=0, term=0, conf_state=ConfState(voters, learners)))
    )
    storage.append([Entry(term, index) for index, term in enumerate(terms, 1)])
    last_term = terms[-1] if terms else 0
    storage.set_hard_state(hard_state or HardState(term=last_term))
    return storage


def make_node(
    node_id: int = 1,
    voters: tuple[int, ...] = (1, 2, 3),
    terms: tuple[int, ...] = (),
    *,
    seed: int = 0,
    storage: MemoryStorage | None = None,
    **config: Any,
) -> RawNode:
    storage = storage if storage is not None else make_storage(voters, terms)
    return RawNode(Config(id=node_id, **config), storage, random.Random(seed))


def msg(kind: MessageType, frm: int, to: int, term: int, **fields: Any) -> Message:
    return Message(kind, to=to, frm=frm, term=term, **fields)


def drain(node: RawNode, storage: MemoryStorage | None = None) -> Ready:
    """Take one Ready, persist it into `storage` if given, and advance."""
    rd = node.ready()
    if storage is not None:
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
    node.advance(rd)
    return rd


def sent_types(rd: Ready) -> list[tuple[MessageType, int]]:
    return [(m.type, m.to) for m in rd.messages]
