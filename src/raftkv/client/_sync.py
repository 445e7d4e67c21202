"""`raftkv.Client`: the blocking client, on redis-py's connection pools."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, cast, overload

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from .. import errors
from ._core import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Calls,
    Key,
    Lost,
    Member,
    NotSent,
    Outcome,
    Reply,
    Request,
    Requests,
    Send,
    Sleep,
    Status,
    V,
    Value,
    format_endpoint,
    parse_endpoints,
    split_error,
)


class _Connection(Protocol):
    """The part of redis-py's `Connection` the client uses (its methods are untyped)."""

    def send_command(self, *args: Any) -> None: ...
    def read_response(self, *, timeout: float) -> Any: ...
    def disconnect(self) -> None: ...


class Client(Generic[V]):
    """A client of a raftkv cluster over its Redis-protocol (RESP) API.

    ``endpoints`` are the RESP addresses of some or all of the nodes ("host:port", a
    list of them, or one comma separated string); any node serves any request. A
    call that fails on one node (connection error, ``-TRYAGAIN``: no leader) moves
    on to the next, with a capped exponential backoff, until ``timeout`` seconds
    have passed; then it raises ``NoLeader``, ``Timeout`` (a write may or may not
    have applied) or ``Unavailable``.

    With ``session=True`` (the default) writes are exactly-once: ``put``,
    ``delete``, ``append``, ``incr`` and ``cas`` carry a client session id and a
    sequence number, so a write resent after a lost reply applies only once. With
    ``session=False`` they are sent plain (one round trip less on the first write);
    ``append``, ``incr`` and ``cas`` are then never resent once they may have
    reached a node, and a resent ``put`` may report its own value as the previous
    one.

    Keys and values are ``str`` (sent as UTF-8) or ``bytes``; values and keys come
    back as ``bytes``, or as ``str`` with ``decode=True``. Reads are linearizable.
    A client is safe to share between threads; close it (or use ``with``).

        with raftkv.Client(["127.0.0.1:12381", "127.0.0.1:22381"], decode=True) as kv:
            kv.put("greeting", "hello")        # None: there was no previous value
            kv.get("greeting")                 # 'hello'
            kv.incr("visits")                  # 1
            kv.cas("greeting", "hello", "hi")  # True
    """

    @overload
    def __init__(
        self: Client[bytes],
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        session: bool = True,
        decode: Literal[False] = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Client[str],
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        session: bool = True,
        decode: Literal[True],
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None: ...

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        session: bool = True,
        decode: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_connections: int | None = None,
    ) -> None:
        self._endpoints = parse_endpoints(endpoints)
        self._calls = Calls(self._endpoints, timeout, session)
        self._requests: Requests[V] = Requests(decode)
        self._pools = [
            redis.ConnectionPool(
                host=host,
                port=port,
                socket_timeout=timeout,
                socket_connect_timeout=min(connect_timeout, timeout),
                retry=Retry(NoBackoff(), 0),  # The client retries, across nodes.
                protocol=2,
                max_connections=max_connections,
            )
            for host, port in self._endpoints
        ]
        self._closed = False

    # --- keys ----------------------------------------------------------------------------

    def put(self, key: Key, value: Value) -> V | None:
        """Set ``key`` to ``value``; returns the previous value, None if there was none."""
        result: V | None = self._call(self._requests.put(key, value))
        return result

    def get(self, key: Key) -> V:
        """The value of ``key``; raises ``KeyNotFound`` if it does not exist."""
        result: V = self._call(self._requests.get(key))
        return result

    def delete(self, key: Key) -> bool:
        """Remove ``key``; returns whether it existed."""
        return bool(self._call(self._requests.delete(key)))

    def append(self, key: Key, value: Value) -> int:
        """Append to the value of ``key`` (absent counts as empty); returns the new
        length in bytes."""
        return int(self._call(self._requests.append(key, value)))

    def incr(self, key: Key, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key`` (absent counts as 0); returns the new
        value. Raises ``WrongType`` if the value is not a 64-bit integer."""
        return int(self._call(self._requests.incr(key, by)))

    def cas(self, key: Key, expected: Value | None, new: Value | None) -> bool:
        """Compare-and-set: if the value of ``key`` is ``expected`` (None: the key
        must not exist), set it to ``new`` (None: delete the key), atomically.
        Returns whether it did."""
        return bool(self._call(self._requests.cas(key, expected, new)))

    def scan(self, prefix: Key = b"", *, page_size: int = 100) -> Iterator[V]:
        """The keys that start with ``prefix``, in byte order, fetched ``page_size``
        at a time. Each page is a linearizable read; the listing as a whole is not a
        snapshot (keys written meanwhile may or may not appear)."""
        first = self._requests.scan_page(prefix, b"0", page_size)  # Validate now.
        return self._scan(prefix, page_size, first)

    def items(self, prefix: Key = b"", *, page_size: int = 100) -> Iterator[tuple[V, V]]:
        """(key, value) pairs of the keys that start with ``prefix``, like ``scan``; a
        key deleted between its page and the read of its value is skipped."""
        first = self._requests.scan_page(prefix, b"0", page_size)
        return self._items(prefix, page_size, first)

    def _scan(self, prefix: Key, page_size: int, request: Request) -> Iterator[V]:
        decode = self._requests.decode
        for keys in self._pages(prefix, page_size, request):
            yield from (decode(key) for key in keys)

    def _items(self, prefix: Key, page_size: int, request: Request) -> Iterator[tuple[V, V]]:
        decode = self._requests.decode
        for keys in self._pages(prefix, page_size, request):
            if not keys:
                continue
            values = self._call(self._requests.mget(keys))
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    yield decode(key), decode(value)

    def _pages(self, prefix: Key, page_size: int, request: Request) -> Iterator[list[bytes]]:
        while True:
            cursor, keys = self._call(request)
            yield keys
            if cursor in (b"0", 0, "0"):
                return
            request = self._requests.scan_page(prefix, cursor, page_size)

    # --- the cluster ---------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The members of the cluster, as the node that answers knows them."""
        result: list[Member] = self._call(self._requests.members())
        return result

    def status(self) -> Status:
        """The Raft status of the node that answers (see ``endpoint``)."""
        result: Status = self._call(self._requests.status())
        return result

    def add_member(self, node_id: int, url: str, learner: bool = False) -> None:
        """Add node ``node_id`` with peer URL ``url`` (http://host:port) as a voter, or
        as a learner; returns once the change is applied. Then start that node with
        ``--join``."""
        self._call(self._requests.add_member(node_id, url, learner))

    def remove_member(self, node_id: int) -> None:
        """Remove node ``node_id``; returns once the change is applied (the removed
        node shuts itself down)."""
        self._call(self._requests.remove_member(node_id))

    def transfer_leader(self, node_id: int) -> None:
        """Move leadership to node ``node_id``; returns once it leads."""
        self._call(self._requests.transfer_leader(node_id))

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint the client currently sends its requests to."""
        return format_endpoint(self._endpoints[self._calls.current])

    @property
    def endpoints(self) -> list[str]:
        return [format_endpoint(endpoint) for endpoint in self._endpoints]

    def close(self) -> None:
        """Close every connection. The client cannot be used afterwards."""
        self._closed = True
        for pool in self._pools:
            pool.disconnect()

    def __enter__(self) -> Client[V]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"using {self.endpoint}"
        return f"<raftkv.Client {','.join(self.endpoints)} ({state})>"

    # --- I/O -----------------------------------------------------------------------------

    def _call(self, request: Request) -> Any:
        if self._closed:
            raise errors.InvalidRequest("the client is closed")
        steps = self._calls.run(request)
        outcome: Outcome | None = None
        with contextlib.closing(steps):
            try:
                while True:
                    step = steps.send(outcome)
                    if type(step) is Sleep:
                        time.sleep(step.seconds)
                        outcome = None
                    else:
                        assert type(step) is Send
                        outcome = self._send(step)
            except StopIteration as done:
                return done.value

    def _send(self, step: Send) -> Outcome:
        pool = self._pools[step.endpoint]
        try:
            pooled = pool.get_connection()
        except (RedisError, OSError) as exc:
            return NotSent(str(exc))
        connection = cast(_Connection, pooled)
        try:
            connection.send_command(*step.command)
            return Reply(connection.read_response(timeout=step.timeout_s))
        except ResponseError as exc:
            return split_error(str(exc), exc.status_code)
        except (RedisError, OSError) as exc:
            connection.disconnect()
            return Lost(str(exc))
        finally:
            pool.release(pooled)
