"""Random faults and operator actions injected into a simulated cluster.

Every so often (a random interval) one action is drawn by weight: partition the
network (a node isolated, the cluster split in two, links cut one way), heal it,
change the weather (drops, duplicates, delays, stragglers), crash a node (it
restarts later on its own; some crashes strike at a chosen point of a Ready), pause
a node's process, change the membership (remove a voter, add a voter or a
learner, promote or remove a learner), transfer leadership, force an election, or
snapshot and compact a node's log.

Membership changes keep at least two voters after a removal (a removal that leaves a
single survivor in a two-voter configuration can deadlock before the survivor learns
it was committed) and use a fresh node id for every node added: a removed node's id
is never reused.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raftkv.raft import ConfChange, ConfChangeType

from .cluster import TICK_UNITS, Cluster, CrashPoint, NodeState
from .network import Weather


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    min_interval_units: int = 2 * TICK_UNITS
    max_interval_units: int = 12 * TICK_UNITS
    #: A crashed node restarts after 1..this many units.
    max_down_units: int = 40 * TICK_UNITS
    #: How many nodes beyond the initial ones may be added over a run.
    max_new_nodes: int = 4
    #: Voters a configuration may grow to, beyond the initial size.
    max_extra_voters: int = 2


#: A node id that never belongs to any cluster.
STRANGER_ID = 999

ACTIONS: tuple[tuple[str, float], ...] = (
    ("partition", 3.0),
    ("heal_links", 3.0),
    ("weather", 2.0),
    ("calm_weather", 1.0),
    ("crash", 1.5),
    ("crash_mid_write", 1.0),
    ("crash_after_send", 1.0),
    ("crash_torn_write", 0.5),
    ("pause", 1.0),
    ("membership", 2.0),
    ("transfer_leader", 1.0),
    ("campaign", 0.5),
    ("contested_election", 1.0),
    ("compact", 3.0),
)


class Chaos:
    def __init__(self, cluster: Cluster, rng: random.Random, config: ChaosConfig) -> None:
        self._cluster = cluster
        self._rng = rng
        self.config = config
        self.active = True
        self._next_node_id = cluster.config.nodes + 1
        self._names = [name for name, _ in ACTIONS]
        self._weights = [weight for _, weight in ACTIONS]
        self._schedule_next()

    def stop(self) -> None:
        self.active = False

    def _schedule_next(self) -> None:
        delay = self._rng.randint(self.config.min_interval_units, self.config.max_interval_units)
        self._cluster.schedule(delay, self._act)

    def _act(self) -> None:
        if not self.active:
            return
        name = self._rng.choices(self._names, self._weights)[0]
        getattr(self, f"_{name}")()
        self._schedule_next()

    # --- helpers ---------------------------------------------------------------------

    def _participants(self) -> list[int]:
        """Nodes that may still talk: up or down, not removed or discarded."""
        return [
            node_id
            for node_id, node in self._cluster.nodes.items()
            if node.state in (NodeState.UP, NodeState.DOWN)
        ]

    def _pick_up_node(self, leader_bias: float) -> int | None:
        cluster = self._cluster
        leader = cluster.leader_id()
        if leader is not None and self._rng.random() < leader_bias:
            return leader
        live = cluster.live_node_ids()
        return self._rng.choice(live) if live else None

    # --- network ---------------------------------------------------------------------

    def _partition(self) -> None:
        rng = self._rng
        network = self._cluster.network
        nodes = self._participants()
        if len(nodes) < 2:
            return
        kind = rng.choice(("isolate", "split", "one_way", "deaf", "mute"))
        target = self._pick_up_node(leader_bias=0.5) or rng.choice(nodes)
        others = [node for node in nodes if node != target]
        if kind == "isolate":
            network.isolate(target, others)
        elif kind == "split":
            shuffled = nodes[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(shuffled) - 1)
            network.partition([shuffled[:cut], shuffled[cut:]])
        elif kind == "one_way":
            network.cut(target, rng.choice(others))
        elif kind == "deaf":
            for other in others:
                network.cut(other, target)
        else:
            for other in others:
                network.cut(target, other)
        self._cluster.stats[f"partition_{kind}"] += 1

    def _heal_links(self) -> None:
        self._cluster.network.heal_links()

    def _weather(self) -> None:
        rng = self._rng
        max_delay = rng.randint(2, 3 * TICK_UNITS)
        self._cluster.network.weather = Weather(
            drop_probability=rng.choice((0.0, 0.01, 0.05, 0.2)),
            duplicate_probability=rng.choice((0.0, 0.02, 0.1)),
            min_delay_units=rng.randint(0, 2),
            max_delay_units=max_delay,
            straggler_probability=rng.choice((0.0, 0.005, 0.02)),
            straggler_delay_units=rng.randint(max_delay, 30 * TICK_UNITS),
        )

    def _calm_weather(self) -> None:
        self._cluster.network.weather = Weather()

    # --- processes -------------------------------------------------------------------

    def _down_units(self) -> int:
        """Either a quick restart (the same term is likely still running) or a long
        outage (the node falls far behind)."""
        if self._rng.random() < 0.5:
            return self._rng.randint(1, 3 * TICK_UNITS)
        return self._rng.randint(1, self.config.max_down_units)

    def _crash(self) -> None:
        node_id = self._pick_up_node(leader_bias=0.3)
        if node_id is None:
            return
        self._cluster.crash(node_id)
        self._cluster.schedule(self._down_units(), self._cluster.restart, node_id)

    def _crash_mid_write(self) -> None:
        node_id = self._pick_up_node(leader_bias=0.5)
        if node_id is not None:
            self._cluster.arm_crash(node_id, CrashPoint.MID_WRITE, self._down_units())

    def _crash_after_send(self) -> None:
        node_id = self._pick_up_node(leader_bias=0.2)
        if node_id is not None:
            self._cluster.arm_crash(node_id, CrashPoint.AFTER_SEND, self._down_units())

    def _pause(self) -> None:
        """Freeze a node (the leader, often) for a while: long enough, sometimes, for
        the others to elect a new leader before it wakes up and acts on old state."""
        node_id = self._pick_up_node(leader_bias=0.6)
        if node_id is not None:
            units = self._rng.randint(1, 4 * self._cluster.config.election_tick * TICK_UNITS)
            self._cluster.pause(node_id, units)

    def _campaign(self) -> None:
        live = self._cluster.live_node_ids()
        if live:
            self._cluster.campaign(self._rng.choice(live))

    def _crash_torn_write(self) -> None:
        node_id = self._pick_up_node(leader_bias=0.2)
        if node_id is not None:
            self._cluster.arm_crash(node_id, CrashPoint.TORN_WRITE, self._down_units())

    def _contested_election(self) -> None:
        """The leader crashes and comes back at once; once the followers' leases ran
        out, two voters campaign at once while a third is armed to crash right after it grants a
        vote and come back at once, in the same term: a vote that was not durable
        would let it vote twice and elect two leaders."""
        cluster = self._cluster
        leader = cluster.leader()
        if leader is None:
            return
        voters = list(leader.conf_state.voters)
        cluster.crash(leader.id)
        cluster.schedule(self._rng.randint(1, 5), cluster.restart, leader.id)
        lease_units = (cluster.config.election_tick + 1) * TICK_UNITS
        cluster.schedule(lease_units, self._contest, voters)

    def _contest(self, voters: list[int]) -> None:
        cluster = self._cluster
        live = [voter for voter in voters if voter in cluster.live_node_ids()]
        if len(live) < 3:
            return
        first, second, voter = self._rng.sample(live, 3)
        cluster.campaign(first)
        cluster.campaign(second)
        cluster.arm_crash(voter, CrashPoint.AFTER_VOTE, self._rng.randint(1, 3))

    def _compact(self) -> None:
        node_id = self._pick_up_node(leader_bias=0.5)
        if node_id is not None:
            self._cluster.compact(node_id, keep_entries=self._rng.choice((0, 1, 5, 20)))

    # --- operator actions ------------------------------------------------------------

    def _transfer_leader(self) -> None:
        cluster = self._cluster
        leader = cluster.leader()
        if leader is None:
            return
        others = [voter for voter in leader.conf_state.voters if voter != leader.id]
        if self._rng.random() < 0.2:
            # A transfer the core must refuse or abandon cleanly: to a learner, a
            # node outside the configuration, or the leader itself.
            others = list(cluster.nodes)
        if others:
            cluster.transfer_leader(leader.id, self._rng.choice(others))

    def _membership(self) -> None:
        cluster = self._cluster
        leader = cluster.leader()
        if leader is None:
            return
        rng = self._rng
        voters = list(leader.conf_state.voters)
        learners = list(leader.conf_state.learners)
        can_add = (
            self._next_node_id <= cluster.config.nodes + self.config.max_new_nodes
            and len(voters) + len(learners) < cluster.config.nodes + self.config.max_extra_voters
        )
        choices = []
        if len(voters) >= 3:
            choices.append("remove_voter")
        if learners:
            choices += ["promote_learner", "remove_learner"]
        if can_add:
            choices += ["add_voter", "add_learner"]
        if not choices:
            return
        choices.append("remove_stranger")
        choice = rng.choice(choices)
        new_node: int | None = None
        if choice == "remove_stranger":
            # Not a member: the core must refuse it, or commit it as a no-op.
            change = ConfChange(ConfChangeType.REMOVE_NODE, STRANGER_ID)
        elif choice == "remove_voter":
            change = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(voters))
        elif choice == "remove_learner":
            change = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(learners))
        elif choice == "promote_learner":
            change = ConfChange(ConfChangeType.ADD_NODE, rng.choice(learners))
        else:
            new_node = self._next_node_id
            self._next_node_id += 1
            cluster.add_node(new_node)
            kind = ConfChangeType.ADD_NODE if choice == "add_voter" else ConfChangeType.ADD_LEARNER
            change = ConfChange(kind, new_node)
        # Mostly through the leader; sometimes through another node, which forwards it.
        live = cluster.live_node_ids()
        via = rng.choice(live) if rng.random() < 0.3 else leader.id
        accepted = cluster.propose_conf_change(via, change)
        if not accepted and new_node is not None:
            cluster.discard(new_node)
        if accepted:
            cluster.stats[f"membership_{choice}"] += 1
