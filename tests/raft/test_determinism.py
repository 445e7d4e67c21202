"""Same seed and same inputs give the same outputs, message for message."""

from __future__ import annotations

import random
from collections.abc import Callable

from raftkv.raft import Message

from .network import Network

ELECTION_TICK = 10


def leader_other_than(net: Network, old: int) -> Callable[[], bool]:
    return lambda: net.leader() not in (None, old)


def scripted_run(seed: int) -> tuple[list[Message], dict[int, list[tuple[int, bytes]]]]:
    """Elections from cold start, proposals, a partition and its healing, a
    compaction and a snapshot, and a leadership transfer, all driven by `seed`."""
    net = Network(5, seed=seed)
    net.tick_until(lambda: net.leader() is not None)
    rng = random.Random(seed)
    for i in range(20):
        leader = net.leader()
        assert leader is not None
        target = rng.choice([leader, rng.randint(1, 5)])
        if net.nodes[target].raw.leader_id == 0:
            target = leader
        net.propose(target, b"v%d" % i)
        if i == 5:
            net.isolate(leader)
            net.tick_until(leader_other_than(net, leader))
        if i == 10:
            net.recover()
            net.tick_all(3)
            new_leader = net.leader()
            assert new_leader is not None
            net.compact(new_leader, net.nodes[new_leader].raw.status().applied)
        if i == 15:
            current = net.leader()
            assert current is not None
            net.nodes[current].raw.transfer_leader(current % 5 + 1)
            net.stabilize()
        net.tick_all(rng.randint(0, 3))
    net.tick_all(5)
    return net.sent, {i: net.log_of(i) for i in net.nodes}


def test_identical_runs_send_identical_messages() -> None:
    first_messages, first_logs = scripted_run(seed=7)
    second_messages, second_logs = scripted_run(seed=7)
    assert len(first_messages) > 500
    assert first_messages == second_messages
    assert first_logs == second_logs


def test_different_seeds_give_different_runs() -> None:
    first_messages, _ = scripted_run(seed=1)
    second_messages, _ = scripted_run(seed=2)
    assert first_messages != second_messages
