"""The RPC API: the Redis protocol (RESP2, and RESP3 after HELLO 3).

Theory of operation. Each connection is an `asyncio.Protocol`. Bytes go to a hiredis
reader (a C parser); every complete command in them is dispatched at once, in
order, before any reply is awaited, so a pipeline of SETs becomes one batch entry
and a pipeline of GETs shares one ReadIndex round. Each command leaves a reply slot
in the connection's queue: either finished bytes, or a future plus a function that
renders the reply once the future is done. The connection drains the queue strictly
in command order, coalescing everything that is ready into one write; at the first
slot whose future is not done it stops, and that future's done-callback drains on.

A GET's value is read only when its turn comes in the queue, after the read barrier
and after every earlier reply on the connection: so `SET k v; GET k` in one pipeline
sees `v`, and reads are linearizable by default. The connection's writes after a
read are held back until that read is rendered, so `GET k; SET k w` never shows `w`.
`RAFT.CONSISTENCY serializable` switches the connection to local reads (possibly
stale), like READONLY in Redis Cluster.

Bounds: a request that grows past `--max-value-bytes` plus 64 KiB without completing,
or that the parser rejects, closes that connection only (after an error reply); a
connection with more than `MAX_PENDING_REPLIES` replies outstanding stops reading
until they drain (backpressure).
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import itertools
import logging
from collections.abc import Callable
from typing import Any, cast

import hiredis

from .. import __version__, errors
from ..kv import (
    CommandError,
    ErrorCode,
    PutCondition,
    encode_append,
    encode_batch,
    encode_cas,
    encode_delete,
    encode_incr,
    encode_put,
    encode_register_session,
    with_session,
)
from ..raft import ConfChangeType
from ._node import Node

log = logging.getLogger("raftkv.resp")

MAX_PENDING_REPLIES = 10_000
_PAUSE_AT = MAX_PENDING_REPLIES
_RESUME_AT = MAX_PENDING_REPLIES // 2
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

OK = b"+OK\r\n"
_RESP_OK = ("resp", "ok")
PONG = b"+PONG\r\n"
_connection_ids = itertools.count(1)


class RespError(Exception):
    """An error reply; the message starts with its code (ERR, WRONGTYPE, ...)."""


# --- encoding ------------------------------------------------------------------------


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def error_reply(message: str) -> bytes:
    clean = message.replace("\r", " ").replace("\n", " ")
    return b"-" + clean.encode("utf-8", "replace") + b"\r\n"


def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


class Encoder:
    """RESP2 or RESP3 encoding of the values that differ between them."""

    def __init__(self, protocol: int = 2) -> None:
        self.protocol = protocol

    @property
    def null(self) -> bytes:
        return b"_\r\n" if self.protocol == 3 else b"$-1\r\n"

    def value(self, value: Any) -> bytes:
        if value is None:
            return self.null
        if isinstance(value, bytes):
            return bulk(value)
        if isinstance(value, str):
            return bulk(value.encode())
        if isinstance(value, bool):
            return integer(int(value))
        if isinstance(value, int):
            return integer(value)
        if isinstance(value, dict):
            if self.protocol == 3:
                parts = [b"%%%d\r\n" % len(value)]
            else:
                parts = [b"*%d\r\n" % (2 * len(value))]
            for key, item in value.items():
                parts.append(self.value(key))
                parts.append(self.value(item))
            return b"".join(parts)
        if isinstance(value, list | tuple):
            return b"*%d\r\n" % len(value) + b"".join(self.value(item) for item in value)
        raise TypeError(f"cannot encode {type(value).__name__} in RESP")


def error_for(exc: BaseException) -> bytes:
    """The RESP error reply for an exception from the node or a command."""
    if isinstance(exc, RespError):
        return error_reply(str(exc))
    if isinstance(exc, errors.WrongType):
        return error_reply(f"ERR {exc}")
    if isinstance(exc, errors.Unavailable):
        return error_reply(f"TRYAGAIN {exc}")
    if isinstance(exc, errors.Removed):
        return error_reply(f"ERR {exc}")
    if isinstance(exc, errors.Conflict):
        return error_reply(f"BUSY {exc}")
    if isinstance(exc, errors.RaftkvError):
        return error_reply(f"ERR {exc}")
    log.exception("unexpected error in a RESP command", exc_info=exc)
    return error_reply(f"ERR internal error: {exc}")


def check_result(result: Any) -> Any:
    if isinstance(result, CommandError):
        if result.code is ErrorCode.NOT_AN_INTEGER:
            raise RespError("ERR value is not an integer or out of range")
        if result.code is ErrorCode.OVERFLOW:
            raise RespError("ERR increment or decrement would overflow")
        if result.code is ErrorCode.VALUE_TOO_LARGE:
            raise RespError("ERR string exceeds maximum allowed size")
        if result.code is ErrorCode.UNKNOWN_SESSION:
            raise RespError("SESSION unknown or expired session; register again")
        raise RespError(f"ERR {result.message}")
    return result


def parse_int(raw: bytes, what: str = "value") -> int:
    try:
        value = int(raw)
    except ValueError:
        raise RespError(f"ERR {what} is not an integer or out of range") from None
    if not INT64_MIN <= value <= INT64_MAX or raw.strip() != raw:
        raise RespError(f"ERR {what} is not an integer or out of range")
    return value


# --- the connection ------------------------------------------------------------------

Render = Callable[[Any], bytes]
#: Finished reply bytes, or (future, render, position): the reply is
#: `render(result)`, where result is the future's result, or item `position` of it
#: when the future is a batch entry's (position -1: the whole result; _READ: the
#: whole result, and the slot is a read's).
_Pending = tuple[asyncio.Future[Any], Render, int]
_Slot = bytes | _Pending
_READ = -2


class RespConnection(asyncio.Protocol):
    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.node = server.node
        self.id = next(_connection_ids)
        self.name: bytes | None = None
        self.encoder = Encoder(2)
        self.serializable = False
        self.reader = hiredis.Reader()
        self.buffered_bytes = 0
        self.replies: collections.deque[_Slot] = collections.deque()
        self.transport: asyncio.Transport | None = None
        #: The future the drain is stopped at, whose done-callback resumes it.
        self.drain_waiting: asyncio.Future[Any] | None = None
        self.paused = False
        self.closing = False
        self.multibulk = False
        self.inline_pending = b""
        self.read_barrier: asyncio.Future[None] | None = None
        #: Writes dispatched from the current read, not yet submitted: proposed as
        #: one batch entry when the read's commands are all dispatched.
        self.pending_writes: list[bytes] = []
        self.pending_future: asyncio.Future[Any] | None = None
        #: Reads queued and rendered so far. A write queued while an earlier read is
        #: not rendered waits in `held`, in order, with the count of reads queued
        #: before it: it must not be applied before those reads have seen the store.
        self.reads_queued = 0
        self.reads_rendered = 0
        self.held: collections.deque[tuple[int, bytes, asyncio.Future[Any]]] = collections.deque()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.read_barrier = None  # Reads in a new batch need a barrier of their own.
        # A connection speaks inline commands until its first multibulk request (a
        # line that starts with `*`), and multibulk from then on: RESP clients start
        # with `*` at once, and no client goes back (hiredis keeps the state of a
        # request split across reads to itself, so a switch back could not be told
        # from the rest of a split request).
        if not self.multibulk:
            data = self._inline(data)
            if not data:
                self._schedule_drain()
                return
        self.reader.feed(data)
        self.buffered_bytes += len(data)
        try:
            while True:
                command = self.reader.gets()
                if command is False:
                    break
                self.buffered_bytes = 0
                self._dispatch(command)
        except hiredis.ProtocolError as exc:
            self._fatal(f"ERR Protocol error: {exc}")
            return
        if self.buffered_bytes > self.server.max_request_bytes:
            self._fatal("ERR Protocol error: request too large")
            return
        self._schedule_drain()

    def _inline(self, data: bytes) -> bytes:
        """Inline commands (`PING\\r\\n` typed into telnet or netcat, or piped by
        `redis-cli --pipe`): each complete line is one command. A partial last line
        waits for the rest of it. Returns the data from the first multibulk request
        (a line that starts with `*`) on, for the RESP parser."""
        buffer = self.inline_pending + data if self.inline_pending else data
        self.inline_pending = b""
        start = 0
        while start < len(buffer):
            if buffer[start : start + 1] == b"*":
                self.multibulk = True
                return buffer[start:]
            end = buffer.find(b"\n", start)
            if end < 0:
                if len(buffer) - start > self.server.max_request_bytes:
                    self._fatal("ERR Protocol error: too big inline request")
                else:
                    self.inline_pending = buffer[start:]
                return b""
            words = buffer[start:end].split()
            start = end + 1
            if words:
                self._dispatch(words)
        return b""

    def _fatal(self, message: str) -> None:
        self.replies.append(error_reply(message))
        self.closing = True
        self._schedule_drain()

    # --- replies -------------------------------------------------------------------------

    def flush_writes(self) -> None:
        """Submit the writes gathered from this read as one replicated batch entry
        (even a single one: its result is then a list of one, as `_nth` expects),
        keeping their order."""
        commands, future = self.pending_writes, self.pending_future
        if future is None:
            return
        self.pending_writes, self.pending_future = [], None
        try:
            self.submit(encode_batch(commands), future)
        except Exception as exc:
            future.set_exception(exc)

    def submit(
        self, command: bytes, future: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        """Submit a write, or hold it until the reads before it are rendered. Its
        result goes to `future` if one is given."""
        if self.reads_rendered == self.reads_queued and not self.held:
            return self.node.submit_write(command, future)
        self.node.check_available()
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self.held.append((self.reads_queued, command, future))
        return future

    def _release_held(self) -> None:
        held = self.held
        while held and held[0][0] <= self.reads_rendered:
            _, command, future = held.popleft()
            try:
                self.node.submit_write(command, future)
            except Exception as exc:
                future.set_exception(exc)

    def _schedule_drain(self) -> None:
        self.flush_writes()
        if self.drain_waiting is None:
            self._drain()
        if len(self.replies) >= _PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume_drain(self, _: asyncio.Future[Any]) -> None:
        self.drain_waiting = None
        self._drain()

    def _drain(self) -> None:
        """Write every reply that is ready, in order, as one write; stop at the first
        that is not (its future's done-callback resumes here)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        replies = self.replies
        out: list[bytes] = []
        failed = 0
        while replies:
            slot = replies[0]
            if isinstance(slot, bytes):
                if slot[:1] == b"-":  # an error reply
                    self._count_error(slot)
                    failed += 1
                out.append(slot)
                replies.popleft()
                continue
            future, render, position = slot
            if not future.done():
                self.drain_waiting = future
                future.add_done_callback(self._resume_drain)
                break
            try:
                result = future.result()
                out.append(render(result if position < 0 else _nth(result, position)))
            except Exception as exc:
                error = error_for(exc)
                self._count_error(error)
                failed += 1
                out.append(error)
            replies.popleft()
            if position == _READ:
                self.reads_rendered += 1
                if self.held:
                    self._release_held()
        if out:
            if len(out) > failed:
                self.node.metrics.requests[_RESP_OK] += len(out) - failed
            transport.write(b"".join(out))
        if self.paused and len(replies) <= _RESUME_AT:
            self.paused = False
            transport.resume_reading()
        if self.closing and not replies:
            transport.close()

    def _count_error(self, reply: bytes) -> None:
        """Count an error reply by its code, the word after the "-"."""
        end = reply.find(b" ", 1, 32)
        code = reply[1 : end if end > 0 else reply.find(b"\r")].decode("ascii", "replace")
        self.node.metrics.requests["resp", code] += 1

    def reply(self, data: bytes) -> None:
        self.replies.append(data)

    def reply_later(self, future: asyncio.Future[Any], render: Render) -> None:
        self.replies.append((future, render, -1))

    def read_later(self, render: Render) -> None:
        """Queue a read of the store: `render` runs in the read's turn, once the read
        barrier has passed and every earlier write of this connection is applied,
        and before any later one is (those are held until then)."""
        self.flush_writes()  # the writes before this read: their own batch
        self.replies.append((self.barrier(), render, _READ))
        self.reads_queued += 1

    def barrier(self) -> asyncio.Future[None]:
        """A read barrier shared by every read in the current batch of commands."""
        if self.serializable:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        if self.read_barrier is None:
            self.read_barrier = self.node.submit_read()
        return self.read_barrier

    # --- dispatch ------------------------------------------------------------------------

    def _dispatch(self, command: list[bytes]) -> None:
        if not command:
            return
        name = command[0].upper()
        handler = COMMANDS.get(name)
        try:
            if handler is None:
                shown = command[0][:64].decode("utf-8", "replace")
                raise RespError(f"ERR unknown command '{shown}'")
            handler(self, command)
        except Exception as exc:
            self.replies.append(error_for(exc))


# --- commands ------------------------------------------------------------------------

CommandHandler = Callable[[RespConnection, list[bytes]], None]
COMMANDS: dict[bytes, CommandHandler] = {}


def command(name: str, arity: int) -> Callable[[CommandHandler], CommandHandler]:
    """Register a handler. `arity` follows Redis: positive is exact (including the
    name), negative is a minimum."""

    def register(handler: CommandHandler) -> CommandHandler:
        def checked(conn: RespConnection, args: list[bytes]) -> None:
            if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
                raise RespError(f"ERR wrong number of arguments for '{name.lower()}' command")
            handler(conn, args)

        COMMANDS[name.upper().encode()] = checked
        return handler

    return register


def _write(conn: RespConnection, data: bytes, render: Render) -> None:
    """Queue a plain (or session-tagged) command for the connection's next batch; its
    reply renders the command's own result from the batch's results."""
    conn.node.check_available()
    if conn.pending_future is None:
        conn.pending_future = asyncio.get_running_loop().create_future()
    conn.replies.append((conn.pending_future, render, len(conn.pending_writes)))
    conn.pending_writes.append(data)


def _write_alone(conn: RespConnection, data: bytes, render: Render) -> None:
    """Submit a command that is itself a batch (MSET, DEL): it cannot nest in one, so
    the writes gathered before it go first."""
    conn.flush_writes()
    conn.reply_later(conn.submit(data), render)


def _nth(results: Any, position: int) -> Any:
    if isinstance(results, list):
        return results[position]
    return check_result(results)  # The whole entry failed (it could not decode).


def _check_value(conn: RespConnection, value: bytes) -> None:
    if len(value) > conn.server.max_value_bytes:
        raise RespError(
            f"ERR value of {len(value)} bytes exceeds --max-value-bytes "
            f"({conn.server.max_value_bytes})"
        )


def _check_key(key: bytes) -> None:
    if not key:
        raise RespError("ERR empty key")


@command("PING", -1)
def _ping(conn: RespConnection, args: list[bytes]) -> None:
    if len(args) > 2:
        raise RespError("ERR wrong number of arguments for 'ping' command")
    conn.reply(bulk(args[1]) if len(args) == 2 else PONG)


@command("ECHO", 2)
def _echo(conn: RespConnection, args: list[bytes]) -> None:
    conn.reply(bulk(args[1]))


@command("QUIT", -1)
def _quit(conn: RespConnection, args: list[bytes]) -> None:
    conn.reply(OK)
    conn.closing = True


@command("SELECT", 2)
def _select(conn: RespConnection, args: list[bytes]) -> None:
    if args[1] != b"0":
        raise RespError("ERR DB index is out of range (raftkv has only database 0)")
    conn.reply(OK)


@command("HELLO", -1)
def _hello(conn: RespConnection, args: list[bytes]) -> None:
    if len(args) >= 2:
        version = parse_int(args[1], "protocol version")
        if version not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
        conn.encoder = Encoder(version)
    rest = args[2:]
    while rest:
        option = rest[0].upper()
        if option == b"SETNAME" and len(rest) >= 2:
            conn.name = rest[1]
            rest = rest[2:]
        elif option == b"AUTH" and len(rest) >= 3:
            rest = rest[3:]
        else:
            raise RespError(f"ERR syntax error in HELLO option {option.decode('utf-8', 'replace')}")
    node = conn.node
    conn.reply(
        conn.encoder.value(
            {
                "server": "raftkv",
                "version": __version__,
                "proto": conn.encoder.protocol,
                "id": conn.id,
                "mode": "cluster" if len(node.members) > 1 else "standalone",
                "role": "master" if node.leader_id == node.id else "replica",
                "modules": [],
            }
        )
    )


@command("CLIENT", -2)
def _client(conn: RespConnection, args: list[bytes]) -> None:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        conn.name = args[2]
        conn.reply(OK)
    elif sub == b"GETNAME" and len(args) == 2:
        conn.reply(conn.encoder.value(conn.name))
    elif sub == b"ID" and len(args) == 2:
        conn.reply(integer(conn.id))
    elif sub == b"SETINFO":
        conn.reply(OK)
    else:
        shown = sub.decode("utf-8", "replace")
        raise RespError(f"ERR unknown subcommand or wrong arguments for 'CLIENT {shown}'")


@command("COMMAND", -1)
def _command(conn: RespConnection, args: list[bytes]) -> None:
    sub = args[1].upper() if len(args) > 1 else b""
    if sub == b"COUNT":
        conn.reply(integer(len(COMMANDS)))
    elif sub == b"DOCS":
        conn.reply(conn.encoder.value({}))
    else:
        conn.reply(b"*0\r\n")


@command("CONFIG", -2)
def _config(conn: RespConnection, args: list[bytes]) -> None:
    # redis-benchmark and some clients read a few settings at start; raftkv has
    # no such settings, so every pattern matches nothing.
    if args[1].upper() == b"GET":
        conn.reply(conn.encoder.value({}))
    else:
        raise RespError("ERR CONFIG is not supported by raftkv")


@command("GET", 2)
def _get(conn: RespConnection, args: list[bytes]) -> None:
    key = args[1]
    machine = conn.node.state_machine
    encoder = conn.encoder
    conn.read_later(lambda _: encoder.value(machine.get(key)))


@command("MGET", -2)
def _mget(conn: RespConnection, args: list[bytes]) -> None:
    keys = args[1:]
    machine = conn.node.state_machine
    encoder = conn.encoder
    conn.read_later(lambda _: encoder.value([machine.get(k) for k in keys]))


@command("EXISTS", -2)
def _exists(conn: RespConnection, args: list[bytes]) -> None:
    keys = args[1:]
    machine = conn.node.state_machine
    conn.read_later(lambda _: integer(sum(1 for k in keys if k in machine)))


@command("STRLEN", 2)
def _strlen(conn: RespConnection, args: list[bytes]) -> None:
    key = args[1]
    machine = conn.node.state_machine
    conn.read_later(lambda _: integer(len(machine.get(key) or b"")))


@command("DBSIZE", 1)
def _dbsize(conn: RespConnection, args: list[bytes]) -> None:
    machine = conn.node.state_machine
    conn.read_later(lambda _: integer(len(machine)))


def _render_ok(result: Any) -> bytes:
    check_result(result)
    return OK


@command("SET", -3)
def _set(conn: RespConnection, args: list[bytes]) -> None:
    key, value = args[1], args[2]
    _check_key(key)
    _check_value(conn, value)
    if len(args) == 3:  # the common case, without options
        _write(conn, encode_put(key, value), _render_ok)
        return
    condition = PutCondition.ALWAYS
    want_previous = False
    for option in args[3:]:
        upper = option.upper()
        if upper == b"NX" and condition is PutCondition.ALWAYS:
            condition = PutCondition.IF_ABSENT
        elif upper == b"XX" and condition is PutCondition.ALWAYS:
            condition = PutCondition.IF_PRESENT
        elif upper == b"GET":
            want_previous = True
        elif upper in (b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL"):
            raise RespError("ERR raftkv keys do not expire; EX/PX/KEEPTTL are not supported")
        else:
            raise RespError("ERR syntax error")
    encoder = conn.encoder
    conditional = condition is not PutCondition.ALWAYS

    def render(result: Any) -> bytes:
        previous = check_result(result)
        if want_previous:
            return encoder.value(previous)
        if conditional:
            wrote = (previous is None) == (condition is PutCondition.IF_ABSENT)
            return OK if wrote else encoder.null
        return OK

    _write(conn, encode_put(key, value, condition), render)


@command("GETSET", 3)
def _getset(conn: RespConnection, args: list[bytes]) -> None:
    _check_key(args[1])
    _check_value(conn, args[2])
    encoder = conn.encoder
    _write(conn, encode_put(args[1], args[2]), lambda r: encoder.value(check_result(r)))


@command("MSET", -3)
def _mset(conn: RespConnection, args: list[bytes]) -> None:
    if len(args) % 2 != 1:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    pairs = list(zip(args[1::2], args[2::2], strict=True))
    for key, value in pairs:
        _check_key(key)
        _check_value(conn, value)
    batch = encode_batch([encode_put(key, value) for key, value in pairs])
    _write_alone(conn, batch, lambda r: (check_result(r), OK)[1])


@command("DEL", -2)
def _del(conn: RespConnection, args: list[bytes]) -> None:
    batch = encode_batch([encode_delete(key) for key in args[1:]])

    def render(results: Any) -> bytes:
        return integer(sum(1 for r in check_result(results) if check_result(r) is not None))

    _write_alone(conn, batch, render)


@command("GETDEL", 2)
def _getdel(conn: RespConnection, args: list[bytes]) -> None:
    encoder = conn.encoder
    _write(conn, encode_delete(args[1]), lambda r: encoder.value(check_result(r)))


@command("APPEND", 3)
def _append(conn: RespConnection, args: list[bytes]) -> None:
    _check_key(args[1])
    _check_value(conn, args[2])
    _write(conn, encode_append(args[1], args[2]), lambda r: integer(check_result(r)))


def _incr_by(conn: RespConnection, key: bytes, delta: int) -> None:
    _check_key(key)
    _write(conn, encode_incr(key, delta), lambda r: integer(check_result(r)))


@command("INCR", 2)
def _incr(conn: RespConnection, args: list[bytes]) -> None:
    _incr_by(conn, args[1], 1)


@command("DECR", 2)
def _decr(conn: RespConnection, args: list[bytes]) -> None:
    _incr_by(conn, args[1], -1)


@command("INCRBY", 3)
def _incrby(conn: RespConnection, args: list[bytes]) -> None:
    _incr_by(conn, args[1], parse_int(args[2]))


@command("DECRBY", 3)
def _decrby(conn: RespConnection, args: list[bytes]) -> None:
    delta = parse_int(args[2])
    if delta == INT64_MIN:
        raise RespError("ERR decrement would overflow")
    _incr_by(conn, args[1], -delta)


@command("SCAN", -2)
def _scan(conn: RespConnection, args: list[bytes]) -> None:
    """SCAN cursor [MATCH prefix*] [COUNT n]. The cursor is opaque to clients: 0
    starts, and the reply's cursor continues after the last key returned (it encodes
    that key, so any node can continue a scan another node began)."""
    cursor = args[1]
    pattern = b"*"
    count = 10
    rest = args[2:]
    while rest:
        option = rest[0].upper()
        if option == b"MATCH" and len(rest) >= 2:
            pattern = rest[1]
        elif option == b"COUNT" and len(rest) >= 2:
            count = parse_int(rest[1], "COUNT")
            if count <= 0:
                raise RespError("ERR syntax error")
        elif option == b"TYPE" and len(rest) >= 2:
            pass
        else:
            raise RespError("ERR syntax error")
        rest = rest[2:]
    start_after = None if cursor == b"0" else _decode_cursor(cursor)
    prefix, exact = _pattern_prefix(pattern)
    machine = conn.node.state_machine
    encoder = conn.encoder

    def render(_: Any) -> bytes:
        page = machine.scan(prefix, count, start_after)
        keys = [key for key, _ in page]
        next_cursor = b"0" if len(page) < count else _encode_cursor(keys[-1])
        if not exact:
            text = pattern.decode("latin-1")
            keys = [k for k in keys if fnmatch.fnmatchcase(k.decode("latin-1"), text)]
        return encoder.value([next_cursor, keys])

    conn.read_later(render)


#: Keys up to this long get a decimal cursor; Python refuses to print integers of
#: more than 4300 digits, so longer keys get a hex one (which raftkv accepts, but
#: clients that parse cursors as integers, as redis-py does, do not).
_DECIMAL_CURSOR_KEY_BYTES = 1024


def _encode_cursor(last_key: bytes) -> bytes:
    """Clients parse a SCAN cursor as an unsigned integer, so it is one: the last key's
    bytes behind a 0x01 byte (which keeps leading zero bytes), read as one big-endian
    number, in decimal."""
    if len(last_key) > _DECIMAL_CURSOR_KEY_BYTES:
        return b"x" + last_key.hex().encode()
    return b"%d" % int.from_bytes(b"\x01" + last_key, "big")


def _decode_cursor(cursor: bytes) -> bytes:
    try:
        if cursor[:1] == b"x":
            return bytes.fromhex(cursor[1:].decode("ascii"))
        if not cursor.isdigit():
            raise ValueError(cursor)
        number = int(cursor)
    except (ValueError, UnicodeDecodeError):
        raise RespError("ERR invalid cursor") from None
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    if raw[:1] != b"\x01":
        raise RespError("ERR invalid cursor")
    return raw[1:]


def _pattern_prefix(pattern: bytes) -> tuple[bytes, bool]:
    """The literal prefix of a glob pattern, and whether `prefix*` is the whole pattern
    (then no filtering is needed beyond the prefix scan)."""
    special = [pattern.find(c) for c in (b"*", b"?", b"[", b"\\")]
    cut = min((position for position in special if position >= 0), default=len(pattern))
    prefix = pattern[:cut]
    return prefix, pattern == prefix + b"*"


@command("INFO", -1)
def _info(conn: RespConnection, args: list[bytes]) -> None:
    node = conn.node
    status = node.status()
    sections = {
        "server": [
            ("redis_version", "7.0.0"),
            ("raftkv_version", __version__),
            ("raftkv_node_id", node.id),
            ("tcp_port", conn.server.port),
        ],
        "replication": [
            ("role", "master" if status["role"] == "leader" else "slave"),
            ("raft_role", status["role"]),
            ("raft_term", status["term"]),
            ("raft_leader", status["leader"]),
            ("raft_commit_index", status["commit"]),
            ("raft_applied_index", status["applied"]),
            ("raft_members", len(status["members"])),
        ],
        "keyspace": [("db0", f"keys={len(node.state_machine)},expires=0,avg_ttl=0")],
    }
    wanted = {arg.decode("utf-8", "replace").lower() for arg in args[1:]}
    lines = []
    for name, fields in sections.items():
        if wanted and not wanted & {name, "all", "everything", "default"}:
            continue
        lines.append(f"# {name.capitalize()}")
        lines.extend(f"{key}:{value}" for key, value in fields)
        lines.append("")
    conn.reply(bulk("\r\n".join(lines).encode()))


# --- raftkv's own commands -----------------------------------------------------------


def _json_like(value: Any) -> Any:
    """Status values as RESP-friendly nested lists/maps."""
    if isinstance(value, dict):
        return {str(k): _json_like(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_like(v) for v in value]
    if value is None or isinstance(value, bool | int | bytes):
        return value
    return str(value)


@command("RAFT.STATUS", 1)
def _raft_status(conn: RespConnection, args: list[bytes]) -> None:
    status = dict(conn.node.status())
    status.pop("progress", None)
    conn.reply(conn.encoder.value(_json_like(status)))


@command("RAFT.MEMBERS", 1)
def _raft_members(conn: RespConnection, args: list[bytes]) -> None:
    node, encoder = conn.node, conn.encoder
    # A read, at the connection's consistency: the members as of now by default.
    conn.read_later(lambda _: encoder.value([_json_like(m) for m in node.status()["members"]]))


def _node_id(raw: bytes) -> int:
    node_id = parse_int(raw, "node id")
    if node_id <= 0:
        raise RespError("ERR node id must be a positive integer")
    return node_id


def _membership(conn: RespConnection, future: asyncio.Future[Any]) -> None:
    conn.reply_later(future, lambda _: OK)


@command("RAFT.ADD", -3)
def _raft_add(conn: RespConnection, args: list[bytes]) -> None:
    learner = len(args) == 4 and args[3].upper() == b"LEARNER"
    if len(args) > 4 or (len(args) == 4 and not learner):
        raise RespError("ERR usage: RAFT.ADD id url [LEARNER]")
    kind = ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_NODE
    url = args[2].decode("utf-8", "replace")
    coroutine = conn.node.change_membership(kind, _node_id(args[1]), url)
    _membership(conn, asyncio.ensure_future(coroutine))


@command("RAFT.REMOVE", 2)
def _raft_remove(conn: RespConnection, args: list[bytes]) -> None:
    coroutine = conn.node.change_membership(ConfChangeType.REMOVE_NODE, _node_id(args[1]))
    _membership(conn, asyncio.ensure_future(coroutine))


@command("RAFT.TRANSFER", 2)
def _raft_transfer(conn: RespConnection, args: list[bytes]) -> None:
    _membership(conn, asyncio.ensure_future(conn.node.transfer_leader(_node_id(args[1]))))


@command("RAFT.CONSISTENCY", -1)
def _raft_consistency(conn: RespConnection, args: list[bytes]) -> None:
    if len(args) == 1:
        conn.reply(simple("serializable" if conn.serializable else "linearizable"))
        return
    mode = args[1].lower()
    if mode not in (b"linearizable", b"serializable") or len(args) > 2:
        raise RespError("ERR usage: RAFT.CONSISTENCY [linearizable|serializable]")
    conn.serializable = mode == b"serializable"
    conn.reply(OK)


def _parse_cas(args: list[bytes]) -> tuple[bytes, bytes | None, bytes | None]:
    """RAFT.CAS key (IFEQ expected | NX) (SET value | DEL) -> (key, expected, value),
    None standing for "absent" on either side."""
    usage = "ERR usage: RAFT.CAS key (IFEQ expected | NX) (SET value | DEL)"
    rest = args[2:]
    expected: bytes | None
    if len(rest) >= 2 and rest[0].upper() == b"IFEQ":
        expected, rest = rest[1], rest[2:]
    elif rest and rest[0].upper() == b"NX":
        expected, rest = None, rest[1:]
    else:
        raise RespError(usage)
    value: bytes | None
    if len(rest) == 2 and rest[0].upper() == b"SET":
        value = rest[1]
    elif len(rest) == 1 and rest[0].upper() == b"DEL":
        value = None
    else:
        raise RespError(usage)
    return args[1], expected, value


@command("RAFT.CAS", -4)
def _raft_cas(conn: RespConnection, args: list[bytes]) -> None:
    """RAFT.CAS key (IFEQ expected | NX) (SET value | DEL): compare-and-set. Writes
    `value` (or deletes the key) only if the key's value equals `expected` (NX: only
    if the key does not exist), atomically. Replies 1 if it wrote, 0 if the
    comparison failed. The option names follow Redis 8.4's `SET ... IFEQ`."""
    key, expected, value = _parse_cas(args)
    _check_key(key)
    if value is not None:
        _check_value(conn, value)
    _write(conn, encode_cas(key, expected, value), _render_cas)


def _render_cas(result: Any) -> bytes:
    return integer(int(check_result(result).succeeded))


@command("RAFT.SESSION", 1)
def _raft_session(conn: RespConnection, args: list[bytes]) -> None:
    """Register a client session for exactly-once retries; replies its id."""
    _write(conn, encode_register_session(), lambda r: integer(check_result(r)))


def _tagged_set(args: list[bytes]) -> bytes | None:
    if len(args) == 3 or (len(args) == 4 and args[3].upper() == b"GET"):
        return encode_put(args[1], args[2])
    return None


def _tagged_cas(args: list[bytes]) -> bytes | None:
    key, expected, value = _parse_cas(args)
    return encode_cas(key, expected, value)


_TAGGABLE = {
    b"APPEND": lambda a: encode_append(a[1], a[2]) if len(a) == 3 else None,
    b"INCR": lambda a: encode_incr(a[1], 1) if len(a) == 2 else None,
    b"DECR": lambda a: encode_incr(a[1], -1) if len(a) == 2 else None,
    b"INCRBY": lambda a: encode_incr(a[1], parse_int(a[2])) if len(a) == 3 else None,
    b"SET": _tagged_set,
    b"DEL": lambda a: encode_delete(a[1]) if len(a) == 2 else None,
    b"RAFT.CAS": _tagged_cas,
}


@command("RAFT.EXEC", -5)
def _raft_exec(conn: RespConnection, args: list[bytes]) -> None:
    """RAFT.EXEC client-id seq COMMAND args...: apply a write at most once per (client
    id, seq), so a client may retry it after a lost reply. Supported commands:
    APPEND, INCR, DECR, INCRBY, SET key value [GET], DEL key, RAFT.CAS; each replies
    as it does on its own."""
    client_id = parse_int(args[1], "client id")
    seq = parse_int(args[2], "sequence number")
    inner = args[3:]
    name = inner[0].upper()
    build = _TAGGABLE.get(name)
    encoded = build(inner) if build is not None else None
    if encoded is None:
        raise RespError(
            "ERR RAFT.EXEC supports APPEND, INCR, DECR, INCRBY, SET k v [GET], DEL k, RAFT.CAS"
        )
    _check_key(inner[1])
    if name in (b"APPEND", b"SET"):
        _check_value(conn, inner[2])
    elif name == b"RAFT.CAS" and inner[-2].upper() == b"SET":
        _check_value(conn, inner[-1])
    want_previous = name == b"SET" and len(inner) == 4
    encoder = conn.encoder

    def render(result: Any) -> bytes:
        value = check_result(result)
        if name == b"SET":
            return encoder.value(value) if want_previous else OK
        if name == b"DEL":
            return integer(0 if value is None else 1)
        if name == b"RAFT.CAS":
            return _render_cas(value)
        return encoder.value(value)

    _write(conn, with_session(encoded, client_id, seq), render)


# --- the server ----------------------------------------------------------------------


class RespServer:
    def __init__(self, node: Node, host: str, port: int) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.max_value_bytes = node.options.max_value_bytes
        self.max_request_bytes = self.max_value_bytes + 64 * 1024
        self.connections: set[RespConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: RespConnection(self), self.host, self.port, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        await self._server.wait_closed()
        self._server = None
