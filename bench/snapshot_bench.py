"""The longest event-loop stall of a node while it snapshots a large state machine.

Starts one raftkvd, loads N keys (default 1,000,000, 100-byte values) with pipelined
MSETs over RESP, then asks for a snapshot (POST /v1/snapshot) while a client keeps
sending PINGs, and reports the node's own measure of its longest loop stall during
the snapshot (a 10 ms timer's lateness) beside the slowest PING round trip seen.

    python bench/snapshot_bench.py [--quick] [--keys N]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from _common import HOST, free_ports


def post(port: int, path: str) -> dict[str, object]:
    connection = http.client.HTTPConnection(HOST, port, timeout=600)
    try:
        connection.request("POST", path)
        reply = connection.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"POST {path}: {reply.status} {body!r}")
        result: dict[str, object] = json.loads(body)
        return result
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 keys")
    parser.add_argument("--keys", type=int, default=0)
    args = parser.parse_args()
    keys = args.keys or (100_000 if args.quick else 1_000_000)
    peer_port, rest_port, rpc_port = free_ports(3)
    with tempfile.TemporaryDirectory(prefix="raftkv-snap-bench-") as tmp:
        log = (Path(tmp) / "node.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raftkv.server",
                "--id",
                "1",
                "--cluster",
                f"http://{HOST}:{peer_port}",
                "--port",
                str(rest_port),
                "--rpc-port",
                str(rpc_port),
                "--data-dir",
                str(Path(tmp) / "data"),
                "--snapshot-count",
                "100000000",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            client = redis.Redis(host=HOST, port=rpc_port, socket_timeout=600)
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(redis.exceptions.RedisError):
                    if client.set("ready", "1"):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("raftkvd did not start")
                time.sleep(0.2)
            value = b"v" * 100
            load_started = time.perf_counter()
            batch = 1000
            pipe = client.pipeline(transaction=False)
            for start in range(0, keys, batch):
                pipe.mset({b"key:%09d" % i: value for i in range(start, min(keys, start + batch))})
                if (start // batch) % 20 == 19:
                    pipe.execute()
            pipe.execute()
            load_s = time.perf_counter() - load_started
            assert client.dbsize() >= keys

            stop = threading.Event()
            slowest_ping_s = 0.0

            def pinger() -> None:
                nonlocal slowest_ping_s
                with redis.Redis(host=HOST, port=rpc_port, socket_timeout=600) as pinging:
                    while not stop.is_set():
                        started = time.perf_counter()
                        pinging.ping()
                        slowest_ping_s = max(slowest_ping_s, time.perf_counter() - started)
                        time.sleep(0.002)

            thread = threading.Thread(target=pinger)
            thread.start()
            try:
                figures = post(rest_port, "/v1/snapshot")
            finally:
                stop.set()
                thread.join()
            client.close()
        except BaseException:
            print((Path(tmp) / "node.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    print(f"{'keys':>10} {'load s':>7} {'snap MB':>8} {'snap s':>7} {'stall ms':>9} {'ping ms':>8}")
    print(
        f"{keys:>10,} {load_s:>7.1f} {int(figures['bytes']) / 1e6:>8.1f} "  # type: ignore[call-overload]
        f"{figures['seconds']:>7} {figures['loop_stall_max_ms']:>9} {slowest_ping_s * 1000:>8.1f}"
    )
    print(
        json.dumps(
            {
                "bench": "snapshot_stall",
                "keys": keys,
                "load_seconds": round(load_s, 2),
                "slowest_ping_ms": round(slowest_ping_s * 1000, 1),
                **figures,
            }
        )
    )


if __name__ == "__main__":
    main()
