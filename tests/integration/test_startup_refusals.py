"""raftkvd's startup refusals: a port in use, a data directory of another node or
cluster or in use, bad flags, a removed node's data directory. Each refusal is one
clear line on stderr (`raftkvd: ...`), a non-zero exit, and no traceback."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from .cluster import HOST, Cluster, free_ports, request, run_to_exit_concurrently


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """A startup refusal: non-zero exit, no traceback, and exactly one line of ours
    (`raftkvd: ...`) on stderr that holds every word. Returns that line."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    ours = [line for line in result.stderr.splitlines() if line.startswith("raftkvd: ")]
    assert len(ours) == 1, output
    for word in words:
        assert word in ours[0], (word, ours[0])
    return ours[0]


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag` set to `value` (appended when absent: argparse keeps the last)."""
    if flag not in args:
        return [*args, flag, value]
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


# --- startup refusals ------------------------------------------------------------------


def test_refuses_a_port_in_use(tmp_path: Path) -> None:
    clusters = {}
    for which in ("REST", "peer", "RESP"):
        (tmp_path / which).mkdir()
        clusters[which] = Cluster(tmp_path / which, 1)
    ports = {}
    for which, cluster in clusters.items():
        cluster.enable_resp()
        member = cluster.members[1]
        ports[which] = {"REST": member.port, "peer": member.peer_port, "RESP": member.rpc_port}[
            which
        ]
    with contextlib.ExitStack() as stack:
        for port in ports.values():
            stack.enter_context(socket.create_server((HOST, port)))
        results = run_to_exit_concurrently(
            {which: cluster.args_for(1) for which, cluster in clusters.items()}, tmp_path
        )
    for which, result in results.items():
        assert_refused(result, which, str(ports[which]), "in use")


def test_refuses_a_data_directory_of_another_node_or_cluster_or_in_use(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster(3)
    cluster.start(1)
    assert cluster.stop(1) == 0
    node_1_dir = cluster.members[1].data_dir
    copy_dir = tmp_path / "copy-of-raftkv-1"
    shutil.copytree(node_1_dir, copy_dir)
    results = run_to_exit_concurrently(
        {
            "another node": replace_flag(cluster.args_for(2), "--data-dir", str(node_1_dir)),
            # Same node id, another --cluster-token: another cluster's directory.
            "another cluster": [
                *replace_flag(cluster.args_for(1), "--data-dir", str(copy_dir)),
                "--cluster-token",
                "another-cluster",
            ],
        },
        tmp_path,
    )
    assert_refused(results["another node"], str(node_1_dir), "node 1")
    assert_refused(results["another cluster"], str(copy_dir), "cluster")

    # The refusal left the directory usable by its owner; while the owner runs, a
    # second copy of it (on ports of its own) is refused.
    cluster.start(1)
    second = replace_flag(cluster.args_for(1), "--port", "0")
    second = replace_flag(
        second, "--cluster", ",".join([f"http://{HOST}:{free_ports(1)[0]}", *cluster.peer_urls[1:]])
    )
    assert_refused(cluster.run_to_exit(1, second), "in use", str(node_1_dir))
    assert cluster.members[1].running


BAD_FLAGS = {
    "id past the cluster": (["--id", "5"], ["--id 5", "1..3"]),
    "id zero": (["--id", "0"], ["--id 0"]),
    "cluster not a URL": (["--cluster", "not-a-url"], ["not-a-url", "http://host:port"]),
    "port out of range": (["--port", "70000"], ["--port 70000"]),
    "unknown fsync mode": (["--fsync", "bogus"], ["--fsync", "bogus", "io_uring", "thread"]),
}


def test_refuses_bad_flags(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    cluster = make_cluster(3)
    commands = {}
    for case, (flags, _) in BAD_FLAGS.items():
        args = replace_flag(cluster.args_for(1), "--data-dir", str(tmp_path / case))
        for flag, value in zip(flags[::2], flags[1::2], strict=True):
            args = replace_flag(args, flag, value)
        commands[case] = args
    results = run_to_exit_concurrently(commands, tmp_path)
    for case, (_, words) in BAD_FLAGS.items():
        assert_refused(results[case], *words)
        assert not (tmp_path / case).exists(), f"{case}: a refused start created its data dir"


def test_removed_node_restarted_on_its_old_data_dir_refuses(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(3)
    cluster.start_all()
    cluster.wait_leader()
    assert cluster.put(1, "before", "removal").status == 204
    reply = request(cluster.members[1].port, "DELETE", "/3")
    assert reply.status == 204, reply
    assert cluster.wait_exit(3) == 0, cluster.log(3)
    # It left the ordinary way: the leader made sure it heard its removal commit.
    assert "(it applied its removal)" in cluster.log(3)
    assert_refused(cluster.run_to_exit(3), "removed", str(cluster.members[3].data_dir))
    assert cluster.put(2, "after", "removal").status == 204


def test_node_removed_while_down_does_not_rejoin_when_restarted(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Node 3 is removed while it is down, so it never applied its removal. Restarted on
    its old data it must not come back as a member: it learns of its removal and
    exits (or refuses), and the cluster keeps two members."""
    cluster = make_cluster(3)
    cluster.start_all()
    cluster.wait_leader()
    assert cluster.stop(3) == 0
    # Through the leader, once it has committed a write of its term (a leader elected
    # just now refuses membership changes until then; see test_bad_input.py).
    leader = cluster.leader_by_role(among=[1, 2])
    assert cluster.put(leader, "before", "removal").status == 204
    reply = request(cluster.members[leader].port, "DELETE", "/3")
    assert reply.status == 204, reply
    assert cluster.put(1, "after", "removal").status == 204
    cluster.start(3, wait=False)
    returncode = cluster.wait_exit(3, timeout=30)
    assert returncode != 0 or "removed" in cluster.log(3), cluster.log(3)
    assert [member["id"] for member in cluster.status(1)["members"]] == [1, 2]
