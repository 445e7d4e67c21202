"""Membership changes while clients write: nodes join (catching up by snapshot) and
leave, the leader among them, and every acknowledged write is on every remaining
member afterwards; no write answered "not applied" is anywhere.

This is the flow in which raftexample lost an acknowledged PUT (see issue 5).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from .cluster import Cluster
from .workload import Writers, check_promises


def add_node(cluster: Cluster, live: list[int], rng: random.Random) -> int:
    member = cluster.add_member_slot()
    cluster.change_membership(rng.sample(live, len(live)), "POST", member.node_id)
    cluster.start(member.node_id, join=True)
    live.append(member.node_id)  # The writers may use it from now on.
    return member.node_id


def remove_node(
    cluster: Cluster, live: list[int], victim: int, rng: random.Random, paused: int = 0
) -> None:
    live.remove(victim)  # The writers stop choosing it first; writes in flight may fail.
    via = [node_id for node_id in live if node_id != paused]
    cluster.change_membership(rng.sample(via, len(via)), "DELETE", victim)
    assert cluster.wait_exit(victim) == 0, cluster.log(victim)


def start_writing(
    make_cluster: Callable[..., Cluster], prefix: str
) -> tuple[Cluster, list[int], Writers, random.Random]:
    """A 3-node cluster, the list of its members (which the test keeps up to date),
    writers that write to those members (not started), and the test's random source."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    # A small --snapshot-count: a joining node catches up by snapshot.
    cluster = make_cluster(3, extra_args=["--snapshot-count", "100", "--request-timeout", "2"])
    cluster.start_all()
    cluster.wait_leader()
    live = [1, 2, 3]
    writers = Writers(cluster, prefix=prefix, seed=seed, targets=lambda: list(live))
    return cluster, live, writers, random.Random(seed)


@pytest.mark.timeout(240)
def test_membership_churn_under_load_loses_no_acknowledged_write(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster, live, writers, rng = start_writing(make_cluster, "churn-")
    with writers.running():
        writers.wait_acknowledged(150)
        joined = add_node(cluster, live, rng)
        writers.wait_acknowledged(60)
        follower = rng.choice([n for n in live if n not in (cluster.wait_leader(), joined)])
        remove_node(cluster, live, follower, rng)
        writers.wait_acknowledged(60)
        add_node(cluster, live, rng)
        writers.wait_acknowledged(60)
        remove_node(cluster, live, cluster.leader_by_role(among=live), rng)
        writers.wait_acknowledged(60)
    leader = cluster.wait_leader(among=live)
    print(f"members now {live}, leader {leader}")
    check_members(cluster, writers, live)


def check_members(cluster: Cluster, writers: Writers, live: list[int]) -> None:
    """Every promise made to the writers holds on every member, and every member
    agrees on who the members are."""
    check_promises(cluster, writers, live)
    for node_id in live:
        members = sorted(int(member["id"]) for member in cluster.status(node_id)["members"])
        assert members == sorted(live), (node_id, members)


def bounce(cluster: Cluster, node_id: int, how: str, seconds: float) -> None:
    """Kill -9 and restart `node_id`, or pause and resume it, `seconds` apart."""
    print(f"{how} node {node_id} for {seconds:.1f} s")
    if how == "kill":
        cluster.kill(node_id)
        time.sleep(seconds)
        cluster.start(node_id)
    else:
        cluster.pause(node_id)
        time.sleep(seconds)
        cluster.resume(node_id)


@pytest.mark.timeout(240)
def test_membership_churn_with_kills_and_pauses_loses_no_acknowledged_write(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Each change is followed at once by a fault: the node just added is still
    catching up when an old one is killed (so the new quorum needs it), the leader
    is killed right after a change commits, a node is paused while one leaves."""
    cluster, live, writers, rng = start_writing(make_cluster, "faults-")
    with writers.running():
        writers.wait_acknowledged(150)
        joined = add_node(cluster, live, rng)
        bounce(cluster, rng.choice([n for n in live if n != joined]), "kill", 1.0)
        writers.wait_acknowledged(60, timeout=60)
        leaving = rng.choice(live)
        bystander = rng.choice([n for n in live if n != leaving])
        cluster.pause(bystander)
        remove_node(cluster, live, leaving, rng, paused=bystander)
        cluster.resume(bystander)
        writers.wait_acknowledged(60, timeout=60)
        add_node(cluster, live, rng)
        bounce(cluster, cluster.leader_by_role(among=live), "kill", 0.5)
        writers.wait_acknowledged(60, timeout=60)
        remove_node(cluster, live, cluster.leader_by_role(among=live), rng)
        bounce(cluster, rng.choice(live), "pause", 1.0)
        writers.wait_acknowledged(60, timeout=60)
    leader = cluster.wait_leader(among=live)
    print(f"members now {live}, leader {leader}")
    check_members(cluster, writers, live)
