from raftkv.raft import Role

from .network import Network


def test_three_nodes_elect_and_replicate() -> None:
    net = Network(3)
    net.campaign(1)
    assert net.nodes[1].raw.role is Role.LEADER
    net.propose(1, b"x")
    net.propose(2, b"y")
    for node_id in (1, 2, 3):
        assert net.applied_data(node_id) == [b"x", b"y"]
