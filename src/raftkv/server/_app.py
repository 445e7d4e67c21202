"""Running a whole node: the runtime plus its client APIs, started and stopped as one."""

from __future__ import annotations

import asyncio
import errno
import logging

from ._http import HttpServer
from ._node import Node, StartupError
from ._options import NodeOptions
from ._resp import RespServer
from ._rest import RestApi

log = logging.getLogger("raftkv.server")


class Server:
    """One raftkv node with its client APIs: REST (unless `serve_rest` is off) and
    RESP (unless its port is 0)."""

    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.node = Node(options)
        self.rest: HttpServer | None = None
        self.resp: RespServer | None = None

    async def start(self) -> None:
        await self.node.start()
        try:
            if self.options.serve_rest:
                await self._start_rest()
            if self.options.resolved_rpc_port != 0:
                await self._start_resp()
        except BaseException:
            await self.stop()
            raise

    async def _start_rest(self) -> None:
        options = self.options
        api = RestApi(self.node)
        rest = HttpServer(
            api.handle,
            max_body_bytes=options.max_value_bytes,
            too_large=api.too_large,
            on_response=api.count_response,
            fast_handler=api.fast,
        )
        try:
            await rest.start(options.listen_host, options.port)
        except OSError as exc:
            message = _bind_error("REST", options.listen_host, options.port, exc)
            raise StartupError(message) from None
        self.rest = rest
        log.info("node %d serving REST on %s:%d", options.id, options.listen_host, options.port)

    async def _start_resp(self) -> None:
        options = self.options
        resp = RespServer(self.node, options.listen_host, options.resolved_rpc_port)
        try:
            await resp.start()
        except OSError as exc:
            port = options.resolved_rpc_port
            raise StartupError(_bind_error("RESP", options.listen_host, port, exc)) from None
        self.resp = resp
        log.info("node %d serving RESP on %s:%d", options.id, options.listen_host, resp.port)

    async def stop(self) -> None:
        """Stop serving. A leader first hands leadership to another voter (so the
        cluster need not wait out an election timeout). The node stops before the
        REST server closes, so requests still waiting (say, for a quorum) fail at
        once (503) instead of holding up the shutdown until their timeout."""
        await self.node.hand_over_leadership()
        if self.resp is not None:
            resp, self.resp = self.resp, None
            await resp.stop()
        await self.node.stop()
        if self.rest is not None:
            rest, self.rest = self.rest, None
            await rest.stop()

    async def wait_removed(self) -> None:
        await self.node.removed.wait()


def _bind_error(api: str, host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot serve the {api} API on {host}:{port}: the port is already in use"
    return f"cannot serve the {api} API on {host}:{port}: {exc.strerror or exc}"


async def run_until_signal(server: Server, stop: asyncio.Event) -> None:
    await server.start()
    removed = asyncio.create_task(server.wait_removed())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({removed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        removed.cancel()
        stopped.cancel()
        await server.stop()
