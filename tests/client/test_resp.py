"""The RESP API as the Redis ecosystem sees it: redis-py (sync and asyncio) and the
redis-cli binary against a real 3-node cluster. Every command, with its errors."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .cluster import RespCluster
from .conftest import MAX_VALUE_BYTES

REDIS_CLI = shutil.which("redis-cli")


def connect(
    cluster: RespCluster, node_id: int = 1, protocol: int = 2, **kwargs: object
) -> redis.Redis:
    """redis-py without its own retries (so that errors show), RESP2 by default."""
    options: dict[str, object] = {"socket_timeout": 10, **kwargs}
    return redis.Redis(
        port=cluster.rpc_port(node_id),
        retry=Retry(NoBackoff(), 0),
        protocol=protocol,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def r(shared_cluster: RespCluster) -> Iterator[redis.Redis]:
    client = connect(shared_cluster, 2)  # Node 2: writes are forwarded if it follows.
    yield client
    client.close()


def test_connection_commands(r: redis.Redis) -> None:
    assert r.ping() is True
    assert r.echo("hello") == b"hello"
    assert r.execute_command("SELECT", 0) is True
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)
    assert r.client_setname("tester") is True
    assert r.client_getname() == "tester"  # redis-py decodes this one.
    assert isinstance(r.client_id(), int)
    assert r.command_count() > 20
    hello = r.execute_command("HELLO", 2)
    fields = dict(zip(hello[::2], hello[1::2], strict=True))
    assert fields[b"server"] == b"raftkv" and fields[b"proto"] == 2
    with pytest.raises(redis.ResponseError, match="NOPROTO"):
        r.execute_command("HELLO", 4)


def test_strings(r: redis.Redis, key_prefix: str) -> None:
    k = key_prefix + "k"
    assert r.set(k, "v1") is True
    assert r.get(k) == b"v1"
    assert r.set(k, "v2", get=True) == b"v1"
    assert r.set(k, "nx", nx=True) is None
    assert r.set(k + "new", "nx", nx=True) is True
    assert r.set(k, "xx", xx=True) is True
    assert r.set(k + "absent", "xx", xx=True) is None
    assert r.getset(k, "v3") == b"xx"
    assert r.strlen(k) == 2
    assert r.strlen(k + "absent") == 0
    assert r.exists(k, k + "new", k + "absent") == 2
    assert r.mset({k + "a": "1", k + "b": "2"}) is True
    assert r.mget([k + "a", k + "b", k + "absent"]) == [b"1", b"2", None]
    assert r.append(k + "s", "ab") == 2
    assert r.append(k + "s", "cd") == 4
    assert r.get(k + "s") == b"abcd"
    assert r.getdel(k + "s") == b"abcd"
    assert r.getdel(k + "s") is None
    assert r.delete(k, k + "new", k + "absent") == 2
    assert r.get(k) is None
    with pytest.raises(redis.ResponseError, match="do not expire"):
        r.set(k, "v", ex=10)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", k, "v", "BOGUS")
    with pytest.raises(redis.ResponseError, match="empty key"):
        r.set("", "v")


def test_counters(r: redis.Redis, key_prefix: str) -> None:
    k = key_prefix + "n"
    assert r.incr(k) == 1
    assert r.incrby(k, 10) == 11
    assert r.decr(k) == 10
    assert r.decrby(k, 4) == 6
    r.set(k + "text", "abc")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.incr(k + "text")
    r.set(k + "max", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="overflow"):
        r.incr(k + "max")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("INCRBY", k, "ten")


def test_scan_by_prefix_and_dbsize(r: redis.Redis, key_prefix: str) -> None:
    keys = {f"{key_prefix}{i:02d}".encode() for i in range(25)}
    r.mset(dict.fromkeys(keys, b"x"))
    r.set(key_prefix.rstrip(":") + "-other", "x")
    assert set(r.scan_iter(match=key_prefix + "*", count=7)) == keys
    cursor, page = r.scan(0, match=key_prefix + "*", count=10)
    assert len(page) == 10 and cursor != 0
    assert r.dbsize() >= 26
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.scan("not-hex", match="*")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SCAN", 0, "COUNT", 0)


def test_info_reports_the_raft_state(r: redis.Redis) -> None:
    info = r.info()
    assert info["raft_role"] in ("leader", "follower")
    assert info["raft_leader"] in (1, 2, 3)
    assert info["raft_members"] == 3
    assert info["raft_applied_index"] <= info["raft_commit_index"]
    assert "db0" in info
    assert set(r.info("replication")) >= {"role", "raft_term"}


def test_raft_commands(r: redis.Redis, shared_cluster: RespCluster) -> None:
    status = r.execute_command("RAFT.STATUS")
    fields = dict(zip(status[::2], status[1::2], strict=True))
    assert fields[b"id"] == 2 and fields[b"leader"] in (1, 2, 3)
    members = r.execute_command("RAFT.MEMBERS")
    urls = sorted(dict(zip(m[::2], m[1::2], strict=True))[b"url"] for m in members)
    assert urls == sorted(url.encode() for url in shared_cluster.peer_urls)
    with pytest.raises(redis.ResponseError, match="invalid peer URL"):
        r.execute_command("RAFT.ADD", 9, "not-a-url")
    with pytest.raises(redis.ResponseError, match="already a voter"):
        r.execute_command("RAFT.ADD", 1, shared_cluster.peer_urls[0])
    with pytest.raises(redis.ResponseError, match="positive integer"):
        r.execute_command("RAFT.ADD", 0, "http://127.0.0.1:1")
    with pytest.raises(redis.ResponseError, match="usage"):
        r.execute_command("RAFT.ADD", 9, "http://127.0.0.1:1", "VOTER")
    with pytest.raises(redis.ResponseError, match="not a member"):
        r.execute_command("RAFT.REMOVE", 9)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("RAFT.TRANSFER", "two")


def test_add_and_remove_a_learner(r: redis.Redis) -> None:
    assert r.execute_command("RAFT.ADD", 7, "http://127.0.0.1:9", "LEARNER") == b"OK"
    members = r.execute_command("RAFT.MEMBERS")
    learners = [dict(zip(m[::2], m[1::2], strict=True)) for m in members]
    assert [m[b"id"] for m in learners if m[b"learner"]] == [7]
    assert r.execute_command("RAFT.REMOVE", 7) == b"OK"
    assert len(r.execute_command("RAFT.MEMBERS")) == 3


def test_leadership_transfer_asked_of_the_leader(shared_cluster: RespCluster) -> None:
    leader = shared_cluster.leader_by_role()
    target = 1 + leader % 3
    with connect(shared_cluster, leader) as r:
        assert r.execute_command("RAFT.TRANSFER", target) == b"OK"
        assert r.info("replication")["raft_leader"] == target
        assert r.execute_command("RAFT.TRANSFER", target) == b"OK"  # Already there.


def test_leadership_transfer_asked_of_a_follower(shared_cluster: RespCluster) -> None:
    leader = shared_cluster.leader_by_role()
    follower = 1 + leader % 3
    target = 1 + follower % 3
    assert target != leader
    with connect(shared_cluster, follower, socket_timeout=10) as r:
        assert r.execute_command("RAFT.TRANSFER", target) == b"OK"
    assert shared_cluster.leader_by_role() == target


def test_consistency_modes(shared_cluster: RespCluster, key_prefix: str) -> None:
    with connect(shared_cluster, 3, single_connection_client=True) as r:
        assert r.execute_command("RAFT.CONSISTENCY") == b"linearizable"
        assert r.execute_command("RAFT.CONSISTENCY", "serializable") == b"OK"
        assert r.execute_command("RAFT.CONSISTENCY") == b"serializable"
        r.set(key_prefix + "k", "v")
        assert r.get(key_prefix + "k") == b"v"  # Its own write: applied before the reply.
        with pytest.raises(redis.ResponseError, match="usage"):
            r.execute_command("RAFT.CONSISTENCY", "eventual")


def test_compare_and_set(r: redis.Redis, key_prefix: str) -> None:
    k = key_prefix + "k"
    assert r.execute_command("RAFT.CAS", k, "NX", "SET", "a") == 1
    assert r.execute_command("RAFT.CAS", k, "NX", "SET", "b") == 0
    assert r.execute_command("RAFT.CAS", k, "IFEQ", "b", "SET", "c") == 0
    assert r.execute_command("RAFT.CAS", k, "IFEQ", "a", "SET", "c") == 1
    assert r.get(k) == b"c"
    assert r.execute_command("RAFT.CAS", k, "IFEQ", "c", "DEL") == 1
    assert r.exists(k) == 0
    for bad in (["IFEQ", "a"], ["SET", "x", "NX"], ["NX", "SET"], ["XX", "SET", "v"]):
        with pytest.raises(redis.ResponseError, match=r"usage: RAFT\.CAS"):
            r.execute_command("RAFT.CAS", k, *bad)


def test_exactly_once_commands(r: redis.Redis, key_prefix: str) -> None:
    k = key_prefix + "n"
    client_id = r.execute_command("RAFT.SESSION")
    assert r.execute_command("RAFT.EXEC", client_id, 1, "INCRBY", k, 5) == 5
    assert r.execute_command("RAFT.EXEC", client_id, 1, "INCRBY", k, 5) == 5  # A resend.
    assert r.get(k) == b"5"
    assert r.execute_command("RAFT.EXEC", client_id, 2, "APPEND", k + "s", "x") == 1
    assert r.execute_command("RAFT.EXEC", client_id, 3, "SET", k + "s", "y", "GET") == b"x"
    assert r.execute_command("RAFT.EXEC", client_id, 3, "SET", k + "s", "y", "GET") == b"x"
    assert r.execute_command("RAFT.EXEC", client_id, 4, "SET", k + "s", "z") == b"OK"
    assert r.execute_command("RAFT.EXEC", client_id, 5, "RAFT.CAS", k + "s", "IFEQ", "z", "DEL")
    assert r.execute_command("RAFT.EXEC", client_id, 6, "DEL", k + "s") == 0
    with pytest.raises(redis.ResponseError, match="SESSION"):
        r.execute_command("RAFT.EXEC", 10**12, 1, "INCR", k)
    with pytest.raises(redis.ResponseError, match=r"RAFT\.EXEC supports"):
        r.execute_command("RAFT.EXEC", client_id, 7, "GET", k)


def test_errors_keep_the_connection_usable(r: redis.Redis, key_prefix: str) -> None:
    with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
        r.execute_command("NOSUCH", "x")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'incr'"):
        r.execute_command("INCR", "a", "b")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        r.execute_command("MSET", "a", "1", "b")
    with pytest.raises(redis.ResponseError, match="exceeds --max-value-bytes"):
        r.set(key_prefix + "big", b"x" * (MAX_VALUE_BYTES + 1))
    assert r.set(key_prefix + "big", b"x" * MAX_VALUE_BYTES) is True
    with pytest.raises(redis.ResponseError, match="exceeds --max-value-bytes"):
        r.append(key_prefix + "big", b"y" * (MAX_VALUE_BYTES + 1))
    assert r.ping() is True


def test_a_malformed_or_oversized_request_closes_only_its_connection(
    r: redis.Redis, shared_cluster: RespCluster
) -> None:
    port = shared_cluster.rpc_port(2)
    for garbage in (b"*1\r\n$x\r\n", b"*1\r\n$999999999\r\n" + b"y" * (MAX_VALUE_BYTES + 70_000)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(garbage)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            assert reply.startswith(b"-ERR Protocol error")
    assert r.ping() is True


def test_pipelined_commands(r: redis.Redis, key_prefix: str) -> None:
    k = key_prefix
    with r.pipeline(transaction=False) as pipe:
        for i in range(200):
            pipe.set(f"{k}{i}", i)
        pipe.incr(k + "n")
        pipe.incr(k + "n")
        pipe.get(k + "7")
        pipe.execute_command("NOSUCH")
        pipe.mget([k + "0", k + "199"])
        replies = pipe.execute(raise_on_error=False)
    assert replies[:200] == [True] * 200
    assert replies[200:203] == [1, 2, b"7"]
    assert isinstance(replies[203], redis.ResponseError)
    assert replies[204] == [b"0", b"199"]


def _set(key: bytes, value: bytes) -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value)


def _get(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _exchange(port: int, requests: list[bytes], expected: list[bytes]) -> None:
    """Send every request before reading any reply; the replies must be `expected`."""
    want = b"".join(expected)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        replies = bytearray()
        while len(replies) < len(want):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(replies)} bytes of replies"
            replies += chunk
    assert bytes(replies) == want


def test_reads_in_a_pipeline_see_exactly_the_writes_before_them(
    shared_cluster: RespCluster, key_prefix: str
) -> None:
    k = key_prefix.encode()
    requests, expected = [_set(k, b"start"), _get(k)], [b"+OK\r\n", _bulk(b"start")]
    for i in range(1, 40):
        value = b"%d" % i
        requests += [_get(k), _set(k, value), _get(k)]
        expected += [_bulk(b"%d" % (i - 1) if i > 1 else b"start"), b"+OK\r\n", _bulk(value)]
    _exchange(shared_cluster.rpc_port(2), requests, expected)


def test_a_long_unread_pipeline_is_answered_in_order(
    shared_cluster: RespCluster, key_prefix: str
) -> None:
    """More requests than a connection may have replies pending (reading pauses, then
    resumes as replies drain): runs of writes, reads and immediate replies; the
    client reads nothing until it has sent everything."""
    k = key_prefix.encode()
    requests: list[bytes] = []
    expected: list[bytes] = []
    for run in range(10):
        value = b"%d" % run
        requests += [_set(k, value)] * 1000 + [_get(k)] * 1000 + [b"*1\r\n$4\r\nPING\r\n"] * 500
        expected += [b"+OK\r\n"] * 1000 + [_bulk(value)] * 1000 + [b"+PONG\r\n"] * 500
    _exchange(shared_cluster.rpc_port(2), requests, expected)


def send_slowly(port: int, data: bytes, piece_bytes: int, expect_replies: int) -> bytes:
    """Send `data` a few bytes at a time, so that requests are split across reads at
    every position; returns the replies (as many lines as `expect_replies`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(data), piece_bytes):
            sock.sendall(data[start : start + piece_bytes])
            time.sleep(0.001)
        replies = b""
        while replies.count(b"\r\n") < expect_replies:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {replies!r}"
            replies += chunk
        return replies


def test_requests_split_across_reads(shared_cluster: RespCluster, key_prefix: str) -> None:
    port = shared_cluster.rpc_port(1)
    k = key_prefix.encode()
    multibulk = b"".join(
        b"*3\r\n$3\r\nSET\r\n$%d\r\n%s%d\r\n$1\r\nv\r\n" % (len(k) + 1, k, i) for i in range(10)
    )
    assert send_slowly(port, multibulk, 7, 10) == b"+OK\r\n" * 10
    inline = b"".join(b"INCR %sn\r\n" % k for _ in range(10))
    assert send_slowly(port, inline, 3, 10) == b"".join(b":%d\r\n" % i for i in range(1, 11))
    # Inline commands, then a multibulk one, as `redis-cli --pipe` sends them.
    mixed = b"GET %s0\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n" % k
    assert send_slowly(port, mixed, len(mixed), 5) == b"$1\r\nv\r\n+PONG\r\n$2\r\nhi\r\n"


def test_resp3_after_hello_3(shared_cluster: RespCluster, key_prefix: str) -> None:
    with connect(shared_cluster, 1, protocol=3) as r:
        r.set(key_prefix + "k", "v")
        assert r.get(key_prefix + "k") == b"v"
        assert r.get(key_prefix + "absent") is None
        status = r.execute_command("RAFT.STATUS")
        assert isinstance(status, dict) and status[b"id"] == 1
        assert isinstance(status[b"members"][0], dict)
        hello = r.execute_command("HELLO", 3)
        assert hello[b"proto"] == 3
    with socket.create_connection(("127.0.0.1", shared_cluster.rpc_port(1))) as sock:
        sock.sendall(b"HELLO 3\r\nGET " + key_prefix.encode() + b"absent\r\n")
        data = b""
        while not data.endswith(b"_\r\n"):
            data += sock.recv(4096)
        assert data.startswith(b"%7\r\n")  # A RESP3 map, then the RESP3 null.


def test_asyncio_redis_py(shared_cluster: RespCluster, key_prefix: str) -> None:
    async def main() -> None:
        r = redis.asyncio.Redis(port=shared_cluster.rpc_port(3), socket_timeout=10)
        try:
            await r.set(key_prefix + "k", "v")
            assert await r.get(key_prefix + "k") == b"v"
            results = await asyncio.gather(*(r.incr(key_prefix + "n") for _ in range(50)))
            assert sorted(results) == list(range(1, 51))
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(key_prefix + "k").incr(key_prefix + "n")
                assert await pipe.execute() == [b"v", 51]
            with pytest.raises(redis.ResponseError, match="not an integer"):
                await r.incr(key_prefix + "k")
        finally:
            await r.aclose()

    asyncio.run(main())


def cli(cluster: RespCluster, *args: str, node_id: int = 1) -> str:
    assert REDIS_CLI is not None
    completed = subprocess.run(
        [REDIS_CLI, "-p", str(cluster.rpc_port(node_id)), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return completed.stdout


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
def test_redis_cli(shared_cluster: RespCluster, key_prefix: str) -> None:
    k = key_prefix + "k"
    assert cli(shared_cluster, "PING") == "PONG\n"
    assert cli(shared_cluster, "SET", k, "hello", node_id=3) == "OK\n"
    assert cli(shared_cluster, "GET", k, node_id=2) == "hello\n"
    assert cli(shared_cluster, "INCR", k + "n") == "1\n"
    assert cli(shared_cluster, "NOSUCH").strip() == "ERR unknown command 'NOSUCH'"
    assert cli(shared_cluster, "INCR", k).startswith("ERR value is not an integer")
    assert "raft_role:" in cli(shared_cluster, "INFO", "replication")
    assert cli(shared_cluster, "RAFT.CAS", k, "IFEQ", "hello", "SET", "bye") == "1\n"
    # Interactive-style: several commands on stdin, one connection, RESP3.
    assert REDIS_CLI is not None
    completed = subprocess.run(
        [REDIS_CLI, "-3", "-p", str(shared_cluster.rpc_port(1))],
        input=f"GET {k}\nRAFT.CONSISTENCY\nGET {k}absent\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert completed.stdout.split("\n")[:3] == ["bye", "linearizable", ""]
    # --pipe mode sends everything at once: a pipeline of 100 SETs.
    commands = "".join(f"SET {k}:{i} {i}\r\n" for i in range(100))
    completed = subprocess.run(
        [REDIS_CLI, "-p", str(shared_cluster.rpc_port(2)), "--pipe"],
        input=commands,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "errors: 0, replies: 100" in completed.stdout
    assert cli(shared_cluster, "GET", f"{k}:99", node_id=3) == "99\n"
