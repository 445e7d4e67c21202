"""The embedding API: nodes inside this test process, each on its own thread and
event loop, as a program written after the raftrpc seed's examples would run them."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import raftkv
import raftkv._embed
from raftkv import errors
from raftkv.server import StartupError

from ..ports import free_port

FAST: dict[str, Any] = {"tick_ms": 20}


@pytest.fixture
def peers() -> list[str]:
    return [f"http://127.0.0.1:{free_port()}" for _ in range(3)]


@pytest.fixture
def servers(peers: list[str]) -> Iterator[list[raftkv.ServerHandle]]:
    handles: list[raftkv.ServerHandle] = []
    try:
        for node_id in range(1, 4):
            addr = f"127.0.0.1:{free_port()}"
            handles.append(raftkv.start_cluster_server(addr, node_id, peers, **FAST))
        yield handles
    finally:
        for handle in handles:
            handle.stop()


@pytest.mark.slow  # Default Raft timing, as the example is written: a few seconds.
def test_the_module_docstring_example_runs() -> None:
    """The docstring's program, as written, with free ports for its fixed ones."""
    code = textwrap.dedent(raftkv._embed.__doc__.split("\n\n", 2)[2].split("\n\n`addr`")[0])
    for port in sorted(set(re.findall(r"\b(1234|\d{5})\b", code)), reverse=True):
        code = code.replace(port, str(free_port()))
    code = code.replace("1234 + i", "1234 + i * 7")  # The three RESP ports.
    exec(compile(code, "raftkv._embed docstring", "exec"), {})


def test_single_server_and_clerk(tmp_path: Path) -> None:
    with raftkv.start_server("127.0.0.1:0", 1, data_dir=tmp_path, **FAST) as server:
        server.wait_ready(10)
        assert server.running and server.leader_id == 1
        assert server.rest_address is None
        with raftkv.make_clerk(server.address, decode=True) as clerk:
            assert clerk.put("t1", "v1") is None
            assert clerk.put("t1", "v2") == "v1"
            assert clerk.get("t1") == "v2"
            with pytest.raises(errors.KeyNotFound):
                clerk.get("t2")
            with pytest.raises(errors.InvalidRequest, match="empty key"):
                clerk.put("", "v")
    assert not server.running
    # The data directory outlives the server, and a restart finds the data.
    with raftkv.start_server(server.address, 1, data_dir=tmp_path, **FAST) as again:
        again.wait_ready(10)
        with raftkv.make_clerk(again) as clerk:
            assert clerk.get("t1") == b"v2"


def test_three_servers_in_one_process(servers: list[raftkv.ServerHandle]) -> None:
    for server in servers:
        server.wait_ready(10)
    assert len({server.leader_id for server in servers}) == 1
    with raftkv.make_clerk(servers, timeout=15) as clerk:
        assert clerk.put("k", "v") is None
        for server in servers:
            with raftkv.make_clerk(server) as direct:
                assert direct.get("k") == b"v"
        assert {m.id for m in clerk.members()} == {1, 2, 3}
        # Stop the server the clerk uses: it fails over to the other two.
        used = next(s for s in servers if s.address == clerk.endpoint)
        used.stop()
        assert not used.running
        assert clerk.put("k", "w") == b"v"
        assert clerk.incr("n") == 1


def test_a_temporary_data_directory_is_removed_on_stop() -> None:
    server = raftkv.start_server(f"127.0.0.1:{free_port()}", **FAST)
    data_dir = server.data_dir
    assert data_dir.is_dir()
    server.stop()
    server.stop()  # Twice is fine.
    assert not data_dir.exists()


def test_rest_api_when_asked(tmp_path: Path) -> None:
    import http.client

    with raftkv.start_server("127.0.0.1:0", data_dir=tmp_path, rest_port=0, **FAST) as server:
        server.wait_ready(10)
        assert server.rest_address is not None
        host, port = server.rest_address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("PUT", "/k", body=b"v")
            assert connection.getresponse().status == 204
        finally:
            connection.close()
        with raftkv.make_clerk(server) as clerk:
            assert clerk.get("k") == b"v"


def test_startup_errors_are_raised_to_the_caller(peers: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match="already in use"):
            raftkv.start_server(f"127.0.0.1:{port}", **FAST)
    with pytest.raises(errors.InvalidRequest, match="is not a position"):
        raftkv.start_cluster_server("127.0.0.1:0", 4, peers)
    with pytest.raises(errors.InvalidRequest, match="invalid peer URL"):
        raftkv.start_cluster_server("127.0.0.1:0", 1, ["127.0.0.1:5"])
    with pytest.raises(errors.InvalidRequest, match="single-node server has id 1"):
        raftkv.start_server("127.0.0.1:0", 2)
    with pytest.raises(errors.InvalidRequest, match="invalid node option"):
        raftkv.start_server("127.0.0.1:0", no_such_option=1)


def test_wait_ready_without_a_majority(peers: list[str]) -> None:
    with (
        raftkv.start_cluster_server("127.0.0.1:0", 1, peers, **FAST) as lonely,
        pytest.raises(errors.NoLeader, match="majority"),
    ):
        lonely.wait_ready(0.5)


def test_serve_on_the_programs_own_event_loop(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        ready = asyncio.Event()
        node = asyncio.create_task(raftkv.serve(addr, data_dir=tmp_path, ready=ready, **FAST))
        await ready.wait()
        async with raftkv.AsyncClient(addr, decode=True) as kv:
            assert await kv.put("t1", "v1") is None
            assert await kv.get("t1") == "v1"
        node.cancel()
        with pytest.raises(asyncio.CancelledError):
            await node

    asyncio.run(main())
    assert any(tmp_path.iterdir())  # The node kept its data where it was told.


def test_a_program_that_forgets_to_stop_its_nodes_still_exits_cleanly() -> None:
    program = textwrap.dedent(
        """
        import raftkv
        server = raftkv.start_server("127.0.0.1:0", tick_ms=20)
        server.wait_ready(10)
        print(server.data_dir)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert not Path(completed.stdout.strip()).exists()  # Stopped at exit, and cleaned up.
