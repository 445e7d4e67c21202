"""`raftkv.AsyncClient`: the asyncio client, on redis-py's asyncio connection pools.

It shares its requests and its retry policy with `raftkv.Client` (`._core`); only
the I/O differs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, cast, overload

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

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
    """The part of redis-py's asyncio `Connection` the client uses."""

    async def send_command(self, *args: Any) -> None: ...
    async def read_response(self, *, timeout: float) -> Any: ...
    async def disconnect(self) -> None: ...


class _Pool(Protocol):
    async def get_connection(self) -> Any: ...
    async def release(self, connection: Any) -> None: ...


class AsyncClient(Generic[V]):
    """The asyncio twin of ``raftkv.Client``: the same methods, as coroutines, with the
    same failover and exactly-once behaviour (see ``raftkv.Client``). ``scan`` and
    ``items`` are async iterators. Close it with ``await client.aclose()`` or use
    ``async with``.

        async with raftkv.AsyncClient(["127.0.0.1:12381"], decode=True) as kv:
            await kv.put("greeting", "hello")
            print(await kv.get("greeting"))
            async for key in kv.scan("greet"):
                print(key)
    """

    @overload
    def __init__(
        self: AsyncClient[bytes],
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
        self: AsyncClient[str],
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
            redis.asyncio.ConnectionPool(
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

    async def put(self, key: Key, value: Value) -> V | None:
        """Set ``key`` to ``value``; returns the previous value, None if there was none."""
        result: V | None = await self._call(self._requests.put(key, value))
        return result

    async def get(self, key: Key) -> V:
        """The value of ``key``; raises ``KeyNotFound`` if it does not exist."""
        result: V = await self._call(self._requests.get(key))
        return result

    async def delete(self, key: Key) -> bool:
        """Remove ``key``; returns whether it existed."""
        return bool(await self._call(self._requests.delete(key)))

    async def append(self, key: Key, value: Value) -> int:
        """Append to the value of ``key``; returns the new length in bytes."""
        return int(await self._call(self._requests.append(key, value)))

    async def incr(self, key: Key, by: int = 1) -> int:
        """Add ``by`` to the integer at ``key``; returns the new value."""
        return int(await self._call(self._requests.incr(key, by)))

    async def cas(self, key: Key, expected: Value | None, new: Value | None) -> bool:
        """Compare-and-set (see ``raftkv.Client.cas``); returns whether it wrote."""
        return bool(await self._call(self._requests.cas(key, expected, new)))

    def scan(self, prefix: Key = b"", *, page_size: int = 100) -> AsyncIterator[V]:
        """The keys that start with ``prefix``, in byte order (see ``Client.scan``)."""
        first = self._requests.scan_page(prefix, b"0", page_size)  # Validate now.
        return self._scan(prefix, page_size, first)

    def items(self, prefix: Key = b"", *, page_size: int = 100) -> AsyncIterator[tuple[V, V]]:
        """(key, value) pairs of the keys that start with ``prefix``."""
        first = self._requests.scan_page(prefix, b"0", page_size)
        return self._items(prefix, page_size, first)

    async def _scan(self, prefix: Key, page_size: int, request: Request) -> AsyncIterator[V]:
        decode = self._requests.decode
        async for keys in self._pages(prefix, page_size, request):
            for key in keys:
                yield decode(key)

    async def _items(
        self, prefix: Key, page_size: int, request: Request
    ) -> AsyncIterator[tuple[V, V]]:
        decode = self._requests.decode
        async for keys in self._pages(prefix, page_size, request):
            if not keys:
                continue
            values = await self._call(self._requests.mget(keys))
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    yield decode(key), decode(value)

    async def _pages(
        self, prefix: Key, page_size: int, request: Request
    ) -> AsyncIterator[list[bytes]]:
        while True:
            cursor, keys = await self._call(request)
            yield keys
            if cursor in (b"0", 0, "0"):
                return
            request = self._requests.scan_page(prefix, cursor, page_size)

    # --- the cluster ---------------------------------------------------------------------

    async def members(self) -> list[Member]:
        """The members of the cluster, as the node that answers knows them."""
        result: list[Member] = await self._call(self._requests.members())
        return result

    async def status(self) -> Status:
        """The Raft status of the node that answers (see ``endpoint``)."""
        result: Status = await self._call(self._requests.status())
        return result

    async def add_member(self, node_id: int, url: str, learner: bool = False) -> None:
        """Add node ``node_id`` with peer URL ``url``; returns once applied."""
        await self._call(self._requests.add_member(node_id, url, learner))

    async def remove_member(self, node_id: int) -> None:
        """Remove node ``node_id``; returns once applied."""
        await self._call(self._requests.remove_member(node_id))

    async def transfer_leader(self, node_id: int) -> None:
        """Move leadership to node ``node_id``; returns once it leads."""
        await self._call(self._requests.transfer_leader(node_id))

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint the client currently sends its requests to."""
        return format_endpoint(self._endpoints[self._calls.current])

    @property
    def endpoints(self) -> list[str]:
        return [format_endpoint(endpoint) for endpoint in self._endpoints]

    async def aclose(self) -> None:
        """Close every connection. The client cannot be used afterwards."""
        self._closed = True
        for pool in self._pools:
            await pool.aclose()

    async def __aenter__(self) -> AsyncClient[V]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"using {self.endpoint}"
        return f"<raftkv.AsyncClient {','.join(self.endpoints)} ({state})>"

    # --- I/O -----------------------------------------------------------------------------

    async def _call(self, request: Request) -> Any:
        if self._closed:
            raise errors.InvalidRequest("the client is closed")
        steps = self._calls.run(request)
        outcome: Outcome | None = None
        with contextlib.closing(steps):
            try:
                while True:
                    step = steps.send(outcome)
                    if type(step) is Sleep:
                        await asyncio.sleep(step.seconds)
                        outcome = None
                    else:
                        assert type(step) is Send
                        outcome = await self._send(step)
            except StopIteration as done:
                return done.value

    async def _send(self, step: Send) -> Outcome:
        pool = cast(_Pool, self._pools[step.endpoint])
        try:
            connection = cast(_Connection, await pool.get_connection())
        except (RedisError, OSError) as exc:
            return NotSent(str(exc))
        try:
            await connection.send_command(*step.command)
            return Reply(await connection.read_response(timeout=step.timeout_s))
        except ResponseError as exc:
            return split_error(str(exc), exc.status_code)
        except (RedisError, OSError) as exc:
            await connection.disconnect()
            return Lost(str(exc))
        finally:
            await pool.release(connection)
