"""Durable append throughput of the WAL, beside a plain write+fsync loop.

For each batch size (1, 16, 64, 256 entries of 100 bytes), one operation is
`WAL.save(batch, hard_state)` then `WAL.sync()`: the batch is durable when it
returns, as it is for the server. Beside it, in the same run and directory:

- plain: `os.write` + `os.fsync` of the same number of bytes, appending to a
  file. This is the reference the targets are measured against.
- prezeroed: `os.pwrite` + `os.fdatasync` of the same bytes into a file that was
  zero-filled and fsynced beforehand, wrapping around at 64 MiB. That is how the
  WAL writes its segments (see `raftkv.storage._spare`), so the gap between it
  and the WAL is the WAL's own cost: encoding, checksums, locking.

Each of the three keeps one file (or WAL) for the whole batch size and runs in
short slices, taking turns, so that noise from other work on the machine falls
on all of them alike. Rates are total operations over total time; the ratios
are medians over slices of the WAL's rate over the other's in the same turn,
which holds steadier when the disk's speed drifts during the run. The WAL runs
long enough at the larger batches to rotate segments and prepare spares, and
that cost is counted. Building the entries is outside the timing (a pool of
batches is cycled through; the WAL treats a batch that starts at an earlier
index as a rewrite, which costs the same).

Prints a table, then one JSON object on the last line.

    python bench/wal_bench.py            # about a minute
    python bench/wal_bench.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from raftkv.raft import Entry, HardState
from raftkv.storage import WAL, WALMetadata

BATCH_SIZES = (1, 16, 64, 256)
ENTRY_DATA_BYTES = 100
POOL_BATCHES = 32
PREZEROED_FILE_BYTES = 64 * 1024 * 1024
TARGET_RATIO = 0.90
TARGET_ENTRIES_PER_SECOND_AT_256 = 100_000
MODES = ("wal", "plain", "prezeroed")

Pool = list[tuple[list[Entry], HardState]]


@dataclass
class Totals:
    operations: int = 0
    seconds: float = 0.0

    def add(self, other: Totals) -> None:
        self.operations += other.operations
        self.seconds += other.seconds

    def per_second(self) -> float:
        return self.operations / self.seconds


def timed(operation: Callable[[int], None], seconds: float, first: int = 0) -> Totals:
    """Run `operation(n)` for n = first, first + 1, ... for about `seconds`."""
    clock = time.perf_counter
    count = first
    started = clock()
    while (count - first) % 16 or clock() - started < seconds:
        operation(count)
        count += 1
    return Totals(count - first, clock() - started)


class Run(Protocol):
    def operation(self, count: int) -> None: ...

    def close(self) -> None: ...


def make_pool(batch_size: int) -> Pool:
    data = b"v" * ENTRY_DATA_BYTES
    pool = []
    for number in range(POOL_BATCHES):
        first = 1 + number * batch_size
        batch = [Entry(1, index, data=data) for index in range(first, first + batch_size)]
        pool.append((batch, HardState(term=1, vote=1, commit=first - 1)))
    return pool


class WALRun:
    """`WAL.save` + `WAL.sync` of each batch, with a hard state, as the server does."""

    def __init__(self, directory: Path, pool: Pool, size_bytes: int) -> None:
        self.wal = WAL.create(directory / "wal", WALMetadata(node_id=1, cluster_id=1))
        self.pool = pool

    def operation(self, count: int) -> None:
        batch, hard_state = self.pool[count % POOL_BATCHES]
        self.wal.save(batch, hard_state)
        self.wal.sync()

    def close(self) -> None:
        self.wal.close()


class PlainRun:
    """`os.write` + `os.fsync` of the same number of bytes, appending to a file."""

    def __init__(self, directory: Path, pool: Pool, size_bytes: int) -> None:
        self.payload = b"v" * size_bytes
        self.fd = os.open(directory / "plain", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def operation(self, count: int) -> None:
        os.write(self.fd, self.payload)
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class PrezeroedRun:
    """`os.pwrite` + `os.fdatasync` of the same bytes over a zero-filled, fsynced
    file, wrapping around at its end: how the WAL writes its segments."""

    def __init__(self, directory: Path, pool: Pool, size_bytes: int) -> None:
        self.payload = b"v" * size_bytes
        self.fd = os.open(directory / "prezeroed", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        zeros = bytes(1 << 20)
        for offset in range(0, PREZEROED_FILE_BYTES, len(zeros)):
            os.pwrite(self.fd, zeros, offset)
        os.fsync(self.fd)
        self.per_lap = PREZEROED_FILE_BYTES // size_bytes

    def operation(self, count: int) -> None:
        os.pwrite(self.fd, self.payload, (count % self.per_lap) * len(self.payload))
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


RUNS: dict[str, Callable[[Path, Pool, int], Run]] = {
    "wal": WALRun,
    "plain": PlainRun,
    "prezeroed": PrezeroedRun,
}


def bytes_per_operation(directory: Path, pool: Pool) -> int:
    """What one save writes (records and padding), measured on a throwaway WAL."""
    wal = WAL.create(directory, WALMetadata(node_id=1, cluster_id=1))
    try:
        batch, hard_state = pool[0]
        return wal.save(batch, hard_state)
    finally:
        wal.close()


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def measure(root: Path, batch_size: int, slices: int, seconds: float) -> dict[str, float]:
    pool = make_pool(batch_size)
    size_bytes = bytes_per_operation(fresh(root / "measure"), pool)
    runs = {mode: RUNS[mode](fresh(root / mode), pool, size_bytes) for mode in MODES}
    totals = {mode: Totals() for mode in MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for number in range(slices):
            # Rotate the order, so that no mode always runs right after another.
            for position in range(len(MODES)):
                mode = MODES[(number + position) % len(MODES)]
                result = timed(runs[mode].operation, seconds, first=totals[mode].operations)
                totals[mode].add(result)
                rates[mode].append(result.per_second())
    finally:
        for run in runs.values():
            run.close()

    def ratio(other: str) -> float:
        """The median over slices of WAL rate / other rate, each pair measured
        back to back: steadier than the ratio of totals when the disk's speed
        drifts during the run."""
        slice_ratios = [wal / rate for wal, rate in zip(rates["wal"], rates[other], strict=True)]
        return round(statistics.median(slice_ratios), 3)

    wal, plain, prezeroed = (totals[mode].per_second() for mode in MODES)
    return {
        "bytes_per_fsync": size_bytes,
        "wal_entries_per_second": round(wal * batch_size),
        "wal_fsyncs_per_second": round(wal),
        "plain_entries_per_second": round(plain * batch_size),
        "plain_fsyncs_per_second": round(plain),
        "prezeroed_entries_per_second": round(prezeroed * batch_size),
        "wal_to_plain_ratio": ratio("plain"),
        "wal_to_prezeroed_ratio": ratio("prezeroed"),
    }


def print_table(results: dict[int, dict[str, float]]) -> None:
    header = (
        f"{'batch':>5}  {'bytes':>6}  {'WAL entries/s':>13}  {'WAL fsyncs/s':>12}  "
        f"{'plain entries/s':>15}  {'plain fsyncs/s':>14}  {'WAL/plain':>9}  "
        f"{'prezeroed entries/s':>19}  {'WAL/prezeroed':>13}"
    )
    print(header)
    print("-" * len(header))
    for size, row in results.items():
        print(
            f"{size:>5}  {row['bytes_per_fsync']:>6}  {row['wal_entries_per_second']:>13,.0f}  "
            f"{row['wal_fsyncs_per_second']:>12,.0f}  {row['plain_entries_per_second']:>15,.0f}  "
            f"{row['plain_fsyncs_per_second']:>14,.0f}  {row['wal_to_plain_ratio']:>9.0%}  "
            f"{row['prezeroed_entries_per_second']:>19,.0f}  "
            f"{row['wal_to_prezeroed_ratio']:>13.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    arguments = parser.parse_args()
    slices, seconds = (6, 0.05) if arguments.quick else (40, 0.1)
    root = Path(tempfile.mkdtemp(prefix="wal_bench-", dir=arguments.dir))
    try:
        results = {size: measure(root, size, slices, seconds) for size in BATCH_SIZES}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    summary = {
        "benchmark": "wal_bench",
        "quick": arguments.quick,
        "entry_data_bytes": ENTRY_DATA_BYTES,
        "results": {str(size): row for size, row in results.items()},
        "ratio_target": TARGET_RATIO,
        "ratio_target_met": all(
            row["wal_to_plain_ratio"] >= TARGET_RATIO for row in results.values()
        ),
        "throughput_target_at_256": TARGET_ENTRIES_PER_SECOND_AT_256,
        "throughput_target_met": results[256]["wal_entries_per_second"]
        >= TARGET_ENTRIES_PER_SECOND_AT_256,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
