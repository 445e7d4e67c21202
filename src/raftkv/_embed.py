"""The embedding API: run raftkv nodes inside a Python program, and talk to them.

The raftrpc seed's Go examples, in Python — a single server, a cluster of servers in
one process, and a clerk that puts then gets:

    import raftkv

    with raftkv.start_server("127.0.0.1:1234", 1) as server:
        server.wait_ready()
        with raftkv.make_clerk("127.0.0.1:1234", decode=True) as clerk:
            clerk.put("t1", "v1")             # returns the previous value: None
            assert clerk.get("t1") == "v1"    # a missing key raises raftkv.KeyNotFound

    peers = ["http://127.0.0.1:12379", "http://127.0.0.1:22379", "http://127.0.0.1:32379"]
    servers = [
        raftkv.start_cluster_server(f"127.0.0.1:{1234 + i}", i + 1, peers) for i in range(3)
    ]
    with raftkv.make_clerk(servers) as clerk:     # fails over between the three
        clerk.put("t1", "v1")
    for server in servers:
        server.stop()

`addr` is where the node serves the Redis protocol (RESP): any Redis client, or
`raftkv.Client`, talks to it there. `peers` are the URLs the nodes use to talk to
each other (like raftexample's `--cluster`), and `id` is the node's 1-based position
in them. Each node runs on its own thread with its own event loop; `stop()` (or
leaving the `with` block) shuts it down cleanly, and so does the interpreter's exit.
In an asyncio program, run a node on the program's own loop with `serve()`.

Without `data_dir`, a node keeps its log and snapshots in a temporary directory
that is deleted when it stops: pass `data_dir` to keep the data across restarts.
The REST API is off unless `rest_port` is given (0 picks a free port). Other
`raftkv.server.NodeOptions` fields (`tick_ms`, `request_timeout_s`, ...) may be
passed as keyword arguments.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

from . import errors
from .client import Client
from .client._core import format_endpoint, parse_endpoint

if TYPE_CHECKING:
    from .server import NodeOptions, Server

DEFAULT_READY_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 10.0


def start_server(
    addr: str,
    id: int = 1,
    data_dir: str | Path | None = None,
    *,
    rest_port: int | None = None,
    **node_options: Any,
) -> ServerHandle:
    """Start a single-node store serving RESP on ``addr`` ("host:port"); returns once
    it listens. Its peer port is any free port on the same host."""
    if id != 1:
        raise errors.InvalidRequest(f"a single-node server has id 1, not {id}")
    host, _ = parse_endpoint(addr, any_port=True)
    peer_url = f"http://{format_endpoint((host, _free_port(host)))}"
    return start_cluster_server(
        addr, 1, [peer_url], data_dir=data_dir, rest_port=rest_port, **node_options
    )


def start_cluster_server(
    addr: str,
    id: int,
    peers: Sequence[str],
    join: bool = False,
    data_dir: str | Path | None = None,
    *,
    rest_port: int | None = None,
    **node_options: Any,
) -> ServerHandle:
    """Start node ``id`` of the cluster whose peer URLs are ``peers`` (node ``id``
    listens on ``peers[id - 1]``), serving RESP on ``addr``; returns once it
    listens. With ``join=True`` it joins a running cluster that has already added
    it (``Client.add_member``) instead of forming a new one."""
    options = _node_options(addr, id, peers, join, data_dir, rest_port, node_options)
    handle = ServerHandle(options, owns_data_dir=data_dir is None)
    handle._start()
    return handle


async def serve(
    addr: str,
    id: int = 1,
    peers: Sequence[str] | None = None,
    join: bool = False,
    data_dir: str | Path | None = None,
    *,
    rest_port: int | None = None,
    ready: asyncio.Event | None = None,
    **node_options: Any,
) -> None:
    """Run a node on the running event loop until the task is cancelled (or the node
    is removed from the cluster). Without ``peers`` it is a single-node store.
    ``ready`` is set once the node listens.

        async def main() -> None:
            ready = asyncio.Event()
            node = asyncio.create_task(raftkv.serve("127.0.0.1:1234", ready=ready))
            await ready.wait()
            async with raftkv.AsyncClient("127.0.0.1:1234") as kv:
                await kv.put("t1", "v1")
            node.cancel()
    """
    if peers is None:
        if id != 1:
            raise errors.InvalidRequest(f"a single-node server has id 1, not {id}")
        host, _ = parse_endpoint(addr, any_port=True)
        peers = [f"http://{format_endpoint((host, _free_port(host)))}"]
    options = _node_options(addr, id, peers, join, data_dir, rest_port, node_options)
    with _data_dir(options, owned=data_dir is None) as options:
        from .server import Server

        await _run(Server(options), asyncio.Event(), ready)


@overload
def make_clerk(
    addr_or_addrs: str | ServerHandle | Sequence[str | ServerHandle],
    *,
    decode: Literal[False] = False,
    **client_options: Any,
) -> Client[bytes]: ...


@overload
def make_clerk(
    addr_or_addrs: str | ServerHandle | Sequence[str | ServerHandle],
    *,
    decode: Literal[True],
    **client_options: Any,
) -> Client[str]: ...


def make_clerk(
    addr_or_addrs: str | ServerHandle | Sequence[str | ServerHandle],
    *,
    decode: bool = False,
    **client_options: Any,
) -> Client[bytes] | Client[str]:
    """A ``raftkv.Client`` for the nodes at these RESP addresses (or server handles):
    ``put`` returns the previous value, ``get`` raises ``KeyNotFound`` for a missing
    key, and an empty key raises ``InvalidRequest``, as the seed's Clerk did with
    ErrNoKey and its invalid-parameter error. Keyword arguments go to ``Client``."""
    items = [addr_or_addrs] if isinstance(addr_or_addrs, str | ServerHandle) else addr_or_addrs
    endpoints = [item.address if isinstance(item, ServerHandle) else item for item in items]
    if decode:
        return Client(endpoints, decode=True, **client_options)
    return Client(endpoints, **client_options)


class ServerHandle:
    """A raftkv node running on a background thread with its own event loop."""

    def __init__(self, options: NodeOptions, *, owns_data_dir: bool) -> None:
        if owns_data_dir:
            path = tempfile.mkdtemp(prefix=f"raftkv-{options.id}-")
            options = dataclasses.replace(options, data_dir=Path(path))
        self.options = options
        self._owns_data_dir = owns_data_dir
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: Server | None = None
        self._listening = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def id(self) -> int:
        return self.options.id

    @property
    def address(self) -> str:
        """Where the node serves the Redis protocol: "host:port"."""
        return format_endpoint((self.options.listen_host, self.options.resolved_rpc_port))

    @property
    def rest_address(self) -> str | None:
        """Where the node serves its REST API, if it does."""
        if not self.options.serve_rest:
            return None
        return format_endpoint((self.options.listen_host, self.options.port))

    @property
    def peer_url(self) -> str:
        return self.options.cluster[self.options.id - 1]

    @property
    def data_dir(self) -> Path:
        return self.options.resolved_data_dir

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def leader_id(self) -> int:
        """The leader this node knows of, 0 if none (or if it is not running)."""
        server = self._server
        return server.node.leader_id if server is not None and self.running else 0

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Wait until the node knows a leader, so that it can serve requests. Raises
        ``NoLeader`` after ``timeout`` seconds (a majority of the peers must run)."""
        deadline = time.monotonic() + timeout
        while self.leader_id == 0:
            if not self.running:
                raise errors.Unavailable(f"node {self.id} is not running")
            if time.monotonic() >= deadline:
                raise errors.NoLeader(
                    f"node {self.id} knows no leader after {timeout:g} s: are a majority "
                    f"of {', '.join(self.options.cluster)} running?"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the node and wait for its thread to finish. Safe to call twice."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # The loop has already finished.
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise errors.Timeout(f"node {self.id} did not stop within {timeout:g} s")
        self._thread = None
        _running.discard(self)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<raftkv.ServerHandle node {self.id} at {self.address} ({state})>"

    def _start(self) -> None:
        thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name=f"raftkv-node-{self.id}", daemon=True
        )
        self._thread = thread
        thread.start()
        self._listening.wait()
        if self._startup_error is not None:
            thread.join()
            self._thread = None
            raise self._startup_error
        _running.add(self)

    async def _main(self) -> None:
        from .server import Server

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = Server(self.options)
            try:
                await server.start()
            except Exception as exc:
                self._startup_error = exc
                return
            self._server = server
            self._listening.set()
            await _serve_until_stopped(server, self._stop)
        finally:
            self._listening.set()
            if self._owns_data_dir:
                shutil.rmtree(self.options.resolved_data_dir, ignore_errors=True)


async def _run(server: Server, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
    """Start `server` and run it until `stop` is set, the task is cancelled, or it is
    removed from the cluster."""
    await server.start()
    if ready is not None:
        ready.set()
    await _serve_until_stopped(server, stop)


async def _serve_until_stopped(server: Server, stop: asyncio.Event) -> None:
    try:
        stopped = asyncio.create_task(stop.wait())
        removed = asyncio.create_task(server.wait_removed())
        try:
            await asyncio.wait({stopped, removed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            removed.cancel()
    finally:
        await server.stop()


@contextlib.contextmanager
def _data_dir(options: NodeOptions, *, owned: bool) -> Iterator[NodeOptions]:
    """The options with a temporary data directory when the caller gave none; the
    directory is removed afterwards."""
    if not owned:
        yield options
        return
    with tempfile.TemporaryDirectory(prefix=f"raftkv-{options.id}-") as path:
        yield dataclasses.replace(options, data_dir=Path(path))


def _node_options(
    addr: str,
    node_id: int,
    peers: Sequence[str],
    join: bool,
    data_dir: str | Path | None,
    rest_port: int | None,
    extra: dict[str, Any],
) -> NodeOptions:
    from .server import NodeOptions, OptionsError

    if isinstance(peers, str):
        raise errors.InvalidRequest("peers is a list of peer URLs, not one string")
    host, port = parse_endpoint(addr, any_port=True)
    try:
        options = NodeOptions(
            id=node_id,
            cluster=tuple(peers),
            port=rest_port or 0,
            join=join,
            data_dir=None if data_dir is None else Path(data_dir),
            rpc_port=port or _free_port(host),
            listen_host=host,
            serve_rest=rest_port is not None,
            **extra,
        )
        if rest_port == 0:
            options = _with_free_rest_port(options)
        options.validate()
    except OptionsError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    except TypeError as exc:  # An unknown keyword argument.
        raise errors.InvalidRequest(f"invalid node option: {exc}") from None
    return options


def _with_free_rest_port(options: NodeOptions) -> NodeOptions:
    return dataclasses.replace(options, port=_free_port(options.listen_host))


def _free_port(host: str) -> int:
    """A port that was free on `host` a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


_running: weakref.WeakSet[ServerHandle] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop the nodes a program left running, so that they close their files cleanly."""
    for handle in list(_running):
        with contextlib.suppress(Exception):
            handle.stop()


__all__ = ["ServerHandle", "make_clerk", "serve", "start_cluster_server", "start_server"]
