"""Config.validate rejects unsafe or inconsistent settings, naming the knob."""

from __future__ import annotations

import dataclasses
import random

import pytest

from raftkv.raft import Config, ConfigError, MemoryStorage, RawNode


def test_defaults_are_valid() -> None:
    Config(id=1).validate()


@pytest.mark.parametrize(
    ("changes", "knob"),
    [
        ({"id": 0}, "node id"),
        ({"id": -2}, "node id"),
        ({"heartbeat_tick": 0}, "heartbeat_tick"),
        ({"election_tick": 1, "heartbeat_tick": 1}, "election_tick"),
        ({"election_tick": 3, "heartbeat_tick": 5}, "election_tick"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"max_size_per_msg_bytes": 0}, "max_size_per_msg_bytes"),
        ({"max_applying_bytes": 0}, "max_applying_bytes"),
        ({"max_inflight_bytes": -1}, "max_inflight_bytes"),
        ({"max_uncommitted_entries_bytes": -1}, "max_uncommitted_entries_bytes"),
        ({"max_inflight_bytes": 100, "max_size_per_msg_bytes": 1000}, "max_inflight_bytes"),
        ({"applied": -1}, "applied"),
    ],
)
def test_unsafe_settings_are_rejected(changes: dict[str, int], knob: str) -> None:
    config = dataclasses.replace(Config(id=1), **changes)
    with pytest.raises(ConfigError, match=knob):
        config.validate()


def test_raw_node_validates_its_config() -> None:
    with pytest.raises(ConfigError):
        RawNode(Config(id=1, heartbeat_tick=10, election_tick=10), MemoryStorage(), random.Random())


def test_byte_caps_of_zero_mean_no_cap() -> None:
    Config(id=1, max_inflight_bytes=0, max_uncommitted_entries_bytes=0).validate()
    Config(id=1, max_inflight_bytes=1 << 20, max_size_per_msg_bytes=1 << 20).validate()
