"""Scripted scenarios on the simulated cluster: no chaos, no random clients, each
fault placed by hand. Each one pins down one behaviour the Raft core promises."""

from __future__ import annotations

import itertools

import pytest

from raftkv.raft import Role

from .cluster import TICK_UNITS, Cluster, ClusterConfig
from .kv import PUT
from .simulation import run_simulation
from .workload import ClientOp

ELECTION_TICKS = ClusterConfig().election_tick
ELECTION_UNITS = ELECTION_TICKS * TICK_UNITS
_op_ids = itertools.count(1)


def started_cluster(nodes: int = 3, seed: int = 1) -> Cluster:
    cluster = Cluster(seed, ClusterConfig(nodes=nodes))
    assert cluster.run_until(lambda: cluster.leader_id() is not None, 10 * ELECTION_UNITS)
    return cluster


def write(cluster: Cluster, node_id: int, key: str, value: str) -> ClientOp:
    """Put through `node_id` and run until that node has applied it."""
    op_id = f"scripted{next(_op_ids)}"
    op = ClientOp(op_id, 1, PUT, key, value, call_time=cluster.history_time(), node_id=node_id)
    cluster.submit(op)
    assert cluster.run_until(lambda: op.done, 5 * ELECTION_UNITS), f"{op_id} did not complete"
    assert not op.refused, f"{op_id} was refused by node {node_id}"
    return op


def others(cluster: Cluster, node_id: int) -> list[int]:
    return [other for other in cluster.nodes if other != node_id]


def test_isolated_leader_steps_down_and_the_majority_elects_a_new_one() -> None:
    cluster = started_cluster(nodes=3)
    old = cluster.leader()
    assert old is not None
    old_term = old.raw.term
    isolated_at = cluster.time
    cluster.network.isolate(old.id, others(cluster, old.id))

    def new_leader_elsewhere() -> bool:
        leader_id = cluster.leader_id()
        return leader_id is not None and leader_id != old.id

    # Check quorum: with no heartbeat answered for an election timeout, the old
    # leader steps down on its own, although it hears from nobody.
    assert cluster.run_until(lambda: old.role is not Role.LEADER, 3 * ELECTION_UNITS)
    assert cluster.time - isolated_at <= 2 * ELECTION_UNITS + TICK_UNITS
    assert cluster.run_until(new_leader_elsewhere, 4 * ELECTION_UNITS)
    new = cluster.leader()
    assert new is not None
    assert new.raw.term > old_term
    # Pre-vote: the isolated node cannot win a pre-vote, so it never raises its term.
    cluster.run_for(5 * ELECTION_UNITS)
    assert old.raw.term == old_term
    assert old.role is not Role.LEADER

    write(cluster, new.id, "k", "written while the old leader was away")
    cluster.network.heal()
    assert cluster.run_until(lambda: old.leader_id == new.id, 3 * ELECTION_UNITS)
    assert cluster.leader_id() == new.id
    assert cluster.run_until(lambda: old.kv.get("k") is not None, 3 * ELECTION_UNITS)


@pytest.mark.parametrize("nodes", [3, 5])
def test_partitioned_follower_rejoining_does_not_disrupt_the_leader(nodes: int) -> None:
    cluster = started_cluster(nodes=nodes)
    leader = cluster.leader()
    assert leader is not None
    term = leader.raw.term
    follower = cluster.nodes[others(cluster, leader.id)[0]]
    cluster.network.isolate(follower.id, others(cluster, follower.id))
    # Ten election timeouts alone: without pre-vote it would campaign and raise its
    # term again and again, and on rejoining force the leader to step down.
    cluster.run_for(10 * ELECTION_UNITS)
    assert follower.raw.term == term
    assert follower.role is not Role.LEADER
    write(cluster, leader.id, "k", "v")

    cluster.network.heal()
    cluster.run_for(5 * ELECTION_UNITS)
    assert cluster.leader_id() == leader.id
    assert leader.raw.term == term
    assert cluster.election_safety.leader_of_term.keys() <= set(range(term + 1))
    assert follower.leader_id == leader.id
    assert follower.kv.get("k") == "v"


def test_crashed_follower_that_missed_compacted_entries_catches_up_by_snapshot() -> None:
    cluster = started_cluster(nodes=3)
    leader = cluster.leader()
    assert leader is not None
    follower = cluster.nodes[others(cluster, leader.id)[0]]
    write(cluster, leader.id, "before", "crash")
    assert cluster.run_until(lambda: follower.kv.get("before") == "crash", ELECTION_UNITS)
    cluster.crash(follower.id)

    for i in range(60):
        write(cluster, leader.id, f"key{i % 7}", f"value{i}")
    # Compact every live node's log entirely: the entries the follower misses exist
    # nowhere but in the snapshot.
    for node_id in cluster.live_node_ids():
        assert cluster.compact(node_id, keep_entries=0)
    assert leader.storage.first_index() > follower.storage.last_index() + 1
    installed_before = cluster.stats["snapshots_installed"]

    cluster.restart(follower.id)
    assert cluster.run_until(
        lambda: follower.kv.applied_index >= leader.kv.applied_index, 5 * ELECTION_UNITS
    )
    assert cluster.stats["snapshots_installed"] == installed_before + 1
    assert follower.storage.snapshot().metadata.index > 0
    assert follower.kv.values == leader.kv.values
    assert cluster.leader_id() == leader.id

    # Replication goes on from the snapshot.
    write(cluster, leader.id, "after", "snapshot")
    assert cluster.run_until(lambda: follower.kv.get("after") == "snapshot", ELECTION_UNITS)


def test_the_same_seed_replays_exactly() -> None:
    first = run_simulation(7, 3, 3_000, reproduce="")
    second = run_simulation(7, 3, 3_000, reproduce="")
    assert first == second
    assert first.history
