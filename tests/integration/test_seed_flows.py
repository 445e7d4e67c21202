"""The flows of the seed READMEs (raftexample and raftkvd), as written, against real
processes: single node, a three-node cluster, fault tolerance, reconfiguration."""

from __future__ import annotations

from collections.abc import Callable

from .cluster import Cluster, request


def test_single_node_put_then_get(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(1)
    cluster.start(1)
    cluster.wait_leader()
    assert cluster.put(1, "my-key", "hello").status == 204
    reply = cluster.get(1, "my-key")
    assert (reply.status, reply.text) == (200, "hello")
    assert cluster.get(1, "missing").status == 404


def test_three_nodes_write_anywhere_read_anywhere(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.start_all()
    cluster.wait_leader()
    for writer in (1, 2, 3):
        assert cluster.put(writer, f"key-{writer}", f"value-{writer}").status == 204
        # Linearizable: a read right after the acknowledged write sees it, on any node.
        for reader in (1, 2, 3):
            reply = cluster.get(reader, f"key-{writer}")
            assert (reply.status, reply.text) == (200, f"value-{writer}")


def test_fault_tolerance_kill_write_restart(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.start_all()
    cluster.wait_leader()
    assert cluster.put(1, "my-key", "foo").status == 204
    cluster.kill(2)
    assert cluster.put(1, "my-key", "bar").status == 204
    reply = cluster.get(3, "my-key")
    assert (reply.status, reply.text) == (200, "bar")
    cluster.start(2)
    cluster.wait_value(2, "my-key", "bar")


def test_add_node_with_join_then_remove_node(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.start_all()
    cluster.wait_leader()
    assert cluster.put(1, "before", "join").status == 204
    new = cluster.add_member_slot()
    reply = request(cluster.members[1].port, "POST", "/4", cluster.peer_urls[3])
    assert reply.status == 204, reply
    cluster.start(4, join=True)
    cluster.wait_value(4, "before", "join")
    assert cluster.put(4, "from-4", "yes").status == 204
    cluster.wait_value(1, "from-4", "yes")

    reply = request(cluster.members[1].port, "DELETE", "/3")
    assert reply.status == 204, reply
    assert cluster.wait_exit(3) == 0, "node 3 did not shut itself down after its removal"
    assert "(it applied its removal)" in cluster.log(3)
    assert cluster.put(1, "after", "remove").status == 204
    cluster.wait_value(new.node_id, "after", "remove")


def test_removing_the_leader_keeps_writes_flowing(make_cluster: Callable[..., Cluster]) -> None:
    """A write sent to a follower right as the leader removes itself is forwarded to
    the old leader and may be lost there: the follower must propose it again, and
    apply it once."""
    cluster = make_cluster(3)
    cluster.start_all()
    leader = cluster.wait_leader()
    follower = next(node_id for node_id in (1, 2, 3) if node_id != leader)
    assert cluster.put(follower, "counter", "0").status == 204
    reply = request(cluster.members[follower].port, "DELETE", f"/{leader}")
    assert reply.status == 204, reply
    assert cluster.put(follower, "after", "leader-removed").status == 204
    for node_id in (1, 2, 3):
        if node_id != leader:
            cluster.wait_value(node_id, "after", "leader-removed")
