"""The REST API: raftexample's interface at the root, an extended API under /v1/.

Errors are translated once, here, from `raftkv.errors` into HTTP statuses with a
one-line JSON body `{"error": "..."}`.

Routing is a dispatch on the first path segment. Paths are matched as aiohttp (the
server this API first ran on) matched them, which clients may rely on: percent
escapes are decoded before matching except `%2F` and `%25`, so an escaped slash
stays inside its segment (`/a%2Fb` is the root key `a/b`, `/v1%2Fstatus` the root
key `v1/status`); then the key or id is decoded whole. An escape that does not
decode (`%ZZ`, or bytes that are not UTF-8) stays as it was written. HEAD is
answered wherever GET is, without the body.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import partial
from typing import Any

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
from ._http import Deferred, Request, Response, error_json, json_response
from ._node import Node

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
_RETRY_AFTER = (("Retry-After", "1"),)
_NO_CONTENT = Response(204)


def error_response(error: errors.RaftkvError) -> Response:
    status = next((code for kind, code in _STATUS_OF if isinstance(error, kind)), 500)
    return error_json(status, str(error), _RETRY_AFTER if status == 503 else ())


def _finish_put(write: asyncio.Future[Any]) -> Response:
    try:
        raise_for_result(write.result())
    except errors.RaftkvError as error:
        return error_response(error)
    return _NO_CONTENT


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
        self._request_keys: dict[int, tuple[str, str]] = {}

    # --- hooks for the HTTP server -------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except errors.RaftkvError as error:
            return error_response(error)

    def too_large(self, declared_length: int | None) -> Response:
        """The 413 answer for a body over --max-value-bytes (`declared_length` is
        None when the body is chunked and was cut off while read)."""
        if declared_length is None:
            message = f"the value is larger than --max-value-bytes ({self.max_value_bytes})"
        else:
            message = (
                f"the value is {declared_length} bytes; --max-value-bytes is {self.max_value_bytes}"
            )
        return error_response(errors.ValueTooLarge(message))

    def count_response(self, status: int) -> None:
        key = self._request_keys.get(status)
        if key is None:
            key = self._request_keys[status] = ("rest", str(status))
        self.node.metrics.requests[key] += 1

    def fast(self, request: Request) -> Response | Deferred | None:
        """The root's plain PUT and GET (raftexample's interface, what most clients
        and every benchmark use) without a task: the write's or the read barrier's
        future is finished by a callback (see `HttpServer`). None for everything
        else, which `handle` serves the same way, only slower."""
        method = request.method
        if method != "PUT" and method != "GET":
            return None
        path = request.path
        if path[:1] != "/" or "%" in path or path.startswith("/v1/"):
            return None  # Escapes and the extended API: `handle`.
        key = path[1:]
        if not key or key in _RESERVED_PATHS:
            return None  # Their errors and answers: `handle`.
        try:
            if method == "PUT":
                command = encode_put(_key_bytes(key), request.body)
                return Deferred(self.node.submit_write(command), _finish_put)
            return Deferred(self.node.submit_read(), partial(self._finish_get, _key_bytes(key)))
        except errors.RaftkvError as error:
            return error_response(error)

    def _finish_get(self, key: bytes, barrier: asyncio.Future[None]) -> Response:
        try:
            barrier.result()
            return self._value(key)
        except errors.RaftkvError as error:
            return error_response(error)

    # --- routing -------------------------------------------------------------------------

    async def _route(self, request: Request) -> Response:
        path = request.path
        if "%" in path:
            path = _unquote(path, keep_slash=True)
        method = request.method
        if method == "HEAD":
            method = "GET"  # The HTTP server leaves out the body.
        if path.startswith("/v1/"):
            return await self._route_v1(request, method, path[4:])
        if method == "GET":
            if path == "/health":
                return self.health()
            if path == "/metrics":
                return self.metrics()
        if path[:1] != "/":  # `*` or an authority: nothing here.
            return error_json(404, f"no such API path: {request.path}")
        return await self.root(request, method, _unquote_slashes(path[1:]))

    async def _route_v1(self, request: Request, method: str, rest: str) -> Response:
        """`rest` is the path after `/v1/`, its escaped slashes still escaped."""
        if rest.startswith("kv/") and len(rest) > 3:
            return await self.kv_v1(request, method, _unquote_slashes(rest[3:]))
        if rest == "kv" and method == "GET":
            return await self.list_keys(request)
        if rest == "members":
            if method == "GET":
                return await self.list_members(request)
            if method == "POST":
                return await self.add_member_v1(request)
        if rest.startswith("members/") and method == "DELETE":
            node_id = rest[8:]
            if node_id and "/" not in node_id:
                return await self.remove_member_v1(_unquote_slashes(node_id))
        if method == "POST":
            if rest == "leader":
                return await self.transfer_leader(request)
            if rest == "snapshot":
                return json_response(await self.node.snapshot_now())
        if rest == "status" and method == "GET":
            return json_response(self.node.status())
        return self.unknown_v1(request)

    # --- raftexample's interface -------------------------------------------------------

    async def root(self, request: Request, method: str, key: str) -> Response:
        if key in _RESERVED_PATHS:
            # GET /health and GET /metrics are the API's own: a key stored under
            # those names could never be read back at the root.
            return error_json(
                405,
                f"method {request.method} is not allowed on /{key}; use /v1/kv/{key}",
                (("Allow", "GET"),),
            )
        if method == "PUT":
            await self._put(_key_bytes(key), request.body)
            return _NO_CONTENT
        if method == "GET":
            return await self._get(_key_bytes(key), "linearizable")
        if method == "POST":
            url = request.body.decode("utf-8", "replace").strip()
            await self.node.change_membership(ConfChangeType.ADD_NODE, _node_id(key), url)
            return _NO_CONTENT
        if method == "DELETE":
            await self.node.change_membership(ConfChangeType.REMOVE_NODE, _node_id(key))
            return _NO_CONTENT
        return error_json(
            405, f"method {request.method} is not allowed here", (("Allow", _ROOT_METHODS),)
        )

    # --- /v1/kv ------------------------------------------------------------------------

    async def kv_v1(self, request: Request, method: str, key_text: str) -> Response:
        key = _key_bytes(key_text)
        if method == "GET":
            consistency = request.query.get("consistency", "linearizable")
            return await self._get(key, consistency)
        if method == "PUT":
            return await self._put_v1(request, key)
        if method == "DELETE":
            previous = await self.node.submit_write(encode_delete(key))
            if previous is None:
                raise errors.KeyNotFound(f"key {key!r} does not exist")
            return _NO_CONTENT
        return error_json(
            405, f"method {request.method} is not allowed here", (("Allow", _KEY_METHODS),)
        )

    async def _put_v1(self, request: Request, key: bytes) -> Response:
        value = request.body
        query = request.query
        if "prev_value" in query or query.get("prev_exist") == "false":
            expected = query["prev_value"].encode() if "prev_value" in query else None
            command = encode_cas(key, expected, value)
            result = raise_for_result(await self.node.submit_write(command))
            return self._cas_response(key, result)
        if "prev_revision" in query:
            try:
                revision = int(query["prev_revision"])
            except ValueError:
                raise errors.InvalidRequest("prev_revision must be an integer") from None
            command = encode_cas_revision(key, revision, value)
            result = raise_for_result(await self.node.submit_write(command))
            return self._cas_response(key, result)
        previous = await self._put(key, value)
        body = {"previous": previous.decode("utf-8", "replace") if previous is not None else None}
        return json_response(body)

    def _cas_response(self, key: bytes, result: CasResult) -> Response:
        if not result.succeeded:
            current = None if result.value is None else result.value.decode("utf-8", "replace")
            raise errors.PreconditionFailed(
                f"compare failed for key {key!r}: current value {current!r}, "
                f"mod revision {result.mod_revision}"
            )
        return json_response({"mod_revision": result.mod_revision})

    async def list_keys(self, request: Request) -> Response:
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
        return json_response(
            {
                "kvs": [
                    {"key": k.decode("utf-8", "replace"), "value": v.decode("utf-8", "replace")}
                    for k, v in page
                ],
                "more": len(page) == limit,
            }
        )

    # --- shared kv helpers ---------------------------------------------------------------

    async def _put(self, key: bytes, value: bytes) -> bytes | None:
        # The HTTP server has refused bodies over --max-value-bytes already.
        result = await self.node.submit_write(encode_put(key, value))
        previous: bytes | None = raise_for_result(result)
        return previous

    async def _barrier(self, consistency: str) -> None:
        if consistency == "linearizable":
            await self.node.submit_read()
        elif consistency == "serializable":
            self.node.check_available()
        else:
            raise errors.InvalidRequest(
                f"consistency must be linearizable or serializable, not {consistency!r}"
            )

    async def _get(self, key: bytes, consistency: str) -> Response:
        await self._barrier(consistency)
        return self._value(key)

    def _value(self, key: bytes) -> Response:
        found = self.node.state_machine.get_with_revision(key)
        if found is None:
            raise errors.KeyNotFound(f"key {key.decode('utf-8', 'replace')!r} does not exist")
        value, revision = found
        return Response(200, value, headers=(("X-Raftkv-Mod-Revision", str(revision)),))

    # --- cluster -----------------------------------------------------------------------

    async def list_members(self, request: Request) -> Response:
        """The members as of now (by default), or as this node last heard."""
        await self._barrier(request.query.get("consistency", "linearizable"))
        return json_response({"members": self.node.status()["members"]})

    async def add_member_v1(self, request: Request) -> Response:
        body = _json_body(request)
        node_id = body.get("id")
        url = body.get("url")
        if not isinstance(node_id, int) or not isinstance(url, str):
            raise errors.InvalidRequest('expected {"id": <int>, "url": "http://host:port"}')
        kind = ConfChangeType.ADD_LEARNER if body.get("learner") else ConfChangeType.ADD_NODE
        await self.node.change_membership(kind, node_id, url)
        return json_response({"members": self.node.status()["members"]}, status=201)

    async def remove_member_v1(self, node_id_text: str) -> Response:
        node_id = _node_id(node_id_text)
        await self.node.change_membership(ConfChangeType.REMOVE_NODE, node_id)
        return _NO_CONTENT

    async def transfer_leader(self, request: Request) -> Response:
        body = _json_body(request)
        node_id = body.get("id")
        if not isinstance(node_id, int):
            raise errors.InvalidRequest('expected {"id": <int>}')
        await self.node.transfer_leader(node_id)
        return json_response({"leader": node_id})

    def health(self) -> Response:
        healthy = self.node.is_healthy()
        return json_response(
            {"health": "true" if healthy else "false"}, status=200 if healthy else 503
        )

    def metrics(self) -> Response:
        return Response(200, self.node.render_metrics(), "text/plain; version=0.0.4")

    def unknown_v1(self, request: Request) -> Response:
        """A path under /v1/ that no route takes: 405 on a known path, else 404."""
        shown = _unquote(request.path, keep_slash=False)
        path = shown.rstrip("/")
        allowed = _V1_METHODS.get(path)
        if allowed is None and path.startswith("/v1/members/"):
            allowed = "DELETE"
        if allowed is not None:
            return error_json(
                405,
                f"method {request.method} is not allowed on {path}",
                (("Allow", allowed),),
            )
        return error_json(404, f"no such API path: {shown}")


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


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise errors.InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("the body must be a JSON object")
    return body


_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _unquote(path: str, keep_slash: bool) -> str:
    """Decode the percent escapes of a path. An escape that is not part of valid
    UTF-8 stays as written. With `keep_slash`, `%2F` and `%25` stay escaped (as
    `%2F` and `%25`), for matching routes segment by segment."""
    return _ESCAPES.sub(lambda run: _decode_run(run.group(), keep_slash), path)


def _decode_run(run: str, keep_slash: bool) -> str:
    raw = bytes.fromhex(run.replace("%", ""))
    decoded = raw.decode("utf-8", "surrogateescape")
    if decoded.isascii() and not keep_slash:
        return decoded
    out: list[str] = []
    position = 0  # The byte offset in `raw` of the character being looked at.
    for char in decoded:
        if "\udc80" <= char <= "\udcff":  # A byte that was not UTF-8: as written.
            out.append(run[3 * position : 3 * position + 3])
            position += 1
            continue
        if keep_slash and char in "/%":
            out.append("%2F" if char == "/" else "%25")
        else:
            out.append(char)
        position += len(char.encode())
    return "".join(out)


def _unquote_slashes(text: str) -> str:
    """Finish decoding a segment matched with `keep_slash`."""
    if "%" not in text:
        return text
    return text.replace("%2F", "/").replace("%25", "%")
