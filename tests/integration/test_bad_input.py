"""The bad-input table of the REST API: each bad request gets a clear error with the
right status, and the node keeps serving (a following PUT and GET work).

One 3-node cluster serves the whole module (starting one costs seconds); a test
that takes nodes down brings them back before it ends.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from raftkv.server._options import NodeOptions
from raftkv.transport._wire import FrameKind, encode_hello, frame

from .cluster import HOST, Cluster, Response, request

MAX_VALUE_BYTES = 1024
REQUEST_TIMEOUT_S = 1.5
_probe_numbers = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("bad-input"),
        3,
        extra_args=[
            "--max-value-bytes",
            str(MAX_VALUE_BYTES),
            "--request-timeout",
            str(REQUEST_TIMEOUT_S),
        ],
    )
    cluster.enable_resp()
    try:
        cluster.start_all()
        cluster.wait_leader()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(autouse=True)
def show_logs_on_failure(cluster: Cluster) -> Iterator[None]:
    yield
    # Captured: pytest shows it only for a failed test.
    for node_id in cluster.members:
        print(f"----- node {node_id} log -----\n{cluster.log(node_id)}")


def assert_still_serving(cluster: Cluster, node_id: int) -> None:
    """A write through `node_id` and a read of it on every node both work."""
    key = f"probe-{next(_probe_numbers)}"
    reply = cluster.put(node_id, key, "still serving")
    assert reply.status == 204, reply
    for reader in cluster.members:
        reply = cluster.get(reader, key)
        assert (reply.status, reply.text) == (200, "still serving"), (reader, reply)


def assert_error(reply: Response, status: int, *words: str) -> None:
    """An error reply: `status` and a JSON body whose message holds every word."""
    assert reply.status == status, reply
    message = json.loads(reply.body)["error"]
    for word in words:
        assert word in message, (word, message)


def test_value_over_max_value_bytes_is_413(cluster: Cluster) -> None:
    port = cluster.members[1].port
    too_big = "v" * (MAX_VALUE_BYTES + 1)
    assert_error(request(port, "PUT", "/big", too_big), 413, str(MAX_VALUE_BYTES))
    assert_error(request(port, "PUT", "/v1/kv/big", too_big), 413, str(MAX_VALUE_BYTES))
    assert cluster.get(1, "big").status == 404
    # Without a Content-Length (chunked), the size is found while reading.
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(
            "PUT", "/big", body=iter([too_big[:600].encode(), too_big[600:].encode()])
        )
        reply = connection.getresponse()
        assert_error(Response(reply.status, reply.read(), {}), 413, str(MAX_VALUE_BYTES))
    finally:
        connection.close()
    # Exactly the limit is fine.
    assert cluster.put(1, "big", "v" * MAX_VALUE_BYTES).status == 204
    assert cluster.get(2, "big").body == b"v" * MAX_VALUE_BYTES
    assert_still_serving(cluster, 1)


def test_empty_key_is_400(cluster: Cluster) -> None:
    port = cluster.members[2].port
    assert_error(request(port, "PUT", "/", "value"), 400, "key is empty")
    assert_error(request(port, "GET", "/"), 400, "key is empty")
    assert_still_serving(cluster, 2)


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("POST", "/abc", "http://127.0.0.1:1", ["'abc'", "node id"]),
        ("POST", "/0", "http://127.0.0.1:1", ["positive integer"]),
        ("POST", "/-4", "http://127.0.0.1:1", ["positive integer"]),
        ("POST", "/4", "not-a-url", ["not-a-url", "http://host:port"]),
        ("POST", "/4", "", ["http://host:port"]),
        ("POST", "/4", "http://127.0.0.1", ["http://host:port"]),
        ("POST", "/2", "http://127.0.0.1:1", ["already a voter"]),
        ("DELETE", "/abc", None, ["'abc'", "node id"]),
        ("DELETE", "/9", None, ["not a member"]),
        ("DELETE", "/v1/members/abc", None, ["'abc'", "node id"]),
        ("POST", "/v1/members", "nope", ["JSON"]),
        ("POST", "/v1/members", '{"id": "4"}', ['"id"']),
        ("POST", "/v1/members", '{"id": 4, "url": "bad"}', ["bad", "http://host:port"]),
        ("POST", "/v1/leader", "[]", ["JSON object"]),
    ],
)
def test_bad_node_id_or_peer_url_is_400(
    cluster: Cluster, method: str, path: str, body: str | None, words: list[str]
) -> None:
    leader = cluster.leader_by_role()
    assert_error(request(cluster.members[leader].port, method, path, body), 400, *words)
    assert [member["id"] for member in cluster.status(leader)["members"]] == [1, 2, 3]
    assert_still_serving(cluster, leader)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/v1/kv/k?consistency=bogus", ["consistency", "bogus"]),
        ("/v1/kv?limit=0", ["limit"]),
        ("/v1/kv?limit=x", ["limit"]),
    ],
)
def test_bad_query_is_400(cluster: Cluster, path: str, words: list[str]) -> None:
    assert_error(request(cluster.members[3].port, "GET", path), 400, *words)
    assert_still_serving(cluster, 3)


def test_bad_compare_and_set_revision_is_400(cluster: Cluster) -> None:
    reply = request(cluster.members[3].port, "PUT", "/v1/kv/cas?prev_revision=abc", "v")
    assert_error(reply, 400, "prev_revision")
    assert cluster.get(3, "cas").status == 404
    assert_still_serving(cluster, 3)


def test_malformed_http_is_400(cluster: Cluster) -> None:
    with socket.create_connection((HOST, cluster.members[1].port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert sock.recv(64).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert_still_serving(cluster, 1)


def test_unknown_v1_path_is_404(cluster: Cluster) -> None:
    port = cluster.members[1].port
    for method, path in [("GET", "/v1/nope"), ("POST", "/v1/nope/deeper"), ("GET", "/v1/")]:
        assert_error(request(port, method, path), 404, path)
    assert_still_serving(cluster, 1)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/key", "GET, PUT, POST, DELETE"),
        ("OPTIONS", "/key", "GET, PUT, POST, DELETE"),
        ("PATCH", "/v1/kv/key", "GET, PUT, DELETE"),
        ("POST", "/v1/status", "GET"),
        ("DELETE", "/v1/members", "GET, POST"),
        ("POST", "/v1/kv", "GET"),
        ("GET", "/v1/leader", "POST"),
        ("PUT", "/health", "GET"),
        ("PUT", "/metrics", "GET"),
        ("DELETE", "/health", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    cluster: Cluster, method: str, path: str, allowed: str
) -> None:
    reply = request(cluster.members[2].port, method, path)
    assert reply.status == 405, reply
    assert {m.strip() for m in reply.headers["allow"].split(",")} >= {
        m.strip() for m in allowed.split(",")
    }, reply.headers
    assert_still_serving(cluster, 2)


def test_second_membership_change_while_one_is_pending_is_409(cluster: Cluster) -> None:
    leader = cluster.leader_by_role()
    followers = [node_id for node_id in cluster.members if node_id != leader]
    port = cluster.members[leader].port
    first: list[Response] = []

    def add_learner_4() -> None:
        body = json.dumps({"id": 4, "url": "http://127.0.0.1:1", "learner": True})
        first.append(request(port, "POST", "/v1/members", body))

    # With both followers frozen the first change cannot commit, so it stays pending.
    for node_id in followers:
        cluster.pause(node_id)
    try:
        thread = threading.Thread(target=add_learner_4)
        thread.start()
        try:
            time.sleep(0.2)
            body = json.dumps({"id": 5, "url": "http://127.0.0.1:2", "learner": True})
            second = request(port, "POST", "/v1/members", body)
        finally:
            for node_id in followers:
                cluster.resume(node_id)
            thread.join(timeout=30)
    finally:
        for node_id in followers:
            cluster.resume(node_id)
    assert_error(second, 409, "in progress")
    # The first one commits once the followers are back, or times out (unknown).
    assert first and first[0].status in (201, 503), first
    cluster.wait_leader()
    members = {member["id"] for member in cluster.status(leader)["members"]}
    assert 5 not in members
    if 4 in members:
        assert request(port, "DELETE", "/v1/members/4").status == 204
    assert_still_serving(cluster, leader)


def send_together(port: int, requests: list[bytes]) -> list[Response]:
    """Send raw HTTP requests on connections of their own at the same moment (so that
    the node reads them in one loop turn), and parse each reply."""
    sockets = [socket.create_connection((HOST, port), timeout=30) for _ in requests]
    try:
        for sock, data in zip(sockets, requests, strict=True):
            sock.sendall(data)
        replies = []
        for sock in sockets:
            reply = http.client.HTTPResponse(sock)
            reply.begin()
            replies.append(Response(reply.status, reply.read(), dict(reply.getheaders())))
            reply.close()
        return replies
    finally:
        for sock in sockets:
            sock.close()


def add_learner_request(node_id: int) -> bytes:
    body = json.dumps({"id": node_id, "url": f"http://127.0.0.1:{node_id}", "learner": True})
    return (
        f"POST /v1/members HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    ).encode()


def test_second_membership_change_through_a_follower_is_409(cluster: Cluster) -> None:
    """Two changes that reach a follower together are forwarded to the leader together;
    the leader takes the first and must not drop the second silently (which leaves
    its client waiting for the request timeout and a 503 with an unknown outcome)."""
    leader = cluster.leader_by_role()
    follower = next(node_id for node_id in cluster.members if node_id != leader)
    port = cluster.members[follower].port
    for attempt in range(3):
        ids = (10 + 2 * attempt, 11 + 2 * attempt)
        replies = send_together(port, [add_learner_request(node_id) for node_id in ids])
        statuses = sorted(reply.status for reply in replies)
        for node_id in ids:
            if node_id in {m["id"] for m in cluster.status(leader)["members"]}:
                assert request(port, "DELETE", f"/v1/members/{node_id}").status == 204
        if statuses != [201, 201]:
            break
        # Both went through one after the other: they did not overlap; try again.
    assert statuses == [201, 409], [(reply.status, reply.body) for reply in replies]
    assert_still_serving(cluster, follower)


def test_no_leader_within_request_timeout_is_503_with_retry_after(cluster: Cluster) -> None:
    survivor = cluster.wait_leader()
    others = [node_id for node_id in cluster.members if node_id != survivor]
    for node_id in others:
        cluster.kill(node_id, signal.SIGKILL)
    try:
        port = cluster.members[survivor].port
        # Wait until the survivor knows it has no leader (a leader steps down once it
        # misses a quorum for an election timeout).
        deadline = time.monotonic() + 10
        while cluster.status(survivor)["leader"] != 0:
            assert time.monotonic() < deadline, cluster.status(survivor)
            time.sleep(0.05)
        for method, path, body in [("PUT", "/nl", "v"), ("GET", "/nl", None)]:
            started = time.monotonic()
            reply = request(port, method, path, body)
            elapsed = time.monotonic() - started
            assert_error(reply, 503, "leader")
            assert reply.headers.get("retry-after", "").isdigit(), reply.headers
            assert REQUEST_TIMEOUT_S - 0.2 <= elapsed <= REQUEST_TIMEOUT_S + 3, elapsed
        assert request(port, "GET", "/health").status == 503
    finally:
        for node_id in others:
            cluster.start(node_id)
    cluster.wait_leader()
    # The write that got "not applied" stays that way.
    assert cluster.get(survivor, "nl").status == 404
    assert_still_serving(cluster, survivor)


def _junk(rng: random.Random, protocol: str, cluster_id: int) -> bytes:
    """Bytes that are not a valid conversation: random, or shaped like `protocol`
    with random lengths and contents."""
    noise = rng.randbytes(rng.randint(1, 3000))
    shape = rng.randrange(3)
    if shape == 0:
        return noise
    if protocol == "rest":
        method = rng.choice([b"GET", b"PUT", b"POST", b"DELETE", b"BREW"])
        head = b"%s /%s HTTP/1.1\r\nHost: x\r\n" % (method, rng.randbytes(rng.randint(0, 80)))
        if shape == 1:
            return head + b"Content-Length: %d\r\n\r\n" % rng.randint(-5, 1 << 40) + noise
        return head + rng.randbytes(rng.randint(0, 200)) + b"\r\n\r\n"
    if protocol == "resp":
        count, length = rng.randint(-3, 1 << 40), rng.randint(-3, 1 << 40)
        return b"*%d\r\n$%d\r\n" % (count, length) + noise
    # The peer protocol: a valid hello from a real member, then junk frames.
    hello = encode_hello(cluster_id, rng.choice([1, 3]), 2)
    if shape == 1:
        return hello + noise
    kind = rng.choice(list(FrameKind))
    return hello + frame(kind, noise)


def test_junk_at_every_port_leaves_the_cluster_serving(cluster: Cluster) -> None:
    """Nothing a client or a peer sends crashes a node: seeded junk at node 2's REST,
    RESP and peer ports, some of it read back, some of it sent and dropped."""
    member = cluster.members[2]
    assert member.rpc_port is not None
    cluster_id = NodeOptions(id=1, cluster=tuple(cluster.peer_urls), port=0).cluster_id
    rng = random.Random(20261126)
    ports = {"rest": member.port, "resp": member.rpc_port, "peer": member.peer_port}
    for protocol, port in ports.items():
        for _ in range(40):
            payload = _junk(rng, protocol, cluster_id)
            with socket.create_connection((HOST, port), timeout=5) as sock:
                with contextlib.suppress(ConnectionError):
                    sock.sendall(payload)
                if rng.random() < 0.5:
                    sock.settimeout(0.05)
                    with contextlib.suppress(OSError):
                        sock.recv(4096)
    assert all(m.running for m in cluster.members.values())
    for node_id in cluster.members:
        assert_still_serving(cluster, node_id)
