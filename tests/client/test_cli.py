"""The `raftkv` command-line client: human output, --json, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from raftkv.client.__main__ import main

from .cluster import RespCluster


@pytest.fixture
def endpoints(shared_cluster: RespCluster) -> str:
    return ",".join(shared_cluster.endpoints)


def run(capsys: pytest.CaptureFixture[str], endpoints: str, *args: str) -> tuple[int, str, str]:
    code = main(["--endpoints", endpoints, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keys_human(capsys: pytest.CaptureFixture[str], endpoints: str, key_prefix: str) -> None:
    k = key_prefix + "k"
    assert run(capsys, endpoints, "put", k, "hello world") == (0, "OK\n", "")
    assert run(capsys, endpoints, "get", k) == (0, "hello world\n", "")
    assert run(capsys, endpoints, "put", k + "2", "second") == (0, "OK\n", "")
    assert run(capsys, endpoints, "scan", key_prefix) == (
        0,
        f"{k}\thello world\n{k}2\tsecond\n",
        "",
    )
    assert run(capsys, endpoints, "scan", key_prefix, "--keys-only") == (0, f"{k}\n{k}2\n", "")
    assert run(capsys, endpoints, "del", k) == (0, "1\n", "")
    assert run(capsys, endpoints, "del", k) == (0, "0\n", "")
    code, out, err = run(capsys, endpoints, "get", k)
    assert (code, out) == (1, "")
    assert err == f"raftkv: key not found: '{k}'\n"


def test_keys_json(capsys: pytest.CaptureFixture[str], endpoints: str, key_prefix: str) -> None:
    k = key_prefix + "k"

    def run_json(*args: str) -> object:
        code, out, err = run(capsys, endpoints, "--json", *args)
        assert (code, err) == (0, "")
        return json.loads(out)

    assert run_json("put", k, "v1") == {"key": k, "previous": None}
    assert run_json("put", k, "v2") == {"key": k, "previous": "v1"}
    assert run_json("get", k) == {"key": k, "value": "v2"}
    assert run_json("scan", key_prefix) == [{"key": k, "value": "v2"}]
    assert run_json("scan", key_prefix, "--keys-only") == [k]
    assert run_json("del", k) == {"key": k, "deleted": True}
    # --json may also come after the command, like the other global options.
    code, out, _ = run(capsys, endpoints, "get", k, "--json")
    assert code == 1 and out == ""


def test_cluster_commands(
    capsys: pytest.CaptureFixture[str], endpoints: str, shared_cluster: RespCluster
) -> None:
    code, out, err = run(capsys, endpoints, "members")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ROLE", "URL"]
    assert [line.split() for line in lines[1:]] == [
        [str(i), "voter", url] for i, url in enumerate(shared_cluster.peer_urls, 1)
    ]
    code, out, _ = run(capsys, endpoints, "--json", "members")
    assert json.loads(out)[0] == {"id": 1, "url": shared_cluster.peer_urls[0], "learner": False}

    code, out, err = run(capsys, endpoints, "status")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ENDPOINT", "ID", "ROLE"]
    assert sorted(row.split()[1] for row in rows) == ["1", "2", "3"]
    code, out, _ = run(capsys, endpoints, "--json", "status")
    statuses = json.loads(out)
    assert [s["endpoint"] for s in statuses] == shared_cluster.endpoints
    assert [s["id"] for s in statuses] == [1, 2, 3]
    assert {s["leader"] for s in statuses} <= {0, 1, 2, 3}

    url = "http://127.0.0.1:9"
    assert run(capsys, endpoints, "member", "add", "6", url, "--learner") == (
        0,
        f"OK: added node 6 ({url}) as a learner\n",
        "",
    )
    assert "learner" in run(capsys, endpoints, "members")[1]
    assert run(capsys, endpoints, "member", "remove", "6") == (0, "OK: removed node 6\n", "")

    leader = shared_cluster.leader_by_role()
    target = 1 + leader % 3
    leader_endpoint = shared_cluster.endpoint(leader)
    assert run(capsys, leader_endpoint, "transfer", str(target)) == (
        0,
        f"OK: node {target} leads\n",
        "",
    )


def test_failures_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], endpoints: str, shared_cluster: RespCluster
) -> None:
    code, out, err = run(capsys, endpoints, "member", "remove", "42")
    assert (code, out) == (1, "")
    assert err == "raftkv: invalid request: node 42 is not a member of the cluster\n"
    code, out, err = run(capsys, endpoints, "put", "", "v")
    assert (code, err.count("\n")) == (1, 1) and "empty key" in err
    # A node that is down: status reports it, and exits 1.
    down = "127.0.0.1:1"
    code, out, err = run(capsys, f"{shared_cluster.endpoint(1)},{down}", "status")
    assert code == 1
    assert out.splitlines()[2].split() == [down, "-", "unavailable"]
    assert err.startswith(f"raftkv: no status from {down}: ")
    code, out, err = run(capsys, down, "--timeout", "0.3", "get", "k")
    assert (code, out) == (1, "")
    assert err.startswith("raftkv: unavailable: gave up after 0.3 s trying 127.0.0.1:1")
    with pytest.raises(SystemExit) as usage:
        main(["transfer", "zero"])
    assert usage.value.code == 2


def test_the_installed_command(endpoints: str, key_prefix: str) -> None:
    """`python -m raftkv.client` is what the `raftkv` console script runs."""

    def raftkv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "raftkv.client", "--endpoints", endpoints, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert raftkv("put", key_prefix + "k", "v").stdout == "OK\n"
    assert raftkv("get", key_prefix + "k").stdout == "v\n"
    missing = raftkv("get", key_prefix + "missing")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.startswith("raftkv: key not found")
