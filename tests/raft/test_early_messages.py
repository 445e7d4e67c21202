"""`RawNode.take_early_messages`: a leader's appends for input taken while a Ready
is being persisted may go out at once, but never before its term and vote are
durable, and its own entries still wait for the next Ready."""

from __future__ import annotations

from raftkv.raft import Config, Message, MessageType, Role

from .network import Network


def test_a_proposal_made_while_persisting_goes_out_at_once() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    leader.propose(b"x")
    rd = leader.ready()  # persisting "x"...
    leader.propose(b"y")  # ...when "y" arrives
    early = leader.take_early_messages()
    assert {(m.type, m.to) for m in early} == {(MessageType.APP, 2), (MessageType.APP, 3)}
    assert all([e.data for e in m.entries] == [b"y"] for m in early)
    assert leader.take_early_messages() == []  # taken once
    # "y" is the next Ready's to persist, and its appends are not sent twice.
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"y"]
    assert not any(m.entries for m in rd.early_messages)


def test_followers_commit_without_the_leaders_write_but_the_leader_waits_for_it() -> None:
    net = Network(3)
    net.campaign(1)
    leader = net.nodes[1].raw
    commit = leader.status().hard_state.commit
    leader.propose(b"x")
    rd = leader.ready()
    appends = rd.early_messages
    leader.propose(b"y")
    net.acknowledge(1, appends + leader.take_early_messages())
    # Both followers hold x and y: a quorum without the leader, which has
    # persisted neither yet.
    assert leader.status().hard_state.commit == commit + 2
    net.nodes[1].storage.append(rd.entries)
    leader.advance(rd)
    rd = leader.ready()
    assert [e.data for e in rd.committed_entries] == [b"x", b"y"]
    assert [e.data for e in rd.entries] == [b"y"]


def test_a_leader_whose_vote_is_not_yet_durable_sends_nothing_early() -> None:
    net = Network(3, configure=lambda node_id: Config(id=node_id, pre_vote=False))
    node = net.nodes[1].raw
    node.campaign()
    assert node.role is Role.CANDIDATE
    rd = node.ready()  # the new term and the vote for itself, being persisted
    assert rd.hard_state is not None and rd.must_sync
    for message in rd.messages:  # (sent early only to get the votes back)
        net.nodes[message.to].raw.step(message)
    for follower in (2, 3):
        net.process_node(follower)
    for message in net.take(MessageType.VOTE_RESP, process=False):
        node.step(message)
    assert node.role is Role.LEADER
    node.propose(b"x")
    assert node.take_early_messages() == []
    net.nodes[1].storage.set_hard_state(rd.hard_state)
    node.advance(rd)
    assert {m.to for m in node.take_early_messages()} == {2, 3}


def test_a_new_leader_sends_early_once_its_vote_is_durable() -> None:
    net = Network(3)
    net.campaign(1)
    net.stabilize()
    leader = net.nodes[1].raw
    assert leader.role is Role.LEADER
    leader.propose(b"x")
    assert leader.take_early_messages() != []


def test_a_follower_has_nothing_to_send_early() -> None:
    net = Network(3)
    net.campaign(1)
    follower = net.nodes[2].raw
    follower.propose(b"x")  # forwarded to the leader in a plain message
    assert follower.take_early_messages() == []
    assert [m.type for m in follower.ready().messages] == [MessageType.PROP]


def test_a_followers_heartbeat_answer_goes_out_at_once() -> None:
    net = Network(3)
    net.campaign(1)
    net.nodes[1].raw.read_index(b"r")  # A ReadIndex round: heartbeats with a context.
    heartbeat = next(m for m in net.take(MessageType.HEARTBEAT) if m.to == 2)
    follower = net.nodes[2].raw
    follower.step(heartbeat)
    # Nothing persisted backs the answer: it needs no Ready.
    (answer,) = follower.take_early_messages()
    assert (answer.type, answer.to) == (MessageType.HEARTBEAT_RESP, 1)
    assert answer.context == heartbeat.context


def test_a_heartbeat_answer_in_a_new_term_waits_for_the_term_to_be_durable() -> None:
    net = Network(3)
    net.campaign(1)
    follower = net.nodes[2].raw
    term = follower.term + 3  # As if node 3 had become leader of a later term.
    follower.step(Message(MessageType.HEARTBEAT, to=2, frm=3, term=term))
    assert follower.term == term
    assert follower.take_early_messages() == []  # The new term is not durable yet.
    rd = follower.ready()
    assert rd.early_messages == []
    assert [(m.type, m.term) for m in rd.messages] == [(MessageType.HEARTBEAT_RESP, term)]
