"""Peer transport micro benchmark: codec speed, and throughput between two transports.

Two parts:

1. Codec: encode and decode of APP messages carrying 64 entries of 100 bytes, one and
   sixteen messages per batch (the frame payload), in-process.
2. Loopback: node 1 (this process) sends to node 2 (a child process) over 127.0.0.1.
   Node 2 answers every APP with an APP_RESP, like a follower; node 1 keeps a fixed
   window of unanswered messages in flight, like a leader's pipelined replication.
   Reported: messages/s and payload MB/s one way, and how many messages each frame
   carried (coalescing). With a window of 1 the rate is one round trip per message.

Usage: python3 bench/transport_bench.py [--quick] [--no-uvloop]
Prints a table, then one JSON line (the last line) with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from raftkv.raft import Entry, EntryType, Message, MessageType
from raftkv.transport import Transport, TransportStats, decode_batch, encode_batch

CLUSTER_ID = 1
LEADER, FOLLOWER = 1, 2


def make_append(entry_count: int, entry_bytes: int) -> Message:
    entries = tuple(
        Entry(3, 1001 + i, EntryType.NORMAL, bytes([i % 256]) * entry_bytes)
        for i in range(entry_count)
    )
    return Message(MessageType.APP, FOLLOWER, LEADER, 3, 3, 1000, entries, 1000)


def payload_bytes(message: Message) -> int:
    return sum(len(entry.data) for entry in message.entries)


# -- codec ---------------------------------------------------------------------------


def per_call_us(function: Callable[[], object], seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            function()
        calls += 20
    return (time.perf_counter() - start) / calls * 1e6


def bench_codec(batch_size: int, seconds: float) -> dict[str, float]:
    batch = [make_append(64, 100)] * batch_size
    payload = encode_batch(batch)
    assert decode_batch(payload) == batch
    encode_us = per_call_us(lambda: encode_batch(batch), seconds) / batch_size
    decode_us = per_call_us(lambda: decode_batch(payload), seconds) / batch_size
    both_us = encode_us + decode_us
    return {
        "batch_messages": batch_size,
        "encode_us_per_message": round(encode_us, 2),
        "decode_us_per_message": round(decode_us, 2),
        "messages_per_s": round(1e6 / both_us),
        "payload_mb_per_s": round(1e6 / both_us * payload_bytes(batch[0]) / 1e6, 1),
        "wire_bytes_per_message": len(payload) // batch_size,
    }


# -- loopback ------------------------------------------------------------------------


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def quiet_logs() -> None:
    # Each side sees the other go away at the end; that warning is expected here.
    logging.getLogger("raftkv.transport").setLevel(logging.ERROR)


def follower_main(control: multiprocessing.connection.Connection, use_uvloop: bool) -> None:
    """Node 2: answer each APP with an APP_RESP until told to stop."""
    quiet_logs()

    async def main() -> None:
        def on_messages(batch: list[Message]) -> None:
            transport.send(
                [
                    Message(MessageType.APP_RESP, LEADER, FOLLOWER, m.term, index=m.index)
                    for m in batch
                ]
            )

        transport = Transport(
            FOLLOWER,
            CLUSTER_ID,
            ("127.0.0.1", 0),
            {},
            on_messages,
            lambda peer: None,
            lambda peer, ok: None,
        )
        await transport.start()
        control.send(transport.address)
        host, port = control.recv()
        transport.add_peer(LEADER, host, port)
        await asyncio.get_running_loop().run_in_executor(None, control.recv)
        await transport.stop()

    with asyncio.Runner(loop_factory=lambda: new_loop(use_uvloop)) as runner:
        runner.run(main())


@dataclass
class Workload:
    name: str
    message: Message
    window: int


@dataclass
class LoopbackResult:
    workload: str
    window: int
    messages_per_s: float
    payload_mb_per_s: float
    messages_per_frame: float
    round_trip_us: float


class Leader:
    """Node 1: keeps `window` messages unanswered, counting answers."""

    def __init__(self, follower_address: tuple[str, int]) -> None:
        self.answered = 0
        self.in_flight = 0
        self.workload: Workload | None = None
        self.transport = Transport(
            LEADER,
            CLUSTER_ID,
            ("127.0.0.1", 0),
            {FOLLOWER: follower_address},
            self.on_messages,
            self.on_unreachable,
            lambda peer, ok: None,
        )

    def on_unreachable(self, peer: int) -> None:
        raise SystemExit(f"benchmark broken: node {peer} became unreachable")

    def on_messages(self, batch: list[Message]) -> None:
        self.answered += len(batch)
        self.in_flight -= len(batch)
        self.top_up()

    def top_up(self) -> None:
        if self.workload is None:
            return
        missing = self.workload.window - self.in_flight
        if missing > 0:
            self.transport.send([self.workload.message] * missing)
            self.in_flight += missing

    async def run(self, workload: Workload, seconds: float) -> LoopbackResult:
        self.workload = workload
        self.top_up()
        await asyncio.sleep(min(0.5, seconds / 2))  # warm up
        answered_before = self.answered
        stats_before = self.transport.stats()
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - start
        answered = self.answered - answered_before
        stats_after = self.transport.stats()
        self.workload = None
        while self.in_flight:  # drain before the next workload
            await asyncio.sleep(0.01)
        rate = answered / elapsed
        frames = stats_after.frames_sent - stats_before.frames_sent
        messages = stats_after.messages_sent - stats_before.messages_sent
        return LoopbackResult(
            workload=workload.name,
            window=workload.window,
            messages_per_s=round(rate),
            payload_mb_per_s=round(rate * payload_bytes(workload.message) / 1e6, 1),
            messages_per_frame=round(messages / max(frames, 1), 1),
            round_trip_us=round(workload.window / rate * 1e6, 1),
        )


async def bench_loopback(
    workloads: list[Workload], seconds: float, use_uvloop: bool
) -> tuple[list[LoopbackResult], TransportStats]:
    context = multiprocessing.get_context("spawn")
    control, child_control = context.Pipe()
    follower = context.Process(target=follower_main, args=(child_control, use_uvloop))
    follower.start()
    loop = asyncio.get_running_loop()
    try:
        follower_address = await loop.run_in_executor(None, control.recv)
        leader = Leader(tuple(follower_address))
        await leader.transport.start()
        control.send(leader.transport.address)
        results = [await leader.run(workload, seconds) for workload in workloads]
        await leader.transport.stop()
        return results, leader.transport.stats()
    finally:
        control.send("stop")
        await loop.run_in_executor(None, follower.join, 10)


# -- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    args = parser.parse_args()
    quiet_logs()
    seconds = 0.3 if args.quick else 3.0
    use_uvloop = not args.no_uvloop
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False

    codec = [bench_codec(batch_size, seconds / 2) for batch_size in (1, 16)]
    workloads = [
        Workload("APP 64 x 100 B", make_append(64, 100), window=64),
        Workload("APP 64 x 100 B", make_append(64, 100), window=1),
        Workload("APP 1 x 100 B", make_append(1, 100), window=256),
        Workload("HEARTBEAT", Message(MessageType.HEARTBEAT, FOLLOWER, LEADER, 3), window=1024),
    ]
    with asyncio.Runner(loop_factory=lambda: new_loop(use_uvloop)) as runner:
        loopback, leader_stats = runner.run(bench_loopback(workloads, seconds, use_uvloop))

    loop_name = "uvloop" if use_uvloop else "asyncio"
    print(f"raftkv transport benchmark: Python {platform.python_version()}, {loop_name}")
    print()
    print("codec, APP with 64 entries of 100 B:")
    print(
        f"  {'batch':>5}  {'encode us/msg':>13}  {'decode us/msg':>13}  "
        f"{'msgs/s (enc+dec)':>16}  {'MB/s':>7}  {'wire B/msg':>10}"
    )
    for row in codec:
        print(
            f"  {row['batch_messages']:>5}  {row['encode_us_per_message']:>13}  "
            f"{row['decode_us_per_message']:>13}  {row['messages_per_s']:>16}  "
            f"{row['payload_mb_per_s']:>7}  {row['wire_bytes_per_message']:>10}"
        )
    print()
    print("loopback, node 1 -> node 2 (a separate process), each message answered:")
    print(
        f"  {'workload':<16} {'window':>6}  {'msgs/s':>9}  {'MB/s':>7}  "
        f"{'msgs/frame':>10}  {'round trip us':>13}"
    )
    for result in loopback:
        print(
            f"  {result.workload:<16} {result.window:>6}  {result.messages_per_s:>9}  "
            f"{result.payload_mb_per_s:>7}  {result.messages_per_frame:>10}  "
            f"{result.round_trip_us if result.window == 1 else '':>13}"
        )
    print(
        json.dumps(
            {
                "bench": "transport",
                "python": platform.python_version(),
                "loop": loop_name,
                "quick": args.quick,
                "seconds_per_row": seconds,
                "codec": codec,
                "loopback": [asdict(result) for result in loopback],
                "leader_messages_dropped": leader_stats.messages_dropped,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
