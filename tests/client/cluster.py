"""A 3-node cluster of real `python -m raftkv.server` processes with their RESP ports,
on top of tests/integration's process helpers (ports picked free at run time)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from ..integration.cluster import HOST, Cluster, Member, free_ports


class RespCluster(Cluster):
    """`Cluster` with the RESP API on: each node gets a free `--rpc-port` too."""

    def add_member_slot(self) -> Member:
        member = super().add_member_slot()
        (rpc_port,) = free_ports(1)
        # After the base arguments' `--rpc-port 0`: argparse keeps the last value.
        member.extra_args += ["--rpc-port", str(rpc_port)]
        return member

    def rpc_port(self, node_id: int) -> int:
        args = self.members[node_id].extra_args
        return int(args[args.index("--rpc-port") + 1])

    def endpoint(self, node_id: int) -> str:
        return f"{HOST}:{self.rpc_port(node_id)}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(node_id) for node_id in self.members]

    def leader_by_role(self, timeout: float = 20.0) -> int:
        """The node that says it leads. Unlike `wait_leader` (the leader some node
        believes in), this is not stale just after an election or a transfer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node_id, member in self.members.items():
                if member.running:
                    with contextlib.suppress(OSError, AssertionError):
                        if self.status(node_id)["role"] == "leader":
                            return node_id
            time.sleep(0.05)
        raise AssertionError("no node leads")


class CuttingProxy:
    """A TCP proxy in front of one node that can lose a reply: once armed with
    `cut_after(marker)`, the next request containing `marker` is forwarded, and when
    the node's reply comes back the proxy closes the client's connection instead of
    passing the reply on. The request was applied; the client never hears of it."""

    def __init__(self, target_port: int) -> None:
        self.target = (HOST, target_port)
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.cuts = 0
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    def cut_after(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for sock in sockets:
            sock.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._track(client)
            self._track(upstream)
            self._spawn(self._pump_requests, client, upstream)

    def _pump_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward requests; replies go back on another thread unless a cut is due."""
        cut_pending = threading.Event()
        self._spawn(self._pump_replies, upstream, client, cut_pending)
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    if self._marker is not None and self._marker in data:
                        self._marker = None
                        cut_pending.set()
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _pump_replies(
        self, upstream: socket.socket, client: socket.socket, cut_pending: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if cut_pending.is_set():
                    self.cuts += 1
                    break
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
