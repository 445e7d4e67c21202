"""The HTTP/1.1 server under the REST API, over real sockets on 127.0.0.1.

The server runs a small test application on an event loop in a thread of its own
(port chosen free at run time); each test talks to it with plain blocking sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from raftkv.server._http import (
    CONTINUE,
    Deferred,
    HttpServer,
    Request,
    Response,
    json_response,
)
from raftkv.server._rest import _unquote, _unquote_slashes

HOST = "127.0.0.1"
MAX_BODY_BYTES = 1024
IDLE_TIMEOUT_S = 1.0
TIMEOUT_S = 5.0


@dataclass
class App:
    """The test application: what it serves depends on the path."""

    served: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    release: asyncio.Event | None = None

    async def handle(self, request: Request) -> Response:
        self.served.append(request.path)
        if request.path == "/echo":
            return Response(200, request.body)
        if request.path == "/slow":
            await asyncio.sleep(float(request.query.get("s", "0.2")))
            return Response(200, b"slow")
        if request.path == "/blocked":
            assert self.release is not None
            await self.release.wait()
            return Response(200, b"released")
        if request.path == "/big":
            return Response(200, b"x" * int(request.query["n"]))
        if request.path == "/boom":
            raise RuntimeError("the handler failed")
        if request.path == "/none":
            return Response(204)
        return json_response(
            {"method": request.method, "path": request.path, "query": request.query}
        )

    def fast(self, request: Request) -> Response | Deferred | None:
        """Paths under /fast are served without a task; the rest go to `handle`."""
        if not request.path.startswith("/fast"):
            return None
        self.served.append(request.path)
        loop = asyncio.get_running_loop()
        if request.path == "/fast/now":
            return Response(200, b"now")
        if request.path == "/fast/boom":
            raise RuntimeError("the fast handler failed")
        future: asyncio.Future[bytes] = loop.create_future()
        if request.path == "/fast/later":
            loop.call_later(0.2, future.set_result, b"later")
        elif request.path == "/fast/blocked":
            assert self.release is not None
            released = asyncio.ensure_future(self.release.wait())
            released.add_done_callback(lambda _: future.done() or future.set_result(b"released"))
        elif request.path == "/fast/finish-boom":
            future.set_result(b"")
            return Deferred(future, _finish_boom)
        else:
            future.set_result(request.path.encode())
        return Deferred(future, lambda done: Response(200, done.result()))

    def too_large(self, declared_length: int | None) -> Response:
        return json_response({"error": f"too large: {declared_length}"}, 413)


def _finish_boom(future: asyncio.Future[bytes]) -> Response:
    raise RuntimeError("finishing failed")


@dataclass
class Running:
    port: int
    app: App
    server: HttpServer
    loop: asyncio.AbstractEventLoop

    def call(self, coroutine: Coroutine[Any, Any, None], timeout: float = TIMEOUT_S) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@pytest.fixture
def running() -> Iterator[Running]:
    loop = asyncio.new_event_loop()
    app = App()
    server = HttpServer(
        app.handle,
        max_body_bytes=MAX_BODY_BYTES,
        too_large=app.too_large,
        on_response=app.statuses.append,
        idle_timeout_s=IDLE_TIMEOUT_S,
        fast_handler=app.fast,
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def setup() -> None:
        app.release = asyncio.Event()
        await server.start(HOST, 0)

    asyncio.run_coroutine_threadsafe(setup(), loop).result(TIMEOUT_S)
    try:
        yield Running(server.port, app, server, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace_s=0.5), loop).result(TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT_S)
        loop.close()


# --- a minimal client ---------------------------------------------------------------------


@dataclass
class Reply:
    version: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A socket plus a buffer, reading replies one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT_S)
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before {marker!r}; have {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ConnectionError("closed in a body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def reply(self, head_request: bool = False) -> Reply:
        lines = self.read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        size = 0 if head_request else int(headers.get("content-length", "0"))
        return Reply(version, int(status), headers, self.read_exactly(size))

    def closed(self, within_s: float = TIMEOUT_S) -> bool:
        """True if the server closes the connection (with nothing more to read)
        within `within_s`."""
        self.sock.settimeout(within_s)
        try:
            return not self.buffer and not self._fill()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(TIMEOUT_S)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def put(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


# --- keep-alive and connection lifetime ------------------------------------------------


def test_http11_keeps_the_connection_alive_by_default(running: Running) -> None:
    with Client(running.port) as client:
        for value in (b"one", b"two", b"three"):
            client.send(put("/echo", value))
            reply = client.reply()
            assert (reply.version, reply.status, reply.body) == ("HTTP/1.1", 200, value)
            assert "connection" not in reply.headers
        assert not client.closed(within_s=0.2)


def test_connection_close_is_honoured(running: Running) -> None:
    with Client(running.port) as client:
        client.send(put("/echo", b"bye", "Connection: close\r\n"))
        reply = client.reply()
        assert (reply.status, reply.body, reply.headers["connection"]) == (200, b"bye", "close")
        assert client.closed()


def test_bytes_after_a_connection_close_request_are_ignored(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/first", "Connection: close\r\n") + get("/second"))
        assert client.reply().json()["path"] == "/first"
        assert client.closed()
    assert running.app.served == ["/first"]


def test_http10_closes_unless_keep_alive_is_asked(running: Running) -> None:
    with Client(running.port) as client:
        client.send(b"GET /plain HTTP/1.0\r\n\r\n")
        reply = client.reply()
        assert (reply.version, reply.status) == ("HTTP/1.0", 200)
        assert client.closed()
    with Client(running.port) as client:
        for _ in range(2):
            client.send(b"GET /kept HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = client.reply()
            assert (reply.version, reply.headers["connection"]) == ("HTTP/1.0", "keep-alive")
        assert not client.closed(within_s=0.2)


def test_an_idle_keep_alive_connection_is_closed(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/once"))
        assert client.reply().status == 200
        started = time.monotonic()
        assert client.closed(within_s=IDLE_TIMEOUT_S * 3)
        assert time.monotonic() - started >= IDLE_TIMEOUT_S * 0.5


def test_a_client_that_goes_away_mid_request_does_not_disturb_others(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/slow?s=0.2"))
    with Client(running.port) as client:
        client.send(get("/after"))
        assert client.reply().status == 200
    time.sleep(0.3)  # The abandoned request finishes; its reply is dropped.
    with Client(running.port) as client:
        client.send(get("/later"))
        assert client.reply().status == 200


# --- pipelining ---------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/slow?s=0.3") + put("/echo", b"fast") + get("/none") + get("/q?a=1"))
        assert client.reply().body == b"slow"
        assert client.reply().body == b"fast"
        assert client.reply().status == 204
        assert client.reply().json()["query"] == {"a": "1"}


@pytest.mark.parametrize("blocked", ["/blocked", "/fast/blocked"])
def test_pipelined_requests_are_served_one_at_a_time(running: Running, blocked: str) -> None:
    # A later request starts only after the one before it has its reply, so a
    # pipelined write then read on one connection reads what was written. So
    # also when the first reply comes from the fast handler, deferred.
    with Client(running.port) as client:
        client.send(get(blocked) + get("/next"))
        time.sleep(0.2)
        assert running.app.served == [blocked]
        assert running.app.release is not None
        running.loop.call_soon_threadsafe(running.app.release.set)
        assert client.reply().body == b"released"
        assert client.reply().json()["path"] == "/next"


def test_a_client_that_does_not_read_stops_being_served(running: Running) -> None:
    count = 200
    with Client(running.port) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.send(get("/big?n=262144") * count)
        time.sleep(0.5)
        # Only what fits in the socket buffers (a few MiB on loopback) and one reply
        # past the transport's high-water mark is served; the rest wait, unserved,
        # until the client reads.
        assert len(running.app.served) < count // 2, len(running.app.served)
        for _ in range(count):
            assert len(client.reply().body) == 262144
    assert len(running.app.served) == count


def test_a_client_that_reads_none_of_its_replies_is_disconnected(running: Running) -> None:
    count = 50
    with Client(running.port) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.send(get("/big?n=262144") * count)
        time.sleep(IDLE_TIMEOUT_S * 2.5)
        received = b""
        while chunk := client.sock.recv(1 << 20):
            received += chunk
        assert received.count(b"HTTP/1.1 200 OK") < count
    assert len(running.app.served) < count


# --- bodies -------------------------------------------------------------------------------


def test_chunked_body_is_read_whole(running: Running) -> None:
    with Client(running.port) as client:
        client.send(
            b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        time.sleep(0.05)
        client.send(b"4\r\ndefg\r\n0\r\n\r\n")
        assert client.reply().body == b"abcdefg"


def test_expect_100_continue_is_answered_before_the_body(running: Running) -> None:
    body = b"v" * MAX_BODY_BYTES
    with Client(running.port) as client:
        client.send(
            f"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        assert client.read_exactly(len(CONTINUE)) == CONTINUE
        client.send(body)
        reply = client.reply()
        assert (reply.status, reply.body) == (200, body)


def test_declared_body_over_the_limit_is_413_at_once_and_closes(running: Running) -> None:
    for expect in ("Expect: 100-continue\r\n", ""):
        with Client(running.port) as client:
            client.send(
                f"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n"
                f"{expect}\r\n".encode()
            )
            # Answered without the body having been sent, and no 100 Continue first.
            reply = client.reply()
            assert reply.status == 413, reply
            assert reply.json() == {"error": f"too large: {MAX_BODY_BYTES + 1}"}
            assert reply.headers["connection"] == "close"
            assert client.closed()
    assert running.app.served == []
    assert running.app.statuses == [413, 413]


def test_chunked_body_growing_over_the_limit_is_413_and_closes(running: Running) -> None:
    with Client(running.port) as client:
        client.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"c" * 600
        client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        client.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = client.reply()
        assert (reply.status, reply.json()) == (413, {"error": "too large: None"})
        assert client.closed()
    assert running.app.served == []


def test_body_of_exactly_the_limit_is_accepted(running: Running) -> None:
    with Client(running.port) as client:
        client.send(put("/echo", b"e" * MAX_BODY_BYTES))
        assert client.reply().body == b"e" * MAX_BODY_BYTES


# --- bad requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GARBAGE\r\n\r\n", "method"),
        (b"PUT /k HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
        (b"PUT /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk"),
        (b"GET /k HTTP/1.1\r\n\r\n", "Host"),
        (b"GET /k HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", "header"),
        (b"GET /k HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", "headers"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", "URL"),
        (b"GET /k HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"a" * 100_000, "head"),
    ],
)
def test_malformed_request_is_400_and_closes_that_connection_only(
    running: Running, data: bytes, words: str
) -> None:
    with Client(running.port) as bystander, Client(running.port) as client:
        bystander.send(get("/before"))
        assert bystander.reply().status == 200
        client.send(data)
        reply = client.reply()
        assert (reply.status, reply.headers["content-type"]) == (
            400,
            "application/json; charset=utf-8",
        )
        assert words in reply.json()["error"]
        assert client.closed()
        bystander.send(get("/after"))
        assert bystander.reply().status == 200


def test_malformed_request_after_good_ones_is_answered_after_them(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/slow?s=0.2") + b"NOT HTTP\r\n\r\n")
        assert client.reply().body == b"slow"
        assert client.reply().status == 400
        assert client.closed()


def test_handler_exception_is_500_and_logged_and_the_connection_goes_on(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="raftkv.http"), Client(running.port) as client:
        client.send(get("/boom"))
        reply = client.reply()
        assert reply.status == 500
        assert "the handler failed" in reply.json()["error"]
        client.send(get("/still"))
        assert client.reply().status == 200
    assert any("unexpected error serving GET /boom" in r.getMessage() for r in caplog.records)


# --- HEAD and targets ---------------------------------------------------------------------


def test_head_has_the_length_but_no_body(running: Running) -> None:
    with Client(running.port) as client:
        client.send(b"HEAD /big?n=1000 HTTP/1.1\r\nHost: t\r\n\r\n" + get("/big?n=3"))
        reply = client.reply(head_request=True)
        assert (reply.status, reply.headers["content-length"], reply.body) == (200, "1000", b"")
        # The next reply follows at once: no body bytes came between.
        assert client.reply().body == b"xxx"


def test_query_first_value_wins_and_plus_is_a_space(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/q?a=1&a=2&b=x+y%2B&c&d=%FF;e=1"))
        query = client.reply().json()["query"]
        assert query == {"a": "1", "b": "x y+", "c": "", "d": "\ufffd;e=1"}


def test_absolute_form_target_and_fragment(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("http://test/abs?x=1") + get("/frag#part"))
        assert client.reply().json() == {"method": "GET", "path": "/abs", "query": {"x": "1"}}
        assert client.reply().json()["path"] == "/frag"


def test_every_response_is_counted(running: Running) -> None:
    with Client(running.port) as client:
        client.send(get("/a") + get("/none") + get("/boom"))
        assert [client.reply().status for _ in range(3)] == [200, 204, 500]
    assert running.app.statuses == [200, 204, 500]


# --- stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("blocked", ["/blocked", "/fast/blocked"])
def test_stop_closes_connections_and_does_not_wait_for_a_stuck_request(
    running: Running, blocked: str
) -> None:
    with Client(running.port) as client:
        client.send(get(blocked))
        time.sleep(0.1)
        started = time.monotonic()
        running.call(running.server.stop(grace_s=0.3))
        assert time.monotonic() - started < 2.0
        assert client.closed()
    with pytest.raises(OSError):
        socket.create_connection((HOST, running.port), timeout=1).close()


# --- the fast handler (no task) -----------------------------------------------------------


def test_fast_replies_keep_their_place_among_pipelined_requests(running: Running) -> None:
    with Client(running.port) as client:
        client.send(
            get("/fast/later")
            + get("/slow?s=0.1")
            + get("/fast/now")
            + put("/echo", b"e")
            + get("/fast/x")
            + get("/none")
        )
        assert client.reply().body == b"later"
        assert client.reply().body == b"slow"
        assert client.reply().body == b"now"
        assert client.reply().body == b"e"
        assert client.reply().body == b"/fast/x"
        assert client.reply().status == 204
    assert running.app.served == [
        "/fast/later", "/slow", "/fast/now", "/echo", "/fast/x", "/none"
    ]  # fmt: skip


def test_fast_handler_failures_are_500_and_the_connection_goes_on(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="raftkv.http"), Client(running.port) as client:
        client.send(get("/fast/boom") + get("/fast/finish-boom") + get("/fast/now"))
        first, second, third = client.reply(), client.reply(), client.reply()
        assert (first.status, second.status, third.status) == (500, 500, 200)
        assert "the fast handler failed" in first.json()["error"]
        assert "finishing failed" in second.json()["error"]
    assert running.app.statuses == [500, 500, 200]


# --- the REST API on this server, end to end ---------------------------------------------


@pytest.fixture(scope="module")
def rest_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A single-node raftkv serving REST, embedded in this process."""
    import raftkv

    data_dir = tmp_path_factory.mktemp("rest")
    with raftkv.start_server(
        "127.0.0.1:0", data_dir=data_dir, rest_port=0, tick_ms=20, max_value_bytes=MAX_BODY_BYTES
    ) as server:
        server.wait_ready(10)
        assert server.rest_address is not None
        yield int(server.rest_address.rsplit(":", 1)[1])


def test_rest_head_answers_like_get_without_the_body(rest_port: int) -> None:
    with Client(rest_port) as client:
        client.send(put("/headed", b"value"))
        assert client.reply().status == 204
        client.send(b"HEAD /headed HTTP/1.1\r\nHost: t\r\n\r\n")
        reply = client.reply(head_request=True)
        assert (reply.status, reply.headers["content-length"], reply.body) == (200, "5", b"")
        assert reply.headers["content-type"] == "application/octet-stream"
        assert int(reply.headers["x-raftkv-mod-revision"]) > 0
        client.send(b"HEAD /v1/kv/headed HTTP/1.1\r\nHost: t\r\n\r\n" + get("/headed"))
        assert client.reply(head_request=True).status == 200
        assert client.reply().body == b"value"  # Nothing came between the two.


def test_rest_keys_are_the_decoded_path(rest_port: int) -> None:
    with Client(rest_port) as client:
        client.send(put("/dir%2Fname%E2%82%AC%ZZ", b"decoded"))
        assert client.reply().status == 204
        # The key is "dir/name\u20ac%ZZ"; the first consistency given counts.
        client.send(get("/v1/kv/dir/name%E2%82%AC%25ZZ?consistency=serializable&consistency=x"))
        reply = client.reply()
        assert (reply.status, reply.body) == (200, b"decoded")


def test_rest_routes_match_escaped_slashes_inside_their_segment(rest_port: int) -> None:
    with Client(rest_port) as client:
        client.send(get("/v1%2Fstatus"))  # The root key "v1/status", not the status route.
        reply = client.reply()
        assert (reply.status, reply.json()) == (404, {"error": "key 'v1/status' does not exist"})
        client.send(get("/v%31/status"))
        assert client.reply().json()["role"] == "leader"


def test_rest_oversized_value_is_413_naming_the_limit(rest_port: int) -> None:
    with Client(rest_port) as client:
        client.send(put("/big", b"v" * (MAX_BODY_BYTES + 1)))
        reply = client.reply()
        assert reply.status == 413
        assert reply.json() == {
            "error": f"the value is {MAX_BODY_BYTES + 1} bytes; --max-value-bytes is "
            f"{MAX_BODY_BYTES}"
        }
        assert client.closed()


def test_rest_responses_are_counted_by_status(rest_port: int) -> None:
    def count(status: int) -> float:
        with Client(rest_port) as client:
            client.send(get("/metrics"))
            text = client.reply().body.decode()
        for line in text.splitlines():
            if line.startswith(f'raftkv_requests_total{{api="rest",status="{status}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count(404), count(400)
    with Client(rest_port) as client:
        client.send(get("/no-such-key") + b"GARBAGE\r\n\r\n")
        assert [client.reply().status for _ in range(2)] == [404, 400]
    assert (count(404), count(400)) == (before[0] + 1, before[1] + 1)


# --- paths as the REST API decodes them ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("/plain", "/plain"),
        ("/a%2Fb", "/a/b"),
        ("/%2f%2F", "///"),
        ("/%e2%82%ac", "/\u20ac"),
        ("/%FF", "/%FF"),
        ("/%ff", "/%ff"),
        ("/%C3%A9%FF", "/\u00e9%FF"),
        ("/%E2%82x", "/%E2%82x"),
        ("/%ED%A0%80", "/%ED%A0%80"),
        ("/%ZZ", "/%ZZ"),
        ("/a%", "/a%"),
        ("/%%41", "/%A"),
        ("/%25", "/%"),
        ("/%252F", "/%2F"),
        ("/a+b%20c", "/a+b c"),
    ],
)
def test_paths_decode_as_aiohttp_decoded_them(raw: str, decoded: str) -> None:
    assert _unquote(raw, keep_slash=False) == decoded
    assert _unquote_slashes(_unquote(raw, keep_slash=True)) == decoded


def test_escaped_slashes_stay_inside_their_segment_for_routing() -> None:
    assert _unquote("/v1%2Fstatus", keep_slash=True) == "/v1%2Fstatus"
    assert _unquote("/v%31/status", keep_slash=True) == "/v1/status"
    assert _unquote("/50%25", keep_slash=True) == "/50%25"
