"""Followers forward writes to the leader: a write through a follower succeeds
promptly even when the follower's own connection to the leader is not up yet."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .cluster import Cluster

REQUEST_TIMEOUT_S = 3.0


def start_with_node_2_first(make_cluster: Callable[..., Cluster]) -> Cluster:
    """Node 2 starts alone, so its dials to nodes 1 and 3 are refused and back off
    (up to a second). Nodes 1 and 3 then start and elect a leader among them (node
    2's long election timeout keeps it out of the race); node 2 hears of the leader
    over the leader's connection to it, while its own link to the leader may still
    be waiting to redial. Returns once node 2 knows the leader."""
    cluster = make_cluster(3, extra_args=["--request-timeout", str(REQUEST_TIMEOUT_S)])
    cluster.members[2].extra_args += ["--election-ticks", "200"]
    cluster.start(2)
    time.sleep(1.0)
    cluster.start(1, wait=False)
    cluster.start(3, wait=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if cluster.status(2)["leader"] != 0:
                return cluster
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, "node 2 never learned of a leader"
        time.sleep(0.005)


@pytest.mark.timeout(120)
def test_write_through_a_follower_that_just_learned_of_the_leader(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A write through node 2 at that moment must not be lost."""
    cluster = start_with_node_2_first(make_cluster)
    started = time.monotonic()
    reply = cluster.put(2, "forwarded", "at once")
    elapsed = time.monotonic() - started
    assert reply.status == 204, (reply, f"after {elapsed:.2f} s")
    assert elapsed < REQUEST_TIMEOUT_S / 2, elapsed
    cluster.wait_value(1, "forwarded", "at once")


@pytest.mark.timeout(120)
def test_read_through_a_follower_that_just_learned_of_the_leader(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A linearizable read through node 2 at that moment needs a ReadIndex round from
    the leader; a request lost on the way is asked again, not left to time out."""
    cluster = start_with_node_2_first(make_cluster)
    started = time.monotonic()
    reply = cluster.get(2, "never-written")
    elapsed = time.monotonic() - started
    assert reply.status == 404, (reply, f"after {elapsed:.2f} s")
    assert elapsed < REQUEST_TIMEOUT_S / 2, elapsed
