"""A Jepsen-style history test against real processes.

A few client threads read and write a few keys through all three nodes over REST
(or RESP), recording every operation with its call and return times, while a nemesis
kills nodes (SIGKILL, then a restart) and pauses them (SIGSTOP, then SIGCONT), and in
some tests also moves leadership and takes the majority away (`FAULTS`). Afterwards
every node is healed, a final read of every key on every node joins the history, and
the whole history must be linearizable (`raftkv.linearizability.check`): no stale or
phantom read, and no acknowledged write lost (the final reads would show it).

A write whose answer is not a 204 (a 503, a timeout, a dropped connection) has an
unknown outcome: it may take effect at any time after its call, or never. A read
without a 200 or 404 tells nothing and is dropped.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from raftkv.linearizability import Operation, check

from .cluster import Cluster, request

KEYS = ("x", "y", "z")
NODES = (1, 2, 3)
#: Longer than the nodes' --request-timeout, so that most failures are answered.
CLIENT_TIMEOUT_S = 4.0
SERVER_ARGS = ["--request-timeout", "2", "--snapshot-count", "300"]


@dataclass
class History:
    operations: list[Operation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, operation: Operation) -> None:
        with self.lock:
            self.operations.append(operation)


def run_operation(
    cluster: Cluster, client: str, node_id: int, kind: str, key: str, value: str | None
) -> Operation:
    """One GET or PUT through `node_id`'s REST API, as an operation of the history."""
    port = cluster.members[node_id].port
    call = time.monotonic()
    try:
        if kind == "put":
            reply = request(port, "PUT", "/" + quote(key), value, CLIENT_TIMEOUT_S)
        else:
            reply = request(port, "GET", "/" + quote(key), None, CLIENT_TIMEOUT_S)
    except OSError:
        return Operation(client, kind, key, value, None, call, None)
    returned = time.monotonic()
    if kind == "put":
        return Operation(
            client, "put", key, value, None, call, returned if reply.status == 204 else None
        )
    if reply.status == 200:
        return Operation(client, "get", key, None, reply.text, call, returned)
    if reply.status == 404:
        return Operation(client, "get", key, None, None, call, returned)
    return Operation(client, "get", key, None, None, call, None)


class RespOperations:
    """GET and SET through the nodes' RESP APIs, as operations of the history: one
    connection per node, used by one client thread only, and never retried by
    redis-py (a retry would be a second operation the history does not show)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.connections: dict[int, redis.Redis] = {}

    def __call__(
        self, cluster: Cluster, client: str, node_id: int, kind: str, key: str, value: str | None
    ) -> Operation:
        connection = self.connections.get(node_id)
        if connection is None:
            port = cluster.members[node_id].rpc_port
            assert port is not None, "the cluster has no RESP ports (enable_resp)"
            connection = redis.Redis(
                port=port,
                socket_timeout=CLIENT_TIMEOUT_S,
                socket_connect_timeout=CLIENT_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
            self.connections[node_id] = connection
        call = time.monotonic()
        try:
            if kind == "put":
                connection.set(key, value)
            else:
                read = connection.get(key)
        except redis.RedisError:
            return Operation(client, kind, key, value, None, call, None)
        returned = time.monotonic()
        if kind == "put":
            return Operation(client, "put", key, value, None, call, returned)
        return Operation(client, "get", key, None, read, call, returned)

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()


class Clients:
    """Threads issuing random reads and writes (unique values) to random nodes,
    over REST or (`api="resp"`) over RESP."""

    def __init__(
        self,
        cluster: Cluster,
        history: History,
        count: int,
        seed: int,
        api: str = "rest",
        live: list[int] | None = None,
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.api = api
        #: The members to send to (read before every operation: it may change).
        self.live = live if live is not None else list(NODES)
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(f"c{n}", random.Random(seed + n)))
            for n in range(count)
        ]

    def _run(self, client: str, rng: random.Random) -> None:
        written = 0
        operate = RespOperations(self.cluster) if self.api == "resp" else run_operation
        try:
            while not self.stop.is_set():
                key = rng.choice(KEYS)
                node_id = rng.choice(self.live)
                if rng.random() < 0.5:
                    written += 1
                    operation = operate(
                        self.cluster, client, node_id, "put", key, f"{client}-{written}"
                    )
                else:
                    operation = operate(self.cluster, client, node_id, "get", key, None)
                self.history.add(operation)
                if operation.return_time is None:
                    time.sleep(0.05)  # Mostly a node down or paused: try elsewhere.
        finally:
            if isinstance(operate, RespOperations):
                operate.close()

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"


#: The nemesis's faults: kill -9 of a node and its restart, pause (SIGSTOP) and
#: resume, a leadership transfer to a random node asked of a random node, kill -9
#: of two nodes at once (no quorum) and their restart, and a graceful restart
#: (SIGTERM: a leader hands leadership over first).
FAULTS = ("kill", "pause", "transfer", "quorum", "restart")
#: Replace a member: add a new node (it joins, catching up by snapshot), then
#: remove a random one (the leader, perhaps). Drawn twice as often as the others.
MEMBERSHIP_FAULTS = ("kill", "pause", "replace", "replace")


class Nemesis:
    """One fault at a time (of `faults`, see FAULTS) on random nodes. Every fault is
    healed before the next one starts and before the thread ends."""

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        faults: tuple[str, ...] = ("kill", "pause"),
        live: list[int] | None = None,
    ) -> None:
        self.cluster = cluster
        self.faults = faults
        #: The members, which the "replace" fault changes (shared with the clients).
        self.live = live if live is not None else list(NODES)
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.started = time.monotonic()

    def _note(self, text: str) -> None:
        self.events.append(f"{time.monotonic():.3f} {text}")

    def _run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(0.5, 1.5)):
                fault = self.rng.choice(self.faults)
                node_id = self.rng.choice(self.live)
                outage_s = self.rng.uniform(0.5, 2.0)
                if fault == "kill":
                    self._note(f"kill -9 node {node_id}")
                    self.cluster.kill(node_id, signal.SIGKILL)
                    time.sleep(outage_s)
                    self.cluster.start(node_id, join=node_id not in NODES)
                    self._note(f"restarted node {node_id}")
                elif fault == "pause":
                    self._note(f"pause node {node_id}")
                    self.cluster.pause(node_id)
                    time.sleep(outage_s)
                    self.cluster.resume(node_id)
                    self._note(f"resumed node {node_id}")
                elif fault == "restart":
                    self._note(f"SIGTERM node {node_id}")
                    code = self.cluster.stop(node_id, signal.SIGTERM)
                    assert code == 0, f"node {node_id} exited with {code} on SIGTERM"
                    self.cluster.start(node_id, join=node_id not in NODES)
                    self._note(f"restarted node {node_id}")
                elif fault == "transfer":
                    self._transfer(node_id, self.rng.choice(self.live))
                elif fault == "replace":
                    self._replace(node_id)
                else:
                    victims = self.rng.sample(self.live, 2)
                    self._note(f"kill -9 nodes {victims} (no quorum)")
                    for victim in victims:
                        self.cluster.kill(victim, signal.SIGKILL)
                    time.sleep(outage_s)
                    for victim in victims:
                        self.cluster.start(victim, join=victim not in NODES)
                    self._note(f"restarted nodes {victims}")
        except BaseException as exc:
            self.error = exc
            self._note(f"nemesis failed: {exc!r}")

    def _transfer(self, asked: int, target: int) -> None:
        body = json.dumps({"id": target})
        try:
            reply = request(self.cluster.members[asked].port, "POST", "/v1/leader", body, 5)
            self._note(f"asked node {asked} to hand leadership to node {target}: {reply.status}")
        except OSError as exc:
            self._note(f"asked node {asked} to hand leadership to node {target}: {exc!r}")

    def _replace(self, victim: int) -> None:
        cluster, live = self.cluster, self.live
        new = cluster.add_member_slot().node_id
        self._note(f"add node {new}")
        cluster.change_membership(self.rng.sample(live, len(live)), "POST", new)
        if cluster.members[1].rpc_port is not None:
            cluster.enable_resp()
        cluster.start(new, join=True)
        live.append(new)
        self._note(f"remove node {victim}")
        live.remove(victim)  # The clients stop choosing it; operations in flight may fail.
        cluster.change_membership(self.rng.sample(live, len(live)), "DELETE", victim)
        assert cluster.wait_exit(victim) == 0, cluster.log(victim)
        self._note(f"node {victim} exited; members {sorted(live)}")

    def __enter__(self) -> Nemesis:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the nemesis hung"


def heal(cluster: Cluster, live: list[int]) -> None:
    for node_id in live:
        cluster.resume(node_id)
        if not cluster.members[node_id].running:
            cluster.start(node_id, join=node_id not in NODES)
    cluster.wait_leader()


def final_reads(cluster: Cluster, history: History, live: list[int]) -> None:
    """Read every key on every node once more: a lost write would show here."""
    for node_id in live:
        for key in KEYS:
            operation = run_operation(cluster, f"final-{node_id}", node_id, "get", key, None)
            assert operation.return_time is not None, (
                f"final read of {key} on node {node_id} failed"
            )
            history.add(operation)


def describe(history: History, nemesis: Nemesis) -> str:
    operations = history.operations
    puts = [op for op in operations if op.kind == "put"]
    gets = [op for op in operations if op.kind == "get"]
    return (
        f"{len(operations)} operations: {len(puts)} puts "
        f"({sum(op.return_time is not None for op in puts)} acknowledged), {len(gets)} gets "
        f"({sum(op.return_time is not None for op in gets)} answered); "
        f"nemesis: {len(nemesis.events)} events"
    )


def run_history_test(
    make_cluster: Callable[..., Cluster],
    duration_s: float,
    clients: int,
    faults: tuple[str, ...] = ("kill", "pause"),
    api: str = "rest",
    learner: bool = False,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(3, extra_args=SERVER_ARGS)
    if api == "resp":
        cluster.enable_resp()
    cluster.start_all()
    cluster.wait_leader()
    history = History()
    live = list(NODES)
    if learner:
        # A fourth node as a learner: clients use it and the nemesis strikes it too.
        node_id = cluster.add_member_slot().node_id
        body = json.dumps({"id": node_id, "url": cluster.peer_urls[-1], "learner": True})
        reply = request(cluster.members[1].port, "POST", "/v1/members", body)
        assert reply.status == 201, reply
        cluster.start(node_id, join=True)
        live.append(node_id)
    with (
        Clients(cluster, history, clients, seed, api, live),
        Nemesis(cluster, seed, faults, live) as nemesis,
    ):
        time.sleep(duration_s)
    assert nemesis.error is None, f"{nemesis.error!r}\n" + "\n".join(nemesis.events)
    heal(cluster, live)
    final_reads(cluster, history, live)
    summary = describe(history, nemesis)
    print(summary)
    print("\n".join(nemesis.events))
    acknowledged = sum(op.kind == "put" and op.return_time is not None for op in history.operations)
    assert acknowledged >= 20, f"too few writes succeeded to tell anything: {summary}"

    result = check(history.operations, time_limit_s=120)
    assert result.ok, (
        f"{result.explanation}\n"
        + "\n".join(op.describe() for op in result.operations[:60])
        + f"\n{summary}\n"
        + "\n".join(nemesis.events)
    )


@pytest.mark.timeout(180)
def test_history_under_kills_and_pauses_is_linearizable(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_history_test(make_cluster, duration_s=15, clients=4)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_long_history_under_kills_and_pauses_is_linearizable(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_history_test(make_cluster, duration_s=90, clients=6)


@pytest.mark.timeout(180)
def test_history_under_leader_transfers_and_quorum_loss_is_linearizable(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_history_test(make_cluster, duration_s=15, clients=4, faults=FAULTS)


@pytest.mark.timeout(180)
def test_history_over_resp_under_faults_is_linearizable(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_history_test(make_cluster, duration_s=15, clients=4, faults=FAULTS, api="resp")


@pytest.mark.timeout(180)
def test_history_under_membership_changes_is_linearizable(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_history_test(make_cluster, duration_s=15, clients=4, faults=MEMBERSHIP_FAULTS)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_history_through_a_learner_too_is_linearizable(
    make_cluster: Callable[..., Cluster],
) -> None:
    run_history_test(make_cluster, duration_s=20, clients=4, learner=True)
