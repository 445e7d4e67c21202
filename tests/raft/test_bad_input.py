"""Nothing a peer sends makes `RawNode.step` raise: unknown senders, term 0 on a
peer's message type, stale terms, malformed payloads, duplicates and reordering."""

from __future__ import annotations

import contextlib
import itertools
import random

import pytest

from raftkv.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    Role,
    Snapshot,
    SnapshotMetadata,
)

from .network import Network

PEER_TYPES = [
    t
    for t in MessageType
    if t not in (MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER)
]


def cluster_in_role(role: Role) -> tuple[Network, int]:
    """A 3-node cluster and the id of a node in `role`."""
    net = Network(3)
    if role is Role.FOLLOWER:
        net.campaign(1)
        net.propose(1, b"x")
        return net, 2
    if role is Role.LEADER:
        net.campaign(1)
        net.propose(1, b"x")
        return net, 1
    net.isolate(1)
    net.nodes[1].raw.campaign()
    if role is Role.CANDIDATE:
        net.nodes[1].raw.step(
            Message(MessageType.PRE_VOTE_RESP, to=1, frm=2, term=net.nodes[1].raw.term + 1)
        )
    net.process()
    assert net.nodes[1].raw.role is role
    return net, 1


def variants(kind: MessageType, to: int, frm: int, term: int) -> list[Message]:
    """Plausible and implausible field values for one message type."""
    snapshot = Snapshot(SnapshotMetadata(index=2, term=1, conf_state=ConfState((1, 2, 3))))
    base = [
        Message(kind, to=to, frm=frm, term=term),
        Message(kind, to=to, frm=frm, term=term, index=1, log_term=1, commit=1),
        Message(kind, to=to, frm=frm, term=term, index=50, log_term=9, commit=60, reject=True),
        Message(kind, to=to, frm=frm, term=term, index=0, reject=True, reject_hint=40, log_term=3),
        Message(kind, to=to, frm=frm, term=term, context=b"ctx"),
    ]
    if kind is MessageType.APP:
        base.append(
            Message(
                kind,
                to=to,
                frm=frm,
                term=term,
                index=100,
                log_term=term,
                entries=(Entry(term, 101),),
                commit=101,
            )
        )
    if kind is MessageType.SNAP:
        base.append(Message(kind, to=to, frm=frm, term=term, snapshot=snapshot))
    return base


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
def test_messages_from_unknown_senders_never_raise(role: Role) -> None:
    for kind in PEER_TYPES:
        net, node_id = cluster_in_role(role)
        raw = net.nodes[node_id].raw
        for message in variants(kind, node_id, 99, raw.term):
            raw.step(message)
            net.process()


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
def test_peer_message_types_with_term_zero_are_ignored(role: Role) -> None:
    for kind in PEER_TYPES:
        net, node_id = cluster_in_role(role)
        raw = net.nodes[node_id].raw
        status = raw.status()
        for message in variants(kind, node_id, 2 if node_id != 2 else 3, 0):
            raw.step(message)
        assert raw.status() == status, kind
        net.process()


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
def test_messages_of_a_stale_term_never_raise_nor_change_state(role: Role) -> None:
    for kind in PEER_TYPES:
        net, node_id = cluster_in_role(role)
        raw = net.nodes[node_id].raw
        status = raw.status()
        peer = 2 if node_id != 2 else 3
        for message in variants(kind, node_id, peer, raw.term - 1):
            raw.step(message)
        after = raw.status()
        assert (after.hard_state, after.soft_state, after.last_index) == (
            status.hard_state,
            status.soft_state,
            status.last_index,
        ), kind
        net.process()


def test_local_request_types_without_a_sender_are_dropped() -> None:
    net = Network(3)
    net.campaign(1)
    raw = net.nodes[1].raw
    last_index = raw.status().last_index
    raw.step(Message(MessageType.PROP, to=1, frm=0, entries=(Entry(0, 0, data=b"x"),)))
    raw.step(Message(MessageType.READ_INDEX, to=1, frm=0, context=b"r"))
    raw.step(Message(MessageType.TRANSFER_LEADER, to=1, frm=0, index=2))
    raw.step(Message(MessageType.TRANSFER_LEADER, to=1, frm=2, index=0))
    net.stabilize()
    assert raw.status().last_index == last_index
    assert net.nodes[1].read_states == []
    assert net.leader() == 1


def test_forwarded_requests_that_cannot_be_served_never_raise() -> None:
    net = Network(4, learners=[4])
    net.campaign(1)
    raw = net.nodes[1].raw
    # A transfer to a learner, an empty proposal, a membership change that makes no
    # sense, and one whose payload is not a membership change at all.
    raw.step(Message(MessageType.TRANSFER_LEADER, to=1, frm=2, index=4))
    raw.step(Message(MessageType.PROP, to=1, frm=2))
    bad_changes = [b"", b"\x93", b"\xc1", b"\x93\x09\x01\xc4\x00", b"\x93\x00\xa1x\xc4\x00"]
    last_index = raw.status().last_index
    for data in bad_changes:
        entry = Entry(0, 0, EntryType.CONF_CHANGE, data)
        raw.step(Message(MessageType.PROP, to=1, frm=2, entries=(entry,)))
    assert raw.status().last_index == last_index
    net.stabilize()
    assert raw.role is Role.LEADER


def test_snapshot_message_without_a_snapshot_is_dropped() -> None:
    net = Network(3)
    net.campaign(1)
    raw = net.nodes[2].raw
    status = raw.status()
    raw.step(Message(MessageType.SNAP, to=2, frm=1, term=raw.term))
    assert raw.status() == status


def test_append_whose_entries_do_not_follow_its_index_is_dropped() -> None:
    net = Network(3)
    net.campaign(1)
    raw = net.nodes[2].raw
    last = raw.status().last_index
    term = raw.term
    for entries in [(Entry(term, last + 5),), (Entry(term, last + 1), Entry(term, last + 3))]:
        raw.step(
            Message(
                MessageType.APP,
                to=2,
                frm=1,
                term=term,
                index=last,
                log_term=term,
                entries=entries,
                commit=last,
            )
        )
        net.process()
    assert raw.status().last_index == last
    net.propose(1, b"still fine")
    assert net.applied_data(2)[-1] == b"still fine"


def test_negative_fields_are_dropped() -> None:
    net = Network(3)
    net.campaign(1)
    for node_id in (1, 2):
        raw = net.nodes[node_id].raw
        for kind in PEER_TYPES:
            for field in ("index", "log_term", "commit", "reject_hint"):
                message = Message(kind, to=node_id, frm=3, term=raw.term, **{field: -1})
                raw.step(message)
                net.process()
    net.propose(1, b"still fine")
    assert net.applied_data(3)[-1] == b"still fine"


@pytest.mark.parametrize("seed", range(6))
def test_duplicated_reordered_and_stale_messages_never_raise(seed: int) -> None:
    rng = random.Random(seed)
    net = Network(3, seed=seed)
    history: list[Message] = []
    counter = itertools.count()
    for step in range(300):
        action = rng.random()
        if action < 0.3:
            net.tick_all(1, stabilize=False)
        elif action < 0.45:
            leader = net.leader()
            target = leader if leader is not None and rng.random() < 0.8 else rng.randint(1, 3)
            # The documented refusal is the only error allowed.
            with contextlib.suppress(ProposalDropped):
                net.nodes[target].raw.propose(b"%d" % next(counter))
        elif action < 0.5 and history:
            # Replay an old message: a duplicate, possibly from an older term.
            old = rng.choice(history)
            net.nodes[old.to].raw.step(old)
        else:
            net.process()
            if net.queue:
                rng.shuffle(net.queue)
                message = net.queue.pop()
                history.append(message)
                if rng.random() < 0.9:
                    net.nodes[message.to].raw.step(message)
        net.process()
        if step % 50 == 0:
            # Committed prefixes agree everywhere.
            logs = {i: net.log_of(i) for i in net.nodes}
            commits = {i: net.nodes[i].raw.status().hard_state.commit for i in net.nodes}
            shortest = min(commits.values())
            assert len({tuple(log[:shortest]) for log in logs.values()}) == 1
