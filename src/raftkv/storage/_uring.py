"""fdatasync through io_uring: the WAL's fsync without a thread handoff.

Why: the node must not fsync on its event loop, and handing the fsync to a worker
thread costs two thread wake-ups and a contended GIL per fsync. On this project's
2-core test machine that handoff took longer than the fsync itself (about 190 µs
of CPU per fsync against 90 µs through io_uring, and 100 µs more latency). With
io_uring the loop writes one submission queue entry and makes one non-blocking
`io_uring_enter` call; the kernel runs the fdatasync in its own worker and posts a
completion, which makes the ring's file descriptor readable, so the event loop
notices it like any socket.

Theory of operation. `FsyncRing.open()` sets up a small ring (a few entries: the
node has at most a couple of fsyncs in flight) and maps its two queues, or returns
None when the kernel does not allow io_uring (too old, disabled by
`kernel.io_uring_disabled`, blocked by seccomp) or this is not an x86-64 Linux: the
queues are shared memory read and written here with plain loads and stores, which
is correct only under x86-64's ordering (stores are seen in program order; loads
are not reordered with other loads). Callers fall back to a worker thread then.

- `submit_datasync(fd, token)` writes one IORING_OP_FSYNC entry with
  IORING_FSYNC_DATASYNC and submits it. `fd` must stay open until the
  completion: the kernel looks it up only when its worker runs the fsync (a
  closed one fails with EBADF; a reused number would sync another file). The
  WAL hands out a duplicate descriptor per sync for this (`WAL.begin_sync`).
- `completions()` returns the finished ones as (token, result): 0, or a negated
  errno, which the caller must treat like a failed `os.fdatasync`.

A ring that fails to submit is broken for good (`broken` is set): its entry may
still sit in the submission queue, so no later `io_uring_enter` may run. Nothing
here blocks.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct
import sys

_SYS_IO_URING_SETUP = 425
_SYS_IO_URING_ENTER = 426

_IORING_OFF_SQ_RING = 0
_IORING_OFF_SQES = 0x10000000
_IORING_FEAT_SINGLE_MMAP = 1 << 0
_IORING_FEAT_NODROP = 1 << 1
_IORING_OP_FSYNC = 3
_IORING_FSYNC_DATASYNC = 1

_PARAMS_BYTES = 120  # struct io_uring_params
_SQE_BYTES = 64  # struct io_uring_sqe
_CQE_BYTES = 16  # struct io_uring_cqe
# opcode, flags, ioprio, fd, off, addr, len, fsync_flags, user_data; the rest zero.
_FSYNC_SQE = struct.Struct("=BBHiQQIIQ24x")
_CQE = struct.Struct("=Qi")


class FsyncRing:
    """A minimal io_uring for fdatasync; see the module docstring."""

    @classmethod
    def open(cls, entries: int = 8) -> FsyncRing | None:
        """A ring of `entries` slots, or None where io_uring is not usable here."""
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
        libc.syscall.restype = ctypes.c_long
        params = ctypes.create_string_buffer(_PARAMS_BYTES)
        fd = libc.syscall(ctypes.c_long(_SYS_IO_URING_SETUP), ctypes.c_long(entries), params)
        if fd < 0:
            return None  # ENOSYS, EPERM (disabled or seccomp), ENOMEM (memlock)...
        try:
            return cls(libc, int(fd), params.raw)
        except (OSError, ValueError):
            os.close(fd)
            return None

    def __init__(self, libc: ctypes.CDLL, fd: int, params: bytes) -> None:
        self._libc = libc
        self._fd = fd
        sq_entries, cq_entries, _flags, _cpu, _idle, features = struct.unpack_from("=6I", params, 0)
        if not features & _IORING_FEAT_SINGLE_MMAP or not features & _IORING_FEAT_NODROP:
            raise ValueError("io_uring too old (kernel before 5.5)")
        sq_head, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("=7I", params, 40)
        cq_head, cq_tail, cq_mask, _, _, cq_cqes = struct.unpack_from("=6I", params, 80)
        size = max(sq_array + sq_entries * 4, cq_cqes + cq_entries * _CQE_BYTES)
        protection = mmap.PROT_READ | mmap.PROT_WRITE
        self._rings = mmap.mmap(fd, size, mmap.MAP_SHARED, protection, offset=_IORING_OFF_SQ_RING)
        self._sqes = mmap.mmap(
            fd, sq_entries * _SQE_BYTES, mmap.MAP_SHARED, protection, offset=_IORING_OFF_SQES
        )
        rings = self._rings
        self._sq_head = ctypes.c_uint32.from_buffer(rings, sq_head)
        self._sq_tail = ctypes.c_uint32.from_buffer(rings, sq_tail)
        self._sq_array = (ctypes.c_uint32 * sq_entries).from_buffer(rings, sq_array)
        self._cq_head = ctypes.c_uint32.from_buffer(rings, cq_head)
        self._cq_tail = ctypes.c_uint32.from_buffer(rings, cq_tail)
        self._sq_mask = ctypes.c_uint32.from_buffer(rings, sq_mask).value
        self._cq_mask = ctypes.c_uint32.from_buffer(rings, cq_mask).value
        self._sq_entries = sq_entries
        self._cq_cqes = cq_cqes
        #: Submitted and not yet returned by `completions`.
        self.in_flight = 0
        self.broken = False

    def fileno(self) -> int:
        """Readable while completions are waiting (for the event loop to watch)."""
        return self._fd

    def has_room(self) -> bool:
        # invariant: in_flight <= sq_entries (the completion queue is twice as big).
        return not self.broken and self.in_flight < self._sq_entries

    def submit_datasync(self, fd: int, token: int) -> None:
        """Start an fdatasync of `fd`; its completion carries `token`. Raises
        OSError (and the ring is broken) when the kernel refuses the submission."""
        assert self.has_room(), "submit on a full or broken ring"
        tail = self._sq_tail.value
        slot = tail & self._sq_mask
        _FSYNC_SQE.pack_into(
            self._sqes, slot * _SQE_BYTES,
            _IORING_OP_FSYNC, 0, 0, fd, 0, 0, 0, _IORING_FSYNC_DATASYNC, token,
        )  # fmt: skip
        self._sq_array[slot] = slot
        self._sq_tail.value = (tail + 1) & 0xFFFFFFFF  # After the entry: x86-64 TSO.
        while True:
            submitted = self._libc.syscall(
                ctypes.c_long(_SYS_IO_URING_ENTER),
                ctypes.c_long(self._fd), ctypes.c_long(1), ctypes.c_long(0), ctypes.c_long(0),
                None, ctypes.c_long(0),
            )  # fmt: skip
            if submitted == 1:
                self.in_flight += 1
                return
            code = ctypes.get_errno() if submitted < 0 else errno.EIO
            if code != errno.EINTR:
                self.broken = True
                raise OSError(code, f"io_uring submit failed: {os.strerror(code)}")

    def completions(self) -> list[tuple[int, int]]:
        """The finished fsyncs as (token, result), result 0 or a negated errno."""
        head = self._cq_head.value
        tail = self._cq_tail.value
        done = []
        while head != tail:
            offset = self._cq_cqes + (head & self._cq_mask) * _CQE_BYTES
            done.append(_CQE.unpack_from(self._rings, offset))
            head = (head + 1) & 0xFFFFFFFF
        self._cq_head.value = head  # After reading the entries: they may be reused.
        self.in_flight -= len(done)
        return done

    def close(self) -> None:
        """Unmap and close. In-flight fsyncs still finish in the kernel; their
        completions are lost, so callers wait for `in_flight` to reach 0 first."""
        if self._fd < 0:
            return
        # The ctypes views export the mapping's buffer: drop them before unmapping.
        del self._sq_head, self._sq_tail, self._sq_array, self._cq_head, self._cq_tail
        self._rings.close()
        self._sqes.close()
        os.close(self._fd)
        self._fd = -1
