"""`GET /metrics`: what the issue lists is there, parses, and moves with the work."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import raftkv
from raftkv.server._metrics import LatencyHistogram


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[raftkv.ServerHandle]:
    """A single node serving REST and RESP, embedded in this process, snapshotting
    every 20 entries."""
    with raftkv.start_server(
        "127.0.0.1:0",
        data_dir=tmp_path_factory.mktemp("metrics"),
        rest_port=0,
        tick_ms=20,
        snapshot_count_entries=20,
    ) as handle:
        handle.wait_ready(10)
        yield handle


def _port(address: str | None) -> int:
    assert address is not None
    return int(address.rsplit(":", 1)[1])


def _rest(server: raftkv.ServerHandle, method: str, path: str, body: bytes = b"") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", _port(server.rest_address), timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _samples(server: raftkv.ServerHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's /metrics, by name and labels (parsed as Prometheus
    would: a malformed exposition fails here)."""
    connection = http.client.HTTPConnection("127.0.0.1", _port(server.rest_address), timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        connection.close()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_writes_move_the_counters_and_the_fsync_histogram(server: raftkv.ServerHandle) -> None:
    before = _samples(server)
    for i in range(30):
        assert _rest(server, "PUT", f"/metrics-key-{i}", b"v") == 204
    after = _samples(server)

    assert _value(after, "raftkv_proposals_total") >= _value(before, "raftkv_proposals_total") + 30
    applied = _value(after, "raftkv_applied_entries_total")
    assert applied >= _value(before, "raftkv_applied_entries_total") + 30
    syncs = _value(after, "raftkv_fsync_seconds_count")
    assert syncs > _value(before, "raftkv_fsync_seconds_count")
    assert _value(after, "raftkv_fsync_seconds_bucket", le="+Inf") == syncs
    assert 0 < _value(after, "raftkv_fsync_seconds_sum") < syncs  # each under a second
    # One snapshot every 20 entries, taken in the background.
    deadline = time.monotonic() + 10
    while _value(_samples(server), "raftkv_snapshots_total") < 1:
        assert time.monotonic() < deadline, "no snapshot was counted"
        time.sleep(0.05)
    assert _value(after, "raftkv_leader_changes_total") >= 1
    assert _value(after, "raftkv_is_leader") == 1
    assert _value(after, "raftkv_apply_lag_entries") == 0
    assert _value(after, "raftkv_applied_index") >= _value(after, "raftkv_commit_index") > 0
    statuses = _value(after, "raftkv_requests_total", api="rest", status="204")
    assert statuses == _value(before, "raftkv_requests_total", api="rest", status="204") + 30


def test_resp_replies_are_counted_by_outcome(server: raftkv.ServerHandle) -> None:
    before = _samples(server)
    with redis.Redis(port=_port(server.address), socket_timeout=10) as client:
        assert client.set("counted", "1")
        assert client.get("counted") == b"1"
        with pytest.raises(redis.ResponseError):
            client.execute_command("NO-SUCH-COMMAND")
        assert client.set("counted-text", "x")
        with pytest.raises(redis.ResponseError):
            client.incr("counted-text")
    after = _samples(server)

    def delta(status: str) -> float:
        return _value(after, "raftkv_requests_total", api="resp", status=status) - _value(
            before, "raftkv_requests_total", api="resp", status=status
        )

    # redis-py's handshake (CLIENT SETINFO, ...) may add replies of its own, of either
    # kind; the commands above add at least these.
    assert delta("ok") >= 3  # SET, GET, the second SET
    assert delta("ERR") >= 2  # the unknown command, INCR of text


def test_latency_histogram_buckets_count_values_at_or_below_their_bound() -> None:
    histogram = LatencyHistogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 0.5):
        histogram.observe(seconds)
    family = histogram.family("x_seconds", "test")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets == {"0.001": 2, "0.01": 4, "+Inf": 5}
    assert {s.name: s.value for s in family.samples if s.name != "x_seconds_bucket"} == {
        "x_seconds_count": 5,
        "x_seconds_sum": pytest.approx(0.5135),
    }
