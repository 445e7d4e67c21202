"""raftkv.Client and raftkv.AsyncClient against a real 3-node cluster."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import raftkv
from raftkv import errors

from .cluster import CuttingProxy, RespCluster
from .conftest import MAX_VALUE_BYTES


@pytest.fixture
def kv(shared_cluster: RespCluster) -> Iterator[raftkv.Client[bytes]]:
    with raftkv.Client(shared_cluster.endpoints, timeout=10) as client:
        yield client


def test_keys(kv: raftkv.Client[bytes], key_prefix: str) -> None:
    k = key_prefix + "k"
    assert kv.put(k, "v1") is None
    assert kv.put(k, b"v2") == b"v1"
    assert kv.get(k) == b"v2"
    assert kv.get(k.encode()) == b"v2"
    assert kv.delete(k) is True
    assert kv.delete(k) is False
    with pytest.raises(errors.KeyNotFound, match=k):
        kv.get(k)
    assert kv.append(k + "s", "ab") == 2
    assert kv.append(k + "s", b"cd") == 4
    assert kv.get(k + "s") == b"abcd"
    assert kv.incr(k + "n") == 1
    assert kv.incr(k + "n", by=-11) == -10
    binary = bytes(range(256))
    kv.put(binary, binary)
    assert kv.get(binary) == binary


def test_compare_and_set(kv: raftkv.Client[bytes], key_prefix: str) -> None:
    k = key_prefix + "k"
    assert kv.cas(k, None, "a") is True
    assert kv.cas(k, None, "b") is False
    assert kv.cas(k, "b", "c") is False
    assert kv.cas(k, "a", "c") is True
    assert kv.get(k) == b"c"
    assert kv.cas(k, "c", None) is True
    with pytest.raises(errors.KeyNotFound):
        kv.get(k)


def test_scan_and_items(kv: raftkv.Client[bytes], key_prefix: str) -> None:
    for i in range(23):
        kv.put(f"{key_prefix}{i:02d}", str(i))
    kv.put(key_prefix + "*star", "glob characters are literal in a prefix")
    keys = list(kv.scan(key_prefix, page_size=5))
    assert keys == sorted(keys) and len(keys) == 24
    assert list(kv.scan(key_prefix + "*")) == [(key_prefix + "*star").encode()]
    items = dict(kv.items(key_prefix + "1", page_size=4))
    assert items == {f"{key_prefix}1{i}".encode(): f"1{i}".encode() for i in range(10)}
    assert list(kv.scan(key_prefix + "absent")) == []


def test_decode_gives_str(shared_cluster: RespCluster, key_prefix: str) -> None:
    with raftkv.Client(shared_cluster.endpoints, decode=True) as kv:
        assert kv.put(key_prefix + "ключ", "значение") is None
        assert kv.get(key_prefix + "ключ") == "значение"
        assert list(kv.scan(key_prefix)) == [key_prefix + "ключ"]
        assert list(kv.items(key_prefix)) == [(key_prefix + "ключ", "значение")]


def test_errors(kv: raftkv.Client[bytes], key_prefix: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="empty key"):
        kv.put("", "v")
    with pytest.raises(errors.InvalidRequest, match="empty key"):
        kv.get(b"")
    kv.put(key_prefix + "text", "abc")
    with pytest.raises(errors.WrongType, match="not an integer"):
        kv.incr(key_prefix + "text")
    assert kv.get(key_prefix + "text") == b"abc"
    with pytest.raises(errors.ValueTooLarge):
        kv.put(key_prefix + "big", b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(errors.ValueTooLarge):
        kv.append(key_prefix + "big", b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(errors.InvalidRequest, match="not a member"):
        kv.remove_member(99)
    with pytest.raises(errors.InvalidRequest, match="already a voter"):
        kv.add_member(1, "http://127.0.0.1:1")
    with pytest.raises(errors.InvalidRequest, match="invalid peer URL"):
        kv.add_member(99, "ftp://nowhere")
    kv.close()
    with pytest.raises(errors.InvalidRequest, match="closed"):
        kv.get(key_prefix + "text")


def test_members_and_status(kv: raftkv.Client[bytes], shared_cluster: RespCluster) -> None:
    members = kv.members()
    assert [(m.id, m.url, m.learner) for m in members] == [
        (i, url, False) for i, url in enumerate(shared_cluster.peer_urls, 1)
    ]
    status = kv.status()
    assert status.id in (1, 2, 3) and status.leader in (1, 2, 3)
    assert status.role in ("leader", "follower")
    assert status.applied <= status.commit <= status.last_index
    assert status.members == tuple(members)
    kv.add_member(8, "http://127.0.0.1:9", learner=True)
    assert [m.id for m in kv.members() if m.learner] == [8]
    kv.remove_member(8)
    assert len(kv.members()) == 3


def test_transfer_leader(shared_cluster: RespCluster) -> None:
    leader = shared_cluster.leader_by_role()
    target = 1 + leader % 3
    # Asked of the leader (see test_resp's xfail for a follower).
    with raftkv.Client([shared_cluster.endpoint(leader)]) as kv:
        kv.transfer_leader(target)
        assert kv.status().leader == target
        with pytest.raises(errors.InvalidRequest):
            kv.transfer_leader(0)


def test_threads_share_a_client(kv: raftkv.Client[bytes], key_prefix: str) -> None:
    def work() -> None:
        for _ in range(20):
            kv.incr(key_prefix + "n")

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kv.get(key_prefix + "n") == b"100"


def test_async_client(shared_cluster: RespCluster, key_prefix: str) -> None:
    async def main() -> None:
        async with raftkv.AsyncClient(shared_cluster.endpoints, decode=True) as kv:
            k = key_prefix + "k"
            assert await kv.put(k, "v") is None
            assert await kv.get(k) == "v"
            assert await kv.append(k, "w") == 2
            assert await kv.cas(k, "vw", "x") is True
            results = await asyncio.gather(*(kv.incr(key_prefix + "n") for _ in range(40)))
            assert sorted(results) == list(range(1, 41))
            assert [key async for key in kv.scan(key_prefix)] == [k, key_prefix + "n"]
            assert [item async for item in kv.items(key_prefix, page_size=1)] == [
                (k, "x"),
                (key_prefix + "n", "40"),
            ]
            assert len(await kv.members()) == 3
            assert (await kv.status()).leader in (1, 2, 3)
            assert await kv.delete(k) is True
            with pytest.raises(errors.KeyNotFound):
                await kv.get(k)
            with pytest.raises(errors.InvalidRequest):
                await kv.put("", "v")

    asyncio.run(main())


# --- exactly once ------------------------------------------------------------------------


@pytest.fixture
def proxy(shared_cluster: RespCluster) -> Iterator[CuttingProxy]:
    cutting = CuttingProxy(shared_cluster.rpc_port(1))
    yield cutting
    cutting.close()


def test_a_write_whose_reply_was_lost_applies_once(
    proxy: CuttingProxy, shared_cluster: RespCluster, key_prefix: str
) -> None:
    with raftkv.Client([proxy.endpoint], timeout=10) as kv:
        proxy.cut_after(b"INCRBY")
        assert kv.incr(key_prefix + "n", by=5) == 5
        proxy.cut_after(b"APPEND")
        assert kv.append(key_prefix + "s", "x") == 1
        proxy.cut_after(b"RAFT.CAS")
        assert kv.cas(key_prefix + "s", "x", "y") is True
        proxy.cut_after(b"SET")
        assert kv.put(key_prefix + "s", "z") == b"y"
        proxy.cut_after(b"DEL")
        assert kv.delete(key_prefix + "s") is True
    assert proxy.cuts == 5
    with raftkv.Client(shared_cluster.endpoints) as direct:
        assert direct.get(key_prefix + "n") == b"5"
        with pytest.raises(errors.KeyNotFound):
            direct.get(key_prefix + "s")


def test_without_sessions_a_lost_reply_is_reported_not_resent(
    proxy: CuttingProxy, shared_cluster: RespCluster, key_prefix: str
) -> None:
    with raftkv.Client([proxy.endpoint], timeout=10, session=False) as kv:
        proxy.cut_after(b"INCRBY")
        with pytest.raises(errors.Timeout, match="may or may not have been applied"):
            kv.incr(key_prefix + "n")
        assert kv.get(key_prefix + "n") == b"1"  # Applied once, reported as unknown.
        proxy.cut_after(b"GET")
        assert kv.get(key_prefix + "n") == b"1"  # Reads are simply resent.
    assert proxy.cuts == 2


def test_async_client_exactly_once(proxy: CuttingProxy, key_prefix: str) -> None:
    async def main() -> None:
        async with raftkv.AsyncClient([proxy.endpoint], timeout=10) as kv:
            proxy.cut_after(b"INCRBY")
            assert await kv.incr(key_prefix + "n") == 1
            assert await kv.get(key_prefix + "n") == b"1"

    asyncio.run(main())
    assert proxy.cuts == 1
