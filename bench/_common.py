"""Helpers the benches share: free ports, bounded waits, and raftkvd processes that
are always stopped, even when a bench fails."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until it is truthy; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError, subprocess.TimeoutExpired):
            if predicate():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to append started processes to; all are stopped on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_raftkv_nodes(
    workdir: Path, started: list[subprocess.Popen[bytes]], *, rpc: bool
) -> tuple[list[int], list[int]]:
    """Start a 3-node raftkvd cluster; returns its REST ports and RESP ports (empty
    when `rpc` is off)."""
    ports = free_ports(9)
    peers = ",".join(f"http://{HOST}:{port}" for port in ports[:3])
    rest_ports, rpc_ports = ports[3:6], ports[6:9] if rpc else []
    for node_id in (1, 2, 3):
        log = (workdir / f"raftkv-{node_id}.log").open("wb")
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "raftkv.server",
                    "--id",
                    str(node_id),
                    "--cluster",
                    peers,
                    "--port",
                    str(rest_ports[node_id - 1]),
                    "--rpc-port",
                    str(rpc_ports[node_id - 1]) if rpc else "0",
                    "--data-dir",
                    str(workdir / f"raftkv-{node_id}"),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return rest_ports, rpc_ports
