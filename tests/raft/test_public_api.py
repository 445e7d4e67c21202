"""`raftkv.raft` exports exactly the names in its `__all__`."""

from __future__ import annotations

import types

import raftkv.raft


def test_every_name_in_all_exists() -> None:
    missing = [name for name in raftkv.raft.__all__ if not hasattr(raftkv.raft, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(set(raftkv.raft.__all__)) == len(raftkv.raft.__all__)


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(raftkv.raft).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(raftkv.raft.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from raftkv.raft import *", namespace)
    del namespace["__builtins__"]
    assert set(namespace) == set(raftkv.raft.__all__)
