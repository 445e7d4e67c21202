"""FsyncRing: fdatasync through io_uring, on a real kernel (skipped where the kernel
does not allow io_uring; `.ci/run` machines do)."""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.storage import FsyncRing


@pytest.fixture
def ring() -> Iterator[FsyncRing]:
    opened = FsyncRing.open()
    if opened is None:
        pytest.skip("io_uring is not usable on this machine")
    yield opened
    opened.close()


def wait_for(ring: FsyncRing, count: int) -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    while len(done) < count:
        readable, _, _ = select.select([ring.fileno()], [], [], 10)
        assert readable, "no completion within 10 s"
        done += ring.completions()
    return done


def test_a_datasync_completes_with_its_token(ring: FsyncRing, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 100)
        ring.submit_datasync(fd, 42)
        assert ring.in_flight == 1
        assert wait_for(ring, 1) == [(42, 0)]
        assert ring.in_flight == 0
    finally:
        os.close(fd)


def test_a_failed_datasync_reports_its_errno(ring: FsyncRing) -> None:
    read_end, write_end = os.pipe()
    try:
        ring.submit_datasync(write_end, 7)  # A pipe cannot be synced.
        ((token, result),) = wait_for(ring, 1)
        assert token == 7
        assert result == -errno.EINVAL
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_ring_refuses_more_than_it_can_hold(ring: FsyncRing, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    try:
        submitted = 0
        while ring.has_room():
            ring.submit_datasync(fd, submitted)
            submitted += 1
        assert submitted == 8
        done = wait_for(ring, submitted)
        assert sorted(done) == [(token, 0) for token in range(submitted)]
        assert ring.has_room()
    finally:
        os.close(fd)
