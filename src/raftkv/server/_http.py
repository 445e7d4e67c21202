"""A lean HTTP/1.1 server: `asyncio.Protocol` plus the httptools (llhttp) parser.

Theory of operation. Each connection is an `HttpConnection`. Bytes go to the parser;
its callbacks build one `Request` at a time (URL, a few headers the server itself
needs, body). Every complete request leaves a slot in the connection's queue, and so
does every reply the server makes itself (an interim `100 Continue`, a 400 or 413
refusal): the queue is the connection's exchanges in the order they arrived. The
connection serves the request at the head of the queue in a task running the
application's async handler, one request at a time as aiohttp did, so that a
pipelined `PUT k` then `GET k` reads what the PUT wrote. When the task ends its reply
is written, with every finished reply queued behind it, in one `transport.write`,
and the next request starts. A reply therefore never overtakes an earlier one.
An application's optional `fast_handler` serves its most common requests without a
task: it answers at once, or hands back a future and a function that turns the
settled future into the reply (`Deferred`), run from the future's done callback.

A connection is open, then closing: after a request that does not keep the
connection alive (HTTP/1.0 without keep-alive, `Connection: close`), after a
malformed request (400), after a body over the limit (413), or when the server
stops. A closing connection reads nothing more and closes once its queue is empty.
A client going away does not cancel the request being served: its handler finishes
(a write may already be proposed) and the reply is dropped, with the requests queued
behind it.

Bounds: the request line and each header at most `MAX_LINE_BYTES`, at most
`MAX_HEADERS` headers, a request head at most `MAX_HEAD_BYTES` (plus one read) in
the parser's buffer; a body at most `max_body_bytes` (a larger declared length gets
413 at once, before `100 Continue` and without reading the body; a chunked body is
cut off with 413 when it grows past the limit). A connection stops reading while
`MAX_PENDING_REQUESTS` requests are queued (pipelining), and stops reading and
serving while its transport asks to pause writing (a client that does not read its
replies), so what the node buffers for one connection is bounded by one read of
requests and one reply beyond the transport's high-water mark. A connection idle
for `idle_timeout_s` is closed: nothing queued and nothing received, or a client that
has read none of its replies.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools

log = logging.getLogger("raftkv.http")

MAX_LINE_BYTES = 8190
MAX_HEADERS = 128
MAX_HEAD_BYTES = 64 * 1024
MAX_PENDING_REQUESTS = 64
_RESUME_AT = MAX_PENDING_REQUESTS // 2
IDLE_TIMEOUT_S = 75.0

JSON_TYPE = "application/json; charset=utf-8"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_lines(version: bytes) -> dict[int, bytes]:
    return {s.value: b"%s %d %s\r\n" % (version, s.value, s.phrase.encode()) for s in HTTPStatus}


_STATUS_LINES_11 = _status_lines(b"HTTP/1.1")
_STATUS_LINES_10 = _status_lines(b"HTTP/1.0")
_METHODS = {m: m.decode() for m in (b"GET", b"PUT", b"POST", b"DELETE", b"HEAD")}


@dataclass(slots=True)
class Response:
    """What a handler returns. `headers` are extra header lines beyond Content-Type
    and Content-Length (a 204 gets neither)."""

    status: int
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(
    value: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return Response(status, json.dumps(value).encode(), JSON_TYPE, headers)


def error_json(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return json_response({"error": message}, status, headers)


class Request:
    """One parsed request. `path` is the target's path as sent (still
    percent-encoded), `query_string` what followed the `?`."""

    __slots__ = (
        "_query",
        "body",
        "head",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "version",
    )

    def __init__(
        self, method: str, path: str, query_string: str, body: bytes, version: str, keep_alive: bool
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.body = body
        self.version = version
        self.keep_alive = keep_alive
        self.head = method == "HEAD"
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, decoded as forms are (`+` is a space); the first
        value of a repeated name wins."""
        if self._query is None:
            query: dict[str, str] = {}
            for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                query.setdefault(name, value)
            self._query = query
        return self._query


Handler = Callable[[Request], Awaitable[Response]]


class Deferred:
    """A reply to come: `finish(future)` makes it once `future` is done (it may
    raise, which answers 500, as a handler's exception does)."""

    __slots__ = ("finish", "future")

    def __init__(
        self, future: asyncio.Future[Any], finish: Callable[[asyncio.Future[Any]], Response]
    ) -> None:
        self.future = future
        self.finish = finish


#: Serves a request without a task when it can: a Response now, a Deferred one, or
#: None to leave the request to the `Handler`.
FastHandler = Callable[[Request], "Response | Deferred | None"]


class _Refused(Exception):
    """Raised in a parser callback to refuse the request being parsed: the server
    answers `response` and closes the connection."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class HttpServer:
    """Serves `handler` on one listening socket.

    `too_large(declared_length)` makes the 413 answer for a body over
    `max_body_bytes` (`declared_length` is None for a chunked body), and
    `on_response(status)` is called once for every response written, including the
    server's own 400, 413 and 500 answers. `fast_handler`, when given, is offered
    every request first (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        too_large: Callable[[int | None], Response],
        on_response: Callable[[int], None] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        fast_handler: FastHandler | None = None,
    ) -> None:
        self.handler = handler
        self.fast_handler = fast_handler
        self.max_body_bytes = max_body_bytes
        self.too_large = too_large
        self.on_response = on_response
        self.idle_timeout_s = idle_timeout_s
        self.connections: set[HttpConnection] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0 picks a free one, see `self.port`). Raises
        OSError when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._sweeper = loop.call_later(self.idle_timeout_s / 4, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        idle_since = loop.time() - self.idle_timeout_s
        for connection in list(self.connections):
            connection.close_if_idle(idle_since)
        self._sweeper = loop.call_later(self.idle_timeout_s / 4, self._sweep)

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop listening, give the requests in progress up to `grace_s` to finish
        (the node fails its waiting requests when it stops, so they answer at
        once), write their replies, and close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for connection in self.connections:
            connection.closing = True  # Read nothing more; close once answered.
        pending = [task for c in self.connections if (task := c.pending_task()) is not None]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
        for connection in list(self.connections):
            connection.close()
        await server.wait_closed()


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        #: Replies and requests in arrival order: bytes are a finished reply, a
        #: Request is waiting to be served or (at the head) being served.
        self.queue: collections.deque[bytes | Request] = collections.deque()
        #: invariant: not None only while the Request at the head of the queue is served
        #: (by a task running the handler, or a Deferred's future).
        self.serving: asyncio.Future[Any] | None = None
        self.closing = False
        self.last_active = 0.0
        self.read_paused = False
        self.write_paused = False
        self._loop = asyncio.get_running_loop()
        # The request being parsed.
        self._url: list[bytes] = []
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._header_count = 0
        self._head_bytes = 0
        self._in_head = True
        self._has_host = False
        self._expect_continue = False
        self._declared_length: int | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.last_active = self._loop.time()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_active = self._loop.time()
        self._update_reading()
        if self.serving is None:
            self._advance()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self._loop.time()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: answered as a plain request (this
            # server speaks nothing else), and nothing after it can be parsed.
            self._stop_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._answer_and_close(cause.response)
            else:
                log.error("unexpected error parsing a request", exc_info=cause or exc)
                self._answer_and_close(error_json(500, f"internal error: {cause or exc}"))
        except httptools.HttpParserError as exc:
            if not self.closing:  # Bytes after a `Connection: close` request are ignored.
                self._answer_and_close(_bad_request(str(exc)))
        else:
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
                self._answer_and_close(_bad_request("the request head is too large"))
        self._update_reading()

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url.clear()
        self._header_count = 0
        self._has_host = False
        self._expect_continue = False
        self._declared_length = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        if len(url) > MAX_LINE_BYTES or (
            len(self._url) > 1 and sum(map(len, self._url)) > MAX_LINE_BYTES
        ):
            raise _Refused(_bad_request(f"the URL is longer than {MAX_LINE_BYTES} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            raise _Refused(_bad_request(f"more than {MAX_HEADERS} headers"))
        if len(name) + len(value) > MAX_LINE_BYTES:
            raise _Refused(_bad_request(f"a header is longer than {MAX_LINE_BYTES} bytes"))
        lowered = name.lower()
        if lowered == b"host":
            self._has_host = True
        elif lowered == b"content-length":
            self._declared_length = int(value)  # The parser has checked the digits.
        elif lowered == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._body.clear()
        self._body_bytes = 0
        version = self.parser.get_http_version()
        if version == "1.1" and not self._has_host:
            raise _Refused(_bad_request("an HTTP/1.1 request needs a Host header"))
        declared = self._declared_length
        if declared is not None and declared > self.server.max_body_bytes:
            # Refused before `100 Continue`: the client need not send the body.
            raise _Refused(self.server.too_large(declared))
        if self._expect_continue and version == "1.1":
            self._queue(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.server.max_body_bytes:  # Chunked: no length declared.
            raise _Refused(self.server.too_large(None))
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        method = parser.get_method()
        request = Request(
            _METHODS.get(method) or method.decode("latin-1"),
            *_split_target(url),
            body,
            parser.get_http_version(),
            parser.should_keep_alive(),
        )
        self._in_head = True
        self.queue.append(request)
        if not request.keep_alive:
            self.closing = True  # Served, then the connection closes.
        if self.serving is None:
            self._advance()

    # --- replies -------------------------------------------------------------------------

    async def _serve(self, request: Request) -> None:
        """Serve the request at the head of the queue, then write its reply (and any
        ready behind it) and start the next. The task writes its own reply rather
        than leaving it to a done callback, which would cost one more loop turn."""
        try:
            response = await self.server.handler(request)
        except Exception as exc:
            response = _internal_error(request, exc)
        except asyncio.CancelledError:
            self._give_up()
            raise
        self._served(request, response)

    def _served(self, request: Request, response: Response) -> None:
        """The request at the head of the queue has its reply: write it (and any
        ready behind it) and start the next."""
        assert self.queue[0] is request
        self.queue.popleft()
        self.serving = None
        self._advance(self._render(response, request))

    def _give_up(self) -> None:
        """The server is stopping and cancelled the request being served: nothing
        more is answered on this connection."""
        self.queue.clear()
        self.closing = True
        self.serving = None

    def _start(self, request: Request) -> bytes | None:
        """Start serving the request at the head of the queue: its reply if it is
        answered at once, else None (and `serving` is set)."""
        fast = self.server.fast_handler
        if fast is not None:
            try:
                answer = fast(request)
            except Exception as exc:
                answer = _internal_error(request, exc)
            if isinstance(answer, Response):
                return self._render(answer, request)
            if answer is not None:
                deferred = answer
                self.serving = deferred.future
                deferred.future.add_done_callback(
                    lambda future: self._finish(request, deferred.finish, future)
                )
                return None
        self.serving = self._loop.create_task(self._serve(request))
        return None

    def _finish(
        self,
        request: Request,
        finish: Callable[[asyncio.Future[Any]], Response],
        future: asyncio.Future[Any],
    ) -> None:
        """A Deferred's future is done: write its reply, as `_serve` does."""
        if future.cancelled():
            self._give_up()
            return
        try:
            response = finish(future)
        except Exception as exc:
            response = _internal_error(request, exc)
        self._served(request, response)

    def _render(self, response: Response, request: Request | None) -> bytes:
        status = response.status
        if self.server.on_response is not None:
            self.server.on_response(status)
        if request is not None and request.version == "1.0":
            head = _STATUS_LINES_10.get(status) or b"HTTP/1.0 %d Unknown\r\n" % status
            connection = b"Connection: keep-alive\r\n" if request.keep_alive else b""
        else:
            head = _STATUS_LINES_11.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
            keep_alive = request is not None and request.keep_alive
            connection = b"" if keep_alive else b"Connection: close\r\n"
        extra = (
            b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in response.headers)
            if response.headers
            else b""
        )
        if status == 204 or status == 304 or status < 200:
            return b"%s%s%s\r\n" % (head, extra, connection)
        body = response.body
        return b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s\r\n%s" % (
            head,
            response.content_type.encode(),
            len(body),
            extra,
            connection,
            b"" if request is not None and request.head else body,
        )

    def _queue(self, reply: bytes) -> None:
        self.queue.append(reply)
        if self.serving is None:
            self._advance()

    def _answer_and_close(self, response: Response) -> None:
        """Answer a request the server refuses itself, then close the connection."""
        self.closing = True
        self._queue(self._render(response, None))

    def _stop_reading(self) -> None:
        self.closing = True
        if self.serving is None:
            self._advance()

    def _advance(self, reply: bytes = b"") -> None:
        """Write `reply` and the replies queued behind it, in order, and start
        serving the next request; close the connection when it is closing and
        nothing is left. Called only while no request is being served."""
        queue = self.queue
        out = [reply] if reply else []
        while queue:
            head = queue[0]
            if isinstance(head, Request):
                if self.write_paused:  # The client is not reading: wait.
                    break
                answered = self._start(head)
                if answered is None:
                    break
                head = answered
            out.append(head)
            queue.popleft()
        transport = self.transport
        if transport is None:  # The client has gone: nothing more to serve.
            queue.clear()
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.closing and not queue:
            transport.close()
        elif self.read_paused:
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        pending = len(self.queue)
        if self.read_paused:
            if not self.write_paused and pending <= _RESUME_AT:
                self.read_paused = False
                transport.resume_reading()
        elif self.write_paused or pending >= MAX_PENDING_REQUESTS:
            self.read_paused = True
            transport.pause_reading()

    # --- lifetime ------------------------------------------------------------------------

    def pending_task(self) -> asyncio.Future[Any] | None:
        task = self.serving
        return task if task is not None and not task.done() else None

    def close_if_idle(self, idle_since: float) -> None:
        """Close the connection if nothing happened on it since `idle_since`: no
        request queued and nothing received, or its client has not read any of
        its replies (writing stayed paused)."""
        idle = not self.queue or self.write_paused
        if idle and self.last_active < idle_since and self.transport is not None:
            self.closing = True
            self.transport.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error serving %s %s", request.method, request.path)
    return error_json(500, f"internal error: {exc}")


def _bad_request(reason: str) -> Response:
    return error_json(400, f"bad request: {reason}")


def _split_target(url: bytes) -> tuple[str, str]:
    """The path (still percent-encoded) and query string of a request target. An
    absolute-form target (`http://host/path`) gives its path; `*` and authority
    forms are returned whole, as a path no route matches."""
    target = url.decode("latin-1")
    if "#" in target:
        target = target.partition("#")[0]
    if target[:1] == "/":
        path, _, query = target.partition("?")
        return path, query
    if "://" in target:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return target, ""
        return (parsed.path or b"/").decode("latin-1"), (parsed.query or b"").decode("latin-1")
    return target, ""
