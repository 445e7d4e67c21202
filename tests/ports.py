"""Ports for the servers that tests start on 127.0.0.1.

A port found by binding port 0 comes from the kernel's ephemeral range: the range
it also draws the local port of every outgoing connection from. Between a test
choosing such a port and its server binding it, any process's outgoing connection
(a node dialing its peers, say) may take it, and the server then fails to start
with "address already in use". So ports here come from outside that range (below
it, or above it where there is no room below), each is checked free by binding
it, and none is handed out twice in one test run.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

HOST = "127.0.0.1"

#: The lowest port handed out: above the ports of well-known local services.
_LOWEST = 10_000
_LINUX_DEFAULT_EPHEMERAL = (32_768, 60_999)

_handed_out: set[int] = set()
_lock = threading.Lock()
_random = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(field) for field in text.split())
    except (OSError, ValueError):
        return _LINUX_DEFAULT_EPHEMERAL
    return low, high


def _candidate_range() -> tuple[int, int] | None:
    """Ports outside the ephemeral range: below it when it leaves room, else above
    it; None when it covers nearly everything."""
    low, high = _ephemeral_range()
    if low - _LOWEST >= 2_000:
        return _LOWEST, low - 1
    if 65_535 - high >= 2_000:
        return high + 1, 65_535
    return None


def _bindable(port: int) -> int:
    """`port` if it is free now (0: a port the kernel chooses), else 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return 0
        bound: int = sock.getsockname()[1]
        return bound


def free_ports(count: int) -> list[int]:
    """`count` distinct ports, free right now, outside the ephemeral range (unless it
    leaves no room), and never handed out before in this process."""
    candidates = _candidate_range()
    ports: list[int] = []
    with _lock:
        for _ in range(100 * count + 1_000):
            if len(ports) == count:
                return ports
            port = _bindable(_random.randint(*candidates) if candidates else 0)
            if port and port not in _handed_out:
                _handed_out.add(port)
                ports.append(port)
    raise RuntimeError(f"found only {len(ports)} free ports of {count} (tried {candidates})")


def free_port() -> int:
    (port,) = free_ports(1)
    return port
