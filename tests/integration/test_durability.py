"""Durability against real processes: a full-cluster restart keeps every key, and
kill -9 of one node or of every node while clients write loses no acknowledged
write (and applies no write that was answered "not applied")."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from .cluster import Cluster, request
from .workload import Writers, check_promises

NODES = (1, 2, 3)


def check_every_node(cluster: Cluster, writers: Writers) -> None:
    check_promises(cluster, writers, list(NODES))


def restart_all(cluster: Cluster) -> None:
    for node_id in NODES:
        cluster.start(node_id, wait=False)
    for node_id in NODES:
        cluster.wait_listening(node_id)
    cluster.wait_leader()


def test_full_cluster_restart_keeps_all_data(make_cluster: Callable[..., Cluster]) -> None:
    # A small --snapshot-count, so that recovery reads a snapshot plus the WAL after it.
    cluster = make_cluster(3, extra_args=["--snapshot-count", "100"])
    cluster.start_all()
    cluster.wait_leader()
    expected = {f"restart-{n:04d}": f"value-{n}" for n in range(250)}
    items = list(expected.items())
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda n: cluster.put(1 + n % 3, *items[n]).status, range(250)))
    assert replies == [204] * len(expected)
    # Overwrites and deletes must survive too, not just first writes.
    for n in range(0, 250, 10):
        assert cluster.put(2, f"restart-{n:04d}", f"overwritten-{n}").status == 204
        expected[f"restart-{n:04d}"] = f"overwritten-{n}"
    for n in range(5, 250, 25):
        key = f"restart-{n:04d}"
        assert request(cluster.members[3].port, "DELETE", f"/v1/kv/{key}").status == 204
        del expected[key]

    for node_id in NODES:
        assert cluster.stop(node_id, signal.SIGTERM) == 0, cluster.log(node_id)
    restart_all(cluster)

    for node_id in NODES:
        assert cluster.scan(node_id, "restart-") == expected
        assert cluster.status(node_id)["snapshot_index"] > 0
    reply = cluster.get(2, "restart-0010")
    assert (reply.status, reply.text) == (200, "overwritten-10")
    assert cluster.get(3, "restart-0005").status == 404
    # The restarted cluster takes writes as before.
    assert cluster.put(3, "after-restart", "yes").status == 204
    cluster.wait_value(1, "after-restart", "yes")


def kill_random_nodes(cluster: Cluster, writers: Writers, rng: random.Random, rounds: int) -> None:
    for _ in range(rounds):
        writers.wait_acknowledged(40)
        victim = rng.choice(NODES)
        print(f"kill -9 node {victim}")
        cluster.kill(victim, signal.SIGKILL)
        # Writes continue on the two others (new leader if the victim led).
        writers.wait_acknowledged(20)
        cluster.start(victim)
    writers.wait_acknowledged(40)


@pytest.mark.timeout(120)
def test_kill_9_of_a_random_node_under_load_loses_no_acknowledged_write(
    make_cluster: Callable[..., Cluster],
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(3, extra_args=["--snapshot-count", "200", "--request-timeout", "2"])
    cluster.start_all()
    cluster.wait_leader()
    writers = Writers(cluster, prefix="one-", seed=seed)
    with writers.running():
        kill_random_nodes(cluster, writers, random.Random(seed), rounds=2)
    cluster.wait_leader()
    check_every_node(cluster, writers)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_of_random_nodes_many_times_under_load(
    make_cluster: Callable[..., Cluster],
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(3, extra_args=["--snapshot-count", "200", "--request-timeout", "2"])
    cluster.start_all()
    cluster.wait_leader()
    writers = Writers(cluster, prefix="many-", seed=seed, threads=6)
    with writers.running():
        kill_random_nodes(cluster, writers, random.Random(seed), rounds=10)
    cluster.wait_leader()
    check_every_node(cluster, writers)


def kill_all_nodes(cluster: Cluster, writers: Writers, rng: random.Random) -> None:
    writers.wait_acknowledged(60)
    order = list(NODES)
    rng.shuffle(order)
    print(f"kill -9 nodes {order}")
    for node_id in order:
        cluster.kill(node_id, signal.SIGKILL)
    # Writers meet refused connections for a moment: those writes were never sent.
    time.sleep(0.3)
    restart_all(cluster)
    writers.wait_acknowledged(60)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fsync", ["auto", "thread"])
def test_kill_9_of_all_nodes_under_load_loses_no_acknowledged_write(
    make_cluster: Callable[..., Cluster], fsync: str
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(
        3, extra_args=["--snapshot-count", "200", "--request-timeout", "2", "--fsync", fsync]
    )
    cluster.start_all()
    cluster.wait_leader()
    writers = Writers(cluster, prefix="all-", seed=seed)
    with writers.running():
        kill_all_nodes(cluster, writers, random.Random(seed))
    cluster.wait_leader()
    check_every_node(cluster, writers)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_of_all_nodes_repeatedly_under_load(make_cluster: Callable[..., Cluster]) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(3, extra_args=["--snapshot-count", "200", "--request-timeout", "2"])
    cluster.start_all()
    cluster.wait_leader()
    writers = Writers(cluster, prefix="all-many-", seed=seed, threads=6)
    rng = random.Random(seed)
    with writers.running():
        for _ in range(5):
            kill_all_nodes(cluster, writers, rng)
    cluster.wait_leader()
    check_every_node(cluster, writers)
