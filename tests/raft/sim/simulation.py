"""One randomized simulation run from a seed, with its end-of-run checks.

`run_simulation(seed, nodes, steps)` builds a cluster, lets clients and chaos loose
for `steps` events while the safety checks run after every step, then settles:
faults stop, the network heals, every crashed node restarts, and within a bound a
leader must exist and commit a final write that every live member applies
(liveness). Last, the durable logs are compared pairwise, the members' stores must
be equal, and the client history must be linearizable.

Any failure is re-raised as `SimulationFailure`, whose message starts with the seed
and the command that replays it, and ends with the last events before it.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass

from raftkv.linearizability import Operation, check

from .chaos import Chaos, ChaosConfig
from .cluster import TICK_UNITS, Cluster, ClusterConfig, NodeState, SimNode
from .invariants import check_logs_match
from .kv import PUT
from .workload import ClientOp, History, HistoryRecord, Workload, WorkloadConfig

#: Bound on the linearizability search of one run's history (it takes milliseconds
#: on these histories; running out of time is reported as a failure of its own).
LINEARIZABILITY_TIME_LIMIT_S = 60.0

#: How long a healed cluster gets to elect a leader and commit the final write.
#: Generous, because some seeds run with one 64-byte append in flight per follower,
#: which a follower far behind needs a round trip per entry to catch up with.
LIVENESS_UNITS = 300 * TICK_UNITS


class SimulationFailure(AssertionError):
    """A simulation run broke a property; the message says how to replay it."""


class LivenessFailure(AssertionError):
    """The healed cluster did not make progress in time."""


@dataclass(frozen=True, slots=True)
class SimulationReport:
    seed: int
    nodes: int
    steps: int
    simulated_ticks: int
    history: tuple[HistoryRecord, ...]
    stats: Counter[str]


def cluster_config_for(seed: int, nodes: int) -> ClusterConfig:
    """Host and core knobs drawn from the seed, so that runs cover both host styles
    and small flow-control windows as well as the defaults."""
    rng = random.Random(f"knobs-{seed}")
    max_size_per_msg_bytes = rng.choice((64, 1024, 1 << 20))
    return ClusterConfig(
        nodes=nodes,
        election_tick=rng.choice((5, 10, 10)),
        input_while_persisting=rng.random() < 0.5,
        pre_vote=rng.random() < 0.8,
        apply_before_persist=rng.random() < 0.5,
        send_early_while_persisting=rng.random() < 0.5,
        max_inflight_msgs=rng.choice((1, 4, 256)),
        max_size_per_msg_bytes=max_size_per_msg_bytes,
        max_inflight_bytes=rng.choice((0, max(max_size_per_msg_bytes, 2048))),
        max_uncommitted_entries_bytes=rng.choice((0, 0, 1024)),
        max_fsync_units=rng.choice((1, 3, 8)),
        apply_while_persisting=rng.random() < 0.7,
        eager_commit=rng.random() < 0.3,
        apply_outside_ready=rng.random() < 0.6,
        commit_alone_waits=rng.random() < 0.5,
    )


def run_simulation(seed: int, nodes: int, steps: int, reproduce: str) -> SimulationReport:
    """Run one seed; `reproduce` is the shell command that replays it."""
    cluster = Cluster(seed, cluster_config_for(seed, nodes))
    workload = Workload(cluster, random.Random(cluster.rng.getrandbits(64)), WorkloadConfig())
    chaos = Chaos(cluster, random.Random(cluster.rng.getrandbits(64)), ChaosConfig())
    try:
        cluster.run_steps(steps)
        settle(cluster, workload, chaos)
        check_end_state(cluster)
        check_linearizable(resolve_unknown_outcomes(workload.history, cluster))
    except Exception as error:
        raise SimulationFailure(
            f"simulation failed: seed {seed}, {nodes} nodes, at step {cluster.steps} "
            f"(t={cluster.time})\nreproduce with: {reproduce}\n"
            f"{type(error).__name__}: {error}\n"
            f"nodes: {list(cluster.nodes.values())}\n"
            f"last events:\n{cluster.format_trace()}"
        ) from error
    return SimulationReport(
        seed=seed,
        nodes=nodes,
        steps=cluster.steps,
        simulated_ticks=cluster.time // TICK_UNITS,
        history=tuple(workload.history.records),
        stats=cluster.stats,
    )


def settle(cluster: Cluster, workload: Workload, chaos: Chaos) -> None:
    """Stop the faults, heal, restart everything, and require a final write to
    commit and reach every live member within `LIVENESS_UNITS`."""
    chaos.stop()
    workload.stop()
    cluster.network.heal()
    for node_id, node in cluster.nodes.items():
        if node.state is NodeState.DOWN:
            cluster.restart(node_id)
    deadline = cluster.time + LIVENESS_UNITS
    final_index = _commit_final_write(cluster, workload.history, deadline)
    # The leader may have applied its own removal meanwhile: the members are those
    # of whichever node leads once the write has spread.
    if not cluster.run_until(
        lambda: _members_caught_up(cluster, final_index),
        max(0, deadline - cluster.time),
    ):
        raise LivenessFailure(
            f"the final write (index {final_index}) committed but did not reach every "
            f"live member within {LIVENESS_UNITS // TICK_UNITS} ticks of healing: "
            f"{_members_description(cluster)}"
        )
    workload.abandon_pending()


def _commit_final_write(cluster: Cluster, history: History, deadline: int) -> int:
    """Write through the leader until a write completes; returns the index at which
    the leader had applied it."""
    attempt = 0
    while cluster.time < deadline:
        if not cluster.run_until(lambda: cluster.leader_id() is not None, deadline - cluster.time):
            break
        leader_id = cluster.leader_id()
        assert leader_id is not None
        attempt += 1
        op = ClientOp(
            op_id=f"final{attempt}",
            client_id=-attempt,
            kind=PUT,
            key="x",
            value=f"final{attempt}",
            call_time=cluster.history_time(),
            node_id=leader_id,
        )
        cluster.submit(op)
        _run_until_done(cluster, op, min(20 * TICK_UNITS, max(0, deadline - cluster.time)))
        if op.done and not op.refused:
            history.complete(op)
            return cluster.nodes[leader_id].kv.applied_index
        if not op.done:
            cluster.forget(op)
            op.done = True
            history.abandon(op)
        cluster.run_for(TICK_UNITS)
    roles = {node.id: f"{node.state.value}/{node.role.name}" for node in cluster.nodes.values()}
    raise LivenessFailure(
        f"no write committed within {LIVENESS_UNITS // TICK_UNITS} ticks of healing "
        f"everything ({attempt} attempts); nodes: {roles}"
    )


def _run_until_done(cluster: Cluster, op: ClientOp, max_units: int) -> None:
    cluster.run_until(lambda: op.done, max_units)


def _members_caught_up(cluster: Cluster, index: int) -> bool:
    leader = cluster.leader()
    if leader is None:
        return False
    return all(node.kv.applied_index >= index for node in _live_members(cluster, leader))


def _members_description(cluster: Cluster) -> str:
    leader = cluster.leader()
    if leader is None:
        return "no leader"
    return f"leader {leader.id}, live members {_live_members(cluster, leader)}"


def _live_members(cluster: Cluster, leader: SimNode) -> list[SimNode]:
    """The live nodes of the leader's configuration."""
    conf = leader.conf_state
    return [
        cluster.nodes[node_id]
        for node_id in (*conf.voters, *conf.learners)
        if cluster.nodes[node_id].state is NodeState.UP
    ]


def check_end_state(cluster: Cluster) -> None:
    """Whole-log matching over every node's durable log, and equal stores on the
    live members once they applied the same index."""
    check_logs_match({node_id: node.durable_log() for node_id, node in cluster.nodes.items()})
    leader = cluster.leader()
    assert leader is not None, "settle() ends with a leader"
    members = _live_members(cluster, leader)
    by_index: dict[int, SimNode] = {}
    for node in members:
        first = by_index.setdefault(node.kv.applied_index, node)
        assert first.kv.values == node.kv.values, (
            f"nodes {first.id} and {node.id} applied up to {node.kv.applied_index} but "
            f"hold different data: {first.kv.values} vs {node.kv.values}"
        )


class NotLinearizable(AssertionError):
    """The clients saw answers no single order of their operations explains."""


def resolve_unknown_outcomes(history: History, cluster: Cluster) -> list[HistoryRecord]:
    """The history with each write of unknown outcome resolved from what the nodes
    did, which the clients could not see: a write that no node ever applied never
    took effect and is left out (as if linearized after everything, which an unknown
    outcome allows); a write some node applied took effect at its commit, before
    the first apply, which becomes its return. Both keep the check sound, and they
    keep the search small: every unknown write could otherwise go anywhere."""
    resolved = []
    for record in history.records:
        if record.return_time is None:
            applied_at = cluster.first_applied_at.get(record.op_id)
            if applied_at is None:
                continue
            assert applied_at >= record.call_time, f"{record} applied before it was called"
            record = dataclasses.replace(record, return_time=applied_at)
        resolved.append(record)
    return resolved


def check_linearizable(records: list[HistoryRecord]) -> None:
    result = check(
        [_operation(record) for record in records],
        time_limit_s=LINEARIZABILITY_TIME_LIMIT_S,
    )
    if result.ok:
        return
    shown = "\n".join(f"  {operation.describe()}" for operation in result.operations[:40])
    raise NotLinearizable(
        f"the client history is not linearizable: {result.explanation}\n"
        f"failing sub-history from values {result.initial_values!r}:\n{shown}"
    )


def _operation(record: HistoryRecord) -> Operation:
    return Operation(
        client_id=record.client_id,
        kind=record.kind,
        key=record.key,
        input=record.input,
        output=record.output,
        call_time=record.call_time,
        return_time=record.return_time,
    )
