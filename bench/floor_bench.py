"""The floor under raftkv's replicated PUT on this machine, beside raftkv.

"Floor" is the smallest Python program that makes the same round trip as a raftkv
write: an HTTP PUT reaches a leader process, which frames the value to two follower
processes and writes it to its own file; every process fdatasyncs its write through
io_uring (as raftkvd does); the leader answers 204 once its own fsync and one
follower's are done. No consensus, no log, no state machine: what is left is the
processes, the sockets and the disk. Both are driven by wrk with the PUT load of
`rest_bench.py`, side by side, each row measured on one right after the other.

The gap between the two columns is what raftkv's own Python costs per write; the
floor column is what any implementation of this round in Python on this machine
pays anyway.

    python bench/floor_bench.py [--quick] [--duration S] [--rounds N] [--connections 1,16]

Prints a table, then one JSON object as the last line. Linux on x86-64 only (it
needs the io_uring of `raftkv.storage`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

from _common import HOST, free_ports, processes, wait_until
from rest_bench import _RAFTKV_PUT, KEYS, VALUE_BYTES, run_wrk, start_raftkv

_FRAME = struct.Struct(">II")  # sequence number, value length
_ACK = struct.Struct(">I")  # sequence number
_NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class _Ring:
    """fdatasync through io_uring, completions delivered to a callback on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, done: Callable[[int], None]) -> None:
        from raftkv.storage import FsyncRing

        ring = FsyncRing.open(entries=256)
        if ring is None:
            raise SystemExit("floor_bench: io_uring is not available here")
        self._ring = ring
        self._done = done
        loop.add_reader(ring.fileno(), self._on_completions)

    def sync(self, fd: int, token: int) -> None:
        assert self._ring.has_room(), "more fsyncs in flight than the ring holds"
        self._ring.submit_datasync(fd, token)

    def _on_completions(self) -> None:
        for token, result in self._ring.completions():
            if result < 0:
                raise OSError(-result, os.strerror(-result))
            self._done(token)


class _Follower(asyncio.Protocol):
    """Writes and syncs every framed value, then acknowledges its sequence number."""

    def __init__(self, fd: int, ring: _Ring) -> None:
        self._fd = fd
        self._ring = ring
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while len(buffer) >= _FRAME.size:
            sequence, length = _FRAME.unpack_from(buffer)
            end = _FRAME.size + length
            if len(buffer) < end:
                break
            os.write(self._fd, buffer[_FRAME.size : end])
            self._ring.sync(self._fd, sequence)
            buffer = buffer[end:]
        self._buffer = buffer

    def synced(self, sequence: int) -> None:
        assert self._transport is not None
        self._transport.write(_ACK.pack(sequence))


class _Leader:
    """Frames each PUT's body to the followers, writes and syncs it, and answers once
    its own fsync and one follower's acknowledgement are in."""

    def __init__(self, fd: int, followers: list[asyncio.Transport]) -> None:
        self._fd = fd
        self._followers = followers
        self._ring = _Ring(asyncio.get_running_loop(), self._synced)
        self._sequence = 0
        #: sequence -> [own fsync done, acknowledgements, the client's transport]
        self._pending: dict[int, list] = {}

    def put(self, body: bytes, client: asyncio.Transport) -> None:
        self._sequence += 1
        sequence = self._sequence
        frame = _FRAME.pack(sequence, len(body)) + body
        for follower in self._followers:
            follower.write(frame)
        os.write(self._fd, body)
        self._ring.sync(self._fd, sequence)
        self._pending[sequence] = [False, 0, client]

    def _synced(self, sequence: int) -> None:
        self._pending[sequence][0] = True
        self._maybe_answer(sequence)

    def acknowledged(self, sequence: int) -> None:
        state = self._pending.get(sequence)
        if state is not None:
            state[1] += 1
            self._maybe_answer(sequence)

    def _maybe_answer(self, sequence: int) -> None:
        synced, acknowledgements, client = self._pending[sequence]
        if synced and acknowledgements >= 1:
            del self._pending[sequence]
            if not client.is_closing():  # wrk closes its connections at the end of a row
                client.write(_NO_CONTENT)


class _Acknowledgements(asyncio.Protocol):
    def __init__(self, leader: Callable[[], _Leader]) -> None:
        self._leader = leader
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        usable = len(buffer) - len(buffer) % _ACK.size
        for (sequence,) in _ACK.iter_unpack(buffer[:usable]):
            self._leader().acknowledged(sequence)
        self._buffer = buffer[usable:]


class _Http(asyncio.Protocol):
    """Just enough HTTP/1.1 for wrk's keep-alive PUTs with a Content-Length."""

    def __init__(self, leader: _Leader) -> None:
        self._leader = leader
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        while (head_end := buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in buffer[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body_start = head_end + 4
            if len(buffer) < body_start + length:
                break
            self._leader.put(buffer[body_start : body_start + length], self._transport)
            buffer = buffer[body_start + length :]
        self._buffer = buffer


def _open_log(directory: str) -> int:
    return os.open(Path(directory) / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def _serve_follower(port: int, directory: str) -> None:
    loop = asyncio.get_running_loop()
    fd = _open_log(directory)
    connections: list[_Follower] = []  # The leader's is the last one.
    ring = _Ring(loop, lambda sequence: connections[-1].synced(sequence))

    def accept() -> _Follower:
        connections.append(_Follower(fd, ring))
        return connections[-1]

    await loop.create_server(accept, HOST, port)
    await asyncio.Event().wait()


async def _serve_leader(port: int, follower_ports: list[int], directory: str) -> None:
    loop = asyncio.get_running_loop()
    leader: _Leader | None = None

    def current() -> _Leader:
        assert leader is not None
        return leader

    followers = []
    for follower_port in follower_ports:
        transport, _ = await loop.create_connection(
            lambda: _Acknowledgements(current), HOST, follower_port
        )
        followers.append(transport)
    leader = _Leader(_open_log(directory), followers)
    await loop.create_server(lambda: _Http(current()), HOST, port)
    await asyncio.Event().wait()


def _run_role(argv: list[str]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    role, port, directory, *follower_ports = argv
    if role == "follower":
        asyncio.run(_serve_follower(int(port), directory))
    else:
        asyncio.run(_serve_leader(int(port), [int(p) for p in follower_ports], directory))


def start_floor(workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    leader_port, *follower_ports = free_ports(3)
    for name, port in zip(("f1", "f2"), follower_ports, strict=True):
        directory = workdir / name
        directory.mkdir()
        command = [sys.executable, __file__, "--role", "follower", str(port), str(directory)]
        started.append(subprocess.Popen(command))
    for port in follower_ports:
        wait_until(lambda port=port: _listening(port), 10, f"floor follower on {port}")
    directory = workdir / "leader"
    directory.mkdir()
    ports = [str(p) for p in follower_ports]
    command = [sys.executable, __file__, "--role", "leader", str(leader_port), str(directory)]
    started.append(subprocess.Popen(command + ports))
    wait_until(lambda: _listening(leader_port), 10, "floor leader")
    return leader_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        _run_role(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per row, one round")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,16")
    args = parser.parse_args()
    duration, rounds = (2.0, 1) if args.quick else (args.duration, args.rounds)
    connections = [int(c) for c in args.connections.split(",")]
    script = _RAFTKV_PUT % {"value_bytes": VALUE_BYTES, "keys": KEYS}
    samples: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="raftkv-floor-") as tmp, processes() as started:
        workdir = Path(tmp)
        (workdir / "floor").mkdir()
        (workdir / "raftkv").mkdir()
        ports = {
            "floor": start_floor(workdir / "floor", started),
            "raftkv": start_raftkv(workdir / "raftkv", started),
        }
        for round_number in range(rounds):
            for conns in connections:
                order = ["floor", "raftkv"] if round_number % 2 == 0 else ["raftkv", "floor"]
                for system in order:
                    figures = run_wrk(ports[system], script, conns, duration, workdir)
                    samples.setdefault((system, conns), []).append(figures)
    rows = []
    for conns in connections:
        row: dict = {"connections": conns}
        for system in ("floor", "raftkv"):
            runs = samples[(system, conns)]
            row[system] = {
                "rps": statistics.median(r["rps"] for r in runs),
                "mean_ms": statistics.median(r["mean_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
            }
        row["raftkv_over_floor"] = row["raftkv"]["rps"] / row["floor"]["rps"]
        rows.append(row)
    print(f"PUT, {VALUE_BYTES}-byte values, medians of {rounds} round(s) of {duration:g} s")
    print("conns |  floor req/s  mean ms | raftkv req/s  mean ms | raftkv/floor")
    for row in rows:
        floor, raftkv = row["floor"], row["raftkv"]
        print(
            f"{row['connections']:5d} | {floor['rps']:12,.0f} {floor['mean_ms']:8.2f} |"
            f" {raftkv['rps']:12,.0f} {raftkv['mean_ms']:8.2f} | {row['raftkv_over_floor']:11.2f}x"
        )
    print(json.dumps({"bench": "floor", "duration_s": duration, "rounds": rounds, "rows": rows}))


if __name__ == "__main__":
    main()
