"""Kill a WAL writer with SIGKILL at random moments; every acknowledged record must
survive and the WAL must always reopen.

The writer (`crash_writer.py`) prints an acknowledgement only after `sync`
returned, so each acknowledgement is a promise: "entries up to this index, with
this term at the end, and this commit index, are durable". After every kill the
test reopens a copy of the directory and checks every promise made so far, then
starts the next writer on the original, which must recover it (torn tail and
all) before it writes again.
"""

from __future__ import annotations

import itertools
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import raftkv.storage
from raftkv.storage import WAL, SnapshotMarker

from .crash_writer import SEGMENT_BYTES, entry_data

WRITER = Path(__file__).with_name("crash_writer.py")
TIMEOUT_SECONDS = 20.0


class WriterHost:
    """The writer process, and the lines it and its children print."""

    def __init__(self) -> None:
        # The writer imports raftkv from where this process did, whatever is installed.
        source = str(Path(raftkv.storage.__file__).parents[2])
        path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.lines: queue.Queue[list[str] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.split(maxsplit=1) if line.startswith("error") else line.split())
        self.lines.put(None)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def wait_for(self, kind: str, seen: list[list[str]]) -> list[str]:
        """Collect lines into `seen` until one of `kind` arrives; return it."""
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "the writer host exited"
            seen.append(line)
            if line[0] == kind:
                return line
            assert line[0] != "error", f"the WAL did not reopen: {line[1]}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("exit")
            try:
                self.process.wait(timeout=TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.reader.join()
        self.process.stdout.close()


@pytest.fixture
def host() -> Iterator[WriterHost]:
    host = WriterHost()
    yield host
    host.close()


@dataclass
class Promises:
    """Everything acknowledged so far, over all rounds."""

    #: index -> term of each acknowledged last entry.
    acked: dict[int, int] = field(default_factory=dict)
    commit: int = 0
    term: int = 0
    marker: SnapshotMarker | None = None
    #: Rounds whose recovery found entries written after the last acknowledgement.
    unacked_survivors: int = 0

    def record(self, events: list[list[str]]) -> None:
        for event in events:
            if event[0] == "ack":
                index, term, commit = map(int, event[1:])
                self.acked[index] = term
                self.commit = max(self.commit, commit)
                self.term = max(self.term, term)
            elif event[0] == "snap":
                self.marker = SnapshotMarker(index=int(event[1]), term=int(event[2]))


def check_recovered(directory: Path, scratch: Path, promises: Promises) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(directory, scratch)
    wal, contents = WAL.open(scratch, segment_size_bytes=SEGMENT_BYTES)
    wal.close()
    log = contents.entries_after(promises.marker)
    if promises.marker is not None:
        assert contents.first_index <= promises.marker.index + 1
    for entry in log:
        assert entry.data == entry_data(entry.index, entry.term), entry.index
    assert all(a.term <= b.term for a, b in itertools.pairwise(log))
    first = log[0].index if log else contents.last_index + 1
    for index, term in promises.acked.items():
        assert index <= contents.last_index, f"acknowledged entry {index} is lost"
        if index >= first:
            assert log[index - first].term == term, f"acknowledged entry {index} changed"
    assert contents.hard_state.commit >= promises.commit
    assert contents.hard_state.term >= promises.term
    if promises.acked and contents.last_index > max(promises.acked):
        promises.unacked_survivors += 1


def run_rounds(host: WriterHost, tmp_path: Path, kills: int, seed: int) -> Promises:
    rng = random.Random(seed)
    directory = tmp_path / "wal"
    promises = Promises()
    for number in range(kills):
        events: list[list[str]] = []
        host.send(f"run {directory} {rng.randrange(2**32)}")
        pid = int(host.wait_for("started", events)[1])
        if number > 0 and rng.random() < 0.2:
            time.sleep(rng.uniform(0, 0.005))  # often still recovering
        else:
            if not any(event[0] == "opened" for event in events):
                host.wait_for("opened", events)
            time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGKILL)
        host.send(f"reap {pid}")
        status = int(host.wait_for("reaped", events)[2])
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, events
        promises.record(events)
        check_recovered(directory, tmp_path / "check", promises)
    return promises


def test_acknowledged_records_survive_sixty_kills(host: WriterHost, tmp_path: Path) -> None:
    promises = run_rounds(host, tmp_path, kills=60, seed=1)
    assert len(promises.acked) >= 60
    assert promises.marker is not None


@pytest.mark.slow
def test_acknowledged_records_survive_five_hundred_kills(host: WriterHost, tmp_path: Path) -> None:
    promises = run_rounds(host, tmp_path, kills=500, seed=2)
    assert promises.unacked_survivors > 0
