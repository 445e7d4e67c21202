"""The values that cross the boundary between the consensus core and its host.

Every type here is a frozen, slotted dataclass, a NamedTuple or an enum, so values
compare by content and can be shared between the core, the host and the tests without copies.
"""

from __future__ import annotations

import enum
import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count, repeat
from typing import NamedTuple, cast

import msgpack

from ._errors import InvalidConfChange

#: Node ids are positive integers; 0 means "nobody" (no vote, no known leader).
NONE = 0


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class Entry(NamedTuple):
    """One slot of the replicated log.

    A NamedTuple rather than a frozen dataclass: entries are created on the hottest
    path (every proposal, every decoded append) and a tuple is ~4x cheaper to build,
    while keeping value semantics and immutability.
    """

    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


#: The fixed per-entry overhead counted in byte budgets (term, index, type, framing).
ENTRY_OVERHEAD_BYTES = 16

_type_of = operator.itemgetter(2)
_data_of = operator.itemgetter(3)
#: Builds an Entry from a (term, index, type, data) tuple at C speed, skipping the
#: NamedTuple's Python-level __new__: entries are built on the hottest path.
_entry_from_fields = cast(
    "Callable[[tuple[int, int, EntryType, bytes]], Entry]",
    functools.partial(tuple.__new__, Entry),
)


def proposal_entries(datas: Iterable[bytes]) -> tuple[Entry, ...]:
    """NORMAL entries carrying `datas`, not yet numbered (the leader numbers them)."""
    return tuple(
        map(_entry_from_fields, zip(repeat(0), repeat(0), repeat(EntryType.NORMAL), datas))
    )


def numbered_entries(entries: Sequence[Entry], term: int, first_index: int) -> list[Entry]:
    """Copies of `entries` in `term`, at consecutive indexes from `first_index`."""
    return list(
        map(
            _entry_from_fields,
            zip(repeat(term), count(first_index), map(_type_of, entries), map(_data_of, entries)),
        )
    )


def has_conf_change(entries: Sequence[Entry]) -> bool:
    return EntryType.CONF_CHANGE in map(_type_of, entries)


def entry_size_bytes(entry: Entry) -> int:
    """The size an entry counts for in byte budgets (payload plus a fixed header)."""
    return len(entry.data) + ENTRY_OVERHEAD_BYTES


def entries_size_bytes(entries: Sequence[Entry]) -> int:
    """The total size of `entries` in byte budgets, computed without a Python loop."""
    return sum(map(len, map(_data_of, entries))) + ENTRY_OVERHEAD_BYTES * len(entries)


@dataclass(frozen=True, slots=True)
class HardState:
    """The state a node must persist before it answers any message that depends on it."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


EMPTY_HARD_STATE = HardState()


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the host may want to observe (never persisted)."""

    leader_id: int
    role: Role


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change. `context` is opaque to the core; the
    server puts the new member's peer URL there."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        data: bytes = msgpack.packb([int(self.type), self.node_id, self.context])
        return data

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Raises InvalidConfChange if `data` is not an encoded ConfChange: it may come
        from a peer (a forwarded proposal), and bad peer input must not crash a node."""
        try:
            kind, node_id, context = msgpack.unpackb(data)
            change_type = ConfChangeType(kind)
        except (ValueError, TypeError) as error:
            raise InvalidConfChange(f"not an encoded membership change: {error}") from error
        if type(node_id) is not int or type(context) is not bytes:
            raise InvalidConfChange(
                f"not an encoded membership change: node id {node_id!r}, context {context!r}"
            )
        return cls(change_type, node_id, context)


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership of the cluster: voters and learners, each sorted."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine's bytes as of `metadata.index`, plus the membership then."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


class MessageType(enum.IntEnum):
    """Messages between nodes. PROP, READ_INDEX and TRANSFER_LEADER may also arrive
    from the local host through `RawNode.step`, and are forwarded to the leader."""

    APP = 0
    APP_RESP = 1
    VOTE = 2
    VOTE_RESP = 3
    PRE_VOTE = 4
    PRE_VOTE_RESP = 5
    HEARTBEAT = 6
    HEARTBEAT_RESP = 7
    SNAP = 8
    PROP = 9
    READ_INDEX = 10
    READ_INDEX_RESP = 11
    TIMEOUT_NOW = 12
    TRANSFER_LEADER = 13


@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message. Fields unused by a type stay at their defaults.

    - APP: `log_term`/`index` locate the entry before `entries`; `commit` is the
      leader's commit index.
    - APP_RESP: `index` is the last index now matching (accept) or the rejected
      index (reject); `reject_hint` is the largest index at or before the rejected
      one whose term is at most the append's `log_term`, and `log_term` the term
      there, so the leader can skip a whole conflicting term at once.
    - VOTE / PRE_VOTE: `log_term`/`index` describe the candidate's last entry.
    - HEARTBEAT / HEARTBEAT_RESP: `context` is the token of the newest ReadIndex
      request the leader is confirming (assigned by the leader; echoed back).
    - READ_INDEX / READ_INDEX_RESP: `context` is the requester's context;
      READ_INDEX_RESP's `index` is the read index.
    - TRANSFER_LEADER: `index` is the transferee's id; `frm` is the node that asked
      (which transports may check against the connection).
    - SNAP: `snapshot` is the snapshot to install.
    """

    type: MessageType
    to: int
    frm: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """The answer to a ReadIndex request: once the host has applied up to `index`,
    a read that was issued with `request_ctx` may be served from local state."""

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class Ready:
    """Everything the host must do after one batch of input. See the host contract
    in `raftkv.raft`'s module docstring for the order."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    #: Messages to send only after `entries`, `hard_state` and `snapshot` are durable.
    messages: list[Message] = field(default_factory=list)
    #: A leader's appends and heartbeats: they do not depend on this Ready's own
    #: persistence, so the host may send them before or while it writes. (Empty
    #: when this Ready changes the term or vote: a leader elected within it sends
    #: nothing before its term is durable.)
    early_messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    #: True when `entries` or `hard_state` (term or vote) must be fsynced before
    #: `messages` are sent. A commit-index-only change needs no fsync.
    must_sync: bool = False


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: str
    recent_active: bool
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    last_index: int
    conf_state: ConfState
    lead_transferee: int
    #: Only filled on the leader.
    progress: dict[int, ProgressStatus] = field(default_factory=dict)
