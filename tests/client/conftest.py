from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .cluster import RespCluster

#: Small enough that the "value too large" test is cheap.
MAX_VALUE_BYTES = 4096


def start_cluster(workdir: Path, extra_args: list[str] | None = None) -> RespCluster:
    cluster = RespCluster(workdir, 3, extra_args=extra_args)
    try:
        cluster.start_all()
        cluster.wait_leader()
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RespCluster]:
    """One 3-node cluster for the tests that leave every node running. Tests use keys
    of their own (named after the test), so that they do not see each other's."""
    cluster = start_cluster(
        tmp_path_factory.mktemp("shared-cluster"), ["--max-value-bytes", str(MAX_VALUE_BYTES)]
    )
    yield cluster
    cluster.stop_all()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., RespCluster]]:
    """Clusters of a test's own, for tests that kill nodes; all stopped at the end."""
    clusters: list[RespCluster] = []

    def make(extra_args: list[str] | None = None) -> RespCluster:
        cluster = RespCluster(tmp_path, 3, extra_args=extra_args)
        clusters.append(cluster)
        cluster.start_all()
        cluster.wait_leader()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test."""
    return f"{request.node.name}:"
