"""Exactly-once writes under faults, through `raftkv.Client`.

Client threads APPEND unique tokens to a few shared keys and INCR counters of their
own, each through a client with a session, while a nemesis kills, pauses and moves
leadership. A call that raises has an unknown outcome; one that returns applied once.

Afterwards every token whose APPEND returned is in its key exactly once, a token
whose APPEND raised at most once, no token twice, and each thread's tokens in the
order it sent them (a session never applies an older request after a newer one).
Each counter equals its acknowledged INCRs plus at most its unknown ones, and the
acknowledged INCRs returned increasing values.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

import raftkv
from raftkv import errors

from ..integration.test_history import Nemesis
from .cluster import RespCluster

THREADS = 4
LOG_KEYS = ("log-a", "log-b")


@dataclass
class Record:
    """What one client thread was told."""

    appended: list[str] = field(default_factory=list)
    append_unknown: list[str] = field(default_factory=list)
    incr_replies: list[int] = field(default_factory=list)
    incr_unknown: int = 0


def client_thread(endpoints: list[str], number: int, stop: threading.Event, record: Record) -> None:
    rng = random.Random(number)
    sent = 0
    with raftkv.Client(endpoints, timeout=6) as kv:
        while not stop.is_set():
            if rng.random() < 0.7:
                sent += 1
                token = f"{number}.{sent}"
                try:
                    kv.append(rng.choice(LOG_KEYS), token + ",")
                except errors.Unavailable:
                    record.append_unknown.append(token)
                else:
                    record.appended.append(token)
            else:
                try:
                    record.incr_replies.append(kv.incr(f"n{number}"))
                except errors.Unavailable:
                    record.incr_unknown += 1


@pytest.mark.timeout(180)
def test_session_writes_apply_exactly_once_under_faults(
    make_cluster: Callable[..., RespCluster],
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    cluster = make_cluster(["--request-timeout", "2", "--snapshot-count", "300"])
    stop = threading.Event()
    records = [Record() for _ in range(THREADS)]
    threads = [
        threading.Thread(target=client_thread, args=(cluster.endpoints, n, stop, records[n]))
        for n in range(THREADS)
    ]
    with Nemesis(cluster, seed, ("kill", "pause", "transfer")) as nemesis:
        for thread in threads:
            thread.start()
        time.sleep(15)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert nemesis.error is None, f"{nemesis.error!r}\n" + "\n".join(nemesis.events)
    for node_id in (1, 2, 3):
        cluster.resume(node_id)
        if not cluster.members[node_id].running:
            cluster.start(node_id)
    cluster.wait_leader()
    print("\n".join(nemesis.events))

    with raftkv.Client(cluster.endpoints, timeout=20) as kv:
        logs = {key: [t for t in (kv.get(key) or b"").decode().split(",") if t] for key in LOG_KEYS}
        counters = [int(kv.get(f"n{n}") or 0) for n in range(THREADS)]
    counts = collections.Counter(token for tokens in logs.values() for token in tokens)
    appended = sum(len(record.appended) for record in records)
    unknown = sum(len(record.append_unknown) for record in records)
    print(f"{appended} appends acknowledged, {unknown} unknown; {len(counts)} tokens stored")
    assert appended >= 100, "too few appends succeeded to tell anything"
    assert [token for token, count in counts.items() if count > 1] == []
    for number, record in enumerate(records):
        assert [token for token in record.appended if counts[token] != 1] == []
        for tokens in logs.values():
            mine = [int(t.split(".")[1]) for t in tokens if t.split(".")[0] == str(number)]
            assert mine == sorted(mine), (number, mine)
            sent = {*record.appended, *record.append_unknown}
            assert {f"{number}.{n}" for n in mine} <= sent
        replies = record.incr_replies
        assert replies == sorted(replies) and len(set(replies)) == len(replies), replies
        low = len(replies)
        assert low <= counters[number] <= low + record.incr_unknown, (number, counters, record)
