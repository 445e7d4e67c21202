"""raftkvd shuts down cleanly on SIGINT and SIGTERM: exit code 0, quickly, even with
a request in flight, and what it acknowledged is there after a restart, also through
a rolling restart under load."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable

import pytest

from .cluster import Cluster, Response
from .workload import Writers, check_promises

#: How long a clean shutdown may take.
SHUTDOWN_S = 5.0


def timed_stop(cluster: Cluster, node_id: int, sig: int) -> float:
    started = time.monotonic()
    returncode = cluster.stop(node_id, sig, timeout=SHUTDOWN_S + 20)
    elapsed = time.monotonic() - started
    assert returncode == 0, f"exit code {returncode} on {sig!r}:\n{cluster.log(node_id)}"
    assert elapsed < SHUTDOWN_S, f"node {node_id} took {elapsed:.1f} s to exit on {sig!r}"
    assert "Traceback" not in cluster.log(node_id)
    return elapsed


@pytest.mark.timeout(120)
def test_sigint_and_sigterm_shut_down_cleanly(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.start_all()
    leader = cluster.leader_by_role()
    first, second = (node_id for node_id in (1, 2, 3) if node_id != leader)
    assert cluster.put(leader, "k", "v").status == 204
    print(f"SIGINT, follower: {timed_stop(cluster, first, signal.SIGINT):.2f} s")
    print(f"SIGTERM, follower: {timed_stop(cluster, second, signal.SIGTERM):.2f} s")
    print(f"SIGTERM, leader: {timed_stop(cluster, leader, signal.SIGTERM):.2f} s")
    # What was acknowledged before is all there after a restart.
    for node_id in (1, 2, 3):
        cluster.start(node_id, wait=False)
    cluster.wait_leader()
    for node_id in (1, 2, 3):
        cluster.wait_value(node_id, "k", "v")


@pytest.mark.timeout(120)
def test_shutdown_does_not_wait_for_a_request_in_flight(
    make_cluster: Callable[..., Cluster],
) -> None:
    # A long request timeout: shutting down must not wait for requests to time out.
    cluster = make_cluster(3, extra_args=["--request-timeout", "15"])
    cluster.start_all()
    leader = cluster.leader_by_role()
    for node_id in (1, 2, 3):
        if node_id != leader:
            timed_stop(cluster, node_id, signal.SIGTERM)

    # The leader alone cannot commit: a write waits, and a SIGTERM must not wait for
    # it. The client gets an answer or a closed connection, not a hang.
    answers: list[Response | OSError] = []

    def write() -> None:
        try:
            answers.append(cluster.put(leader, "pending", "v", timeout=30))
        except OSError as exc:
            answers.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.3)
        elapsed = timed_stop(cluster, leader, signal.SIGTERM)
        print(f"SIGTERM with a write in flight: {elapsed:.2f} s")
    finally:
        writer.join(timeout=40)
    assert answers, "the client hung"
    answer = answers[0]
    assert isinstance(answer, OSError) or answer.status == 503, answer


@pytest.mark.timeout(180)
def test_rolling_restart_under_load_loses_no_acknowledged_write(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Each node in turn stopped with SIGTERM and started again, twice round, while
    clients write: every stop is clean and quick, the cluster keeps taking writes,
    and every acknowledged write is on every node afterwards."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(3, extra_args=["--snapshot-count", "200", "--request-timeout", "2"])
    cluster.start_all()
    cluster.wait_leader()
    writers = Writers(cluster, prefix="rolling-", seed=seed)
    with writers.running():
        writers.wait_acknowledged(50)
        for node_id in (1, 2, 3, 1, 2, 3):
            print(f"SIGTERM node {node_id}: {timed_stop(cluster, node_id, signal.SIGTERM):.2f} s")
            writers.wait_acknowledged(20)
            cluster.start(node_id)
            cluster.wait_leader()
            writers.wait_acknowledged(20)
    cluster.wait_leader()
    check_promises(cluster, writers, [1, 2, 3])


@pytest.mark.timeout(120)
def test_a_stopping_leader_hands_leadership_over(make_cluster: Callable[..., Cluster]) -> None:
    """With ticks of 200 ms an election takes 2 s at least; a leader stopped with
    SIGTERM hands over instead, and the others have a leader again at once."""
    cluster = make_cluster(3, extra_args=["--tick-ms", "200"])
    cluster.start_all()
    leader = cluster.leader_by_role()
    others = [node_id for node_id in (1, 2, 3) if node_id != leader]
    term = cluster.status(others[0])["term"]
    timed_stop(cluster, leader, signal.SIGTERM)
    started = time.monotonic()
    successor = cluster.leader_by_role(among=others)
    elapsed = time.monotonic() - started
    print(f"node {successor} leads {elapsed:.2f} s after node {leader} stopped")
    assert elapsed < 1.0
    assert f"handed leadership to node {successor}" in cluster.log(leader)
    assert cluster.status(successor)["term"] == term + 1
    assert cluster.put(successor, "after", "handover").status == 204
