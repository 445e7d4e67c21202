"""raftkvd's options: the command-line flags and the embedding API share one type."""

from __future__ import annotations

import argparse
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: The RESP (Redis protocol) API listens on the REST port plus this offset unless
#: --rpc-port says otherwise (12380 -> 12381... would collide with nothing in the
#: raftexample layout, where ports step by 10000).
RPC_PORT_OFFSET = 1

#: Values of --fsync (see `NodeOptions.fsync`).
FSYNC_MODES = ("auto", "io_uring", "thread")


class OptionsError(ValueError):
    """A flag value is invalid; the message names the flag and what to do."""


@dataclass(frozen=True, slots=True)
class PeerAddress:
    host: str
    port: int
    url: str


def parse_peer_url(url: str) -> PeerAddress:
    """Parse an http://host:port peer URL, raising OptionsError if it is not one."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise OptionsError(f"invalid peer URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "tcp") or not parts.hostname or port is None:
        raise OptionsError(f"invalid peer URL {url!r}: expected http://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise OptionsError(f"invalid peer URL {url!r}: expected http://host:port")
    return PeerAddress(parts.hostname, port, f"{parts.scheme}://{parts.hostname}:{port}")


@dataclass(frozen=True, slots=True)
class NodeOptions:
    #: This node's id: its 1-based position in `cluster`.
    id: int
    #: Peer URLs of the cluster, in id order (node i listens for peers on the i-th).
    cluster: tuple[str, ...]
    #: Port of the REST API (0: any free port); see `serve_rest`.
    port: int
    #: Join an existing cluster rather than start a new one.
    join: bool = False
    #: Where the WAL and snapshots live; default `raftkv-<id>` in the working directory.
    data_dir: Path | None = None
    #: Port of the RESP API; None means `port + RPC_PORT_OFFSET`, 0 disables it.
    rpc_port: int | None = None
    #: Address the client APIs bind to.
    listen_host: str = "127.0.0.1"
    #: Serve the REST API. The embedding API turns it off when a program only wants
    #: the RESP API, so that a node needs no port beyond its RESP and peer ports.
    serve_rest: bool = True
    #: Take a state machine snapshot every this many applied entries.
    snapshot_count_entries: int = 10_000
    #: Entries kept in the log after a snapshot, so that a slightly slow follower
    #: catches up from the log rather than by a full snapshot.
    snapshot_catchup_entries: int = 5_000
    #: Largest accepted value; larger requests are refused (413 / RESP error).
    max_value_bytes: int = 1 << 20
    #: How long a request waits for a leader and for its commit before failing.
    request_timeout_s: float = 5.0
    #: Length of one Raft tick. Elections take 10-20 ticks, heartbeats 1 tick.
    tick_ms: int = 100
    election_ticks: int = 10
    #: Binds the data directory and peer connections to one cluster.
    cluster_token: str = "raftkv"
    #: How the WAL's fsyncs run off the event loop: "io_uring" (no thread handoff;
    #: x86-64 Linux with io_uring allowed), "thread" (a worker thread), or "auto":
    #: io_uring where the kernel allows it, else the thread. Both are equally durable.
    fsync: str = "auto"

    @property
    def cluster_id(self) -> int:
        return zlib.crc32(self.cluster_token.encode()) or 1

    @property
    def peers(self) -> dict[int, PeerAddress]:
        return {index: parse_peer_url(url) for index, url in enumerate(self.cluster, 1)}

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else Path(f"raftkv-{self.id}")

    @property
    def resolved_rpc_port(self) -> int:
        return self.port + RPC_PORT_OFFSET if self.rpc_port is None else self.rpc_port

    def validate(self) -> None:
        if not self.cluster:
            raise OptionsError("--cluster needs at least one peer URL")
        peers = self.peers  # Raises OptionsError for a bad URL.
        if not 1 <= self.id <= len(peers):
            raise OptionsError(f"--id {self.id} is not a position in --cluster (1..{len(peers)})")
        for flag, port in (("--port", self.port), ("--rpc-port", self.rpc_port)):
            if port is not None and not 0 <= port <= 65535:
                raise OptionsError(f"{flag} {port} is not a TCP port")
        if self.snapshot_count_entries <= 0:
            raise OptionsError("--snapshot-count must be positive")
        if self.snapshot_catchup_entries < 0:
            raise OptionsError("--snapshot-catchup-entries must be >= 0")
        if self.max_value_bytes <= 0:
            raise OptionsError("--max-value-bytes must be positive")
        if self.request_timeout_s <= 0:
            raise OptionsError("--request-timeout must be positive")
        if self.tick_ms <= 0 or self.election_ticks < 3:
            raise OptionsError("--tick-ms must be positive and --election-ticks at least 3")
        if self.fsync not in FSYNC_MODES:
            raise OptionsError(f"--fsync {self.fsync!r}: expected one of {', '.join(FSYNC_MODES)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkvd",
        description="A replicated key-value store node (raftexample-compatible flags).",
    )
    parser.add_argument("--id", type=int, default=1, help="node id: position in --cluster")
    parser.add_argument(
        "--cluster",
        default="http://127.0.0.1:9021",
        help="comma separated peer URLs, in id order",
    )
    parser.add_argument("--port", type=int, default=9121, help="REST API port")
    parser.add_argument("--join", action="store_true", help="join an existing cluster")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: ./raftkv-<id>")
    parser.add_argument(
        "--rpc-port",
        type=int,
        default=None,
        help=f"RESP (Redis protocol) port; default --port + {RPC_PORT_OFFSET}; 0 disables",
    )
    parser.add_argument("--listen-host", default="127.0.0.1", help="address the APIs bind to")
    parser.add_argument("--snapshot-count", type=int, default=10_000)
    parser.add_argument(
        "--snapshot-catchup-entries",
        type=int,
        default=5_000,
        help="log entries kept behind a snapshot for slow followers",
    )
    parser.add_argument("--max-value-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--request-timeout", type=float, default=5.0, help="seconds to wait for a leader/commit"
    )
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--election-ticks", type=int, default=10)
    parser.add_argument("--cluster-token", default="raftkv")
    parser.add_argument(
        "--fsync",
        default="auto",
        choices=FSYNC_MODES,
        help="how WAL fsyncs run off the event loop (auto: io_uring if the kernel allows, "
        "else a thread)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def options_from_args(args: argparse.Namespace) -> NodeOptions:
    cluster = tuple(url for url in args.cluster.split(",") if url.strip())
    options = NodeOptions(
        id=args.id,
        cluster=cluster,
        port=args.port,
        join=args.join,
        data_dir=args.data_dir,
        rpc_port=args.rpc_port,
        listen_host=args.listen_host,
        snapshot_count_entries=args.snapshot_count,
        snapshot_catchup_entries=args.snapshot_catchup_entries,
        max_value_bytes=args.max_value_bytes,
        request_timeout_s=args.request_timeout,
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        cluster_token=args.cluster_token,
        fsync=args.fsync,
    )
    options.validate()
    return options
