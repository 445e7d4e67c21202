"""Clients ride out the loss of the node they talk to, and report a cluster without a
majority clearly (-TRYAGAIN on the wire, NoLeader/Unavailable from raftkv.Client)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import raftkv
from raftkv import errors

from .cluster import RespCluster


def node_of(cluster: RespCluster, endpoint: str) -> int:
    return cluster.endpoints.index(endpoint) + 1


def test_failover_and_loss_of_the_majority(make_cluster: Callable[..., RespCluster]) -> None:
    cluster = make_cluster(["--request-timeout", "1"])
    with raftkv.Client(cluster.endpoints, timeout=20) as kv:
        assert kv.put("k", "before") is None
        assert kv.incr("n") == 1
        first = node_of(cluster, kv.endpoint)
        cluster.kill(first)

        # The client moves on to a live node; the session makes the writes exactly-once.
        assert kv.get("k") == b"before"
        assert kv.put("k", "after") == b"before"
        assert kv.incr("n") == 2
        second = node_of(cluster, kv.endpoint)
        assert second != first

        async def async_client() -> None:
            async with raftkv.AsyncClient(cluster.endpoints, timeout=20) as akv:
                assert await akv.incr("n") == 3

        asyncio.run(async_client())

        # Kill a second node: the survivor has no majority, so no leader.
        cluster.kill(second)
        survivor = ({1, 2, 3} - {first, second}).pop()
        # Refused: TRYAGAIN. (A write the survivor had appended to its log may still
        # apply once a majority is back; one it withdrew unproposed never will.)
        survivor_port = cluster.rpc_port(survivor)
        with (
            redis.Redis(port=survivor_port, retry=Retry(NoBackoff(), 0), socket_timeout=10) as r,
            pytest.raises(redis.exceptions.TryAgainError),
        ):
            r.set("maybe", "x")
        cli = shutil.which("redis-cli")
        if cli is not None:
            output = subprocess.run(
                [cli, "-p", str(cluster.rpc_port(survivor)), "GET", "k"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            assert output.startswith("TRYAGAIN")
        with (
            raftkv.Client(cluster.endpoints, timeout=1.5) as impatient,
            pytest.raises(errors.Unavailable, match=r"gave up after 1\.5 s"),
        ):
            impatient.get("k")

        # With a majority back, the patient client's next write goes through.
        cluster.start(first)
        assert kv.incr("n") == 4
        # The refused SET may still have reached the old leader's log (TRYAGAIN after a
        # proposal means "outcome unknown"), so either value is correct here.
        assert kv.get("k") in (b"after", b"lost")
