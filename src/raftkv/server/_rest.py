"""The REST API: raftexample's interface at the root, an extended API under /v1/.

Errors are translated once, here, from `raftkv.errors` into HTTP statuses with a
one-line JSON body `{"error": "..."}`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import errors
from ..kv import (
    CasResult,
    CommandError,
    ErrorCode,
    encode_cas,
    encode_cas_revision,
    encode_delete,
    encode_put,
)
from ..raft import ConfChangeType
from ._node import Node

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_OF: list[tuple[type[errors.RaftkvError], int]] = [
    (errors.ValueTooLarge, 413),
    (errors.InvalidRequest, 400),
    (errors.KeyNotFound, 404),
    (errors.PreconditionFailed, 412),
    (errors.Conflict, 409),
    (errors.Removed, 410),
    (errors.Unavailable, 503),
]

_ROOT_METHODS = "GET, PUT, POST, DELETE"
#: Root paths the API itself answers (GET only), so not usable as keys at the root.
_RESERVED_PATHS = frozenset({"health", "metrics"})
#: The methods of each fixed /v1 path, for the 405 answer to any other method.
_V1_METHODS = {
    "/v1/status": "GET",
    "/v1/members": "GET, POST",
    "/v1/leader": "POST",
    "/v1/snapshot": "POST",
    "/v1/kv": "GET",
}
_KEY_METHODS = "GET, PUT, DELETE"


def error_response(error: errors.RaftkvError) -> web.Response:
    status = next((code for kind, code in _STATUS_OF if isinstance(error, kind)), 500)
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response({"error": str(error)}, status=status, headers=headers)


def raise_for_result(result: Any) -> Any:
    """Turn a state machine error result into the matching exception."""
    if isinstance(result, CommandError):
        if result.code is ErrorCode.VALUE_TOO_LARGE:
            raise errors.ValueTooLarge(result.message)
        if result.code in (ErrorCode.NOT_AN_INTEGER, ErrorCode.OVERFLOW):
            raise errors.WrongType(result.message)
        raise errors.InvalidRequest(result.message)
    return result


class RestApi:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.max_value_bytes = node.options.max_value_bytes

    def make_app(self) -> web.Application:
        # A body over the cap is refused by aiohttp itself with 413 before it is read.
        app = web.Application(
            client_max_size=self.max_value_bytes,
            middlewares=[self._errors_middleware],
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/members", self.list_members)
        app.router.add_post("/v1/members", self.add_member_v1)
        app.router.add_delete("/v1/members/{id}", self.remove_member_v1)
        app.router.add_post("/v1/leader", self.transfer_leader)
        app.router.add_post("/v1/snapshot", self.snapshot)
        app.router.add_get("/v1/kv", self.list_keys)
        app.router.add_route("*", "/v1/kv/{key:.+}", self.kv_v1)
        app.router.add_route("*", "/v1/{tail:.*}", self.unknown_v1)
        app.router.add_route("*", "/{key:.*}", self.root)
        return app

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except errors.RaftkvError as error:
            response = error_response(error)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(
                errors.ValueTooLarge(
                    f"the value is larger than --max-value-bytes ({self.max_value_bytes})"
                )
            )
        self.node.metrics.requests.labels(api="rest", status=str(response.status)).inc()
        return response

    # --- raftexample's interface -------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        method = request.method
        if key in _RESERVED_PATHS:
            # GET /health and GET /metrics are the API's own: a key stored under
            # those names could never be read back at the root.
            return web.json_response(
                {"error": f"method {method} is not allowed on /{key}; use /v1/kv/{key}"},
                status=405,
                headers={"Allow": "GET"},
            )
        if method == "PUT":
            await self._put(_key_bytes(key), await self._read_value(request))
            return web.Response(status=204)
        if method == "GET":
            return await self._get(_key_bytes(key), "linearizable")
        if method == "POST":
            url = (await request.read()).decode("utf-8", "replace").strip()
            await self.node.change_membership(ConfChangeType.ADD_NODE, _node_id(key), url)
            return web.Response(status=204)
        if method == "DELETE":
            await self.node.change_membership(ConfChangeType.REMOVE_NODE, _node_id(key))
            return web.Response(status=204)
        return web.json_response(
            {"error": f"method {method} is not allowed here"},
            status=405,
            headers={"Allow": _ROOT_METHODS},
        )

    # --- /v1/kv ------------------------------------------------------------------------

    async def kv_v1(self, request: web.Request) -> web.StreamResponse:
        key = _key_bytes(request.match_info["key"])
        method = request.method
        if method == "GET":
            return await self._get(key, request.query.get("consistency", "linearizable"))
        if method == "PUT":
            return await self._put_v1(request, key)
        if method == "DELETE":
            previous = await self.node.write(encode_delete(key))
            if previous is None:
                raise errors.KeyNotFound(f"key {key!r} does not exist")
            return web.Response(status=204)
        return web.json_response(
            {"error": f"method {method} is not allowed here"},
            status=405,
            headers={"Allow": _KEY_METHODS},
        )

    async def _put_v1(self, request: web.Request, key: bytes) -> web.StreamResponse:
        value = await self._read_value(request)
        query = request.query
        if "prev_value" in query or query.get("prev_exist") == "false":
            expected = query["prev_value"].encode() if "prev_value" in query else None
            result = raise_for_result(await self.node.write(encode_cas(key, expected, value)))
            return self._cas_response(key, result)
        if "prev_revision" in query:
            try:
                revision = int(query["prev_revision"])
            except ValueError:
                raise errors.InvalidRequest("prev_revision must be an integer") from None
            command = encode_cas_revision(key, revision, value)
            result = raise_for_result(await self.node.write(command))
            return self._cas_response(key, result)
        previous = await self._put(key, value)
        body = {"previous": previous.decode("utf-8", "replace") if previous is not None else None}
        return web.json_response(body, status=200)

    def _cas_response(self, key: bytes, result: CasResult) -> web.StreamResponse:
        if not result.succeeded:
            current = None if result.value is None else result.value.decode("utf-8", "replace")
            raise errors.PreconditionFailed(
                f"compare failed for key {key!r}: current value {current!r}, "
                f"mod revision {result.mod_revision}"
            )
        return web.json_response({"mod_revision": result.mod_revision}, status=200)

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        prefix = query.get("prefix", "").encode()
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            raise errors.InvalidRequest("limit must be an integer") from None
        if not 1 <= limit <= 100_000:
            raise errors.InvalidRequest("limit must be between 1 and 100000")
        start_after = query["start_after"].encode() if "start_after" in query else None
        await self._barrier(query.get("consistency", "linearizable"))
        page = self.node.state_machine.scan(prefix, limit, start_after)
        return web.json_response(
            {
                "kvs": [
                    {"key": k.decode("utf-8", "replace"), "value": v.decode("utf-8", "replace")}
                    for k, v in page
                ],
                "more": len(page) == limit,
            }
        )

    # --- shared kv helpers ---------------------------------------------------------------

    async def _read_value(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_value_bytes:
            raise errors.ValueTooLarge(
                f"the value is {request.content_length} bytes; --max-value-bytes is "
                f"{self.max_value_bytes}"
            )
        value = await request.read()
        if len(value) > self.max_value_bytes:  # A chunked body has no Content-Length.
            raise errors.ValueTooLarge(
                f"the value is {len(value)} bytes; --max-value-bytes is {self.max_value_bytes}"
            )
        return value

    async def _put(self, key: bytes, value: bytes) -> bytes | None:
        result: bytes | None = raise_for_result(await self.node.write(encode_put(key, value)))
        return result

    async def _barrier(self, consistency: str) -> None:
        if consistency == "linearizable":
            await self.node.read_barrier()
        elif consistency == "serializable":
            self.node.check_available()
        else:
            raise errors.InvalidRequest(
                f"consistency must be linearizable or serializable, not {consistency!r}"
            )

    async def _get(self, key: bytes, consistency: str) -> web.StreamResponse:
        await self._barrier(consistency)
        found = self.node.state_machine.get_with_revision(key)
        if found is None:
            raise errors.KeyNotFound(f"key {key.decode('utf-8', 'replace')!r} does not exist")
        value, revision = found
        return web.Response(body=value, headers={"X-Raftkv-Mod-Revision": str(revision)})

    # --- cluster -----------------------------------------------------------------------

    async def list_members(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"members": self.node.status()["members"]})

    async def add_member_v1(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        node_id = body.get("id")
        url = body.get("url")
        if not isinstance(node_id, int) or not isinstance(url, str):
            raise errors.InvalidRequest('expected {"id": <int>, "url": "http://host:port"}')
        kind = ConfChangeType.ADD_LEARNER if body.get("learner") else ConfChangeType.ADD_NODE
        await self.node.change_membership(kind, node_id, url)
        return web.json_response({"members": self.node.status()["members"]}, status=201)

    async def remove_member_v1(self, request: web.Request) -> web.StreamResponse:
        node_id = _node_id(request.match_info["id"])
        await self.node.change_membership(ConfChangeType.REMOVE_NODE, node_id)
        return web.Response(status=204)

    async def transfer_leader(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        node_id = body.get("id")
        if not isinstance(node_id, int):
            raise errors.InvalidRequest('expected {"id": <int>}')
        await self.node.transfer_leader(node_id)
        return web.json_response({"leader": node_id})

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.node.snapshot_now())

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.node.status())

    async def health(self, request: web.Request) -> web.StreamResponse:
        healthy = self.node.is_healthy()
        return web.json_response(
            {"health": "true" if healthy else "false"}, status=200 if healthy else 503
        )

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = self.node.render_metrics()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def unknown_v1(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        allowed = _V1_METHODS.get(path)
        if allowed is None and path.startswith("/v1/members/"):
            allowed = "DELETE"
        if allowed is not None:
            return web.json_response(
                {"error": f"method {request.method} is not allowed on {path}"},
                status=405,
                headers={"Allow": allowed},
            )
        return web.json_response({"error": f"no such API path: {request.path}"}, status=404)


def _key_bytes(key: str) -> bytes:
    if not key:
        raise errors.InvalidRequest("the key is empty; use PUT /<key> with a non-empty key")
    return key.encode("utf-8", "surrogateescape")


def _node_id(text: str) -> int:
    try:
        node_id = int(text)
    except ValueError:
        raise errors.InvalidRequest(f"{text!r} is not a node id (a positive integer)") from None
    if node_id <= 0:
        raise errors.InvalidRequest(f"node id must be a positive integer, got {node_id}")
    return node_id


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise errors.InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("the body must be a JSON object")
    return body
