"""`raftkv`: the command-line client of a raftkv cluster.

    raftkv put greeting hello            # OK
    raftkv get greeting                  # hello
    raftkv --json get greeting           # {"key": "greeting", "value": "hello"}
    raftkv scan greet                    # greeting<TAB>hello, one line per key
    raftkv del greeting                  # 1 (keys deleted)
    raftkv members | status              # tables
    raftkv member add 4 http://127.0.0.1:42379 [--learner]
    raftkv member remove 4
    raftkv transfer 2

It talks to the Redis-protocol (RESP) ports given by `--endpoints` (default: the
Procfile's cluster, or $RAFTKV_ENDPOINTS) and fails over between them. Output is
for people by default and JSON with `--json`. Any failure (a missing key, no leader
in time, a refused request) prints one line on stderr and exits with status 1;
a usage error exits with status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from .. import errors
from ._core import DEFAULT_CONNECT_TIMEOUT_S, Member, Status
from ._sync import Client

DEFAULT_ENDPOINTS = "127.0.0.1:12381,127.0.0.1:22381,127.0.0.1:32381"
DEFAULT_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 1.0


def text(raw: bytes) -> str:
    """Bytes shown as text: UTF-8, with other bytes escaped (`\\xff`)."""
    return raw.decode("utf-8", "backslashreplace")


class Output:
    """Where a command's result goes: a table or lines for people, or JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        if self.as_json:
            print(json.dumps(data))
        else:
            human()


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(header))]
    for row in cells:
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        print("  ".join(padded).rstrip())


# --- commands ------------------------------------------------------------------------


def cmd_put(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    previous = client.put(args.key, args.value)
    data = {"key": args.key, "previous": None if previous is None else text(previous)}
    out.emit(data, lambda: print("OK"))
    return 0


def cmd_get(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    value = client.get(args.key)

    def human() -> None:
        sys.stdout.flush()
        sys.stdout.buffer.write(value + b"\n")
        sys.stdout.buffer.flush()

    out.emit({"key": args.key, "value": text(value)}, human)
    return 0


def cmd_del(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    deleted = client.delete(args.key)
    out.emit({"key": args.key, "deleted": deleted}, lambda: print(int(deleted)))
    return 0


def cmd_scan(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    if args.keys_only:
        keys = [text(key) for key in client.scan(args.prefix)]
        out.emit(keys, lambda: print("\n".join(keys)) if keys else None)
        return 0
    pairs = [(text(key), text(value)) for key, value in client.items(args.prefix)]
    data = [{"key": key, "value": value} for key, value in pairs]
    out.emit(data, lambda: print("\n".join(f"{k}\t{v}" for k, v in pairs)) if pairs else None)
    return 0


def _member_rows(members: Sequence[Member]) -> list[list[object]]:
    return [[m.id, "learner" if m.learner else "voter", m.url] for m in members]


def cmd_members(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    members = client.members()
    data = [asdict(member) for member in members]
    out.emit(data, lambda: print_table(["ID", "ROLE", "URL"], _member_rows(members)))
    return 0


def cmd_member_add(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    client.add_member(args.id, args.url, learner=args.learner)
    kind = "learner" if args.learner else "voter"
    data = {"ok": True, "id": args.id, "url": args.url, "learner": args.learner}
    out.emit(data, lambda: print(f"OK: added node {args.id} ({args.url}) as a {kind}"))
    return 0


def cmd_member_remove(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    client.remove_member(args.id)
    out.emit({"ok": True, "id": args.id}, lambda: print(f"OK: removed node {args.id}"))
    return 0


def cmd_transfer(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    client.transfer_leader(args.id)
    out.emit({"ok": True, "leader": args.id}, lambda: print(f"OK: node {args.id} leads"))
    return 0


_STATUS_HEADER = ["ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "MEMBERS"]


def _status_row(endpoint: str, status: Status | str) -> list[object]:
    if isinstance(status, str):
        return [endpoint, "-", "unavailable"]
    s = status
    return [endpoint, s.id, s.role, s.term, s.leader, s.commit, s.applied, len(s.members)]


def cmd_status(client: Client[bytes], args: argparse.Namespace, out: Output) -> int:
    """The status of every endpoint, each asked on its own (no failover). A node
    answers its status at once, without the cluster, so a short wait suffices."""
    results: list[tuple[str, Status | str]] = []
    timeout = min(args.timeout, STATUS_TIMEOUT_S)
    for endpoint in client.endpoints:
        try:
            with Client([endpoint], timeout=timeout, session=False) as single:
                results.append((endpoint, single.status()))
        except errors.RaftkvError as exc:
            results.append((endpoint, str(exc)))
    data = [
        {"endpoint": endpoint, "error": status}
        if isinstance(status, str)
        else {"endpoint": endpoint, **asdict(status)}
        for endpoint, status in results
    ]
    rows = [_status_row(endpoint, status) for endpoint, status in results]
    out.emit(data, lambda: print_table(_STATUS_HEADER, rows))
    failed = [(endpoint, status) for endpoint, status in results if isinstance(status, str)]
    for endpoint, error in failed:
        print(f"raftkv: no status from {endpoint}: {error}", file=sys.stderr)
    return 1 if failed else 0


# --- arguments -----------------------------------------------------------------------


def _node_id(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a node id (a positive integer)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a node id (a positive integer)")
    return value


def _add_global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name. A subcommand's copy
    has no defaults, so that it only overrides what was given after the name."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--endpoints",
        default=default(os.environ.get("RAFTKV_ENDPOINTS", DEFAULT_ENDPOINTS)),
        help="comma separated host:port RESP addresses (default: $RAFTKV_ENDPOINTS or "
        f"{DEFAULT_ENDPOINTS})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"seconds to keep trying before giving up (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print the result as JSON"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv", description="Command-line client of a raftkv cluster (Redis protocol)."
    )
    _add_global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = functools.partial(commands.add_parser, parents=[common])

    put = add_parser("put", help="set a key")
    put.add_argument("key")
    put.add_argument("value")
    put.set_defaults(run=cmd_put)
    get = add_parser("get", help="print a key's value (exit 1 if it does not exist)")
    get.add_argument("key")
    get.set_defaults(run=cmd_get)
    delete = add_parser("del", help="delete a key; prints 1 if it existed, else 0")
    delete.add_argument("key")
    delete.set_defaults(run=cmd_del)
    scan = add_parser("scan", help="list the keys (and values) with a prefix")
    scan.add_argument("prefix", nargs="?", default="")
    scan.add_argument("--keys-only", action="store_true", help="print the keys only")
    scan.set_defaults(run=cmd_scan)
    members = add_parser("members", help="list the cluster's members")
    members.set_defaults(run=cmd_members)
    member = add_parser("member", help="add or remove a member")
    member_commands = member.add_subparsers(dest="member_command", required=True, metavar="ACTION")
    add_member_parser = functools.partial(member_commands.add_parser, parents=[common])
    add = add_member_parser("add", help="add a member (then start it with --join)")
    add.add_argument("id", type=_node_id)
    add.add_argument("url", help="the new node's peer URL, http://host:port")
    add.add_argument("--learner", action="store_true", help="add it as a non-voting learner")
    add.set_defaults(run=cmd_member_add)
    remove = add_member_parser("remove", help="remove a member")
    remove.add_argument("id", type=_node_id)
    remove.set_defaults(run=cmd_member_remove)
    status = add_parser("status", help="the Raft status of every endpoint")
    status.set_defaults(run=cmd_status)
    transfer = add_parser("transfer", help="move leadership to a node")
    transfer.add_argument("id", type=_node_id)
    transfer.set_defaults(run=cmd_transfer)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        with Client(
            args.endpoints,
            timeout=args.timeout,
            session=False,  # One command per process: a session would cost a round trip.
            connect_timeout=min(DEFAULT_CONNECT_TIMEOUT_S, args.timeout),
        ) as client:
            status: int = args.run(client, args, Output(args.json))
            return status
    except errors.RaftkvError as exc:
        print(f"raftkv: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _describe(exc: errors.RaftkvError) -> str:
    message = str(exc).replace("\n", " ")
    if isinstance(exc, errors.KeyNotFound):
        return message
    kind = {
        errors.NoLeader: "no leader",
        errors.Timeout: "timed out",
        errors.Unavailable: "unavailable",
        errors.WrongType: "wrong type",
        errors.ValueTooLarge: "value too large",
        errors.InvalidRequest: "invalid request",
        errors.Conflict: "conflict",
        errors.Removed: "removed",
    }.get(type(exc), "error")
    return f"{kind}: {message}"


if __name__ == "__main__":
    sys.exit(main())
