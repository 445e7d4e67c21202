"""The node runtime: drives the consensus core with real time, disk and network.

Theory of operation. Requests reach the core in one batch per loop turn: a leader
proposes every write that arrived in the turn (`propose_many`) and starts one
ReadIndex round for every read, from one callback right after it (`_submit_now`),
and sends their appends or heartbeats at once; a follower's go through `_run`,
which forwards them. One asyncio task (`_run`) owns the `RawNode`'s `Ready`s. For
each it carries out the host contract of `raftkv.raft`:

1. sends the leader's appends at once, writes entries and hard state to the WAL and
   fsyncs off the loop, through io_uring or in a worker thread (`_fsync`; group
   commit: whatever arrives meanwhile goes in the next fsync); the messages that
   depend on the write go from the fsync's completion;
2. applies committed entries to the state machine and resolves the requests they
   answer, and the reads whose read index is now applied. A leader does not wait
   for the next Ready: entries are applied as the acknowledgements (or its own
   fsync's completion) commit them (`RawNode.take_committed_entries`), and read
   indexes as their confirmations arrive (`RawNode.take_read_states`);
3. advances, and takes a snapshot when enough entries were applied since the last.

Messages from peers are stepped into the core as they arrive (on the event loop);
the core allows that between `ready()` and `advance()`.

Requests are matched to the entries that answer them by an 12-byte header on every
entry this node proposes: (origin node id, request id). Every node applies every
entry; only the origin resolves a waiter. A follower forwards its proposals to the
leader inside the core, and answers its client when it has applied the entry itself.
A request that cannot be answered within the request timeout fails with `NoLeader`
(no leader was known) or `Timeout` (the outcome is unknown).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import random
import struct
import time
from functools import partial
from typing import Any

import msgpack

from .. import errors
from ..kv import KvSnapshot, KvStateMachine
from ..raft import (
    ConfChange,
    ConfChangePending,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    InvalidConfChange,
    LeaderTransferRefused,
    Message,
    ProposalDropped,
    RawNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from ..storage import DiskStorage
from ..transport import ListenError, Transport
from ._dedup import HEADER, HEADER_BYTES, AppliedRequests
from ._fsync import Fsyncer, FsyncUnavailable
from ._metrics import Metrics
from ._options import NodeOptions, OptionsError, parse_peer_url

log = logging.getLogger("raftkv.node")


#: Name of the marker file a node leaves in its data directory once it has applied
#: its own removal, so that a restart on that directory refuses clearly.
REMOVED_MARKER = "REMOVED"


class StartupError(RuntimeError):
    """The node cannot start; the message is one line saying why and what to do."""


class Node:
    def __init__(self, options: NodeOptions) -> None:
        options.validate()
        self.options = options
        self.id = options.id
        self.metrics = Metrics(options.id)
        self.members: dict[int, str] = {}
        self.removed = asyncio.Event()
        #: Set when the node stops because it learned of its removal from a peer: the
        #: one line to print before exiting with an error.
        self.refusal: str | None = None
        self._ever_had_leader = False
        self._removal_grace: asyncio.TimerHandle | None = None
        self.state_machine = KvStateMachine()
        # Request ids stay unique across restarts of this node: they start from the
        # wall clock in microseconds, which a node never outpaces.
        self._request_ids = itertools.count(time.time_ns() // 1000)
        self._applied_requests = AppliedRequests()
        #: Writes proposed by this node and not yet applied: re-proposed when the
        #: leader changes, since a forwarded proposal may have been lost.
        self._unapplied: dict[int, bytes] = {}
        #: (time proposed, request id) of our writes, oldest first: a follower
        #: proposes again a write not applied within an election timeout, since the
        #: forward to the leader may have been dropped (its link down, say).
        self._proposed_at: collections.deque[tuple[float, int]] = collections.deque()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Any], int]] = (
            collections.deque()
        )
        self._proposals: list[bytes] = []
        #: Membership changes to propose: (change, its request's future, whether it
        #: was proposed before and is sent again).
        self._conf_changes: list[tuple[ConfChange, asyncio.Future[Any], bool]] = []
        self._conf_change_in_flight: asyncio.Future[Any] | None = None
        self._conf_change_sent: tuple[ConfChange, float] | None = None
        self._reads: list[asyncio.Future[None]] = []
        #: ReadIndex rounds in flight: context -> (time issued, the reads it serves).
        self._read_rounds: dict[bytes, tuple[float, list[asyncio.Future[None]]]] = {}
        self._read_ready: list[tuple[int, list[asyncio.Future[None]]]] = []
        self._read_contexts = itertools.count(1)
        self._wake = asyncio.Event()
        self._submit_scheduled = False
        #: Whether a leader applied entries outside a Ready (`_apply_committed`)
        #: since the raft loop last yielded: their replies may not be out yet.
        self._answered = False
        #: Runs the WAL's fsyncs while the loop goes on (set up in `start`).
        self._fsyncer: Fsyncer | None = None
        #: Set (and replaced) on every change of the known leader.
        self._leader_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_index = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        #: While a stopping leader hands over (`hand_over_leadership`): to whom, and
        #: an event set if that node's connection drops meanwhile.
        self._hand_over: tuple[int, asyncio.Event] | None = None
        #: After a failed snapshot (a full disk, say) the next automatic one waits,
        #: doubling up to a minute, rather than start again at the next apply.
        self._snapshot_backoff_s = 0.0
        self._snapshot_retry_at = 0.0
        #: Serialises the snapshot writes (a received one, a local one): both write
        #: the WAL, which only one writer may do at a time.
        self._snapshot_lock = asyncio.Lock()
        self._lag_max_s = 0.0
        #: How long a forwarded request may go unanswered before it is sent again: an
        #: election timeout, but within a quarter of the request timeout, so that a
        #: node tuned for slow elections still retries before its clients give up.
        options = self.options
        self._retry_after_s = min(
            self._election_timeout_s,
            max(5 * options.tick_ms / 1000, options.request_timeout_s / 4),
        )
        #: Figures of the last snapshot this node took (for /v1/snapshot and logs).
        self.last_snapshot: dict[str, Any] = {}
        self._stopping = False
        self.leader_id = 0
        self.role = Role.FOLLOWER
        self.applied_index = 0
        self.committed_index = 0
        self.term = 0
        self._storage: DiskStorage
        self._raw: RawNode
        self._transport: Transport
        self._loop: asyncio.AbstractEventLoop

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        options = self.options
        data_dir = options.resolved_data_dir
        if (data_dir / REMOVED_MARKER).exists():
            raise StartupError(
                f"node {self.id} was removed from the cluster; its data directory "
                f"{data_dir} cannot be reused: delete it and join again as a new member"
            )
        try:
            storage = DiskStorage.open(
                data_dir,
                self.id,
                options.cluster_id,
                catch_up_entries=options.snapshot_catchup_entries,
            )
        except Exception as exc:
            raise StartupError(f"cannot open data directory {data_dir}: {exc}") from exc
        self._storage = storage
        try:
            self._fsyncer = Fsyncer(
                storage, self._loop, mode=options.fsync, name=f"raftkv-{self.id}-fsync"
            )
        except FsyncUnavailable as exc:
            storage.close()
            raise StartupError(str(exc)) from None
        log.info("node %d: WAL fsyncs run through %s", self.id, self._fsyncer.via)
        snapshot = storage.snapshot()
        if not snapshot.is_empty:
            self._restore_snapshot(snapshot)
        config = Config(
            id=self.id,
            election_tick=options.election_ticks,
            heartbeat_tick=1,
            max_inflight_msgs=512,
            max_uncommitted_entries_bytes=64 << 20,
            # A commit index travels on the next append or heartbeat, or at once to
            # a follower with a client waiting on it: half the messages per write.
            eager_commit=False,
            applied=snapshot.metadata.index,
        )
        self._raw = RawNode(config, storage, random.Random())
        peers = options.peers
        if storage.is_new:
            if not options.join:
                self._raw.bootstrap(
                    [
                        ConfChange(
                            ConfChangeType.ADD_NODE,
                            node_id,
                            _encode_change_context(address.url, 0, 0),
                        )
                        for node_id, address in peers.items()
                    ]
                )
        elif options.join:
            log.warning(
                "--join ignored: %s already holds this node's state; restarting from it",
                data_dir,
            )
        if not self.members:
            self.members = {node_id: address.url for node_id, address in peers.items()}
        # Peers come from the snapshot's membership when there is one (it may name
        # members added after this node was first started); the log replay that
        # follows adds and removes the rest.
        dial = {node_id: parse_peer_url(url) for node_id, url in self.members.items()}
        listen = peers[self.id]
        self._transport = Transport(
            node_id=self.id,
            cluster_id=options.cluster_id,
            listen=(listen.host, listen.port),
            peers={
                node_id: (address.host, address.port)
                for node_id, address in dial.items()
                if node_id != self.id
            },
            on_messages=self._on_messages,
            on_unreachable=self._on_unreachable,
            on_snapshot_status=self._on_snapshot_status,
            on_removed=self._on_removed_by_peer,
        )
        try:
            await self._transport.start()
        except ListenError as exc:
            await self._fsyncer.close()
            storage.close()
            raise StartupError(
                f"cannot listen for peers on {listen.host}:{listen.port}: {exc}"
            ) from None
        if self._raw.status().conf_state.voters == (self.id,):
            self._raw.campaign()  # The only voter: no need to wait an election timeout.
        self._tasks = [
            asyncio.create_task(self._run(), name=f"raftkv-node-{self.id}"),
            asyncio.create_task(self._ticker(), name=f"raftkv-ticker-{self.id}"),
            asyncio.create_task(self._lag_probe(), name=f"raftkv-lag-{self.id}"),
        ]
        self._wake.set()

    async def hand_over_leadership(self) -> None:
        """If this node leads, pass leadership to the most up-to-date other voter it
        is connected to, and wait until that node leads: an election timeout at
        most, and no longer once that node's connection drops. A graceful stop then
        leaves the cluster without a leader for a round trip or two rather than an
        election timeout. Best effort: on any failure the stop goes on."""
        if self.role is not Role.LEADER or self._stopping or self.removed.is_set():
            return
        status = self._raw.status()
        others = [
            (progress.match, node_id)
            for node_id, progress in status.progress.items()
            if node_id != self.id
            and node_id in status.conf_state.voters
            and progress.recent_active
            and self._transport.connected(node_id)
        ]
        if not others:
            return
        transferee = max(others)[1]
        try:
            self._raw.transfer_leader(transferee)
        except (LeaderTransferRefused, ProposalDropped):
            return
        self._wake.set()
        # Given up if the transferee's connection drops (it is stopping too, say).
        dropped = asyncio.Event()
        self._hand_over = (transferee, dropped)
        lost = asyncio.ensure_future(dropped.wait())
        try:
            async with asyncio.timeout(self._election_timeout_s):
                while self.leader_id in (0, self.id) and not lost.done():
                    changed = asyncio.ensure_future(self._leader_changed.wait())
                    await asyncio.wait((changed, lost), return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
        except TimeoutError:
            pass
        finally:
            lost.cancel()
            self._hand_over = None
        if self.leader_id not in (0, self.id):
            log.info("node %d: handed leadership to node %d", self.id, self.leader_id)

    async def stop(self) -> None:
        if self._stopping or not self._tasks:
            self._stopping = True
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._snapshot_task
        await self._transport.stop()
        self._fail_everything(errors.Unavailable("the node is shutting down"))
        # A cancelled Ready may have left its fsync running: let it end first.
        assert self._fsyncer is not None
        await self._fsyncer.close()
        self._storage.close()

    # --- the API for request handlers ------------------------------------------------

    def check_available(self) -> None:
        if self.removed.is_set():
            raise errors.Removed(f"node {self.id} was removed from the cluster")
        if self._stopping:
            raise errors.Unavailable("the node is shutting down")

    def submit_write(
        self, command: bytes, future: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        """Queue one state machine command for replication. The future (`future` if
        given, else a new one) resolves to its result once the entry is applied here;
        it fails with `NoLeader` or `Timeout` after the request timeout. Writes
        queued in one loop turn are proposed together."""
        self.check_available()
        request_id = next(self._request_ids)
        if future is None:
            future = self._loop.create_future()
        self._track(future, request_id)
        self._unapplied[request_id] = command
        self._proposed_at.append((self._loop.time(), request_id))
        self._proposals.append(HEADER.pack(self.id, request_id, 0) + command)
        self._wake_for_request()
        return future

    async def write(self, command: bytes) -> Any:
        """Replicate one command; returns its result once it is applied here."""
        return await self.submit_write(command)

    def submit_read(self) -> asyncio.Future[None]:
        """A barrier for linearizable reads: once the future resolves, local state
        reflects every write acknowledged (anywhere) before this call. Reads queued
        in one loop turn share one ReadIndex round."""
        self.check_available()
        future: asyncio.Future[None] = self._loop.create_future()
        self._track(future)
        self._reads.append(future)
        self._wake_for_request()
        return future

    async def read_barrier(self) -> None:
        await self.submit_read()

    async def change_membership(
        self, change_type: ConfChangeType, node_id: int, url: str = ""
    ) -> ConfState:
        """Propose a membership change and wait until this node has applied it."""
        self.check_available()
        url = self._check_change(change_type, node_id, url)
        self._refuse_second_change()
        request_id = next(self._request_ids)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._track(future, request_id)  # One deadline for the whole request.
        self._conf_change_in_flight = future  # A second change is refused from now.
        try:
            # Checked against the membership as of now, not against this node's view,
            # which may lag (a node that just joined, one that was cut off): it
            # catches up first, as for a linearizable read.
            await self.read_barrier()
            self._check_change_against_members(change_type, node_id)
        except BaseException:
            self._waiters.pop(request_id, None)
            future.cancel()
            raise
        if not future.done():  # (Past its deadline, it is not proposed at all.)
            change = ConfChange(
                change_type, node_id, _encode_change_context(url, self.id, request_id)
            )
            self._conf_changes.append((change, future, False))
            self._wake.set()
        result: ConfState = await future
        return result

    def _refuse_second_change(self) -> None:
        if self._conf_change_in_flight is not None and not self._conf_change_in_flight.done():
            # The leader allows one pending change and would drop a second one that
            # we forward without telling us: refuse it here.
            raise errors.Conflict(
                "a membership change is already in progress; retry once it is applied"
            )

    def _check_change(self, change_type: ConfChangeType, node_id: int, url: str) -> str:
        """Check a membership change's node id and URL; returns the clean URL."""
        if node_id <= 0:
            raise errors.InvalidRequest(f"node id must be a positive integer, got {node_id}")
        if change_type is ConfChangeType.REMOVE_NODE:
            return ""
        try:
            return parse_peer_url(url).url
        except OptionsError as exc:
            raise errors.InvalidRequest(str(exc)) from None

    def _check_change_against_members(self, change_type: ConfChangeType, node_id: int) -> None:
        conf = self._raw.status().conf_state
        if change_type is ConfChangeType.REMOVE_NODE:
            if node_id not in conf.voters and node_id not in conf.learners:
                raise errors.InvalidRequest(f"node {node_id} is not a member of the cluster")
        elif node_id in conf.voters:
            raise errors.InvalidRequest(f"node {node_id} is already a voter")
        elif change_type is ConfChangeType.ADD_LEARNER and node_id in conf.learners:
            raise errors.InvalidRequest(f"node {node_id} is already a learner")

    async def transfer_leader(self, transferee: int) -> None:
        self.check_available()
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                # Checked against the voters as of now, not against this node's
                # view, which may lag: it catches up first, as for a read.
                await self.read_barrier()
                try:
                    self._raw.transfer_leader(transferee)
                except LeaderTransferRefused as exc:
                    raise errors.InvalidRequest(str(exc)) from None
                except ProposalDropped as exc:
                    raise errors.NoLeader(str(exc)) from None
                self._wake.set()
                while self.leader_id != transferee:
                    await self._leader_changed.wait()
        except TimeoutError:
            raise errors.Timeout(f"leadership did not move to node {transferee} in time") from None

    def status(self) -> dict[str, Any]:
        status = self._raw.status()
        progress = {
            node_id: {"match": pr.match, "next": pr.next, "state": pr.state}
            for node_id, pr in status.progress.items()
        }
        return {
            "id": self.id,
            "role": status.soft_state.role.name.lower(),
            "term": status.hard_state.term,
            "leader": status.soft_state.leader_id,
            "commit": status.hard_state.commit,
            "applied": self.applied_index,
            "last_index": status.last_index,
            "snapshot_index": self._snapshot_index,
            "members": [
                {
                    "id": node_id,
                    "url": self.members.get(node_id, ""),
                    "learner": node_id in status.conf_state.learners,
                    "match": progress.get(node_id, {}).get("match"),
                }
                for node_id in sorted(
                    set(status.conf_state.voters) | set(status.conf_state.learners)
                )
            ],
            "progress": progress,
        }

    def render_metrics(self) -> bytes:
        metrics = self.metrics
        metrics.commit_index.set(self.committed_index)
        metrics.applied_index.set(self.applied_index)
        metrics.apply_lag.set(max(0, self.committed_index - self.applied_index))
        metrics.term.set(self.term)
        return metrics.render()

    def is_healthy(self) -> bool:
        return (
            self.leader_id != 0
            and not self.removed.is_set()
            and self.applied_index >= self.committed_index
        )

    # --- waiters and deadlines -------------------------------------------------------

    def _track(self, future: asyncio.Future[Any], request_id: int = 0) -> None:
        """Give a request its deadline, and (for writes) a waiter the apply loop finds
        by request id. Every request shares one timeout, so the deque stays sorted."""
        deadline = time.monotonic() + self.options.request_timeout_s
        self._deadlines.append((deadline, future, request_id))
        if request_id:
            # Removed when the entry applies, or at the deadline (`_expire`).
            self._waiters[request_id] = future

    def _expire(self) -> None:
        """Forget the finished requests at the head of the deadline queue, then fail
        every request past its deadline.

        A write still in the queue was never handed to Raft: it is withdrawn and
        fails with `NoLeader`, a promise that it will never apply. A write already
        proposed may still commit, so it fails with `Timeout` (outcome unknown).
        """
        deadlines = self._deadlines
        waiters, unapplied = self._waiters, self._unapplied
        # A finished request leaves at once rather than at its deadline: kept for the
        # whole request timeout, with its result, at tens of thousands of requests a
        # second, they made each young-generation collection take 10-100 ms.
        while deadlines:
            _, future, request_id = deadlines[0]
            if not future.done() or request_id in waiters or request_id in unapplied:
                break
            deadlines.popleft()
        now = time.monotonic()
        if not deadlines or deadlines[0][0] > now:
            return
        # Ids of first proposals still queued (a queued retry's original may commit).
        queued = {
            request_id
            for _, request_id, base in map(HEADER.unpack_from, self._proposals)
            if not base
        }
        never_proposed = errors.NoLeader(
            "no leader was elected within the request timeout; the write was not applied"
        )
        reads_error = errors.NoLeader("no leader was elected within the request timeout")
        unknown = errors.Timeout(
            "the request did not complete within the request timeout; a write may or may "
            "not have been applied"
        )
        withdrawn = set()
        while deadlines and deadlines[0][0] <= now:
            _, future, request_id = deadlines.popleft()
            if request_id:
                waiters.pop(request_id, None)
                unapplied.pop(request_id, None)
            if future.done():
                continue
            withdrawn.add(request_id)
            if request_id in queued:
                future.set_exception(never_proposed)
            elif request_id == 0 and self.leader_id == 0:
                future.set_exception(reads_error)
            else:
                future.set_exception(unknown)
        if withdrawn and self._proposals:
            self._proposals = [
                data for data in self._proposals if HEADER.unpack_from(data)[1] not in withdrawn
            ]

    def _fail_everything(self, error: Exception) -> None:
        for _, future, _ in self._deadlines:
            if not future.done():
                future.set_exception(error)
        self._deadlines.clear()

    # --- transport callbacks ---------------------------------------------------------

    def _on_messages(self, messages: list[Message]) -> None:
        raw = self._raw
        for message in messages:
            raw.step(message)
        # Confirmed read indexes need no Ready: the reads they serve are answered
        # now if this node has applied that far.
        read_states = raw.take_read_states()
        if read_states:
            self._note_read_states(read_states)
        if self.role is not Role.LEADER:
            # A follower's answers to heartbeats (which confirm a leader's
            # ReadIndex) need no fsync: they go now.
            self._send_early()
        else:
            self._apply_committed()
        if self._read_ready:
            self._release_reads()
        # After the replies of the entries just applied: they go out first. A new
        # commit index whose entries a leader applied already needs no loop turn:
        # the next Ready (the next proposal's, or a tick's) persists it.
        if raw.has_ready(commit_alone=False):
            self._wake.set()

    def _apply_committed(self) -> None:
        """A leader's entries just committed (by acknowledgements, or its own write
        becoming durable): applied, and their clients answered, now rather than in
        the next Ready. They are durable on a quorum."""
        raw = self._raw
        committed = raw.take_committed_entries()
        if committed:
            self._apply(committed)
            self._answered = True
        # What commits make sendable is mostly appends carrying a new commit index:
        # queued, to go out after the replies.
        messages = raw.take_early_messages()
        if messages:
            self._transport.send(messages)

    def _wake_for_request(self) -> None:
        if self.role is not Role.LEADER:
            self._wake.set()  # The raft loop forwards it.
        elif not self._submit_scheduled:
            self._submit_scheduled = True
            self._loop.call_soon(self._submit_now)

    def _submit_now(self) -> None:
        """A leader's requests, once every request of this loop turn is in: proposed,
        and their appends (and ReadIndex heartbeats) sent at once, rather than in the
        raft loop's next turn, which may be waiting for a Ready's fsync. Followers
        persist the entries while this node still waits; the entries come in the
        next Ready, to be persisted here, and until they are the leader does not
        count itself towards committing them."""
        self._submit_scheduled = False
        if self.role is Role.LEADER:
            self._submit_requests()
            self._send_early()
            if not self._raw.has_ready(commit_alone=False):
                return  # Reads only: their heartbeats went out; nothing to persist.
        self._wake.set()

    def _send_early(self) -> None:
        self._send_now(self._raw.take_early_messages())

    def _send_now(self, messages: list[Message]) -> None:
        """Write messages to their peers now, not later in this loop turn."""
        if messages:
            self._transport.send(messages)
            self._transport.flush()

    def _on_unreachable(self, node_id: int) -> None:
        if self._hand_over is not None and self._hand_over[0] == node_id:
            self._hand_over[1].set()
        self._raw.report_unreachable(node_id)
        self.metrics.peer_send_errors.labels(peer=str(node_id)).inc()

    def _on_snapshot_status(self, node_id: int, ok: bool) -> None:
        self._raw.report_snapshot(node_id, ok)
        self._wake.set()

    # --- the loop --------------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = self.options.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self._raw.tick()
            self._expire()
            self._retry_forwarded()
            self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._answered = False  # Woken after those replies: they are out.
                self._submit_requests()
                while self._raw.has_ready(commit_alone=False):
                    await self._handle_ready(self._raw.ready())
                    self._submit_requests()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("node %d: fatal error in the raft loop; stopping", self.id)
            self._fail_everything(errors.Unavailable("the node stopped after a fatal error"))
            self.removed.set()
            os._exit(70)

    def _submit_requests(self) -> None:
        raw = self._raw
        if self._proposals and self.leader_id != 0:
            batch, self._proposals = self._proposals, []
            try:
                raw.propose_many(batch)
                self.metrics.proposals += len(batch)
            except ProposalDropped:
                self._proposals[:0] = batch  # Retry when a leader is known again.
        if self._conf_changes and self.leader_id != 0:
            pending, self._conf_changes = self._conf_changes, []
            for change, future, again in pending:
                if future.done():
                    continue
                try:
                    self._conf_change_sent = (change, self._loop.time())
                    raw.propose_conf_change(change)
                except ConfChangePending as exc:
                    if not again:
                        future.set_exception(errors.Conflict(str(exc)))
                    # Sent again, the change pending may be its own first copy, which
                    # may still commit: the request waits for that, or its deadline.
                except InvalidConfChange as exc:
                    future.set_exception(errors.InvalidRequest(str(exc)))
                except ProposalDropped:
                    self._conf_changes.append((change, future, again))
        if self._reads and self.leader_id != 0:
            reads = [future for future in self._reads if not future.done()]
            self._reads = []
            if reads:
                context = next(self._read_contexts).to_bytes(8, "big")
                try:
                    raw.read_index(context)
                    self._read_rounds[context] = (self._loop.time(), reads)
                except ProposalDropped:
                    self._reads = reads

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.leader_id, rd.soft_state.role)
        early = rd.early_messages
        if early and (rd.entries or not rd.committed_entries):
            # Appends of new entries (or heartbeats): on their way before the apply
            # below holds the loop. A Ready that only commits sends its appends,
            # which just carry the new commit index, after applying, which answers
            # the clients waiting on those entries.
            self._send_now(early)
            early = []
        storage = self._storage
        if rd.snapshot is not None:
            async with self._snapshot_lock:
                # The file off the loop; the WAL marker and the in-memory log on it.
                await asyncio.to_thread(storage.write_snapshot_file, rd.snapshot)
                storage.install_snapshot(rd.snapshot)
            decoded = await asyncio.to_thread(_decode_snapshot, rd.snapshot.data)
            self._restore_snapshot(rd.snapshot, decoded)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
            self.committed_index = rd.hard_state.commit
        synced = None
        if rd.must_sync:
            if rd.entries or rd.hard_state is not None:
                storage.append(rd.entries, rd.hard_state)
            # The kernel (or a worker thread) syncs while this thread applies.
            # Committed entries are durable on a quorum already, so they are applied
            # (and their clients answered) without waiting for this write. Only the
            # messages below depend on it.
            assert self._fsyncer is not None
            # Its messages (a follower's acknowledgement) go as soon as the write
            # is durable, from the fsync's completion; a leader applies what its
            # own write commits.
            synced = self._fsyncer.sync(partial(self._on_durable, rd))
        if rd.committed_entries:
            self._apply(rd.committed_entries)
        if rd.read_states:
            self._note_read_states(rd.read_states)
        if self._read_ready:
            self._release_reads()
        if early:
            # The commit index for the followers: queued, to go out at the end of
            # this loop turn, after the replies to the clients just answered.
            self._transport.send(early)
        if synced is not None:
            self.metrics.fsync_seconds.observe(await synced)
            if self._answered:
                # What this write committed was applied when it became durable
                # (`_on_durable`): the replies go out before the bookkeeping below.
                self._answered = False
                await asyncio.sleep(0)
        elif rd.committed_entries or rd.read_states:
            # The replies to the clients just answered are written by their
            # futures' callbacks: let them run before the bookkeeping below.
            await asyncio.sleep(0)
        if rd.hard_state is not None and not rd.must_sync:
            storage.append([], rd.hard_state)  # Only a new commit index.
        if synced is None:
            self._send_now(rd.messages)  # before the next Ready's apply holds the loop
        self._raw.advance(rd)
        self._maybe_snapshot()

    def _on_durable(self, rd: Ready) -> None:
        """The write of `rd` is durable (called from the fsync's completion)."""
        self._send_now(rd.messages)
        self._raw.persisted(rd)
        if self.role is Role.LEADER:
            self._apply_committed()

    def _on_soft_state(self, leader_id: int, role: Role) -> None:
        if leader_id != self.leader_id:
            self.metrics.leader_changes.inc()
            log.info("node %d: leader is now %d (role %s)", self.id, leader_id, role.name)
        if leader_id not in (0, self.leader_id):
            self._ever_had_leader = True
            self._repropose()
        if leader_id != self.leader_id:
            # Wake everyone waiting for a leader change, then re-arm for the next.
            self._leader_changed.set()
            self._leader_changed = asyncio.Event()
        self.leader_id = leader_id
        self.role = role
        self.metrics.is_leader.set(1 if role is Role.LEADER else 0)
        if leader_id == 0:
            # The read rounds in flight will never be answered by the old leader.
            for _, futures in self._read_rounds.values():
                self._reads.extend(futures)
            self._read_rounds.clear()

    def _retry_forwarded(self) -> None:
        now = self._loop.time()
        horizon = now - self._retry_after_s
        self._retry_reads(horizon)
        proposed_at = self._proposed_at
        if not proposed_at or proposed_at[0][0] > horizon:
            self._retry_conf_change(now, horizon)
            return
        unapplied = self._unapplied
        stale = []
        while proposed_at and proposed_at[0][0] <= horizon:
            request_id = proposed_at.popleft()[1]
            if request_id in unapplied:
                stale.append(request_id)
        self._retry_conf_change(now, horizon)
        if not stale or self.role is Role.LEADER or self.leader_id == 0:
            # A leader's own proposals are in its log (lost only with leadership,
            # which re-proposes them); without a leader they wait in the queue.
            return
        base = self.applied_index
        pack = HEADER.pack
        self._proposals.extend(pack(self.id, rid, base) + unapplied[rid] for rid in stale)
        proposed_at.extend((now, rid) for rid in stale)
        log.info("node %d: re-proposing %d writes not applied in time", self.id, len(stale))

    def _retry_reads(self, horizon: float) -> None:
        """Ask again for the reads of rounds not answered in time: a ReadIndex request
        forwarded to the leader is lost if the link was down or leadership moved.
        Rounds whose reads all ended (timed out) are dropped."""
        rounds = self._read_rounds
        if not rounds:
            return
        for context, (issued_at, futures) in list(rounds.items()):
            if issued_at <= horizon:
                del rounds[context]
                self._reads.extend(future for future in futures if not future.done())

    def _retry_conf_change(self, now: float, horizon: float) -> None:
        """Forward our membership change again if it is not applied in time: the
        leader drops (without telling us) a change it cannot take yet. A second copy
        is harmless: the leader refuses a change that is already made, and applying
        one twice changes nothing. A copy refused because a change is pending (the
        first copy, perhaps) leaves the request waiting: `_submit_requests`."""
        pending = self._conf_change_sent
        future = self._conf_change_in_flight
        if pending is None or future is None or future.done():
            return
        change, sent_at = pending
        if sent_at > horizon or self.role is Role.LEADER or self.leader_id == 0:
            return
        self._conf_change_sent = (change, now)
        self._conf_changes.append((change, future, True))

    def _repropose(self) -> None:
        """Propose again every write of ours not yet applied: the old leader may have
        lost it. `AppliedRequests` skips the copy if the original commits too."""
        if not self._unapplied:
            return
        base = self.applied_index
        pack = HEADER.pack
        retries = [
            pack(self.id, request_id, base) + command
            for request_id, command in self._unapplied.items()
        ]
        log.info("node %d: re-proposing %d unapplied writes", self.id, len(retries))
        self._proposals[:0] = retries

    def _note_read_states(self, read_states: list[ReadState]) -> None:
        for read_state in read_states:
            issued = self._read_rounds.pop(read_state.request_ctx, None)
            if issued is not None:
                self._read_ready.append((read_state.index, issued[1]))

    def _release_reads(self) -> None:
        """Answer the reads whose read index is applied (callers check that some
        wait: this runs for every message batch)."""
        applied = self.applied_index
        still_waiting = []
        for index, futures in self._read_ready:
            if index <= applied:
                for future in futures:
                    if not future.done():
                        future.set_result(None)
            else:
                still_waiting.append((index, futures))
        self._read_ready = still_waiting

    # --- applying ----------------------------------------------------------------------

    def _apply(self, entries: list[Entry]) -> None:
        machine = self.state_machine
        waiters = self._waiters
        applied_requests = self._applied_requests
        my_id = self.id
        unpack = HEADER.unpack_from
        for entry in entries:
            index = entry.index
            if entry.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(entry)
                continue
            data = entry.data
            if len(data) < HEADER_BYTES:
                machine.apply(index, b"")  # A new leader's no-op (or a malformed entry).
                continue
            origin, request_id, base = unpack(data)
            if not applied_requests.should_apply(index, origin, request_id, base):
                machine.apply(index, b"")
                if origin == my_id:
                    self._skip_retry(request_id)
                continue
            applied_requests.record(index, origin, request_id)
            result = machine.apply(index, data[HEADER_BYTES:])
            if origin == my_id:
                self._unapplied.pop(request_id, None)
                future = waiters.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(result)
        last = entries[-1].index
        self.metrics.applied += len(entries)
        self.applied_index = last
        if last > self.committed_index:
            self.committed_index = last

    def _skip_retry(self, request_id: int) -> None:
        """A copy of our write was skipped: a duplicate of an applied original (its
        waiter is done already), or too late to tell (the outcome is unknown)."""
        self._unapplied.pop(request_id, None)
        future = self._waiters.pop(request_id, None)
        if future is not None and not future.done():
            future.set_exception(
                errors.Timeout("the write may or may not have been applied; read to find out")
            )

    def _apply_conf_change(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        conf_state = self._raw.apply_conf_change(change)
        origin, request_id = 0, 0
        url = ""
        if change.context:
            try:
                url, origin, request_id = _decode_change_context(change.context)
            except ValueError:
                log.warning("node %d: undecodable membership context at %d", self.id, entry.index)
        node_id = change.node_id
        if change.type is ConfChangeType.REMOVE_NODE:
            self.members.pop(node_id, None)
            if node_id != self.id:
                # Messages already queued for the removed node include the append
                # that tells it its removal committed; let them go out, then hang up.
                self._loop.call_later(self._removal_grace_s, self._forget_peer, node_id)
        elif url:
            self.members[node_id] = url
            if node_id != self.id:
                address = parse_peer_url(url)
                self._transport.add_peer(node_id, address.host, address.port)
        self.state_machine.apply(entry.index, b"")
        if origin == self.id:
            future = self._waiters.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(conf_state)
        if change.type is ConfChangeType.REMOVE_NODE and node_id == self.id:
            self._on_removed("it applied its removal")

    @property
    def _removal_grace_s(self) -> float:
        """How long the entry of a removal may take to reach the removed node: two
        election timeouts."""
        return 2 * self._election_timeout_s

    @property
    def _election_timeout_s(self) -> float:
        """The shortest election timeout (elections come after 1-2 of them)."""
        return self.options.election_ticks * self.options.tick_ms / 1000

    def _forget_peer(self, node_id: int) -> None:
        if node_id not in self.members and not self._stopping:
            self._transport.remove_peer(node_id)

    def _on_removed_by_peer(self, peer_id: int) -> None:
        """A peer refused us as removed: the cluster has committed our removal.

        The entry saying so may still be on its way (the leader sends it to the node
        it removes, while the other members may already refuse it), so the node gets
        a grace period to apply it and leave the ordinary way. If it does not come,
        a node that never heard from a leader since it started was removed while it
        was down: no peer will send it that entry, and its data cannot be reused."""
        if self.removed.is_set() or self._removal_grace is not None:
            return
        self._removal_grace = self._loop.call_later(
            self._removal_grace_s, self._removed_by_peer_late, peer_id
        )

    def _removed_by_peer_late(self, peer_id: int) -> None:
        if self.removed.is_set() or self._stopping:
            return
        if not self._ever_had_leader:
            self.refusal = (
                f"node {self.id} was removed from the cluster while it was down (peer "
                f"{peer_id} refused it); its data directory cannot be reused: delete it "
                "and join again as a new member"
            )
        self._on_removed(f"peer {peer_id} refused it and its removal did not arrive")

    def _on_removed(self, how: str) -> None:
        log.warning("node %d: removed from the cluster (%s); shutting down", self.id, how)
        with contextlib.suppress(OSError):
            (self.options.resolved_data_dir / REMOVED_MARKER).write_text(
                f"node {self.id} was removed from the cluster\n"
            )
        self.removed.set()

    # --- snapshots ---------------------------------------------------------------------

    def _restore_snapshot(
        self, snapshot: Snapshot, decoded: _DecodedSnapshot | None = None
    ) -> None:
        """Replace the replicated state with a snapshot's (decoded here unless the
        caller decoded it off the loop already)."""
        members, applied_requests, machine = decoded or _decode_snapshot(snapshot.data)
        self.state_machine.install(machine)
        self._applied_requests = AppliedRequests.load(
            applied_requests, self._applied_requests.window_entries
        )
        self.members = members
        self._snapshot_index = snapshot.metadata.index
        self.applied_index = snapshot.metadata.index
        if hasattr(self, "_transport"):  # A snapshot received from the leader.
            for node_id, url in self.members.items():
                if node_id != self.id:
                    address = parse_peer_url(url)
                    self._transport.add_peer(node_id, address.host, address.port)

    def _maybe_snapshot(self) -> None:
        if self._snapshot_task is not None:
            return
        if self.applied_index - self._snapshot_index < self.options.snapshot_count_entries:
            return
        if self._loop.time() < self._snapshot_retry_at:
            return
        task = asyncio.create_task(self._take_snapshot())
        # Its failure is logged (and retried later): nobody awaits it.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._snapshot_task = task

    async def snapshot_now(self) -> dict[str, Any]:
        """Take a snapshot at the applied index now (or wait for the one running)."""
        self.check_available()
        if self._snapshot_task is None:
            if self.applied_index <= self._snapshot_index:
                return {"index": self._snapshot_index, "taken": False}
            self._snapshot_task = asyncio.create_task(self._take_snapshot())
        await asyncio.shield(self._snapshot_task)
        return dict(self.last_snapshot, taken=True)

    async def _take_snapshot(self) -> None:
        """Snapshot the state machine without stalling the loop: a shallow copy on the
        loop, serialisation and the file write in worker threads, then the WAL marker
        and log compaction on the loop. Records the longest loop stall meanwhile."""
        started = time.perf_counter()
        self._lag_max_s = 0.0
        index = self.applied_index
        conf_state = self._raw.status().conf_state
        frozen = self.state_machine.freeze()
        members = dict(self.members)
        applied_requests = self._applied_requests.dump()
        try:
            data = await asyncio.to_thread(_serialize_snapshot, members, applied_requests, frozen)
            del frozen
            storage = self._storage
            async with self._snapshot_lock:
                snapshot = storage.prepare_snapshot(index, conf_state, data)
                # The file (the big write) off the loop; its WAL marker on it, as
                # the WAL has one writer.
                await asyncio.to_thread(storage.write_snapshot_file, snapshot)
                storage.mark_snapshot(snapshot)
                # The marker's fsync off the loop, which a loaded disk would hold
                # for ms.
                assert self._fsyncer is not None
                await self._fsyncer.sync()
                await asyncio.to_thread(storage.prune_snapshots)  # file deletions
                storage.finish_snapshot(snapshot)
                storage.compact(index)
            await asyncio.sleep(2 * _LAG_PROBE_S)  # Let the probe see the last step.
            self._snapshot_index = index
            self.metrics.snapshots.inc()
            self.last_snapshot = {
                "index": index,
                "bytes": len(data),
                "keys": len(self.state_machine),
                "seconds": round(time.perf_counter() - started, 3),
                "loop_stall_max_ms": round(self._lag_max_s * 1000, 1),
            }
            log.info("node %d: snapshot %s", self.id, self.last_snapshot)
            self._snapshot_backoff_s = 0.0
        except Exception:
            backoff = self._snapshot_backoff_s = min(max(1.0, 2 * self._snapshot_backoff_s), 60.0)
            self._snapshot_retry_at = self._loop.time() + backoff
            log.exception(
                "node %d: snapshot at %d failed; the next in %.0f s at the earliest",
                self.id,
                index,
                backoff,
            )
            raise
        finally:
            self._snapshot_task = None

    async def _lag_probe(self) -> None:
        """Measure event-loop stalls: how late a short sleep wakes up."""
        loop = self._loop
        histogram = self.metrics.loop_lag_seconds
        while True:
            before = loop.time()
            await asyncio.sleep(_LAG_PROBE_S)
            lag_s = loop.time() - before - _LAG_PROBE_S
            histogram.observe(lag_s)
            if lag_s > self._lag_max_s:
                self._lag_max_s = lag_s


#: How often the loop-stall probe wakes up.
_LAG_PROBE_S = 0.01


#: Snapshot data: a 4-byte length, then msgpack [members, applied requests] of that
#: length, then the state machine's own snapshot bytes. The big part is never
#: wrapped in another msgpack value, which would copy it while holding the GIL.
_SNAPSHOT_HEAD = struct.Struct(">I")
_DecodedSnapshot = tuple[dict[int, str], list[Any], KvSnapshot]


def _serialize_snapshot(
    members: dict[int, str], applied_requests: list[Any], frozen: KvSnapshot
) -> bytes:
    """Runs in a worker thread: each chunk is one short call into msgpack, so the
    event loop gets the GIL back between chunks."""
    head = b"".join(
        [
            _MSGPACK_ARRAY_2,
            msgpack.packb(members, use_bin_type=True),
            *pack_list_in_chunks(applied_requests),
        ]
    )
    return b"".join([_SNAPSHOT_HEAD.pack(len(head)), head, *frozen.chunks()])


_MSGPACK_ARRAY_2 = b"\x92"
#: Items per msgpack call in `pack_list_in_chunks`: about a millisecond of work.
_PACK_CHUNK_ITEMS = 2_000


def pack_list_in_chunks(values: list[Any]) -> list[bytes]:
    """The msgpack encoding of `values` (exactly `msgpack.packb(values)`), made by
    one short msgpack call per chunk rather than one call for the whole list, which
    would hold the GIL (and stall the event loop) for as long as it runs: the window
    of applied requests in a snapshot holds up to 100,000 rows."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(len(values))]
    for start in range(0, len(values), _PACK_CHUNK_ITEMS):
        chunk = values[start : start + _PACK_CHUNK_ITEMS]
        header_bytes = len(packer.pack_array_header(len(chunk)))
        parts.append(packer.pack(chunk)[header_bytes:])
    return parts


def _decode_snapshot(data: bytes) -> _DecodedSnapshot:
    """May run in a worker thread (nothing here touches the node)."""
    (head_bytes,) = _SNAPSHOT_HEAD.unpack_from(data)
    start = _SNAPSHOT_HEAD.size
    members, applied_requests = msgpack.unpackb(
        data[start : start + head_bytes], raw=False, strict_map_key=False
    )
    machine = KvSnapshot.from_bytes(data[start + head_bytes :])
    return {int(k): str(v) for k, v in members.items()}, applied_requests, machine


def _encode_change_context(url: str, origin: int, request_id: int) -> bytes:
    """A membership entry's context: the member's peer URL, and who proposed it."""
    data: bytes = msgpack.packb([url, origin, request_id])
    return data


def _decode_change_context(context: bytes) -> tuple[str, int, int]:
    try:
        url, origin, request_id = msgpack.unpackb(context, raw=False)
        return str(url), int(origin), int(request_id)
    except Exception as exc:
        raise ValueError("bad membership context") from exc
