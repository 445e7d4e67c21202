"""`Config.eager_commit`: whether a leader tells every follower a new commit index
at once (etcd's behaviour), or only the followers that wait on it, the rest
learning it with their next append or heartbeat."""

from __future__ import annotations

from raftkv.raft import ConfChange, ConfChangeType, Config, EntryType, MessageType

from .network import Network


def lazy(node_id: int) -> Config:
    return Config(id=node_id, eager_commit=False)


def started(configure=lazy) -> Network:  # type: ignore[no-untyped-def]
    net = Network(3, configure=configure)
    net.campaign(1)
    net.tick(1)  # A heartbeat: every follower knows the leader's first commit.
    net.stabilize()
    net.sent.clear()
    return net


def commit_of(net: Network, node_id: int) -> int:
    return net.nodes[node_id].raw.status().hard_state.commit


def test_eager_commit_tells_every_follower_at_once() -> None:
    net = started(configure=lambda node_id: Config(id=node_id))
    net.propose(1, b"x")
    assert net.applied_data(2) == net.applied_data(3) == [b"x"]
    # The entries, then the commit index: two appends to each follower.
    assert net.count_sent(MessageType.APP, frm=1) == 4


def test_a_new_commit_index_rides_on_the_next_append() -> None:
    net = started()
    net.propose(1, b"x")
    assert net.applied_data(1) == [b"x"]
    assert net.applied_data(2) == net.applied_data(3) == []
    assert net.count_sent(MessageType.APP, frm=1) == 2  # the entries only
    net.propose(1, b"y")
    assert net.applied_data(2) == net.applied_data(3) == [b"x"]


def test_a_heartbeat_carries_the_commit_index_to_an_idle_follower() -> None:
    net = started()
    net.propose(1, b"x")
    net.tick(1)
    net.stabilize()
    assert net.applied_data(2) == net.applied_data(3) == [b"x"]


def test_a_follower_hears_at_once_that_its_forwarded_proposal_committed() -> None:
    net = started()
    net.propose(2, b"from 2")
    assert net.applied_data(2) == [b"from 2"]  # Its client is answered now...
    assert net.applied_data(3) == []  # ...while node 3 waits on nothing.


def test_a_follower_asking_for_a_read_index_is_sent_the_commit_index() -> None:
    net = started()
    net.propose(1, b"x")
    index = commit_of(net, 1)
    assert commit_of(net, 3) < index
    net.sent.clear()
    net.nodes[3].raw.read_index(b"ctx")
    net.stabilize()
    assert [(r.index, r.request_ctx) for r in net.nodes[3].read_states] == [(index, b"ctx")]
    # With its answer goes an append with the commit index, so that node 3 can
    # apply up to the read index whatever the heartbeats told it.
    assert any(m.type is MessageType.APP and m.commit >= index for m in net.sent if m.to == 3)
    assert commit_of(net, 3) >= index
    assert net.applied_data(3) == [b"x"]


def applied_removal_of(net: Network, node_id: int, removed: int) -> bool:
    """Whether node `node_id` applied the removal of node `removed`."""
    return any(
        entry.type == EntryType.CONF_CHANGE
        and ConfChange.decode(entry.data) == ConfChange(ConfChangeType.REMOVE_NODE, removed)
        for entry in net.nodes[node_id].applied
    )


def test_every_member_hears_at_once_that_a_membership_change_committed() -> None:
    net = started()
    net.propose_conf_change(1, ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.stabilize()
    # Node 3 applies its own removal, though no append or heartbeat will follow
    # once the leader has applied it; node 2 applies the new configuration too.
    assert applied_removal_of(net, 1, 3)
    assert applied_removal_of(net, 3, 3) and applied_removal_of(net, 2, 3)
    net.sent.clear()
    net.tick(1, 5)  # Heartbeats now go to node 2 only.
    net.stabilize()
    assert net.count_sent(MessageType.HEARTBEAT, frm=1, to=3) == 0


def test_every_member_hears_at_once_that_a_new_leaders_first_entry_committed() -> None:
    """A new leader's first entry commits the tail it inherited, which may hold a
    membership change: here node 3's removal, which node 3 must apply to leave."""
    net = started(
        configure=lambda node_id: Config(id=node_id, eager_commit=False, check_quorum=False)
    )
    net.drop_types.add(MessageType.APP_RESP)  # The change reaches 2 and 3, uncommitted.
    net.propose_conf_change(1, ConfChange(ConfChangeType.REMOVE_NODE, 3))
    assert not applied_removal_of(net, 2, 3) and not applied_removal_of(net, 3, 3)
    net.recover()
    net.isolate(1)
    net.campaign(2)  # No ticks from here: no heartbeat carries the commit index.
    assert net.leader() == 2
    assert applied_removal_of(net, 2, 3)
    assert applied_removal_of(net, 3, 3)
