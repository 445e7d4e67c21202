"""Durable append throughput of the WAL, beside a plain write+fsync loop.

For each batch size (1, 16, 64, 256 entries of 100 bytes), one "operation" is
`WAL.save(batch, hard_state)` followed by `WAL.sync()`: a batch is durable when
it returns, as it is for the server. The plain loop writes the same number of
bytes per operation with `os.write` and `os.fsync` to a file in the same
directory. Runs alternate between the two in rounds, so that noise from other
work on the machine falls on both alike; the rates are total entries over total
time across rounds.

Prints a table, then one JSON object on the last line.

    python bench/wal_bench.py            # about a minute
    python bench/wal_bench.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from raftkv.raft import Entry, HardState
from raftkv.storage import WAL, WALMetadata

BATCH_SIZES = (1, 16, 64, 256)
ENTRY_DATA_BYTES = 100
#: Distinct batches cycled through, so that building entries stays out of the timing.
POOL_BATCHES = 32
TARGET_RATIO = 0.90
TARGET_ENTRIES_PER_SECOND_AT_256 = 100_000


@dataclass
class Totals:
    operations: int = 0
    seconds: float = 0.0

    def add(self, operations: int, seconds: float) -> None:
        self.operations += operations
        self.seconds += seconds


def make_pool(batch_size: int) -> list[tuple[list[Entry], HardState]]:
    pool = []
    data = b"v" * ENTRY_DATA_BYTES
    for number in range(POOL_BATCHES):
        first = 1 + number * batch_size
        batch = [Entry(1, index, data=data) for index in range(first, first + batch_size)]
        pool.append((batch, HardState(term=1, vote=1, commit=first - 1)))
    return pool


def run_wal(directory: Path, pool: list[tuple[list[Entry], HardState]], seconds: float) -> Totals:
    wal = WAL.create(directory / "wal", WALMetadata(node_id=1, cluster_id=1))
    totals = Totals()
    clock = time.perf_counter
    try:
        started = clock()
        while totals.operations % 64 or clock() - started < seconds:
            batch, hard_state = pool[totals.operations % POOL_BATCHES]
            wal.save(batch, hard_state)
            wal.sync()
            totals.operations += 1
        totals.seconds = clock() - started
    finally:
        wal.close()
    return totals


def run_plain(directory: Path, size_bytes: int, seconds: float) -> Totals:
    payload = b"v" * size_bytes
    fd = os.open(directory / "plain", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    totals = Totals()
    clock = time.perf_counter
    try:
        started = clock()
        while totals.operations % 64 or clock() - started < seconds:
            os.write(fd, payload)
            os.fsync(fd)
            totals.operations += 1
        totals.seconds = clock() - started
    finally:
        os.close(fd)
    return totals


def bytes_per_operation(directory: Path, pool: list[tuple[list[Entry], HardState]]) -> int:
    """What one save writes, measured on a throwaway WAL."""
    wal = WAL.create(directory / "measure", WALMetadata(node_id=1, cluster_id=1))
    try:
        batch, hard_state = pool[0]
        return wal.save(batch, hard_state)
    finally:
        wal.close()


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--dir", help="where to write (default: a temp dir)")
    arguments = parser.parse_args()
    rounds, seconds = (2, 0.3) if arguments.quick else (6, 1.0)
    root = Path(tempfile.mkdtemp(prefix="wal_bench-", dir=arguments.dir))
    results = {}
    try:
        for batch_size in BATCH_SIZES:
            pool = make_pool(batch_size)
            size_bytes = bytes_per_operation(fresh(root / "measure"), pool)
            wal, plain = Totals(), Totals()
            for number in range(rounds):
                # Alternate which goes first, so neither always follows the other.
                order = ("wal", "plain") if number % 2 == 0 else ("plain", "wal")
                for which in order:
                    directory = fresh(root / which)
                    if which == "wal":
                        totals = run_wal(directory, pool, seconds)
                        wal.add(totals.operations, totals.seconds)
                    else:
                        totals = run_plain(directory, size_bytes, seconds)
                        plain.add(totals.operations, totals.seconds)
            results[batch_size] = {
                "bytes_per_fsync": size_bytes,
                "wal_entries_per_second": round(wal.operations * batch_size / wal.seconds),
                "wal_fsyncs_per_second": round(wal.operations / wal.seconds),
                "plain_entries_per_second": round(plain.operations * batch_size / plain.seconds),
                "plain_fsyncs_per_second": round(plain.operations / plain.seconds),
                "wal_to_plain_ratio": round(
                    (wal.operations / wal.seconds) / (plain.operations / plain.seconds), 3
                ),
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    summary = {
        "benchmark": "wal_bench",
        "quick": arguments.quick,
        "entry_data_bytes": ENTRY_DATA_BYTES,
        "results": {str(size): row for size, row in results.items()},
        "ratio_target_met": all(
            row["wal_to_plain_ratio"] >= TARGET_RATIO for row in results.values()
        ),
        "throughput_target_met": results[256]["wal_entries_per_second"]
        >= TARGET_ENTRIES_PER_SECOND_AT_256,
    }
    print(json.dumps(summary))


def print_table(results: dict[int, dict[str, float]]) -> None:
    header = (
        f"{'batch':>5}  {'bytes':>6}  {'WAL entries/s':>13}  {'WAL fsyncs/s':>12}  "
        f"{'plain entries/s':>15}  {'plain fsyncs/s':>14}  {'WAL/plain':>9}"
    )
    print(header)
    print("-" * len(header))
    for size, row in results.items():
        print(
            f"{size:>5}  {row['bytes_per_fsync']:>6}  {row['wal_entries_per_second']:>13,.0f}  "
            f"{row['wal_fsyncs_per_second']:>12,.0f}  {row['plain_entries_per_second']:>15,.0f}  "
            f"{row['plain_fsyncs_per_second']:>14,.0f}  {row['wal_to_plain_ratio']:>8.0%}"
        )


if __name__ == "__main__":
    main()
