"""REST throughput and latency of a 3-node raftkv cluster, beside etcd in the same run.

Starts three `raftkvd` processes on 127.0.0.1 and drives the leader with wrk:
PUT of 100-byte values to random keys among 10,000, then GET of existing keys, at
1, 16 and 64 connections. When etcd is installed it starts a 3-node etcd cluster and
runs the same load against its v3 JSON gateway (POST /v3/kv/put and /v3/kv/range,
base64 JSON, linearizable reads), and prints raftkv/etcd ratios. Both systems fsync
every write on a majority before answering.

Both clusters run side by side and each row is measured on one right after the
other, so that a shared machine slowing down or speeding up mid-run moves both
figures of a ratio alike. With `--rounds N` every row is measured N times (the
order of the two systems alternating) and the table shows each system's median.

    python bench/rest_bench.py [--quick] [--duration S] [--rounds N] [--connections 1,16,64]

Each row also shows the CPU time (user and system, every thread of the three
server processes) the cluster spent per request: at one connection both systems
keep this machine's two cores mostly busy, so that figure bounds the throughput.

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import HOST, free_ports, processes, start_raftkv_nodes, wait_until

KEYS = 10_000
VALUE_BYTES = 100

_WRK_REPORT = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"seconds\\": %f, \\"errors\\": %d, "
    .. "\\"mean_ms\\": %f, \\"p50_ms\\": %f, \\"p99_ms\\": %f}\\n",
    summary.requests, summary.duration / 1e6, errors,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

_RAFTKV_PUT = """
local value = string.rep("x", %(value_bytes)d)
request = function()
  return wrk.format("PUT", "/bench-" .. math.random(0, %(keys)d - 1), nil, value)
end
"""

_RAFTKV_GET = """
request = function()
  return wrk.format("GET", "/bench-" .. math.random(0, %(keys)d - 1))
end
"""

# etcd's gateway takes base64 keys; wrk's Lua has no base64, so the bench
# precomputes the JSON bodies of all keys once in the script.
_ETCD_PUT = """
local bodies = {%(put_bodies)s}
request = function()
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"]="application/json"},
    bodies[math.random(1, #bodies)])
end
"""

_ETCD_GET = """
local bodies = {%(get_bodies)s}
request = function()
  return wrk.format("POST", "/v3/kv/range", {["Content-Type"]="application/json"},
    bodies[math.random(1, #bodies)])
end
"""


def http_request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(method, path, body=body)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def start_raftkv(workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    rest_ports, _ = start_raftkv_nodes(workdir, started, rpc=False)

    def leader() -> int:
        status, body = http_request(rest_ports[0], "GET", "/v1/status")
        leader_id = int(json.loads(body)["leader"]) if status == 200 else 0
        return leader_id

    wait_until(leader, 30, "a raftkv leader")
    port = rest_ports[leader() - 1]
    wait_until(lambda: http_request(port, "GET", "/health")[0] == 200, 30, "raftkv health")
    return port


def start_etcd(workdir: Path, started: list[subprocess.Popen[bytes]]) -> int:
    ports = free_ports(6)
    peer_ports, client_ports = ports[:3], ports[3:]
    initial = ",".join(f"etcd{i}=http://{HOST}:{peer_ports[i - 1]}" for i in (1, 2, 3))
    for i in (1, 2, 3):
        log = (workdir / f"etcd-{i}.log").open("wb")
        started.append(
            subprocess.Popen(
                [
                    "etcd",
                    "--name",
                    f"etcd{i}",
                    "--data-dir",
                    str(workdir / f"etcd-{i}"),
                    "--listen-peer-urls",
                    f"http://{HOST}:{peer_ports[i - 1]}",
                    "--initial-advertise-peer-urls",
                    f"http://{HOST}:{peer_ports[i - 1]}",
                    "--listen-client-urls",
                    f"http://{HOST}:{client_ports[i - 1]}",
                    "--advertise-client-urls",
                    f"http://{HOST}:{client_ports[i - 1]}",
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def leader_port() -> int:
        for port in client_ports:
            status, body = http_request(port, "POST", "/v3/maintenance/status", b"{}")
            if status == 200:
                reply = json.loads(body)
                if reply.get("leader") and reply["leader"] == reply["header"]["member_id"]:
                    return port
        return 0

    wait_until(leader_port, 30, "an etcd leader")
    return leader_port()


def etcd_bodies() -> tuple[str, str]:
    value = base64.b64encode(b"x" * VALUE_BYTES).decode()
    puts, gets = [], []
    for i in range(KEYS):
        key = base64.b64encode(f"bench-{i}".encode()).decode()
        puts.append(json.dumps(json.dumps({"key": key, "value": value})))
        gets.append(json.dumps(json.dumps({"key": key})))
    return ",".join(puts), ",".join(gets)


def run_wrk(port: int, script: str, connections: int, duration: float, workdir: Path) -> dict:
    path = workdir / f"wrk-{os.getpid()}-{time.monotonic_ns()}.lua"
    path.write_text(script + _WRK_REPORT)
    threads = min(connections, 2)
    result = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(path),
            f"http://{HOST}:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            figures = json.loads(line[len("WRKJSON ") :])
            figures["rps"] = figures["requests"] / figures["seconds"]
            return figures
    raise RuntimeError(f"wrk printed no summary:\n{result.stdout}\n{result.stderr}")


def prefill(port: int, system: str) -> None:
    """Write every key once, so the GET rows read existing keys."""
    value = b"x" * VALUE_BYTES
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for i in range(KEYS):
            if system == "raftkv":
                connection.request("PUT", f"/bench-{i}", body=value)
            else:
                body = json.dumps(
                    {
                        "key": base64.b64encode(f"bench-{i}".encode()).decode(),
                        "value": base64.b64encode(value).decode(),
                    }
                )
                connection.request("POST", "/v3/kv/put", body=body)
            reply = connection.getresponse()
            reply.read()
            if reply.status >= 300:
                raise RuntimeError(f"{system} prefill failed with {reply.status}")
    finally:
        connection.close()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time so far of every thread of these processes."""
    ticks = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                # Fields after the command name, which may hold spaces: utime and
                # stime are the 14th and 15th fields of the line.
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLOCK_TICKS


def _row_key(row: dict) -> tuple[str, str, int]:
    return (row["system"], row["op"], row["connections"])


def median_row(samples: list[dict], key: tuple[str, str, int]) -> dict:
    """The sample of row `key` with the median throughput (the lower middle one for
    an even count)."""
    matching = sorted((s for s in samples if _row_key(s) == key), key=lambda s: s["rps"])
    return matching[(len(matching) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per row")
    parser.add_argument("--duration", type=float, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="measure each row N times")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--no-etcd", action="store_true")
    args = parser.parse_args()
    duration = args.duration or (2.0 if args.quick else 10.0)
    connection_counts = [int(c) for c in args.connections.split(",")]
    with_etcd = shutil.which("etcd") is not None and not args.no_etcd
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian package wrk)")

    params = {"keys": KEYS, "value_bytes": VALUE_BYTES}
    scripts = {"raftkv": {"PUT": _RAFTKV_PUT % params, "GET": _RAFTKV_GET % params}}
    if with_etcd:
        put_bodies, get_bodies = etcd_bodies()
        scripts["etcd"] = {
            "PUT": _ETCD_PUT % {"put_bodies": put_bodies},
            "GET": _ETCD_GET % {"get_bodies": get_bodies},
        }

    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="raftkv-bench-") as tmp, processes() as started:
        workdir = Path(tmp)
        ports = {}
        pids = {}
        for system in scripts:
            first = len(started)
            ports[system] = (start_raftkv if system == "raftkv" else start_etcd)(workdir, started)
            pids[system] = [process.pid for process in started[first:]]
            prefill(ports[system], system)
        systems = list(scripts)
        for round_number in range(max(1, args.rounds)):
            for operation in ("PUT", "GET"):
                for connections in connection_counts:
                    order = systems if round_number % 2 == 0 else systems[::-1]
                    for system in order:
                        cpu_before = cpu_seconds(pids[system])
                        figures = run_wrk(
                            ports[system],
                            scripts[system][operation],
                            connections,
                            duration,
                            workdir,
                        )
                        cpu = cpu_seconds(pids[system]) - cpu_before
                        figures["cpu_us_per_req"] = cpu / max(1, figures["requests"]) * 1e6
                        samples.append(
                            {"system": system, "op": operation, "connections": connections}
                            | figures
                        )

    rows = [median_row(samples, key) for key in dict.fromkeys(_row_key(s) for s in samples)]
    by_key = {_row_key(r): r for r in rows}
    print(
        f"{'op':<4} {'conns':>5} | {'raftkv req/s':>12} {'mean ms':>8} {'p99 ms':>8} "
        f"{'cpu us':>7} {'errors':>6}"
        + (
            f" | {'etcd req/s':>10} {'mean ms':>8} {'p99 ms':>8} {'cpu us':>7} | {'ratio':>6}"
            if with_etcd
            else ""
        )
    )
    ratios = {}
    for operation in ("PUT", "GET"):
        for connections in connection_counts:
            ours = by_key[("raftkv", operation, connections)]
            line = (
                f"{operation:<4} {connections:>5} | {ours['rps']:>12,.0f} {ours['mean_ms']:>8.2f} "
                f"{ours['p99_ms']:>8.2f} {ours['cpu_us_per_req']:>7,.0f} {ours['errors']:>6}"
            )
            if with_etcd:
                theirs = by_key[("etcd", operation, connections)]
                ratio = ours["rps"] / theirs["rps"] if theirs["rps"] else float("inf")
                ratios[f"{operation.lower()}_c{connections}"] = ratio
                line += (
                    f" | {theirs['rps']:>10,.0f} {theirs['mean_ms']:>8.2f} "
                    f"{theirs['p99_ms']:>8.2f} {theirs['cpu_us_per_req']:>7,.0f} | {ratio:>5.2f}x"
                )
            print(line)
    print(
        json.dumps(
            {
                "bench": "rest",
                "duration_s": duration,
                "etcd": with_etcd,
                "rounds": max(1, args.rounds),
                "rows": rows,
                "samples": samples,
                "ratios": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
