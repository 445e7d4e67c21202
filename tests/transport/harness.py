"""Test harness: real transports on 127.0.0.1 with their callbacks recorded.

pytest-asyncio is not used: `async_test` runs each test in its own `asyncio.run` and
then checks that the test left no task running and no socket unclosed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from raftkv.raft import Entry, EntryType, Message, MessageType
from raftkv.transport import Address, Transport, TransportConfig

CLUSTER_ID = 7
TEST_TIMEOUT_S = 10.0

#: Quick redials so that tests of failures and recoveries take milliseconds.
FAST = TransportConfig(
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
    connect_timeout_s=1.0,
    handshake_timeout_s=1.0,
)


def _loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:  # the runtime uses uvloop when it is installed, so test it then
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    # uvloop opens two process-wide descriptors with its first loop; open them now so
    # that the per-test descriptor check below does not count them.
    uvloop.new_event_loop().close()
    return factories


LOOP_FACTORIES = _loop_factories()


def _open_fds() -> set[int]:
    # Cheaper than gc.collect() to catch an unclosed socket, and independent of when
    # the garbage collector would get to it.
    return {int(name) for name in os.listdir("/proc/self/fd")}


def async_test(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test once per event loop implementation (asyncio, and uvloop when
    installed), each in a fresh loop, then check that nothing was left behind."""

    def run(*args: object, event_loop: str, **kwargs: object) -> None:
        async def main() -> None:
            await asyncio.wait_for(test(*args, **kwargs), TEST_TIMEOUT_S)
            leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            assert not leftover, f"tasks still running after the test: {leftover}"

        fds_before = _open_fds()
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[event_loop]) as runner:
            runner.run(main())
        leaked = _open_fds() - fds_before
        assert not leaked, f"file descriptors left open by the test: {sorted(leaked)}"

    signature = inspect.signature(test)
    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            *signature.parameters.values(),
            inspect.Parameter("event_loop", inspect.Parameter.KEYWORD_ONLY),
        ],
        return_annotation=None,
    )
    parametrize = pytest.mark.parametrize("event_loop", list(LOOP_FACTORIES))
    return parametrize(run)  # type: ignore[no-any-return]


class Node:
    """A Transport plus everything its callbacks were given."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, Address] | None = None,
        *,
        cluster_id: int = CLUSTER_ID,
        config: TransportConfig = FAST,
        port: int = 0,
        on_messages: Callable[[list[Message]], None] | None = None,
    ) -> None:
        self.id = node_id
        self.batches: list[list[Message]] = []
        self.unreachable: list[int] = []
        self.snapshot_status: list[tuple[int, bool]] = []
        self.transport = Transport(
            node_id,
            cluster_id,
            ("127.0.0.1", port),
            peers or {},
            on_messages or self.batches.append,
            self.unreachable.append,
            lambda peer_id, ok: self.snapshot_status.append((peer_id, ok)),
            config=config,
        )

    @property
    def received(self) -> list[Message]:
        return [message for batch in self.batches for message in batch]

    @property
    def address(self) -> Address:
        return self.transport.address

    def send(self, *messages: Message) -> None:
        self.transport.send(messages)


@contextlib.asynccontextmanager
async def running(*nodes: Node) -> AsyncIterator[None]:
    try:
        for node in nodes:
            await node.transport.start()
        yield
    finally:
        for node in nodes:
            await node.transport.stop()


@contextlib.asynccontextmanager
async def cluster(count: int, *, config: TransportConfig = FAST) -> AsyncIterator[list[Node]]:
    """`count` nodes, ids 1..count, all peers of each other."""
    nodes = [Node(node_id, config=config) for node_id in range(1, count + 1)]
    async with running(*nodes):
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.transport.add_peer(other.id, *other.address)
        yield nodes


async def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


async def connected(sender: Node, receiver: Node) -> None:
    """Send heartbeats until one arrives: the sender's connection is up."""
    before = len(receiver.received)

    def arrived() -> bool:
        if len(receiver.received) > before:
            return True
        sender.send(heartbeat(sender.id, receiver.id))
        return False

    await wait_for(arrived, f"a connection from node {sender.id} to node {receiver.id}")


def heartbeat(frm: int, to: int, commit: int = 0) -> Message:
    return Message(MessageType.HEARTBEAT, to, frm, term=1, commit=commit)


def append(frm: int, to: int, index: int, entry_count: int = 64, size: int = 100) -> Message:
    entries = tuple(
        Entry(1, index + 1 + i, EntryType.NORMAL, bytes([i % 256]) * size)
        for i in range(entry_count)
    )
    return Message(MessageType.APP, to, frm, 1, 1, index, entries, index)


@contextlib.asynccontextmanager
async def raw_connection(
    address: Address,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> bytes:
    """Read until the other side closes (or resets) the connection; return what came."""
    received = bytearray()
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received += chunk
    return bytes(received)
