"""The simulation's checks are only worth the bugs they catch: each test here breaks
the host on purpose (the core stays correct) and requires some seed to fail.

The seeds that expose a bug move whenever the core's behaviour changes, so each
test scans seeds up to a bound rather than naming one. A lost vote needs a crash
between granting a vote and a second candidate's request in the same term, which
lines up in about one seed in 25: that one scans up to 150 seeds (a 40-seed scan
would miss it about one time in five), with the slow tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from raftkv.raft import NONE, HardState, Snapshot

from .cluster import Cluster, SimNode
from .simulation import SimulationFailure, run_simulation
from .workload import ClientOp

MAX_SEEDS = 40
STEPS = 20_000


def first_failure(nodes: int, max_seeds: int = MAX_SEEDS) -> str:
    for seed in range(max_seeds):
        try:
            run_simulation(seed, nodes, STEPS, reproduce="")
        except SimulationFailure as failure:
            return str(failure)
    pytest.fail(f"the broken host passed {max_seeds} seeds")


@pytest.mark.slow
def test_a_host_that_loses_its_vote_on_a_crash_elects_two_leaders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    persist: Callable[[Cluster, SimNode, HardState], None] = Cluster._persist_hard_state

    def forget_vote(self: Cluster, node: SimNode, hard_state: HardState) -> None:
        persist(self, node, hard_state)
        node.storage.set_hard_state(HardState(hard_state.term, NONE, hard_state.commit))

    monkeypatch.setattr(Cluster, "_persist_hard_state", forget_vote)
    assert "election safety" in first_failure(nodes=3, max_seeds=150)


def test_a_host_that_reads_without_a_read_index_is_not_linearizable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def read_locally(self: Cluster, node: SimNode, op: ClientOp) -> None:
        node.waiting_read_index.pop(op.op_id.encode(), None)
        op.output = node.kv.get(op.key)
        self._complete(op)

    monkeypatch.setattr(Cluster, "_read_index", read_locally)
    assert "NotLinearizable" in first_failure(nodes=3)


def test_a_host_that_ignores_installed_snapshots_diverges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install = Cluster._persist_snapshot

    def keep_old_state(self: Cluster, node: SimNode, snapshot: Snapshot) -> None:
        old = node.kv
        install(self, node, snapshot)
        old.applied_index = node.kv.applied_index
        node.kv = old

    monkeypatch.setattr(Cluster, "_persist_snapshot", keep_old_state)
    failure = first_failure(nodes=5)
    assert "NotLinearizable" in failure or "hold different data" in failure
