"""A WAL writer for the crash test, run as its own process.

The test starts this once. It imports raftkv, then serves commands on stdin, one
per line, and answers on stdout:

    run <directory> <seed>  ->  "started <pid>": a forked child opens (or creates)
                                the WAL and writes until it is killed
    reap <pid>              ->  "reaped <pid> <status>"
    exit

The child reports on the same stdout, one line per event, each written with a
single `os.write` (shorter than PIPE_BUF, so lines never interleave):

    opened <last index>                      the WAL reopened
    ack <index> <term> <commit>              `sync` returned: entries up to index,
                                             the entry at index has term, and the
                                             hard state has that commit, are durable
    snap <index> <term>                      a synced snapshot marker (then released)
    error <message>                          opening failed; the child exits

Forking from this already-imported process makes each round cost milliseconds
instead of an interpreter start, so the test can afford many kills.

What the child writes: batches of 1 to 64 entries whose data names their index
and term; now and then a new term; now and then a batch that rewrites entries
written since the last sync (as a new leader would), so that recovery must
resolve the same index written twice; a sync after most batches; and every third
sync a snapshot marker followed by `release_to`, so that segments rotate and
are deleted under the kills too.
"""

from __future__ import annotations

import os
import random
import sys

from raftkv.raft import Entry, EntryType, HardState
from raftkv.storage import WAL, SnapshotMarker, StorageFailure, WALMetadata

SEGMENT_BYTES = 32 * 1024
METADATA = WALMetadata(node_id=1, cluster_id=0xC1)


def entry_data(index: int, term: int) -> bytes:
    return f"{index}/{term}/".encode() + bytes([index % 251]) * ((index * 7 + term) % 300)


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def write_until_killed(directory: str, seed: int) -> None:
    rng = random.Random(seed)
    try:
        if WAL.exists(directory):
            wal, contents = WAL.open(directory, segment_size_bytes=SEGMENT_BYTES)
            last, commit = contents.last_index, contents.hard_state.commit
            term = max(contents.hard_state.term, contents.term_at(last) or 0, 1)
        else:
            wal = WAL.create(directory, METADATA, segment_size_bytes=SEGMENT_BYTES)
            last, term, commit = 0, 1, 0
    except StorageFailure as error:
        emit(f"error {error}")
        os._exit(3)
    emit(f"opened {last}")
    synced_last = last
    syncs = 0
    while True:
        if rng.random() < 0.05:
            term += 1
        first = last + 1
        if last > synced_last and rng.random() < 0.2:
            first = rng.randint(synced_last + 1, last)  # rewrite unsynced entries
        count = rng.choice((1, 1, 4, 16, 64))
        batch = [
            Entry(term, index, EntryType.NORMAL, entry_data(index, term))
            for index in range(first, first + count)
        ]
        last = batch[-1].index
        wal.save(batch, HardState(term=term, vote=1, commit=commit))
        if rng.random() < 0.8:
            wal.sync()
            synced_last = last
            emit(f"ack {last} {term} {commit}")
            commit = last
            syncs += 1
            if syncs % 3 == 0:
                marker = SnapshotMarker(index=last, term=term)
                wal.save_snapshot(marker)
                wal.sync()
                emit(f"snap {marker.index} {marker.term}")
                wal.release_to(marker.index)


def serve() -> None:
    for line in sys.stdin:
        command, *arguments = line.split()
        if command == "run":
            pid = os.fork()
            if pid == 0:
                try:
                    write_until_killed(arguments[0], int(arguments[1]))
                finally:
                    os._exit(4)
            emit(f"started {pid}")
        elif command == "reap":
            pid = int(arguments[0])
            _, status = os.waitpid(pid, 0)
            emit(f"reaped {pid} {status}")
        elif command == "exit":
            return


if __name__ == "__main__":
    serve()
