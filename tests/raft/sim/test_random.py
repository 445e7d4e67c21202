"""Randomized simulation of 3- and 5-node clusters under faults, one test per seed.

Every seed runs `STEPS_PER_SEED` events of clients, chaos and the network with the
safety checks after each step, then heals everything and checks liveness, the
durable logs, the members' stores and the linearizability of the client history.

    pytest tests/raft/sim                                  # the default seeds
    RAFTKV_SIM_SEEDS=5000 pytest tests/raft/sim -k random  # more seeds per size
    RAFTKV_SIM_SEED=1234 pytest tests/raft/sim -k test_random_cluster_5_nodes
    RAFTKV_SIM_STEPS=50000 ...                             # longer runs
    pytest tests/raft/sim -m slow                          # the soak variant

A failure names its seed and prints the exact command that replays it.
"""

from __future__ import annotations

import os

import pytest

from .simulation import run_simulation

#: Events per seed in the default run. The default set (two sizes times
#: `DEFAULT_SEEDS_PER_SIZE`) must stay within about three minutes on a 2-core machine.
STEPS_PER_SEED = 15_000
DEFAULT_SEEDS_PER_SIZE = 150

SOAK_STEPS_PER_SEED = 50_000
SOAK_SEEDS_PER_SIZE = 200
#: Soak seeds start here so that they do not repeat the default ones.
SOAK_FIRST_SEED = 1_000_000


def _seeds(default_count: int, first: int) -> list[int]:
    pinned = os.environ.get("RAFTKV_SIM_SEED")
    if pinned:
        return [int(pinned)]
    count = int(os.environ.get("RAFTKV_SIM_SEEDS", default_count))
    return list(range(first, first + count))


def _steps(default: int) -> int:
    return int(os.environ.get("RAFTKV_SIM_STEPS", default))


def _run(seed: int, nodes: int, test_name: str, steps: int, marker: str = "") -> None:
    select = f"-m {marker} " if marker else ""
    reproduce = (
        f"RAFTKV_SIM_SEED={seed} RAFTKV_SIM_STEPS={steps} "
        f"python -m pytest tests/raft/sim {select}-k {test_name}"
    )
    run_simulation(seed, nodes, steps, reproduce)


@pytest.mark.parametrize("seed", _seeds(DEFAULT_SEEDS_PER_SIZE, 0), ids=lambda s: f"seed{s}")
def test_random_cluster_3_nodes(seed: int) -> None:
    _run(seed, 3, "test_random_cluster_3_nodes", _steps(STEPS_PER_SEED))


@pytest.mark.parametrize("seed", _seeds(DEFAULT_SEEDS_PER_SIZE, 0), ids=lambda s: f"seed{s}")
def test_random_cluster_5_nodes(seed: int) -> None:
    _run(seed, 5, "test_random_cluster_5_nodes", _steps(STEPS_PER_SEED))


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed", _seeds(SOAK_SEEDS_PER_SIZE, SOAK_FIRST_SEED), ids=lambda s: f"seed{s}"
)
def test_soak_cluster_3_nodes(seed: int) -> None:
    _run(seed, 3, "test_soak_cluster_3_nodes", _steps(SOAK_STEPS_PER_SEED), marker="slow")


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed", _seeds(SOAK_SEEDS_PER_SIZE, SOAK_FIRST_SEED), ids=lambda s: f"seed{s}"
)
def test_soak_cluster_5_nodes(seed: int) -> None:
    _run(seed, 5, "test_soak_cluster_5_nodes", _steps(SOAK_STEPS_PER_SEED), marker="slow")
