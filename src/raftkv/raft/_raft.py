"""The Raft state machine: one node's view of the protocol.

Theory of operation. A node is a follower, a pre-candidate, a candidate or a leader.
Each role has its own `_step_*` and `_tick_*` function, chosen once on the role
transition (`_become_*`) rather than re-decided on every message:

- follower --(election timeout, pre-vote on)--> pre-candidate: asks "could I win?"
  without raising its term.
- pre-candidate --(pre-votes from a quorum)--> candidate: raises its term, votes for
  itself, asks for votes. Any message from a leader of its term or newer turns it
  back into a follower.
- candidate --(votes from a quorum)--> leader: appends an empty entry of its term,
  which is the first entry it may commit (Raft paper 5.4.2), and replicates.
- leader --(higher term seen, quorum lost, or removed)--> follower.

Never: two leaders in one term (a node votes at most once per term, and `vote` is
part of the hard state the host persists before the vote is sent); a committed entry
overwritten (`RaftLog.append` asserts it); a leader counting its own unpersisted
entries towards a quorum (its own match moves only in `on_persisted`).

Messages from the local host (PROP, READ_INDEX, TRANSFER_LEADER) arrive with term 0
and are forwarded to the leader by followers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _quorum
from ._config import Config
from ._errors import (
    CompactedError,
    ConfChangePending,
    InvalidConfChange,
    LeaderTransferRefused,
    ProposalDropped,
    RaftError,
    SnapshotTemporarilyUnavailable,
    StepLocalMessage,
)
from ._log import RaftLog
from ._progress import Inflights, Progress, ProgressState
from ._storage import Storage
from ._types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
    entries_size_bytes,
    has_conf_change,
    numbered_entries,
)

#: Context of a vote request that a leadership transfer started: voters grant it
#: even while they still hear from the old leader.
CAMPAIGN_TRANSFER = b"transfer"

_EARLY_TYPES = frozenset(
    {MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP, MessageType.TIMEOUT_NOW}
)
_VOTE_TYPES = frozenset(
    {MessageType.VOTE, MessageType.PRE_VOTE, MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP}
)
_LOCAL_TYPES = frozenset({MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER})


@dataclass(slots=True)
class _ReadRequest:
    index: int
    frm: int
    context: bytes
    acks: set[int] = field(default_factory=set)


class _ReadOnly:
    """ReadIndex requests waiting for a heartbeat quorum, in arrival order.

    Heartbeats carry a token the leader assigns to each request, not the request's
    own context: contexts come from many nodes, each numbering its own reads, and
    may collide. Tokens only grow, so an ack for one request also confirms
    leadership for every request queued before it.
    """

    __slots__ = ("next_token", "pending")

    def __init__(self) -> None:
        # Insertion-ordered, and tokens grow: the first key is the oldest request.
        self.pending: dict[int, _ReadRequest] = {}
        self.next_token = 1

    def add(self, index: int, context: bytes, frm: int) -> bytes:
        """Queue a request; returns the token its heartbeats must carry."""
        token = self.next_token
        self.next_token += 1
        self.pending[token] = _ReadRequest(index, frm, context)
        return _encode_token(token)

    def ack(self, token: bytes, frm: int) -> set[int] | None:
        request = self.pending.get(_decode_token(token))
        if request is None:
            return None
        request.acks.add(frm)
        return request.acks

    def release_through(self, token: bytes) -> list[_ReadRequest]:
        """Remove and return every request up to and including `token`'s."""
        last = _decode_token(token)
        released = []
        for queued in list(self.pending):
            if queued > last:
                break
            released.append(self.pending.pop(queued))
        return released

    def last_pending(self) -> bytes:
        """The token of the newest request, or b"" if none is waiting."""
        return _encode_token(next(reversed(self.pending))) if self.pending else b""

    def clear(self) -> None:
        # The token counter survives, so that no token is ever reused.
        self.pending.clear()


def _encode_token(token: int) -> bytes:
    return token.to_bytes(8, "big")


def _decode_token(context: bytes) -> int:
    """The token a heartbeat (response) carries, or 0, which no request has, if the
    context is not a token (a peer's bad input must not raise)."""
    return int.from_bytes(context, "big") if len(context) == 8 else 0


class Raft:
    def __init__(self, config: Config, storage: Storage, rng: random.Random) -> None:
        config.validate()
        self.id = config.id
        self.config = config
        self.rng = rng
        self.log = RaftLog(storage, config.max_applying_bytes)
        hard_state, conf_state = storage.initial_state()

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.msgs_early: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = _ReadOnly()
        self.pending_read_index: list[Message] = []
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        #: The index of this leader's first entry (its no-op): entries from there on
        #: are the ones `uncommitted_bytes` counts.
        self.term_start_index = 0
        self.lead_transferee = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        #: Ticks since this node started; the leader stamps each follower's answers
        #: with it (`Progress.last_heard_tick`).
        self.ticks = 0
        self.randomized_election_timeout = config.election_tick
        self._step: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election

        self._set_conf_state(conf_state)
        if hard_state != HardState():
            self._load_hard_state(hard_state)
        if config.applied > 0:
            self.log.applied_to(min(config.applied, self.log.committed))
        self._become_follower(self.term, NONE)

    # --- small queries -----------------------------------------------------------------

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def promotable(self) -> bool:
        """Whether this node may campaign: it is a voter and holds no snapshot it has
        not yet persisted."""
        return self.id in self.voters and self.log.unstable.snapshot is None

    def _load_hard_state(self, hard_state: HardState) -> None:
        committed = hard_state.commit
        if not self.log.committed <= committed <= self.log.last_index():
            raise AssertionError(
                f"hard state commit {committed} is out of range "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = committed
        self.term = hard_state.term
        self.vote = hard_state.vote

    # --- sending -------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if (
            self.role is Role.LEADER and message.type in _EARLY_TYPES
        ) or message.type is MessageType.HEARTBEAT_RESP:
            # A heartbeat's answer promises nothing persisted (it carries the term,
            # which `take_early_messages` and `ready` hold back until durable).
            self.msgs_early.append(message)
        else:
            self.msgs.append(message)

    def _send_append(self, to: int) -> bool:
        """Send `to` an append even if it carries no entries (it then carries the
        commit index), then keep sending while its window has room: a batch larger
        than one message goes out at once rather than one message per round trip.
        Returns whether anything was sent."""
        if not self._maybe_send_append(to, send_if_empty=True):
            return False
        while self._maybe_send_append(to, send_if_empty=False):
            pass
        return True

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send an append (or a snapshot) to `to` unless it is paused. Returns whether a
        message was sent."""
        progress = self.progress[to]
        log = self.log
        if not send_if_empty and progress.next > log.last_index():
            return False  # Nothing new (the usual end of a `while` over this).
        if progress.is_paused():
            return False
        max_bytes = self.config.max_size_per_msg_bytes
        inflights = progress.inflights
        room_bytes = inflights.max_bytes - inflights.bytes
        bytes_bounded = inflights.max_bytes > 0 and progress.state is ProgressState.REPLICATE
        if bytes_bounded:
            # Ask only for what still fits in the window, so in-flight bytes never
            # pass max_inflight_bytes.
            max_bytes = min(max_bytes, room_bytes)
        try:
            prev_term = log.term(progress.next - 1)
            entries = log.entries_from(progress.next, max_bytes)
        except CompactedError:
            return self._send_snapshot(to, progress)
        if not entries and not send_if_empty:
            return False
        size_bytes = entries_size_bytes(entries)
        if bytes_bounded and size_bytes > room_bytes and len(inflights) > 0:
            # Even the first entry does not fit: wait for acknowledgements. (Into an
            # empty window an entry goes alone, however large, or it never would.)
            return False
        self._send(
            Message(
                MessageType.APP,
                to=to,
                frm=self.id,
                term=self.term,
                log_term=prev_term,
                index=progress.next - 1,
                entries=tuple(entries),
                commit=log.committed,
            )
        )
        awaited = progress.awaited_commit
        if awaited and min(log.committed, progress.next - 1 + len(entries)) >= awaited:
            progress.awaited_commit = 0  # The follower will commit it with this append.
        progress.sent_entries(len(entries), size_bytes)
        return True

    def _send_snapshot(self, to: int, progress: Progress) -> bool:
        if not self.recently_active(progress):
            # A snapshot is expensive: do not send one into the void.
            return False
        try:
            snapshot = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        assert not snapshot.is_empty, "need a snapshot but storage has none"
        progress.become_snapshot(snapshot.metadata.index)
        self._send(Message(MessageType.SNAP, to=to, frm=self.id, term=self.term, snapshot=snapshot))
        return True

    def _send_heartbeat(self, to: int, context: bytes) -> None:
        # A follower may not have matched the leader's log yet; it must not commit
        # past what it is known to hold.
        commit = min(self.progress[to].match, self.log.committed)
        self._send(
            Message(
                MessageType.HEARTBEAT,
                to=to,
                frm=self.id,
                term=self.term,
                commit=commit,
                context=context,
            )
        )

    def _peers(self) -> list[int]:
        return [peer for peer in self.progress if peer != self.id]

    def _broadcast_append(self) -> None:
        for peer in self._peers():
            self._send_append(peer)

    def _announce_commit(self) -> None:
        """The commit index advanced: tell the followers (see `Config.eager_commit`)."""
        if self.config.eager_commit:
            self._broadcast_append()
            return
        committed = self.log.committed
        for peer, progress in self.progress.items():
            if 0 < progress.awaited_commit <= committed:  # never set for this node
                self._send_append(peer)

    def _await_commit(self, peer: int, index: int) -> None:
        """Follower `peer` waits for `index` to commit: send it the commit index
        once it does, rather than with its next append or heartbeat."""
        progress = self.progress.get(peer)
        if self.config.eager_commit or progress is None or peer == self.id:
            return
        progress.awaited_commit = max(progress.awaited_commit, index)
        if index <= self.log.committed:
            self._send_append(peer)

    def _await_commit_everywhere(self, index: int) -> None:
        """Every member hears at once when `index` commits: an entry that changes
        (or may change) the membership, which a node being removed must apply to
        leave, as no append or heartbeat reaches it once the leader applied it."""
        for peer in self._peers():
            self._await_commit(peer, index)

    def _broadcast_heartbeat(self, context: bytes = b"") -> None:
        for peer in self._peers():
            self._send_heartbeat(peer, context)

    # --- role transitions --------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_tick + self.rng.randrange(
            self.config.election_tick
        )
        self.lead_transferee = NONE
        self.votes = {}
        last_index = self.log.last_index()
        for node_id, progress in self.progress.items():
            progress.inflights.reset()
            progress.state = ProgressState.PROBE
            progress.probe_sent = False
            progress.pending_snapshot = 0
            # Every follower starts the term as if just heard from, which gives a
            # new leader one election timeout to reach a quorum.
            progress.last_heard_tick = self.ticks
            progress.match = 0
            progress.next = last_index + 1
            if node_id == self.id:
                progress.match = self.log.stabled_index()
        self.pending_conf_index = 0
        self.uncommitted_bytes = 0
        self.read_only.clear()
        self.pending_read_index = []

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step = self._step_follower
        self._tick = self._tick_election

    def _become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER, "a leader cannot become a pre-candidate"
        # A pre-candidate changes neither its term nor its vote.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER, "a leader cannot become a candidate"
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE, "only a candidate becomes leader"
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        own = self.progress.get(self.id)
        if own is not None:
            own.become_replicate()
        # Conservatively treat any unapplied tail as holding a membership change.
        self.pending_conf_index = self.log.last_index()
        self.term_start_index = self.log.last_index() + 1
        # The first entry of the new term: only entries of the current term are
        # committed by counting replicas, so this commits everything before it.
        self._append_entries([Entry(0, 0)])
        # That tail may hold a membership change (see pending_conf_index above).
        self._await_commit_everywhere(self.log.last_index())

    # --- elections -------------------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self.promotable():
            return
        if self.log.has_pending_conf_change():
            # A membership change is committed but not applied: the voter set we
            # would campaign with may already be stale.
            return
        if self.config.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_type = MessageType.PRE_VOTE
            term = self.term + 1
        else:
            self._become_candidate()
            vote_type = MessageType.VOTE
            term = self.term
        if self._poll(self.id, granted=True) is _quorum.VoteResult.WON:
            # A single-voter cluster wins at once.
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
                self._broadcast_append()  # to its learners, if any
            return
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        context = CAMPAIGN_TRANSFER if transfer else b""
        for voter in sorted(self.voters):
            if voter == self.id:
                continue
            self._send(
                Message(
                    vote_type,
                    to=voter,
                    frm=self.id,
                    term=term,
                    log_term=last_term,
                    index=last_index,
                    context=context,
                )
            )

    def _poll(self, voter: int, granted: bool) -> _quorum.VoteResult:
        self.votes.setdefault(voter, granted)
        return _quorum.vote_result(self.voters, self.votes)

    # --- ticks -------------------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        self._tick()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.config.check_quorum and not self._quorum_active():
            # Checked on every tick, not once per election timeout: a leader cut off
            # just after a periodic check would otherwise lead for almost two
            # timeouts, long after the other side may have elected a new leader.
            self._become_follower(self.term, NONE)
            return
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.lead_transferee != NONE:
                # The transfer did not complete within an election timeout: abort it
                # so the leader accepts proposals again.
                self.lead_transferee = NONE
        if self.role is not Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self.read_only.last_pending())

    def recently_active(self, progress: Progress) -> bool:
        """Whether the follower answered within the last election timeout."""
        return self.ticks - progress.last_heard_tick < self.config.election_tick

    def _quorum_active(self) -> bool:
        """Whether a quorum of voters (counting this leader) answered within the last
        election timeout."""
        active = [
            node_id
            for node_id, progress in self.progress.items()
            if node_id == self.id or self.recently_active(progress)
        ]
        return _quorum.has_quorum(self.voters, active)

    # --- step --------------------------------------------------------------------------

    def step(self, m: Message, local: bool = False) -> None:
        """Handle one message. Errors (`RaftError`) are raised only for `local`
        requests, which the host made itself; a peer's request that cannot be served
        (say, a proposal forwarded to a node that lost leadership) is dropped, and
        the peer's own client times out and retries."""
        if local:
            self._step_message(m)
            return
        # Not `contextlib.suppress`: this runs for every message, and a try costs
        # nothing until it catches.
        try:  # noqa: SIM105
            self._step_message(m)
        except RaftError:
            pass

    def _step_message(self, m: Message) -> None:
        if m.term == 0:
            if m.type not in _LOCAL_TYPES:
                raise StepLocalMessage(f"message of type {m.type.name} without a term")
        elif m.term > self.term:
            if not self._step_higher_term(m):
                return
        elif m.term < self.term:
            self._step_lower_term(m)
            return

        if m.type is MessageType.VOTE or m.type is MessageType.PRE_VOTE:
            self._step_vote_request(m)
        else:
            self._step(m)

    def _step_higher_term(self, m: Message) -> bool:
        """Handle a message from a newer term. Returns whether to go on with it."""
        if m.type is MessageType.VOTE or m.type is MessageType.PRE_VOTE:
            in_lease = (
                self.config.check_quorum
                and self.lead != NONE
                and self.election_elapsed < self.config.election_tick
            )
            if in_lease and m.context != CAMPAIGN_TRANSFER:
                # We heard from a leader within the minimum election timeout: do not
                # let a node that was cut off depose it (Raft thesis 4.2.3).
                return False
        if m.type is MessageType.PRE_VOTE:
            return True  # A pre-vote never changes our term.
        if m.type is MessageType.PRE_VOTE_RESP and not m.reject:
            # The pre-vote was granted for the term we would campaign in; our term
            # rises only when we win the pre-vote and campaign for real.
            return True
        if m.type in (MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP):
            self._become_follower(m.term, m.frm)
        else:
            self._become_follower(m.term, NONE)
        return True

    def _step_lower_term(self, m: Message) -> None:
        if (self.config.check_quorum or self.config.pre_vote) and m.type in (
            MessageType.HEARTBEAT,
            MessageType.APP,
        ):
            # A leader cut off by a partition keeps sending. Answer with our term so
            # it learns it was replaced; otherwise, with pre-vote on, its followers
            # would never raise their term past it and a stale node could stay stuck.
            self._send(Message(MessageType.APP_RESP, to=m.frm, frm=self.id, term=self.term))
        elif m.type is MessageType.PRE_VOTE:
            self._send(
                Message(
                    MessageType.PRE_VOTE_RESP, to=m.frm, frm=self.id, term=self.term, reject=True
                )
            )

    def _step_vote_request(self, m: Message) -> None:
        response_type = (
            MessageType.VOTE_RESP if m.type is MessageType.VOTE else MessageType.PRE_VOTE_RESP
        )
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type is MessageType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # The response carries the request's term so the candidate counts it
            # even though a pre-vote did not raise our term.
            self._send(Message(response_type, to=m.frm, frm=self.id, term=m.term))
            if m.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(response_type, to=m.frm, frm=self.id, term=self.term, reject=True))

    # --- follower ----------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        kind = m.type
        if kind is MessageType.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader is known; retry once one is elected")
            if has_conf_change(m.entries) and self.log.has_pending_conf_change(False):
                # The leader would drop it without a word: refuse it here, where the
                # caller hears. (A change the leader has and we do not yet is still
                # dropped there; the caller's timeout covers that.)
                raise ConfChangePending(
                    "a membership change is already in progress; retry once it is applied"
                )
            self._send(_redirect(m, self.lead))
        elif kind is MessageType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif kind is MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif kind is MessageType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif kind is MessageType.TRANSFER_LEADER:
            if m.index not in self.voters:
                # Refuse here rather than let the leader drop it silently.
                raise LeaderTransferRefused(f"node {m.index} is not a voter")
            if self.lead == NONE:
                raise ProposalDropped("no leader is known to transfer leadership from")
            self._send(_redirect(m, self.lead))
        elif kind is MessageType.TIMEOUT_NOW:
            # The leader asked us to take over: campaign at once, skipping pre-vote.
            self._hup(transfer=True)
        elif kind is MessageType.READ_INDEX:
            if self.lead == NONE:
                raise ProposalDropped("no leader is known to serve a read index")
            self._send(_redirect(m, self.lead))
        elif kind is MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    # --- candidate and pre-candidate -----------------------------------------------------

    def _step_candidate(self, m: Message) -> None:
        kind = m.type
        if kind is MessageType.PROP:
            raise ProposalDropped("an election is in progress; retry once a leader is elected")
        if kind in (MessageType.READ_INDEX, MessageType.TRANSFER_LEADER):
            raise ProposalDropped("an election is in progress; no leader is known")
        if kind is MessageType.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif kind is MessageType.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif kind is MessageType.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif kind in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP):
            expected = (
                MessageType.PRE_VOTE_RESP
                if self.role is Role.PRE_CANDIDATE
                else MessageType.VOTE_RESP
            )
            if kind is not expected:
                return
            result = self._poll(m.frm, granted=not m.reject)
            if result is _quorum.VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self._campaign(pre_vote=False, transfer=False)
                else:
                    self._become_leader()
                    self._broadcast_append()
            elif result is _quorum.VoteResult.LOST:
                self._become_follower(self.term, NONE)

    # --- leader ------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        kind = m.type
        if kind is MessageType.PROP:
            self._leader_propose(m)
            return
        if kind is MessageType.READ_INDEX:
            self._leader_read_index(m)
            return
        if kind is MessageType.TRANSFER_LEADER:
            self._leader_transfer(m.index)
            return
        progress = self.progress.get(m.frm)
        if progress is None:
            return  # From a node no longer (or not yet) in the configuration.
        if kind is MessageType.APP_RESP:
            self._handle_append_response(m, progress)
        elif kind is MessageType.HEARTBEAT_RESP:
            self._handle_heartbeat_response(m, progress)

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise ProposalDropped("empty proposal")
        if self.id not in self.progress:
            raise ProposalDropped("this node was removed from the cluster")
        if self.lead_transferee != NONE:
            raise ProposalDropped(
                f"leadership is being transferred to {self.lead_transferee}; retry shortly"
            )
        entries = list(m.entries)
        conf_position = 0
        for position, entry in enumerate(entries if has_conf_change(entries) else (), 1):
            if entry.type == EntryType.CONF_CHANGE:
                if conf_position or self.pending_conf_index > self.log.applied:
                    raise ConfChangePending(
                        "a membership change is already in progress; retry once it is applied"
                    )
                self._validate_conf_change(ConfChange.decode(entry.data))
                conf_position = position
        first_index = self.log.last_index() + 1
        self._append_entries(entries)
        if conf_position:
            # Only once the change is in the log: a proposal refused above (say, by
            # the uncommitted-bytes cap) must not block the next change.
            self.pending_conf_index = first_index + conf_position - 1
            self._await_commit_everywhere(self.pending_conf_index)
        self._await_commit(m.frm, self.log.last_index())  # if forwarded by a follower
        self._broadcast_append()

    def _validate_conf_change(self, change: ConfChange) -> None:
        node = change.node_id
        if node <= 0:
            raise InvalidConfChange(f"node id must be a positive integer, got {node}")
        if change.type is ConfChangeType.ADD_NODE and node in self.voters:
            raise InvalidConfChange(f"node {node} is already a voter")
        if change.type is ConfChangeType.ADD_LEARNER and node in self.voters:
            raise InvalidConfChange(f"node {node} is a voter; it cannot become a learner")
        if change.type is ConfChangeType.ADD_LEARNER and node in self.learners:
            raise InvalidConfChange(f"node {node} is already a learner")
        if change.type is ConfChangeType.REMOVE_NODE:
            if node not in self.voters and node not in self.learners:
                raise InvalidConfChange(f"node {node} is not a member")
            if self.voters == {node}:
                raise InvalidConfChange(f"node {node} is the last voter; it cannot be removed")

    def _append_entries(self, entries: list[Entry]) -> None:
        last_index = self.log.last_index()
        term = self.term
        added_bytes = entries_size_bytes(entries)
        cap = self.config.max_uncommitted_entries_bytes
        if cap and self.uncommitted_bytes > 0 and self.uncommitted_bytes + added_bytes > cap:
            raise ProposalDropped(
                f"too many uncommitted bytes ({self.uncommitted_bytes}); retry once the "
                "cluster catches up"
            )
        self.uncommitted_bytes += added_bytes
        self.log.append(numbered_entries(entries, term, last_index + 1))
        # The leader's own match moves only once the host reports the entries
        # durable (`on_persisted`): it must not count itself towards a quorum early.

    def _leader_read_index(self, m: Message) -> None:
        if self.log.term_or_zero(self.log.committed) != self.term:
            # Until an entry of this term commits, our commit index may lag what a
            # previous leader committed (Raft thesis 6.4): hold the read.
            self.pending_read_index.append(m)
            return
        if self.voters == {self.id}:
            self._answer_read(m.frm, self.log.committed, m.context)
            return
        token = self.read_only.add(self.log.committed, m.context, m.frm)
        self.read_only.ack(token, self.id)
        self._broadcast_heartbeat(token)

    def _answer_read(self, requester: int, index: int, context: bytes) -> None:
        if requester in (NONE, self.id):
            self.read_states.append(ReadState(index, context))
        else:
            self._send(
                Message(
                    MessageType.READ_INDEX_RESP,
                    to=requester,
                    frm=self.id,
                    term=self.term,
                    index=index,
                    context=context,
                )
            )
            self._await_commit(requester, index)  # It applies up to index, then reads.

    def _release_pending_read_index(self) -> None:
        if self.pending_read_index and self.log.term_or_zero(self.log.committed) == self.term:
            pending, self.pending_read_index = self.pending_read_index, []
            for m in pending:
                self._leader_read_index(m)

    def _leader_transfer(self, transferee: int) -> None:
        if transferee not in self.voters:
            raise LeaderTransferRefused(f"node {transferee} is not a voter")
        if transferee == self.id:
            return  # Already the leader.
        if self.lead_transferee == transferee:
            return  # Already in progress.
        self.lead_transferee = transferee
        self.election_elapsed = 0
        if self.progress[transferee].match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, to=transferee, frm=self.id, term=self.term))
        else:
            self._send_append(transferee)

    def _handle_append_response(self, m: Message, progress: Progress) -> None:
        progress.last_heard_tick = self.ticks
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if progress.maybe_decrease_to(m.index, hint):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(m.frm)
            return
        was_paused = progress.is_paused()
        if not progress.maybe_update(m.index):
            return
        if progress.state is ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state is ProgressState.SNAPSHOT:
            if progress.match >= progress.pending_snapshot:
                progress.become_probe()
                progress.become_replicate()
        else:
            progress.inflights.free_le(m.index)
        # A match at or below the commit index moves no quorum past it (one
        # follower of two acknowledging after the other: the common case).
        if m.index > self.log.committed and self._maybe_commit():
            self._announce_commit()
        elif was_paused:
            self._send_append(m.frm)
        # Pipelining: keep the window full while there is more to send.
        while self._maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and progress.match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, to=m.frm, frm=self.id, term=self.term))

    def _handle_heartbeat_response(self, m: Message, progress: Progress) -> None:
        progress.last_heard_tick = self.ticks
        progress.probe_sent = False
        behind = progress.match < self.log.last_index()
        if behind and not self._send_append(m.frm) and progress.state is ProgressState.REPLICATE:
            # The window is full and its acknowledgements may have been lost: free a
            # slot so that a fresh append's answer tells where the follower is.
            progress.inflights.free_first_one()
            self._send_append(m.frm)
        if not m.context:
            return
        acks = self.read_only.ack(m.context, m.frm)
        if acks is None or not _quorum.has_quorum(self.voters, acks):
            return
        for request in self.read_only.release_through(m.context):
            self._answer_read(request.frm, request.index, request.context)

    def _maybe_commit(self) -> bool:
        match = {node_id: pr.match for node_id, pr in self.progress.items()}
        committed = _quorum.committed_index(self.voters, match)
        if self.log.maybe_commit(committed, self.term):
            self._release_pending_read_index()
            return True
        return False

    # --- follower message handling -----------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(
                Message(
                    MessageType.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=log.committed
                )
            )
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, list(m.entries))
        if last_new is not None:
            self._send(
                Message(MessageType.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=last_new)
            )
            return
        # Reject, with a hint that lets the leader skip a whole conflicting term: the
        # largest index at or before the probe whose term is <= the probe's term.
        hint_index = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._send(
            Message(
                MessageType.APP_RESP,
                to=m.frm,
                frm=self.id,
                term=self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=log.term_or_zero(hint_index),
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(
            Message(
                MessageType.HEARTBEAT_RESP, to=m.frm, frm=self.id, term=self.term, context=m.context
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None, "snapshot message without a snapshot"
        if self._restore(m.snapshot):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(
            Message(MessageType.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=index)
        )

    def _restore(self, snapshot: Snapshot) -> bool:
        """Install a snapshot from the leader. False if it brings nothing new."""
        meta = snapshot.metadata
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already hold the entries the snapshot covers: just commit them.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self._set_conf_state(meta.conf_state)
        return True

    # --- membership ----------------------------------------------------------------------

    def _set_conf_state(self, conf_state: ConfState) -> None:
        self.voters = set(conf_state.voters)
        self.learners = set(conf_state.learners)
        next_index = self.log.last_index() + 1
        members = self.voters | self.learners
        for node_id in list(self.progress):
            if node_id not in members:
                del self.progress[node_id]
        for node_id in members:
            progress = self.progress.get(node_id)
            if progress is None:
                progress = self._new_progress(next_index)
                self.progress[node_id] = progress
            progress.is_learner = node_id in self.learners

    def _new_progress(self, next_index: int) -> Progress:
        progress = Progress(
            next_index,
            Inflights(self.config.max_inflight_msgs, self.config.max_inflight_bytes),
        )
        # A new member counts as active, or a leader that just added it could fail
        # its next quorum check before it ever heard back.
        progress.last_heard_tick = self.ticks
        return progress

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        voters, learners = set(self.voters), set(self.learners)
        node = change.node_id
        if change.type is ConfChangeType.ADD_NODE:
            learners.discard(node)
            voters.add(node)
        elif change.type is ConfChangeType.ADD_LEARNER:
            if node not in voters:
                learners.add(node)
        elif change.type is ConfChangeType.REMOVE_NODE:
            if voters - {node}:
                voters.discard(node)
            learners.discard(node)
        self._set_conf_state(ConfState(tuple(sorted(voters)), tuple(sorted(learners))))
        self._after_conf_change(node)
        return self.conf_state()

    def _after_conf_change(self, changed: int) -> None:
        if self.role is not Role.LEADER:
            return
        if self.id not in self.voters:
            # We removed ourselves: step down so the remaining voters elect a leader.
            self._become_follower(self.term, NONE)
            return
        if self.lead_transferee != NONE and self.lead_transferee not in self.voters:
            self.lead_transferee = NONE
        own = self.progress[self.id]
        if own.match == 0:
            own.match = self.log.stabled_index()
        # The quorum changed: entries may now be committed.
        if self._maybe_commit():
            self._broadcast_append()
        elif changed in self.progress and changed != self.id:
            # Start probing a new member at once rather than at the next heartbeat.
            self._maybe_send_append(changed, send_if_empty=True)

    # --- host feedback -------------------------------------------------------------------

    def on_persisted(self, last_index: int, last_term: int) -> None:
        """The host made entries up to (last_index, last_term) durable."""
        self.log.stable_to(last_index, last_term)
        if self.role is Role.LEADER and self.log.match_term(last_index, last_term):
            own = self.progress.get(self.id)
            if own is not None and own.maybe_update(last_index) and self._maybe_commit():
                self._announce_commit()

    def on_applied(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.log.applied_to(entries[-1].index)
        if self.role is Role.LEADER and self.uncommitted_bytes:
            # Only this leader's own entries were counted; earlier terms' entries that
            # its no-op committed must not release any of them.
            own = entries[max(0, self.term_start_index - entries[0].index) :]
            released = entries_size_bytes(own)
            assert released <= self.uncommitted_bytes, "released more bytes than were counted"
            self.uncommitted_bytes -= released

    def report_unreachable(self, node_id: int) -> None:
        progress = self.progress.get(node_id)
        if (
            self.role is Role.LEADER
            and progress is not None
            and progress.state is ProgressState.REPLICATE
        ):
            progress.become_probe()

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        progress = self.progress.get(node_id)
        if self.role is not Role.LEADER or progress is None:
            return
        if progress.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            progress.pending_snapshot = 0
        progress.become_probe()
        # Wait for a heartbeat response before probing again: the follower may still
        # be busy applying the snapshot.
        progress.probe_sent = True

    def campaign(self) -> None:
        self._hup(transfer=False)


def _redirect(m: Message, to: int) -> Message:
    return Message(
        m.type,
        to=to,
        frm=m.frm,
        term=0,
        entries=m.entries,
        context=m.context,
        index=m.index,
    )
