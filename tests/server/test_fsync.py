"""The node's fsyncs off the event loop (`Fsyncer`), through io_uring and through
a thread, against a real data directory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.raft import Entry, EntryType, HardState
from raftkv.server._fsync import Fsyncer, FsyncUnavailable
from raftkv.storage import DiskStorage, DurabilityError, FsyncRing, SyncTicket

MODES = ["io_uring", "thread"]


def needs(mode: str) -> None:
    if mode == "io_uring":
        ring = FsyncRing.open()
        if ring is None:
            pytest.skip("io_uring is not usable on this machine")
        ring.close()


def entries(first: int, last: int) -> list[Entry]:
    return [Entry(1, i, EntryType.NORMAL, b"v%d" % i) for i in range(first, last + 1)]


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[DiskStorage]:
    opened = DiskStorage.open(tmp_path / "data", 1, 0xC1)
    yield opened
    opened.close()


@pytest.mark.parametrize("mode", MODES)
def test_synced_entries_survive_a_reopen(tmp_path: Path, mode: str) -> None:
    needs(mode)
    storage = DiskStorage.open(tmp_path / "data", 1, 0xC1)

    async def main() -> None:
        fsyncer = Fsyncer(storage, asyncio.get_running_loop(), mode=mode, name="test")
        assert fsyncer.via == mode
        for first in range(1, 100, 10):
            storage.append(entries(first, first + 9), HardState(1, 1, first))
            assert await fsyncer.sync() >= 0
        await fsyncer.close()

    asyncio.run(main())
    storage.close()
    reopened = DiskStorage.open(tmp_path / "data", 1, 0xC1)
    assert reopened.entries(1, 101) == entries(1, 100)
    reopened.close()


@pytest.mark.parametrize("mode", MODES)
def test_close_waits_for_the_fsyncs_in_flight(storage: DiskStorage, mode: str) -> None:
    needs(mode)

    async def main() -> None:
        fsyncer = Fsyncer(storage, asyncio.get_running_loop(), mode=mode, name="test")
        storage.append(entries(1, 3), HardState(1, 1, 0))
        pending = fsyncer.sync()
        pending.cancel()  # As when the raft loop is cancelled mid-Ready.
        await fsyncer.close()  # Returns only once the fsync itself ended.

    asyncio.run(main())
    ticket = storage.begin_sync()  # Still usable: nothing failed.
    assert ticket is not None
    storage.abandon_sync(ticket)


@pytest.mark.parametrize("mode", MODES)
def test_then_runs_once_durable_and_before_the_waiter(storage: DiskStorage, mode: str) -> None:
    needs(mode)
    order: list[str] = []

    async def main() -> None:
        fsyncer = Fsyncer(storage, asyncio.get_running_loop(), mode=mode, name="test")
        storage.append(entries(1, 3), HardState(1, 1, 0))
        pending = fsyncer.sync(then=lambda: order.append("then"))
        assert order == []
        await pending
        order.append("waiter")
        await fsyncer.close()

    asyncio.run(main())
    assert order == ["then", "waiter"]


def test_a_failed_fsync_through_io_uring_is_fatal(
    storage: DiskStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("io_uring")
    read_end, write_end = os.pipe()
    real = storage.begin_sync

    def on_a_pipe() -> SyncTicket | None:
        ticket = real()
        assert ticket is not None
        storage.abandon_sync(ticket)
        return SyncTicket(ticket.seq, ticket.path, os.dup(write_end), ticket.offset)

    monkeypatch.setattr(storage, "begin_sync", on_a_pipe)  # fdatasync fails: EINVAL
    ran: list[str] = []

    async def main() -> None:
        fsyncer = Fsyncer(storage, asyncio.get_running_loop(), mode="io_uring", name="test")
        storage.append(entries(1, 1), HardState(1, 1, 0))
        try:
            with pytest.raises(DurabilityError, match=r"fsync of .* failed \(Invalid argument"):
                await fsyncer.sync(then=lambda: ran.append("then"))
        finally:
            await fsyncer.close()

    try:
        asyncio.run(main())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert ran == []  # Nothing that depends on the write went out.
    with pytest.raises(DurabilityError):
        storage.append(entries(2, 2))  # The storage refuses everything after.


def test_a_full_segment_is_synced_in_the_thread(
    storage: DiskStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("io_uring")
    monkeypatch.setattr(storage, "begin_sync", lambda: None)  # As when it is full.
    synced: list[bool] = []
    real_sync = storage.sync

    def sync() -> None:
        synced.append(True)
        real_sync()

    monkeypatch.setattr(storage, "sync", sync)

    async def main() -> None:
        fsyncer = Fsyncer(storage, asyncio.get_running_loop(), mode="io_uring", name="test")
        storage.append(entries(1, 1), HardState(1, 1, 0))
        await fsyncer.sync()
        await fsyncer.close()

    asyncio.run(main())
    assert synced == [True]


def test_asking_for_io_uring_where_it_is_unusable_fails_clearly(
    storage: DiskStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FsyncRing, "open", classmethod(lambda cls, entries=8: None))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(FsyncUnavailable, match="use --fsync auto or thread"):
            Fsyncer(storage, loop, mode="io_uring", name="test")
        fsyncer = Fsyncer(storage, loop, mode="auto", name="test")
        assert fsyncer.via == "thread"
        await fsyncer.close()

    asyncio.run(main())
