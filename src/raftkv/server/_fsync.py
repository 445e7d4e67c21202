"""The node's WAL fsyncs, off its event loop: io_uring where the kernel allows it,
else one worker thread.

Theory of operation. `Fsyncer.sync()` returns a future that resolves, on the
loop, to the seconds the fsync took once everything appended to the storage so
far is durable, or fails with `DurabilityError` (fatal for the node).

- io_uring (`FsyncRing`): `sync` takes a ticket (`DiskStorage.begin_sync`),
  submits its fdatasync and returns. The ring's descriptor is watched by the loop;
  when it turns readable, `_on_completions` ends each finished ticket
  (`DiskStorage.end_sync`) and resolves its future. No thread is involved.
- The thread: `DiskStorage.sync` in a single worker thread, as `run_in_executor`.
  Used when io_uring is unavailable or disabled (`--fsync thread`), for a sync
  that must start a new WAL segment (`begin_sync` returns None), and for good
  after the kernel refuses a submission.

`close()` waits for every fsync in flight (a cancelled caller does not cancel the
kernel's or the thread's work), so the storage may be closed after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import time
from collections.abc import Callable

from ..storage import DiskStorage, FsyncRing, SyncTicket
from ._options import FSYNC_MODES

log = logging.getLogger("raftkv.node")


class FsyncUnavailable(RuntimeError):
    """`--fsync io_uring` was asked for where the kernel does not allow it."""


class Fsyncer:
    def __init__(
        self, storage: DiskStorage, loop: asyncio.AbstractEventLoop, *, mode: str, name: str
    ) -> None:
        if mode not in FSYNC_MODES:
            raise ValueError(f"unknown fsync mode {mode!r}")
        self._storage = storage
        self._loop = loop
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name
        )
        self._ring = FsyncRing.open() if mode != "thread" else None
        if self._ring is None and mode == "io_uring":
            self._executor.shutdown()
            raise FsyncUnavailable(
                "--fsync io_uring: this kernel does not allow io_uring here (too old, "
                "disabled by kernel.io_uring_disabled, or blocked by seccomp), or this is "
                "not x86-64 Linux; use --fsync auto or thread"
            )
        #: token -> (the caller's future, its ticket, when it was submitted)
        self._pending: dict[
            int, tuple[asyncio.Future[float], SyncTicket, float, Callable[[], None] | None]
        ] = {}
        self._tokens = itertools.count(1)
        self._drained: asyncio.Future[None] | None = None
        if self._ring is not None:
            loop.add_reader(self._ring.fileno(), self._on_completions)

    @property
    def via(self) -> str:
        """How fsyncs run now: "io_uring" or "thread"."""
        return "io_uring" if self._ring is not None and not self._ring.broken else "thread"

    def sync(self, then: Callable[[], None] | None = None) -> asyncio.Future[float]:
        """Make everything appended so far durable; see the module docstring.
        `then`, if given, runs on the loop as soon as the write is durable, before
        the future's waiters resume, and not at all if the fsync fails."""
        ring = self._ring
        if ring is not None and ring.has_room():
            ticket = self._storage.begin_sync()
            if ticket is not None:
                token = next(self._tokens)
                try:
                    ring.submit_datasync(ticket.fd, token)
                except OSError as exc:
                    self._storage.abandon_sync(ticket)
                    log.warning("fsync through io_uring failed (%s); using a thread from now", exc)
                    self._retire_ring_when_idle()
                else:
                    future = self._loop.create_future()
                    self._pending[token] = (future, ticket, time.perf_counter(), then)
                    return future
        future = self._loop.run_in_executor(self._executor, self._sync_in_thread)
        if then is not None:
            future.add_done_callback(
                lambda done: then() if not done.cancelled() and done.exception() is None else None
            )
        return future

    def _sync_in_thread(self) -> float:
        started = time.perf_counter()
        self._storage.sync()
        return time.perf_counter() - started

    def _on_completions(self) -> None:
        ring = self._ring
        assert ring is not None
        now = time.perf_counter()
        for token, result in ring.completions():
            future, ticket, submitted, then = self._pending.pop(token)
            error = OSError(-result, os.strerror(-result)) if result < 0 else None
            try:
                self._storage.end_sync(ticket, error)
            except Exception as exc:  # DurabilityError: the node's raft loop stops on it.
                if not future.done():
                    future.set_exception(exc)
                else:
                    log.error("an fsync nobody waits for failed: %s", exc)
            else:
                if then is not None:
                    then()
                if not future.done():
                    future.set_result(now - submitted)
        if not self._pending:
            if ring.broken:
                self._retire_ring_when_idle()
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def _retire_ring_when_idle(self) -> None:
        ring = self._ring
        if ring is not None and not self._pending:
            self._loop.remove_reader(ring.fileno())
            ring.close()
            self._ring = None

    async def close(self) -> None:
        """Wait for the fsyncs in flight, then release the ring and the thread."""
        while self._pending:
            self._drained = self._loop.create_future()
            await self._drained
        self._retire_ring_when_idle()
        self._executor.shutdown(wait=True)
