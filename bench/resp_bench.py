"""RESP throughput of a 3-node raftkv cluster with redis-benchmark, beside a single
non-replicated redis-server (the ceiling) in the same run.

SET and GET with 50 clients, 100-byte values, random keys among 10,000, pipeline 1
and 16. raftkv's SETs are committed (fsynced on a majority) before their reply and
its GETs are linearizable; redis-server here persists nothing.

    python bench/resp_bench.py [--quick] [--requests N]

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import HOST, free_ports, processes, start_raftkv_nodes, wait_until


def redis_cli(port: int, *args: str) -> str:
    result = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    return result.stdout.strip()


def start_raftkv(workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    _, rpc_ports = start_raftkv_nodes(workdir, started, rpc=True)

    def leader_port() -> int:
        for port in rpc_ports:
            info = redis_cli(port, "INFO", "replication")
            if "raft_role:leader" in info:
                return port
        return 0

    wait_until(leader_port, 30, "a raftkv leader")
    return leader_port()


def start_redis(workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    (port,) = free_ports(1)
    log = (workdir / "redis.log").open("wb")
    started.append(
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    wait_until(lambda: redis_cli(port, "PING") == "PONG", 20, "redis-server")
    return port


def run_benchmark(port: int, test: str, pipeline: int, requests: int) -> dict[str, float]:
    result = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            HOST,
            "-p",
            str(port),
            "-c",
            "50",
            "-n",
            str(requests),
            "-d",
            "100",
            "-r",
            "10000",
            "-P",
            str(pipeline),
            "-t",
            test,
            "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = list(csv.reader(io.StringIO(result.stdout)))
    header, values = rows[0], rows[1]
    figures = dict(zip(header, values, strict=True))
    return {
        "rps": float(figures["rps"]),
        "avg_ms": float(figures["avg_latency_ms"]),
        "p99_ms": float(figures["p99_latency_ms"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--requests", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark is not installed (Debian package redis-tools)")
    with_redis = shutil.which("redis-server") is not None
    requests = args.requests or (20_000 if args.quick else 200_000)

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="raftkv-resp-bench-") as tmp:
        workdir = Path(tmp)
        systems = ["raftkv", "redis"] if with_redis else ["raftkv"]
        for system in systems:
            with processes() as started:
                starter = start_raftkv if system == "raftkv" else start_redis
                port = starter(workdir, started)
                for test in ("set", "get"):
                    for pipeline in (1, 16):
                        # Fewer requests at pipeline 1 keep each row's time similar.
                        count = requests if pipeline > 1 else max(requests // 4, 1000)
                        figures = run_benchmark(port, test, pipeline, count)
                        rows.append(
                            {"system": system, "op": test.upper(), "pipeline": pipeline} | figures
                        )

    by_key = {(r["system"], r["op"], r["pipeline"]): r for r in rows}
    header = f"{'op':<4} {'pipe':>4} | {'raftkv req/s':>12} {'avg ms':>7} {'p99 ms':>7}"
    if with_redis:
        header += f" | {'redis req/s':>11} {'avg ms':>7} | {'raftkv/redis':>12}"
    print(header)
    for op in ("SET", "GET"):
        for pipeline in (1, 16):
            ours = by_key[("raftkv", op, pipeline)]
            line = (
                f"{op:<4} {pipeline:>4} | {ours['rps']:>12,.0f} {ours['avg_ms']:>7.2f} "
                f"{ours['p99_ms']:>7.2f}"
            )
            if with_redis:
                theirs = by_key[("redis", op, pipeline)]
                ratio = float(ours["rps"]) / float(theirs["rps"])  # type: ignore[arg-type]
                line += f" | {theirs['rps']:>11,.0f} {theirs['avg_ms']:>7.2f} | {ratio:>11.2f}x"
            print(line)
    print(json.dumps({"bench": "resp", "clients": 50, "value_bytes": 100, "rows": rows}))


if __name__ == "__main__":
    main()
