"""Snapshot cost of the kv state machine at a million keys.

Fills a `KvStateMachine` through `apply` (16-byte keys, 100-byte values), then times
what a node pays to snapshot and restore it: `freeze()` (runs on the event loop, so
it is a stall), serialising the frozen view (on a thread), the longest time the
event loop waited while that thread ran, folding back the writes made while a view
was out, decoding and installing a snapshot, and the first and a later prefix scan
(the sorted key index). Prints a table, then one JSON line with the same figures.

    python3 bench/kv_snapshot_bench.py            # 1,000,000 keys
    python3 bench/kv_snapshot_bench.py --quick    # 100,000 keys
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from raftkv.kv import KvSnapshot, KvStateMachine, encode_batch, encode_put

T = TypeVar("T")
VALUE_BYTES = 100
BATCH_COMMANDS = 1000
OVERLAY_WRITES = 100_000


def timed(action: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = action()
    return result, (time.perf_counter() - start) * 1000


def fill(machine: KvStateMachine, keys: int) -> tuple[float, float]:
    """Apply `keys` puts; returns (single-put entries/s, batched puts/s)."""
    rng = random.Random(1)
    value = os.urandom(VALUE_BYTES)
    single = min(keys // 2, 100_000)
    entries = [encode_put(b"%016x" % rng.getrandbits(64), value) for _ in range(single)]
    index = machine.applied_index
    start = time.perf_counter()
    for data in entries:
        index += 1
        machine.apply(index, data)
    single_rate = single / (time.perf_counter() - start)
    batched = 0
    batched_seconds = 0.0
    while len(machine) < keys:
        count = min(BATCH_COMMANDS, keys - len(machine))
        batch = encode_batch(
            [encode_put(b"%016x" % rng.getrandbits(64), value) for _ in range(count)]
        )
        index += 1
        start = time.perf_counter()
        machine.apply(index, batch)
        batched_seconds += time.perf_counter() - start
        batched += count
    return single_rate, batched / batched_seconds if batched else 0.0


async def snapshot_on_a_thread(machine: KvStateMachine) -> tuple[bytes, float, float]:
    """Freeze on the loop, serialise on a thread; returns (bytes, freeze ms, the
    longest the loop waited for a 1 ms timer meanwhile, in ms)."""
    longest_wait_ms = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest_wait_ms
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            longest_wait_ms = max(longest_wait_ms, (time.perf_counter() - before) * 1000 - 1)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    frozen, freeze_ms = timed(machine.freeze)
    longest_wait_ms = max(longest_wait_ms, freeze_ms)
    data = await asyncio.to_thread(frozen.to_bytes)
    done = True
    await task
    return data, freeze_ms, longest_wait_ms


def overlay_fold_ms(machine: KvStateMachine, writes: int) -> tuple[float, int]:
    """Apply `writes` puts while a view is out, release it, then apply no-ops until
    the overlay is folded back. Returns the longest of those applies and how many
    it took."""
    view = machine.freeze()
    value = os.urandom(VALUE_BYTES)
    index = machine.applied_index
    rng = random.Random(2)
    for _ in range(writes):
        index += 1
        machine.apply(index, encode_put(b"%016x" % rng.getrandbits(64), value))
    view.release()
    longest_ms = 0.0
    applies = 0
    while machine.folding:
        index += 1
        applies += 1
        start = time.perf_counter()
        machine.apply(index, b"")
        longest_ms = max(longest_ms, (time.perf_counter() - start) * 1000)
    return longest_ms, applies


def longest_chunk_ms(snapshot: KvSnapshot) -> float:
    longest = 0.0
    chunks = snapshot.chunks()
    while True:
        start = time.perf_counter()
        if next(chunks, None) is None:
            return longest
        longest = max(longest, (time.perf_counter() - start) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 keys instead of 1M")
    parser.add_argument("--keys", type=int, help="number of keys (overrides --quick)")
    args = parser.parse_args()
    keys = args.keys or (100_000 if args.quick else 1_000_000)

    machine = KvStateMachine()
    (single_rate, batched_rate), fill_ms = timed(lambda: fill(machine, keys))
    _, first_scan_ms = timed(lambda: machine.scan(b"8", limit=100))
    index = machine.applied_index
    for i in range(10):
        machine.apply(index + 1 + i, encode_put(b"8%015d" % i, b"x"))
    _, later_scan_ms = timed(lambda: machine.scan(b"8", limit=100))

    freeze_samples_ms = sorted(timed(machine.freeze)[1] for _ in range(5))
    _, serialise_ms = timed(lambda: machine.freeze().to_bytes())
    chunk_ms = longest_chunk_ms(machine.freeze())
    data, freeze_ms, loop_stall_ms = asyncio.run(snapshot_on_a_thread(machine))
    decoded, decode_ms = timed(lambda: KvSnapshot.from_bytes(data))
    restored = KvStateMachine()
    _, install_ms = timed(lambda: restored.install(decoded))
    assert len(restored) == len(machine)
    _, restore_ms = timed(lambda: KvStateMachine().restore(data))
    keys_in_snapshot = len(machine)
    fold_ms, fold_applies = overlay_fold_ms(machine, OVERLAY_WRITES)

    figures = {
        "keys": keys_in_snapshot,
        "snapshot_mb": round(len(data) / 1e6, 1),
        "apply_single_put_per_s": round(single_rate),
        "apply_batched_put_per_s": round(batched_rate),
        "fill_ms": round(fill_ms),
        "freeze_median_ms": round(freeze_samples_ms[2], 3),
        "freeze_max_ms": round(freeze_samples_ms[-1], 3),
        "freeze_in_snapshot_run_ms": round(freeze_ms, 3),
        "serialise_ms": round(serialise_ms, 1),
        "longest_chunk_ms": round(chunk_ms, 1),
        "loop_stall_during_snapshot_ms": round(loop_stall_ms, 1),
        "overlay_fold_longest_apply_ms": round(fold_ms, 1),
        "overlay_fold_applies": fold_applies,
        "decode_ms": round(decode_ms, 1),
        "install_ms": round(install_ms, 3),
        "restore_ms": round(restore_ms, 1),
        "first_scan_ms": round(first_scan_ms, 1),
        "scan_after_10_inserts_ms": round(later_scan_ms, 2),
    }
    labels = {
        "keys": "keys",
        "snapshot_mb": "snapshot size (MB)",
        "apply_single_put_per_s": "apply, one put per entry (entries/s)",
        "apply_batched_put_per_s": f"apply, {BATCH_COMMANDS} puts per entry (puts/s)",
        "fill_ms": "fill (ms)",
        "freeze_median_ms": "freeze(), on the loop, median of 5 (ms)",
        "freeze_max_ms": "freeze(), on the loop, max of 5 (ms)",
        "freeze_in_snapshot_run_ms": "freeze() in the threaded snapshot run (ms)",
        "serialise_ms": "freeze + to_bytes, one thread (ms)",
        "longest_chunk_ms": "longest single chunk (GIL held, ms)",
        "loop_stall_during_snapshot_ms": "longest loop stall, freeze + threaded serialise (ms)",
        "overlay_fold_longest_apply_ms": (
            f"longest apply folding {OVERLAY_WRITES:,} writes made during a view (ms)"
        ),
        "overlay_fold_applies": "applies it took to fold them all",
        "decode_ms": "KvSnapshot.from_bytes (ms)",
        "install_ms": "install (ms)",
        "restore_ms": "restore = decode + install (ms)",
        "first_scan_ms": "first scan, builds sorted index (ms)",
        "scan_after_10_inserts_ms": "scan after 10 inserts (ms)",
    }
    width = max(len(label) for label in labels.values())
    for name, label in labels.items():
        print(f"{label:<{width}}  {figures[name]:>12,}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
