"""Catching a follower up by snapshot, with real processes.

A leader keeps a tail of `NodeOptions.snapshot_catchup_entries` entries behind its
newest snapshot, so a follower that is behind by less than that catches up from the
log. To force a snapshot transfer, these tests write more entries than the tail
while a follower is down (through the RESP API, pipelined, which is fast), and check
that the leader's log no longer holds what the follower needs before restarting it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis

from .cluster import HOST, Cluster, request

SNAPSHOT_COUNT = 50
#: The log tail a leader keeps behind its snapshot (small, so that a short run of
#: writes outruns it).
CATCH_UP_ENTRIES = 100
SNAPSHOT_NAME = re.compile(r"([0-9a-f]{16})-[0-9a-f]{16}\.snap(\.tmp)?")


def set_pipelined(
    cluster: Cluster, node_id: int, items: Iterable[tuple[str, bytes]], batch_bytes: int
) -> None:
    """SET every item through one node's RESP API, in pipelines of about `batch_bytes`."""
    port = cluster.members[node_id].rpc_port
    assert port is not None
    with redis.Redis(HOST, port, socket_timeout=60) as client:
        pipe = client.pipeline(transaction=False)
        pending_bytes = 0
        for key, value in items:
            pipe.set(key, value)
            pending_bytes += len(value) + len(key) + 32
            if pending_bytes >= batch_bytes:
                assert all(pipe.execute())
                pending_bytes = 0
        assert all(pipe.execute())


def snapshot_files(data_dir: Path) -> dict[str, tuple[int, int, bool]]:
    """A node's snapshot files: name -> (index, inode, still being written)."""
    files = {}
    with os.scandir(data_dir / "snap") as entries:
        for entry in entries:
            match = SNAPSHOT_NAME.fullmatch(entry.name)
            if match:
                files[entry.name] = (int(match[1], 16), entry.inode(), match[2] is not None)
    return files


def start_cluster(make_cluster: Callable[..., Cluster]) -> tuple[Cluster, int, int]:
    """A 3-node cluster with RESP on; returns it, its leader and one follower."""
    cluster = make_cluster(
        3,
        extra_args=[
            "--snapshot-count",
            str(SNAPSHOT_COUNT),
            "--snapshot-catchup-entries",
            str(CATCH_UP_ENTRIES),
        ],
    )
    cluster.enable_resp()
    cluster.start_all()
    leader = cluster.leader_by_role()
    follower = next(node_id for node_id in (1, 2, 3) if node_id != leader)
    # Through the leader: a follower's own link to the leader may still be redialing
    # this soon after startup (test_forwarding.py covers writes through followers).
    assert cluster.put(leader, "first", "before the follower stopped").status == 204
    cluster.wait_value(follower, "first", "before the follower stopped")
    return cluster, leader, follower


def stop_follower_and_outrun_its_log(
    cluster: Cluster, leader: int, follower: int, items: list[tuple[str, bytes]]
) -> int:
    """Stop `follower`, write `items` on the leader, and check that the leader's log no
    longer reaches back to the follower's last entry. Returns that last index."""
    follower_last_index: int = cluster.status(follower)["last_index"]
    assert cluster.stop(follower) == 0
    # One SET per round trip: a pipeline's writes are proposed as one log entry, and
    # here the log must grow by an entry per item.
    set_pipelined(cluster, leader, items, batch_bytes=1)
    status = cluster.wait_snapshot_past(leader, follower_last_index + CATCH_UP_ENTRIES)
    print(f"follower's last index {follower_last_index}; leader: {status}")
    return follower_last_index


def small_items(count: int) -> list[tuple[str, bytes]]:
    return [(f"small-{n:05d}", f"value-{n}".encode()) for n in range(count)]


def big_items(count: int, size: int) -> list[tuple[str, bytes]]:
    rng = random.Random(count)
    return [(f"big-{n:04d}", rng.randbytes(size // 2).hex().encode()) for n in range(count)]


def check_converged(cluster: Cluster, leader: int, follower: int, small_count: int) -> None:
    commit = cluster.status(leader)["commit"]
    status = cluster.wait_applied(follower, commit, timeout=60)
    print(f"follower after catching up: {status}")
    # Local reads: what the follower itself holds, not what a read barrier fetches.
    stored = cluster.scan(follower, "small-", consistency="serializable")
    assert stored == {key: value.decode() for key, value in small_items(small_count)}
    reply = request(cluster.members[follower].port, "GET", "/v1/kv/first?consistency=serializable")
    assert (reply.status, reply.text) == (200, "before the follower stopped")
    # And it keeps following.
    assert cluster.put(leader, "after-snapshot", "yes").status == 204
    cluster.wait_value(follower, "after-snapshot", "yes")


@pytest.mark.timeout(120)
def test_follower_behind_the_compacted_log_catches_up_by_snapshot(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster, leader, follower = start_cluster(make_cluster)
    count = CATCH_UP_ENTRIES + 4 * SNAPSHOT_COUNT
    follower_last_index = stop_follower_and_outrun_its_log(
        cluster, leader, follower, small_items(count)
    )
    leader_snapshot_index: int = cluster.status(leader)["snapshot_index"]

    cluster.start(follower)
    check_converged(cluster, leader, follower, count)
    # The follower holds a snapshot at least as new as the leader's when it came back:
    # it was installed from the leader, since its own log stopped far before that.
    snapshot_index: int = cluster.status(follower)["snapshot_index"]
    assert snapshot_index >= leader_snapshot_index > follower_last_index + CATCH_UP_ENTRIES


def follower_progress(cluster: Cluster, leader: int, follower: int) -> tuple[str, int, int]:
    """The leader's view of a follower: (progress state, match index, commit index)."""
    try:
        status = cluster.status(leader)
    except (OSError, AssertionError):
        return ("unknown", 0, 1)
    progress = status["progress"].get(str(follower), {})
    return (progress.get("state", "unknown"), progress.get("match", 0), status["commit"])


def restart_and_kill(
    cluster: Cluster,
    leader: int,
    follower: int,
    follower_last_index: int,
    when: str,
    timeout: float = 30.0,
) -> bool:
    """Restart `follower` and kill -9 it in the middle of its snapshot catch-up:
    `when="receiving"`: while the leader says it is sending the snapshot, before the
    follower wrote any of it to disk; `when="applying"`: the moment a new snapshot
    file (newer than the follower's log) appears, complete or still being written;
    `when="written"`: the moment such a file is complete (renamed into place), while
    the follower records it in its WAL and restores its state from it.
    Returns whether it was killed mid-snapshot; False if it caught up first (then it
    is killed too, so that every round starts from a stopped follower)."""
    member = cluster.members[follower]
    before = snapshot_files(member.data_dir)
    cluster.start(follower, wait=False)
    deadline = time.monotonic() + timeout
    if when == "receiving":
        # Up, so that a "snapshot" state is about this run, not left from the last.
        cluster.wait_listening(follower)
    while time.monotonic() < deadline:
        new = [
            (index, partial)
            for name, (index, inode, partial) in snapshot_files(member.data_dir).items()
            if index > follower_last_index and before.get(name, (0, 0))[1] != inode
        ]
        if when == "written":
            new = [(index, partial) for index, partial in new if not partial]
        state, match, commit = follower_progress(cluster, leader, follower)
        if new or (when == "receiving" and state == "snapshot"):
            cluster.kill(follower, signal.SIGKILL)
            seen = ", ".join(
                f"snapshot file {index} {'being written' if partial else 'complete'}"
                for index, partial in new
            )
            phase = "receiving" if not new else "written" if when == "written" else "applying"
            print(f"killed node {follower} {phase}: {seen or 'no new file'}")
            return True
        if match >= commit:
            cluster.kill(follower, signal.SIGKILL)
            print(f"node {follower} caught up at {match} before a kill ({when})")
            return False
        assert member.running, f"node {follower} exited:\n{cluster.log(follower)}"
        time.sleep(0.002)
    raise AssertionError(f"node {follower} neither caught up nor got a snapshot in {timeout} s")


def run_mid_snapshot_restarts(
    make_cluster: Callable[..., Cluster], big_count: int, big_size: int, phases: list[str]
) -> None:
    cluster, leader, follower = start_cluster(make_cluster)
    small_count = CATCH_UP_ENTRIES + 2 * SNAPSHOT_COUNT
    # The big values last: the snapshot the follower receives holds all of them.
    items = small_items(small_count) + big_items(big_count, big_size)
    follower_last_index = stop_follower_and_outrun_its_log(cluster, leader, follower, items)

    kills = 0
    for when in phases:
        kills += restart_and_kill(cluster, leader, follower, follower_last_index, when)
    assert kills, "the follower was never killed in the middle of its snapshot catch-up"

    cluster.start(follower)
    check_converged(cluster, leader, follower, small_count)
    port = cluster.members[follower].port
    for key, value in big_items(big_count, big_size):
        reply = request(port, "GET", f"/v1/kv/{key}?consistency=serializable")
        assert reply.status == 200 and reply.body == value, (key, reply.status, len(reply.body))


@pytest.mark.timeout(180)
def test_follower_killed_while_receiving_a_snapshot_recovers(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_mid_snapshot_restarts(
        make_cluster, big_count=200, big_size=100_000, phases=["receiving", "applying"]
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_follower_killed_repeatedly_mid_snapshot_recovers(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_mid_snapshot_restarts(
        make_cluster,
        big_count=600,
        big_size=100_000,
        # Last: once its snapshot file is complete, the follower usually keeps it.
        phases=["receiving", "applying"] * 3 + ["written"],
    )
