"""`RawNode`: the host-facing interface of the consensus core.

The host drives a `RawNode` with input (`tick`, `step`, `propose`, ...) and, whenever
`has_ready()`, takes one `Ready` and carries it out in the order of the host contract
(see `raftkv.raft`), then calls `advance(ready)`. Between `ready()` and
`advance()` the host must not call `ready()` again; any other input is allowed.
"""

from __future__ import annotations

import random

from ._config import Config
from ._errors import ProposalDropped
from ._raft import Raft
from ._storage import Storage
from ._types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProgressStatus,
    ReadState,
    Ready,
    Role,
    SoftState,
    Status,
    proposal_entries,
)


class RawNode:
    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        self._raft = Raft(config, storage, rng)
        self._prev_soft_state = self._raft.soft_state()
        self._prev_hard_state = self._raft.hard_state()
        #: The term and vote as last made durable (loaded from storage, or persisted
        #: by an advanced Ready): a leader sends nothing early in a term until then.
        self._durable_term_vote = (self._prev_hard_state.term, self._prev_hard_state.vote)
        self._ready_pending = False
        #: Whether the host called `persisted` for the pending Ready.
        self._persisted = False
        #: While a Ready is pending: the last committed entry handed to the host (in
        #: the Ready or by `take_committed_entries`), the entries taken, and the
        #: last index that the Ready makes durable (0: taking is off).
        self._handed_out = 0
        self._taken: list[Entry] = []
        self._take_limit = 0

    # --- input -------------------------------------------------------------------------

    def bootstrap(self, members: list[ConfChange]) -> None:
        """Start a brand-new cluster: commit one membership entry per initial member.

        Call once, on a node whose storage is empty, with the same list on every
        initial member. The entries come out in the next Ready both to persist and
        to apply (the host calls `apply_conf_change` for each, as for any other);
        the node campaigns only once they are applied.
        """
        raft = self._raft
        if raft.log.last_index() != 0 or raft.term != 0:
            raise ProposalDropped("bootstrap needs empty storage; this node has state")
        if not members:
            raise ValueError("bootstrap needs at least one member")
        entries = [
            Entry(1, index, EntryType.CONF_CHANGE, change.encode())
            for index, change in enumerate(members, 1)
        ]
        raft.log.append(entries)
        raft.log.committed = len(entries)
        raft.term = 1
        # Apply the membership now so that the first Ready already has the peers
        # (the host's apply_conf_change calls for these entries change nothing).
        for change in members:
            raft.apply_conf_change(change)

    def tick(self) -> None:
        """Advance logical time by one tick (election and heartbeat timers)."""
        self._raft.tick()

    def step(self, message: Message) -> None:
        """Feed a message received from a peer. Never raises for bad peer input: a
        message that cannot be right is dropped, one that cannot be served now is
        ignored (the peer retries)."""
        if _well_formed(message):
            self._raft.step(message)

    def propose(self, data: bytes) -> None:
        """Propose one entry. Raises ProposalDropped if it cannot be accepted now."""
        self.propose_many([data])

    def propose_many(self, datas: list[bytes]) -> None:
        """Propose several entries as one batch (one append, one message per peer)."""
        raft = self._raft
        entries = proposal_entries(datas)
        raft.step(Message(MessageType.PROP, to=0, frm=raft.id, entries=entries), local=True)

    def propose_conf_change(self, change: ConfChange) -> None:
        """Propose a membership change. Raises ConfChangePending if another is in
        progress and InvalidConfChange if it makes no sense."""
        raft = self._raft
        entry = Entry(0, 0, EntryType.CONF_CHANGE, change.encode())
        raft.step(Message(MessageType.PROP, to=0, frm=raft.id, entries=(entry,)), local=True)

    def read_index(self, context: bytes) -> None:
        """Ask for a read index. The answer is a `ReadState` with this context in a
        later Ready; a read issued before this call is linearizable once the host has
        applied up to its index. Use a unique context per request (or per batch)."""
        raft = self._raft
        raft.step(Message(MessageType.READ_INDEX, to=0, frm=raft.id, context=context), local=True)

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader to hand leadership to `transferee` (a caught-up voter)."""
        raft = self._raft
        message = Message(MessageType.TRANSFER_LEADER, to=0, frm=raft.id, index=transferee)
        raft.step(message, local=True)

    def campaign(self) -> None:
        """Start an election now (through pre-vote when it is on). Does nothing on a
        leader, on a node that is not a voter, or while a committed membership
        change waits to be applied (the voters it would ask may be out of date)."""
        self._raft.campaign()

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Apply a committed membership change; returns the new configuration."""
        return self._raft.apply_conf_change(change)

    def report_unreachable(self, node_id: int) -> None:
        """The host failed to send to `node_id`: stop streaming to it optimistically."""
        self._raft.report_unreachable(node_id)

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """The snapshot sent to `node_id` was delivered (`ok`) or failed."""
        self._raft.report_snapshot(node_id, ok)

    # --- output ------------------------------------------------------------------------

    def take_early_messages(self) -> list[Message]:
        """Take the messages that may be sent at once: a leader's appends and
        heartbeats, a follower's answers to heartbeats, which would otherwise be
        the next Ready's `early_messages`.

        For a host persisting a Ready: a proposal it makes meanwhile goes out to the
        followers now, rather than after this Ready's write and the next `ready()`.
        The entries themselves still come in the next Ready, to be persisted; the
        leader counts itself only once they are. Returns nothing until this node's
        current term and vote are durable (a leader elected in the Ready being
        persisted waits for it)."""
        raft = self._raft
        if not raft.msgs_early or (raft.term, raft.vote) != self._durable_term_vote:
            return []
        messages, raft.msgs_early = raft.msgs_early, []
        return messages

    def take_committed_entries(self) -> list[Entry]:
        """Take the committed entries the next Ready would hand out, for a host that
        applies them at once: a leader answering its clients as the
        acknowledgements arrive, rather than after the next `ready()`. Any time.

        The host applies them in order, before anything else it does with this
        node (a Ready pending: after that Ready's own committed entries). Taken
        are only entries this node holds durably, or will once the pending Ready
        is (not those proposed since `ready()`, so the host may snapshot at its
        applied index after `advance()`), never past a membership change (which
        comes in a Ready, as usual), and nothing while a snapshot installs. They
        are durable on a quorum, so applying them before this node's own write
        is durable is safe (Raft thesis 10.2.1). Outside a Ready they count as
        applied at once; inside one, `advance()` counts them."""
        log = self._raft.log
        if log.committed <= log.applied:
            return []  # Nothing committed is left to apply (most calls).
        if self._ready_pending:
            hi = min(log.committed, self._take_limit)
            lo = max(self._handed_out + 1, log.first_index())
        else:
            hi = min(log.committed, log.stabled_index())  # 0 while a snapshot installs
            lo = max(log.applied + 1, log.first_index())
        if hi < lo:
            return []
        entries = log.slice(lo, hi + 1, log.max_applying_bytes)
        for position, entry in enumerate(entries):
            if entry.type is not EntryType.NORMAL:
                entries = entries[:position]
                break
        if entries:
            if self._ready_pending:
                self._handed_out = entries[-1].index
                self._taken.extend(entries)
            else:
                self._raft.on_applied(entries)
        return entries

    def take_read_states(self) -> list[ReadState]:
        """Take the read states that would be the next Ready's `read_states`, for a
        host that serves them at once: nothing in them is persisted, so they need
        not wait for `ready()`. Any time."""
        raft = self._raft
        states, raft.read_states = raft.read_states, []
        return states

    def has_ready(self, *, commit_alone: bool = True) -> bool:
        """Whether `ready()` has something to hand out. With `commit_alone` False, a
        new commit index whose entries were all taken (`take_committed_entries`)
        does not count by itself: a host may leave it for the next Ready, which
        persists it with whatever else that Ready holds."""
        raft = self._raft
        if raft.msgs or raft.msgs_early or raft.read_states:
            return True
        if raft.log.unstable.entries or raft.log.unstable.snapshot is not None:
            return True
        if raft.log.has_next_committed_entries():
            return True
        soft = self._prev_soft_state
        if raft.lead != soft.leader_id or raft.role is not soft.role:
            return True
        prev = self._prev_hard_state
        if raft.term != prev.term or raft.vote != prev.vote:
            return True
        return commit_alone and raft.log.committed != prev.commit

    def ready(self) -> Ready:
        assert not self._ready_pending, "ready() called again before advance()"
        raft = self._raft
        log = raft.log
        rd = Ready(
            entries=log.unstable_entries(),
            snapshot=log.unstable.snapshot,
            committed_entries=log.next_committed_entries(),
            messages=raft.msgs,
            early_messages=raft.msgs_early,
            read_states=raft.read_states,
        )
        raft.msgs = []
        raft.msgs_early = []
        raft.read_states = []
        soft_state = raft.soft_state()
        if soft_state != self._prev_soft_state:
            rd.soft_state = soft_state
            self._prev_soft_state = soft_state
        hard_state = raft.hard_state()
        prev = self._prev_hard_state
        if hard_state != prev:
            rd.hard_state = hard_state
            self._prev_hard_state = hard_state
        term_or_vote_changed = hard_state.term != prev.term or hard_state.vote != prev.vote
        rd.must_sync = bool(rd.entries or rd.snapshot is not None or term_or_vote_changed)
        if term_or_vote_changed and rd.early_messages:
            # A leader elected within this Ready (a single voter wins at once) must
            # not send before its term and vote are durable: after a crash it could
            # be elected again in the same term and send a different entry at the
            # same index.
            rd.messages = rd.early_messages + rd.messages
            rd.early_messages = []
        self._ready_pending = True
        self._handed_out = rd.committed_entries[-1].index if rd.committed_entries else log.applied
        self._take_limit = log.last_index() if rd.snapshot is None else 0
        return rd

    def persisted(self, rd: Ready) -> None:
        """The host made `rd`'s entries and hard state durable; its messages are not
        necessarily sent, nor its committed entries applied. Optional, between
        `ready()` and `advance()`: a leader counts its own entries towards commit
        at once, so what they commit can be taken with `take_committed_entries()`
        before `advance()`, which does the rest."""
        assert self._ready_pending, "persisted() outside ready()..advance()"
        self._note_durable(rd)
        self._persisted = True

    def _note_durable(self, rd: Ready) -> None:
        """`rd`'s term, vote and entries are durable."""
        if rd.hard_state is not None:
            self._durable_term_vote = (rd.hard_state.term, rd.hard_state.vote)
        if rd.entries:
            last = rd.entries[-1]
            self._raft.on_persisted(last.index, last.term)

    def advance(self, rd: Ready) -> None:
        """The host has carried out `rd`: its entries and snapshot are durable, its
        messages sent and its committed entries applied."""
        assert self._ready_pending, "advance() without ready()"
        self._ready_pending = False
        raft = self._raft
        if rd.snapshot is not None:
            raft.log.stable_snapshot_to(rd.snapshot.metadata.index)
            raft.log.applied = max(raft.log.applied, rd.snapshot.metadata.index)
        if self._persisted:
            self._persisted = False
        else:
            self._note_durable(rd)
        if self._taken:
            raft.on_applied([*rd.committed_entries, *self._taken])
            self._taken = []
        else:
            raft.on_applied(rd.committed_entries)

    # --- inspection --------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._raft.id

    @property
    def role(self) -> Role:
        return self._raft.role

    @property
    def leader_id(self) -> int:
        return self._raft.lead

    @property
    def term(self) -> int:
        return self._raft.term

    def status(self) -> Status:
        raft = self._raft
        progress: dict[int, ProgressStatus] = {}
        if raft.role is Role.LEADER:
            progress = {
                node_id: ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state.value,
                    recent_active=raft.recently_active(pr),
                    is_learner=pr.is_learner,
                )
                for node_id, pr in raft.progress.items()
            }
        return Status(
            id=raft.id,
            hard_state=HardState(raft.term, raft.vote, raft.log.committed),
            soft_state=SoftState(raft.lead, raft.role),
            applied=raft.log.applied,
            last_index=raft.log.last_index(),
            conf_state=raft.conf_state(),
            lead_transferee=raft.lead_transferee,
            progress=progress,
        )


_REQUEST_TYPES = frozenset({MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER})


def _well_formed(m: Message) -> bool:
    """Whether a peer's message has a shape the core can trust. Only O(1) checks:
    this runs for every message."""
    kind = m.type
    if m.frm <= 0 and kind in _REQUEST_TYPES:
        return False  # A request from nobody.
    if m.term < 0 or m.index < 0 or m.log_term < 0 or m.commit < 0 or m.reject_hint < 0:
        return False
    if kind is MessageType.SNAP:
        return m.snapshot is not None
    entries = m.entries
    if kind is MessageType.APP and entries:
        # The entries must directly follow the entry at `index`.
        return entries[0].index == m.index + 1 and entries[-1].index == m.index + len(entries)
    return True
