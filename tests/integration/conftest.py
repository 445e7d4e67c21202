from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .cluster import Cluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build clusters of real raftkvd processes; all of them are stopped at the end."""
    clusters: list[Cluster] = []

    def make(size: int, **kwargs: object) -> Cluster:
        cluster = Cluster(tmp_path, size, **kwargs)  # type: ignore[arg-type]
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()
        # Shown by pytest only when the test failed.
        for node_id in cluster.members:
            print(f"----- node {node_id} log -----\n{cluster.log(node_id)}")
