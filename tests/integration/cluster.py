"""Real raftkvd processes on 127.0.0.1 for integration tests.

Ports are chosen free at run time; every process a test starts is stopped when the
test ends, pass or fail (the `cluster` fixture's finalizer kills them all).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..ports import HOST, free_ports


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode()


def request(
    port: int, method: str, path: str, body: bytes | str | None = None, timeout: float = 10.0
) -> Response:
    """One HTTP request to a node's REST API (a fresh connection, like curl)."""
    if isinstance(body, str):
        body = body.encode()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path, body=body)
        reply = connection.getresponse()
        return Response(reply.status, reply.read(), {k.lower(): v for k, v in reply.getheaders()})
    finally:
        connection.close()


def run_to_exit_concurrently(
    commands: dict[str, list[str]], cwd: Path, timeout: float = 30.0
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run commands side by side until each exits by itself, capturing their output
    (for startup refusals: one process start costs seconds on a small machine). A
    command still running after `timeout` is killed (and says so on its stderr)."""
    processes = {
        name: subprocess.Popen(
            args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for name, args in commands.items()
    }
    results = {}
    deadline = time.monotonic() + timeout
    try:
        for name, process in processes.items():
            try:
                stdout, stderr = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
                stderr += f"\n(still running after {timeout} s: killed)"
            results[name] = subprocess.CompletedProcess(
                commands[name], process.returncode, stdout, stderr
            )
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


@dataclass
class Member:
    node_id: int
    port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    #: The RESP API's port; None leaves the API off (`--rpc-port 0`).
    rpc_port: int | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    """A set of raftkvd nodes. Ids are 1-based positions in the peer URL list."""

    def __init__(self, workdir: Path, size: int, *, extra_args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.extra_args = list(extra_args or [])
        self.members: dict[int, Member] = {}
        self.peer_urls: list[str] = []
        for _ in range(size):
            self.add_member_slot()

    def add_member_slot(self) -> Member:
        node_id = len(self.members) + 1
        port, peer_port = free_ports(2)
        member = Member(
            node_id,
            port,
            peer_port,
            self.workdir / f"raftkv-{node_id}",
            self.workdir / f"node-{node_id}.log",
        )
        self.members[node_id] = member
        self.peer_urls.append(f"http://{HOST}:{peer_port}")
        return member

    def args_for(self, node_id: int, join: bool = False) -> list[str]:
        member = self.members[node_id]
        args = [
            sys.executable,
            "-m",
            "raftkv.server",
            "--id",
            str(node_id),
            "--cluster",
            ",".join(self.peer_urls),
            "--port",
            str(member.port),
            "--rpc-port",
            str(member.rpc_port or 0),
            "--data-dir",
            str(member.data_dir),
            "--tick-ms",
            "50",
            *self.extra_args,
            *member.extra_args,
        ]
        if join:
            args.append("--join")
        return args

    def start(self, node_id: int, join: bool = False, wait: bool = True) -> Member:
        member = self.members[node_id]
        assert not member.running, f"node {node_id} is already running"
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(
            self.args_for(node_id, join),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if wait:
            self.wait_listening(node_id)
        return member

    def start_all(self) -> None:
        for node_id in self.members:
            self.start(node_id, wait=False)
        for node_id in self.members:
            self.wait_listening(node_id)

    def wait_listening(self, node_id: int, timeout: float = 20.0) -> None:
        member = self.members[node_id]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if member.process is not None and member.process.poll() is not None:
                raise AssertionError(
                    f"node {node_id} exited with {member.process.returncode}:\n{self.log(node_id)}"
                )
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, member.port), timeout=0.5).close()
                return
            time.sleep(0.05)
        raise AssertionError(f"node {node_id} did not listen in time:\n{self.log(node_id)}")

    def wait_leader(self, timeout: float = 20.0, among: list[int] | None = None) -> int:
        deadline = time.monotonic() + timeout
        among = among or [i for i, m in self.members.items() if m.running]
        while time.monotonic() < deadline:
            for node_id in among:
                with contextlib.suppress(OSError):
                    if (
                        request(self.members[node_id].port, "GET", "/health", timeout=2).status
                        == 200
                    ):
                        status = self.status(node_id)
                        if status["leader"]:
                            return int(status["leader"])
            time.sleep(0.1)
        raise AssertionError("no leader elected in time")

    def status(self, node_id: int) -> dict[str, Any]:
        reply = request(self.members[node_id].port, "GET", "/v1/status")
        assert reply.status == 200, reply
        result: dict[str, Any] = json.loads(reply.body)
        return result

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        member = self.members[node_id]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(sig)
            member.process.wait(timeout=15)

    def stop_all(self) -> None:
        for member in self.members.values():
            process = member.process
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def stop(self, node_id: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` (resuming the node first if it is paused) and return its exit
        code. A node still running after `timeout` is killed and the test fails."""
        member = self.members[node_id]
        process = member.process
        assert process is not None, f"node {node_id} was never started"
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
                process.send_signal(signal.SIGCONT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                raise AssertionError(
                    f"node {node_id} did not exit within {timeout} s of signal {sig}:\n"
                    f"{self.log(node_id)}"
                ) from None
        return process.returncode

    def pause(self, node_id: int) -> None:
        """Freeze a node (SIGSTOP): it neither answers nor times anything out."""
        process = self.members[node_id].process
        assert process is not None and process.poll() is None, f"node {node_id} is not running"
        process.send_signal(signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        process = self.members[node_id].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)

    def wait_exit(self, node_id: int, timeout: float = 20.0) -> int:
        """Wait for a node to exit by itself; returns its exit code."""
        process = self.members[node_id].process
        assert process is not None, f"node {node_id} was never started"
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"node {node_id} still runs after {timeout} s:\n{self.log(node_id)}"
            ) from None

    def run_to_exit(
        self, node_id: int, args: list[str] | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a node in the foreground until it exits by itself, capturing its output:
        for startup refusals. `args` replaces the usual command line when given."""
        return subprocess.run(
            args if args is not None else self.args_for(node_id),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )

    def leader_by_role(self, timeout: float = 20.0, among: list[int] | None = None) -> int:
        """The node that says it leads. Unlike `wait_leader` (the leader some node
        believes in), this is not stale just after an election."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node_id in among or list(self.members):
                if self.members[node_id].running:
                    with contextlib.suppress(OSError, AssertionError):
                        if self.status(node_id)["role"] == "leader":
                            return node_id
            time.sleep(0.05)
        raise AssertionError("no node leads")

    def enable_resp(self) -> None:
        """Give every member a free RESP port (before it starts)."""
        for member in self.members.values():
            if member.rpc_port is None:
                (member.rpc_port,) = free_ports(1)

    def scan(
        self, node_id: int, prefix: str = "", consistency: str = "linearizable"
    ) -> dict[str, str]:
        """Every key under `prefix` with its value, read from one node."""
        query = f"/v1/kv?prefix={quote(prefix)}&limit=100000&consistency={consistency}"
        reply = request(self.members[node_id].port, "GET", query, timeout=30)
        assert reply.status == 200, reply
        page = json.loads(reply.body)
        assert not page["more"], "more than 100000 keys"
        return {item["key"]: item["value"] for item in page["kvs"]}

    def wait_applied(self, node_id: int, index: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until a node has applied `index`; returns its status then."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] | str = "never answered"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, AssertionError):
                status = self.status(node_id)
                if status["applied"] >= index:
                    return status
            time.sleep(0.1)
        raise AssertionError(f"node {node_id} did not apply {index} in time: {status}")

    def wait_snapshot_past(self, node_id: int, index: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until a node has a snapshot beyond `index`; returns its status then."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] | str = "never answered"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, AssertionError):
                status = self.status(node_id)
                if status["snapshot_index"] > index:
                    return status
            time.sleep(0.1)
        raise AssertionError(f"node {node_id} took no snapshot past {index} in time: {status}")

    def change_membership(self, via: list[int], method: str, node_id: int) -> None:
        """POST (add) or DELETE (remove) `node_id` through any node of `via`, retrying
        while the cluster is busy with another change (409) or between leaders (503).

        An attempt whose outcome is unknown (a timeout, a dropped connection) may have
        made the change: a retry is then told that it is done already (400)."""
        body = self.peer_urls[node_id - 1] if method == "POST" else None
        done_already = "already a voter" if method == "POST" else "is not a member"
        deadline = time.monotonic() + 30
        uncertain = False
        while time.monotonic() < deadline:
            for through in via:
                try:
                    reply = request(self.members[through].port, method, f"/{node_id}", body, 10)
                except OSError as exc:
                    print(f"{method} /{node_id} through node {through}: {exc!r}")
                    uncertain = True
                    continue
                print(f"{method} /{node_id} through node {through}: {reply.status} {reply.text}")
                if reply.status == 204 or (uncertain and done_already in reply.text):
                    return
                assert reply.status in (409, 503), reply
                uncertain = uncertain or reply.status == 503
            time.sleep(0.2)
        raise AssertionError(f"{method} /{node_id} did not succeed in time")

    def log(self, node_id: int) -> str:
        path = self.members[node_id].log_path
        if not path.exists():
            return ""
        lines = [
            line
            for line in path.read_text(errors="replace").splitlines()
            if "refused a peer" not in line
        ]
        return "\n".join(lines[-60:])

    # --- REST helpers ------------------------------------------------------------------

    def put(self, node_id: int, key: str, value: str | bytes, timeout: float = 10.0) -> Response:
        return request(self.members[node_id].port, "PUT", "/" + quote(key), value, timeout)

    def get(self, node_id: int, key: str, timeout: float = 10.0) -> Response:
        return request(self.members[node_id].port, "GET", "/" + quote(key), None, timeout)

    def wait_value(self, node_id: int, key: str, value: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Response | str | None = None
        while time.monotonic() < deadline:
            try:
                last = self.get(node_id, key, timeout=5)
                if last.status == 200 and last.text == value:
                    return
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"node {node_id}: {key}={last!r}, expected {value!r}")
