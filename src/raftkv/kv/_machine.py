"""The replicated key-value state machine.

Theory of operation
-------------------
`KvStateMachine` holds a map of bytes keys to bytes values, a store revision, the
client session table, and the log time. The host feeds it every committed entry in
log order with `apply(index, data)`; nothing else changes it, so every replica that
applies the same entries holds the same state and returns the same results. It
reads no clock and no randomness, and it never raises for bad entry data: an entry
that does not decode yields a MALFORMED `CommandError` result and changes nothing
but `applied_index`.

State and its invariants:

- `_entries[key] = (value, mod_revision)`, one dict so that a lookup is one probe.
  Invariant: 0 < mod_revision <= revision. While a snapshot view borrows it, writes
  go to `_overlay` instead (see Snapshots).
- `_revision` grows by one for each command that changed the map (a put that wrote,
  a delete of an existing key, a successful cas that changed something, an append,
  a successful incr); each command of a batch counts on its own.
- `_log_time_ms`: the largest leader timestamp applied so far (`Stamped` entries).
  It never goes backwards, even if a new leader's clock is behind the old one's.
- `_sessions`: client id -> record (last sequence number applied, its recent
  results, log time of last use), ordered by last use. Because the log time never
  goes backwards and a used session moves to the end, the order is also the order
  of last-use times, so expiring idle sessions only ever looks at the front.

Sessions follow Raft's exactly-once scheme (Ongaro's dissertation, section 6.3): a
client registers and gets an id; each command it tags with (id, seq) is applied
only if seq is above the last one applied for that id, and a retry is answered from
the record. A command for an unknown (expired or evicted) session is refused with
UNKNOWN_SESSION rather than applied, because applying it could apply it twice.
Sessions idle for longer than `session_ttl_ms` of log time are dropped when a
stamped entry advances the log time, and the least recently used one is evicted when
a new registration would exceed `max_sessions`.

Snapshots are copy-on-write. `freeze()` returns a `KvSnapshot` view that borrows the
map itself; until the view is released (serialising it does that) the machine leaves
the map untouched and sends writes to an overlay that reads consult first, then
folds the overlay back in over its next applies (one dict store per key written
meanwhile, about a thousand per apply). Freezing therefore costs only a copy of the
session table, where a `dict.copy()` of the map would stall the caller 55-140 ms per
million keys on this two-core machine (bench/kv_snapshot_bench.py). A thread
serialises the view in chunks of at most `SNAPSHOT_CHUNK_KEYS` keys, each one short
call into msgpack's C code (2-10 ms), so it hands the GIL back to the event loop
between chunks instead of holding it for the whole map. Restoring goes the other
way: `KvSnapshot.from_bytes` (on a thread, chunk by chunk) then `install`, which
only swaps references. Iteration order of the map is not part of the state (a key
deleted and re-added during a view keeps its old place), so two replicas' snapshot
bytes may list keys in different orders while holding the same map.

Prefix scans use a sorted list of the keys that the first scan builds (a full sort,
O(n log n): about 1.4 s for a million random 16-byte keys, paid once per process
start or restore) and that is then kept current lazily: inserts and deletes only
note the key in a pending set (one set operation, and only once the list exists),
each scan merges the pending keys of its range into what it reads, and the pending
sets are folded into the list in one linear pass once they reach a sixteenth of it.
A workload that never scans pays nothing; a scan costs O(log n + pending + page).
The alternative of re-sorting on every scan after a write costs O(n log n) per scan;
keeping a balanced tree or a blocked sorted list current on every insert would cost
every write a few microseconds of Python. The index is derived state and is not part
of the snapshot.
"""

from __future__ import annotations

import bisect
import heapq
import io
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from ._commands import (
    INT64_MAX,
    INT64_MIN,
    Append,
    Batch,
    Cas,
    CasResult,
    CasRevision,
    Command,
    CommandError,
    Delete,
    ErrorCode,
    Incr,
    InvalidCommand,
    Noop,
    Put,
    PutCondition,
    RegisterSession,
    Result,
    Session,
    Stamped,
    decode_fields,
    pack_with_results,
    plain_puts,
    unpack_entry,
    unpack_with_results,
)

#: The snapshot format version written first in every snapshot.
SNAPSHOT_FORMAT = 1
#: Keys per serialised chunk: a few ms of msgpack work for 100-byte values, the
#: longest the serialising thread holds the GIL at a time.
SNAPSHOT_CHUNK_KEYS = 8192

_NOT_AN_INTEGER = CommandError(ErrorCode.NOT_AN_INTEGER, "value is not an integer or out of range")
_OVERFLOW = CommandError(ErrorCode.OVERFLOW, "increment or decrement would overflow")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class KvConfig:
    """State machine settings. Every replica of a cluster must use the same values:
    they decide results (the value size cap) and which sessions exist (TTL, caps),
    so replicas with different settings would diverge."""

    #: How long a session may stay unused, in log time, before it is dropped. Longer
    #: keeps retries of a client cut off by a long partition exactly-once; shorter
    #: frees the records of departed clients sooner. One hour outlasts any client
    #: retry deadline and any ordinary outage, and `max_sessions` bounds the memory
    #: regardless.
    session_ttl_ms: int = 3_600_000
    #: Most sessions held at once; registering one more evicts the least recently
    #: used (whose client then gets UNKNOWN_SESSION and must register again).
    max_sessions: int = 100_000
    #: Results kept per session, so a client that pipelines up to this many tagged
    #: commands can still have each retry answered; an older retry gets
    #: RESULT_DISCARDED. Memory is at most max_sessions * this many results.
    session_results_kept: int = 32
    #: Largest value a command may create (Redis's default proto-max-bulk-len);
    #: a put, cas or append that would exceed it fails with VALUE_TOO_LARGE. The
    #: API's much smaller request cap is checked before proposing; this one bounds
    #: what repeated appends can grow a value to.
    max_value_bytes: int = 512 * 1024 * 1024

    def validate(self) -> None:
        if self.session_ttl_ms <= 0:
            raise ValueError(f"session_ttl_ms must be positive, got {self.session_ttl_ms}")
        if self.max_sessions <= 0:
            raise ValueError(f"max_sessions must be positive, got {self.max_sessions}")
        if self.session_results_kept <= 0:
            raise ValueError(
                f"session_results_kept must be positive, got {self.session_results_kept}"
            )
        if self.max_value_bytes <= 0:
            raise ValueError(f"max_value_bytes must be positive, got {self.max_value_bytes}")


class KvSnapshotError(ValueError):
    """Snapshot bytes that are not a valid snapshot of this format."""


class _SessionRecord:
    __slots__ = ("last_active_ms", "last_seq", "results")

    def __init__(self, last_seq: int, last_active_ms: int, results: dict[int, Result]) -> None:
        self.last_seq = last_seq
        self.last_active_ms = last_active_ms
        # Sequence numbers in increasing order; invariant: all <= last_seq.
        self.results = results


class _SortedKeys:
    """The map's keys in sorted order, for prefix scans, kept up to date lazily.

    `_keys` is a sorted list built by the first scan. Inserts and deletes after
    that only go into `_added` and `_removed` (invariant: `_added` holds no key of
    `_keys`, `_removed` only keys of `_keys`), and a scan reads the list and the
    pending additions merged, skipping removals, so its cost is O(log n + pending +
    page) rather than O(n). When the pending sets grow past a sixteenth of the list
    they are folded in with one linear pass (Timsort merges the sorted list with the
    sorted additions in linear time); past the list's own size, tracking stops and
    the next scan sorts afresh, which bounds the memory the sets use.
    """

    __slots__ = ("_added", "_keys", "_removed")

    def __init__(self) -> None:
        self._keys: list[bytes] | None = None
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()

    def reset(self) -> None:
        self._keys = None
        self._added.clear()
        self._removed.clear()

    def note_insert(self, key: bytes) -> None:
        if self._keys is None:
            return
        if key in self._removed:
            self._removed.discard(key)
        else:
            self._added.add(key)
            if len(self._added) > max(len(self._keys), 4096):
                self.reset()

    def note_remove(self, key: bytes) -> None:
        if self._keys is None:
            return
        if key in self._added:
            self._added.discard(key)
        else:
            self._removed.add(key)
            if len(self._removed) > max(len(self._keys) // 2, 4096):
                self.reset()

    def _sorted(self, live_keys: Callable[[], Iterable[bytes]]) -> list[bytes]:
        keys = self._keys
        if keys is None:
            keys = self._keys = sorted(live_keys())
        elif len(self._added) + len(self._removed) > max(len(keys) // 16, 256):
            if self._removed:
                removed = self._removed
                keys = [key for key in keys if key not in removed]
            keys.extend(sorted(self._added))
            keys.sort()
            self._keys = keys
            self._added.clear()
            self._removed.clear()
        return keys

    def range(
        self,
        live_keys: Callable[[], Iterable[bytes]],
        prefix: bytes,
        start_after: bytes | None,
        limit: int,
    ) -> list[bytes]:
        """Up to `limit` keys that start with `prefix` and sort after `start_after`;
        `live_keys` lists the map's keys, for building the index."""
        keys = self._sorted(live_keys)
        if start_after is not None and start_after >= prefix:
            position = bisect.bisect_right(keys, start_after)
            low = start_after
        else:
            position = bisect.bisect_left(keys, prefix)
            low = None
        # Not islice(keys, position, None): islice steps through the first
        # `position` items one by one.
        stream: Iterator[bytes] = map(keys.__getitem__, range(position, len(keys)))
        if self._added:
            added = sorted(
                key for key in self._added if key.startswith(prefix) and (low is None or key > low)
            )
            if added:
                stream = heapq.merge(stream, added)
        removed = self._removed
        page: list[bytes] = []
        for key in stream:
            if len(page) >= limit or not key.startswith(prefix):
                break
            if key not in removed:
                page.append(key)
        return page


class KvSnapshot:
    """A frozen state of the state machine, safe to serialise on another thread.

    From `KvStateMachine.freeze()` it is a view: it borrows the machine's map, which
    the machine leaves untouched (diverting writes to an overlay) until the view is
    released. Serialising it (`chunks()` to the end, or `to_bytes()`) releases it;
    so do `release()` and dropping the last reference to it. A view serialises
    once.

    From `KvSnapshot.from_bytes()` it owns its map, and `KvStateMachine.install()`
    takes the map over (after which this object must not be used).

    Wire format: a stream of msgpack objects. The first is a bin holding the header
    array `[format, applied_index, revision, log_time_ms, next_client_id,
    key_count, sessions]`, with `sessions` a list of `[client_id, last_seq,
    last_active_ms, [[seq, result], ...]]` in least-recently-used-first order. Then
    come maps of at most SNAPSHOT_CHUNK_KEYS keys, `key -> [value, mod_revision]`,
    holding `key_count` keys in all, in the map's insertion order.
    """

    __slots__ = (
        "__weakref__",
        "_borrowed",
        "_entries",
        "_key_count",
        "_released",
        "applied_index",
        "log_time_ms",
        "next_client_id",
        "revision",
        "sessions",
    )

    def __init__(
        self,
        applied_index: int,
        revision: int,
        log_time_ms: int,
        next_client_id: int,
        entries: dict[bytes, tuple[bytes, int]],
        sessions: tuple[tuple[int, int, int, tuple[tuple[int, Result], ...]], ...],
        borrowed: bool = False,
    ) -> None:
        self.applied_index = applied_index
        self.revision = revision
        self.log_time_ms = log_time_ms
        self.next_client_id = next_client_id
        self._entries: dict[bytes, tuple[bytes, int]] | None = entries
        self._key_count = len(entries)
        self._borrowed = borrowed
        self._released = False
        self.sessions = sessions

    def __len__(self) -> int:
        return self._key_count

    def release(self) -> None:
        """Done with this view: the machine may fold its overlay back into its map
        (it does so on its own thread, at its next `apply` or `freeze`)."""
        self._released = True

    def _readable_entries(self) -> dict[bytes, tuple[bytes, int]]:
        assert self._entries is not None, "this snapshot was installed into a state machine"
        assert not (self._borrowed and self._released), "a released view cannot be read"
        return self._entries

    def chunks(self, chunk_keys: int = SNAPSHOT_CHUNK_KEYS) -> Iterator[bytes]:
        """The serialised snapshot, piece by piece: write each to a file as it comes,
        or join them. Each piece is one short call into msgpack's C code. Running
        to the end (or closing the iterator) releases a view."""
        entries = self._readable_entries()
        try:
            yield from self._serialise(entries, chunk_keys)
        finally:
            if self._borrowed:
                self._released = True

    def _serialise(
        self, entries: dict[bytes, tuple[bytes, int]], chunk_keys: int
    ) -> Iterator[bytes]:
        assert len(entries) == self._key_count, "a borrowed map changed under its view"
        header = [
            SNAPSHOT_FORMAT,
            self.applied_index,
            self.revision,
            self.log_time_ms,
            self.next_client_id,
            len(entries),
            [
                [client_id, last_seq, last_active_ms, [list(item) for item in results]]
                for client_id, last_seq, last_active_ms, results in self.sessions
            ],
        ]
        yield msgpack.packb(pack_with_results(header))
        items = iter(entries.items())
        remaining = len(entries)
        while remaining > 0:
            chunk = dict(itertools.islice(items, chunk_keys))
            remaining -= len(chunk)
            yield msgpack.packb(chunk)

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())

    @classmethod
    def from_bytes(cls, data: bytes) -> KvSnapshot:
        """Decode a snapshot, chunk by chunk. Raises `KvSnapshotError` if the bytes
        are not a snapshot of this format. The values inside are trusted to be well
        typed (snapshots are written by this class and checksummed by storage), so
        only the structure is checked, keeping this at msgpack's speed."""
        buffer_bytes = len(data) + 1
        unpacker = msgpack.Unpacker(
            io.BytesIO(data),
            use_list=False,
            read_size=min(1 << 20, buffer_bytes),
            max_buffer_size=buffer_bytes,
        )
        try:
            snapshot = cls._decode(unpacker)
            if unpacker.tell() != len(data):
                raise KvSnapshotError(f"{len(data) - unpacker.tell()} bytes of trailing data")
        except KvSnapshotError:
            raise
        except Exception as error:  # msgpack raises several types for malformed input
            raise KvSnapshotError(f"snapshot does not decode: {error!r}") from None
        return snapshot

    @classmethod
    def _decode(cls, unpacker: msgpack.Unpacker) -> KvSnapshot:
        header_bytes = unpacker.unpack()
        if type(header_bytes) is not bytes:
            raise KvSnapshotError("snapshot does not start with its header")
        header = unpack_with_results(header_bytes)
        if type(header) is not list or len(header) != 7:
            raise KvSnapshotError("snapshot header is not a 7-element array")
        fmt, applied_index, revision, log_time_ms, next_client_id, key_count, raw = header
        if fmt != SNAPSHOT_FORMAT:
            raise KvSnapshotError(f"snapshot format {fmt!r}, this build reads {SNAPSHOT_FORMAT}")
        for name, value in (
            ("applied_index", applied_index),
            ("revision", revision),
            ("log_time_ms", log_time_ms),
            ("next_client_id", next_client_id),
            ("key_count", key_count),
        ):
            if type(value) is not int or value < 0:
                raise KvSnapshotError(f"snapshot {name} {value!r} is not a non-negative int")
        entries: dict[bytes, tuple[bytes, int]] = {}
        while len(entries) < key_count:
            chunk = unpacker.unpack()
            if type(chunk) is not dict:
                raise KvSnapshotError("snapshot chunk is not a map")
            entries.update(chunk)
        if len(entries) != key_count:
            raise KvSnapshotError(f"snapshot holds {len(entries)} keys, header says {key_count}")
        return cls(
            applied_index,
            revision,
            log_time_ms,
            next_client_id,
            entries,
            _decode_sessions(raw),
        )


def _decode_sessions(
    raw: object,
) -> tuple[tuple[int, int, int, tuple[tuple[int, Result], ...]], ...]:
    if type(raw) is not list:
        raise KvSnapshotError("snapshot sessions are not an array")
    sessions = []
    for record in raw:
        if type(record) is not list or len(record) != 4 or type(record[3]) is not list:
            raise KvSnapshotError(f"bad session record in snapshot: {record!r}")
        client_id, last_seq, last_active_ms, results = record
        if not all(type(value) is int for value in (client_id, last_seq, last_active_ms)):
            raise KvSnapshotError(f"bad session record in snapshot: {record!r}")
        pairs = []
        for pair in results:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not int:
                raise KvSnapshotError(f"bad session result in snapshot: {pair!r}")
            pairs.append((pair[0], pair[1]))
        sessions.append((client_id, last_seq, last_active_ms, tuple(pairs)))
    return tuple(sessions)


class KvStateMachine:
    """The replicated map. See the module docstring for the theory of operation."""

    # Overlay keys folded back into the map per apply once a view is released:
    # well under a millisecond of work, so folding a million writes takes about a
    # thousand applies instead of one long stall.
    _FOLD_PER_APPLY = 1024

    def __init__(self, config: KvConfig | None = None) -> None:
        self._config = config if config is not None else KvConfig()
        self._config.validate()
        # The map. While a view from freeze() borrows it, it stays as it was and
        # writes go to _overlay (None marking a deleted key) instead; after the
        # view is released, the overlay is folded back in a slice per apply.
        # Invariant: _overlay is not None while _view is not None; a key in the
        # overlay shadows the map.
        self._entries: dict[bytes, tuple[bytes, int]] = {}
        self._overlay: dict[bytes, tuple[bytes, int] | None] | None = None
        # A weak reference, so that a view nobody holds any more counts as released.
        self._view: weakref.ref[KvSnapshot] | None = None
        self._count = 0  # invariant: the number of live keys
        self._revision = 0
        # invariant: applied_index only grows, one call to apply() at a time.
        self._applied_index = 0
        self._log_time_ms = 0
        self._next_client_id = 1
        self._sessions: OrderedDict[int, _SessionRecord] = OrderedDict()
        self._sorted_keys = _SortedKeys()
        self._handlers: dict[type, Callable[[Any], Result]] = {
            Put: self._put,
            Delete: self._delete,
            Cas: self._cas,
            CasRevision: self._cas_revision,
            Append: self._append,
            Incr: self._incr,
            Noop: self._noop,
            RegisterSession: self._register_session,
        }

    # ------------------------------------------------------------------ observers

    @property
    def config(self) -> KvConfig:
        return self._config

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (or of the snapshot installed)."""
        return self._applied_index

    @property
    def revision(self) -> int:
        """Number of changes made to the map so far."""
        return self._revision

    @property
    def log_time_ms(self) -> int:
        """The latest leader timestamp applied, in ms (0 before any)."""
        return self._log_time_ms

    @property
    def folding(self) -> bool:
        """Whether writes made during a snapshot view are still kept apart from the
        map (the view is out, or its overlay is not folded back yet)."""
        return self._overlay is not None

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def has_session(self, client_id: int) -> bool:
        return client_id in self._sessions

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: bytes) -> bool:
        return self._lookup(key) is not None

    def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key) if self._overlay is None else self._lookup(key)
        return None if entry is None else entry[0]

    def get_with_revision(self, key: bytes) -> tuple[bytes, int] | None:
        """The value and mod revision of `key`, or None if it is absent."""
        return self._lookup(key)

    def mod_revision(self, key: bytes) -> int:
        """The revision of the last write to `key`, 0 if it is absent."""
        entry = self._lookup(key)
        return 0 if entry is None else entry[1]

    def _lookup(self, key: bytes) -> tuple[bytes, int] | None:
        overlay = self._overlay
        if overlay is not None and key in overlay:
            return overlay[key]
        return self._entries.get(key)

    def _live_keys(self) -> Iterable[bytes]:
        overlay = self._overlay
        if overlay is None:
            return self._entries.keys()
        return itertools.chain(
            (key for key in self._entries if key not in overlay),
            (key for key, entry in overlay.items() if entry is not None),
        )

    def scan(
        self, prefix: bytes = b"", limit: int | None = None, start_after: bytes | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Keys starting with `prefix`, in byte order, with their values: at most
        `limit` of them (all if None), beginning after `start_after` if given (pass
        the last key of the previous page to continue a listing)."""
        if limit is not None and limit <= 0:
            return []
        keys = self._sorted_keys.range(
            self._live_keys, prefix, start_after, self._count if limit is None else limit
        )
        if self._overlay is None:
            entries = self._entries
            return [(key, entries[key][0]) for key in keys]
        return [(key, self._lookup(key)[0]) for key in keys]  # type: ignore[index]

    # ------------------------------------------------------------------ apply

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the committed entry at `index` and return its result.

        Call it for every committed normal entry in log order; empty data (the
        entry a new leader appends) is a no-op, and so the host may also pass b""
        for entries that carry no command, such as membership changes, to keep
        `applied_index` equal to its own. Bad data yields a MALFORMED error result.
        """
        assert index > self._applied_index, (
            f"entry {index} applied after entry {self._applied_index}: the host must "
            "apply each committed entry once, in log order"
        )
        if self._overlay is not None:
            self._settle_view()
        self._applied_index = index
        if not data:
            return None
        try:
            fields = unpack_entry(data)
            puts = plain_puts(fields)
            if puts is not None:
                results = self._put_all(puts)
                single = len(puts) == 1 and puts[0] is fields  # not a batch of one
                return results[0] if single else results
            command = decode_fields(fields)
        except InvalidCommand as error:
            return CommandError(ErrorCode.MALFORMED, f"malformed command: {error}")
        return self._execute(command)

    def _put_all(self, puts: list[list[Any]]) -> list[Result]:
        """Apply plain puts (`plain_puts`): `_put` without a `Put` object each, and
        with `_write` inlined when no snapshot view is open, since a write-heavy load
        spends most of its apply here."""
        if self._overlay is not None:  # a snapshot borrows the map (or is folded back)
            always = PutCondition.ALWAYS
            return [self._put_value(key, value, always) for _, key, value, _ in puts]
        limit = self._config.max_value_bytes
        results: list[Result] = []
        append = results.append
        entries = self._entries
        revision = self._revision
        for _, key, value, _ in puts:
            if len(value) > limit:
                append(self._too_large(len(value)))
                continue
            revision += 1
            old = entries.get(key)
            entries[key] = (value, revision)
            if old is None:
                self._sorted_keys.note_insert(key)
                self._count += 1
                append(None)
            else:
                append(old[0])
        self._revision = revision
        return results

    def _execute(self, command: Command) -> Result:
        if type(command) is Stamped:
            self._advance_log_time(command.timestamp_ms)
            command = command.command
        if type(command) is Session:
            return self._apply_session(command)
        if type(command) is Batch:
            return self._apply_batch(command)
        return self._handlers[type(command)](command)

    def _apply_batch(self, batch: Batch) -> list[Result]:
        results: list[Result] = []
        for command in batch.commands:
            if type(command) is Session:
                results.append(self._apply_session(command))
            else:
                results.append(self._handlers[type(command)](command))
        return results

    # ------------------------------------------------------------------ sessions

    def _advance_log_time(self, timestamp_ms: int) -> None:
        if timestamp_ms > self._log_time_ms:
            self._log_time_ms = timestamp_ms
        idle_before_ms = self._log_time_ms - self._config.session_ttl_ms
        sessions = self._sessions
        while sessions:
            client_id = next(iter(sessions))
            if sessions[client_id].last_active_ms >= idle_before_ms:
                break
            del sessions[client_id]

    def _register_session(self, _: RegisterSession) -> int:
        if len(self._sessions) >= self._config.max_sessions:
            self._sessions.popitem(last=False)
        client_id = self._next_client_id
        self._next_client_id += 1
        self._sessions[client_id] = _SessionRecord(0, self._log_time_ms, {})
        return client_id

    def _apply_session(self, tagged: Session) -> Result:
        client_id, seq = tagged.client_id, tagged.seq
        record = self._sessions.get(client_id)
        if record is None:
            return CommandError(
                ErrorCode.UNKNOWN_SESSION,
                f"client session {client_id} is unknown: it expired, was evicted or was "
                "never registered; register a new session and retry",
            )
        self._sessions.move_to_end(client_id)
        record.last_active_ms = self._log_time_ms
        if seq <= record.last_seq:
            result = record.results.get(seq, _MISSING)
            if result is _MISSING:
                return CommandError(
                    ErrorCode.RESULT_DISCARDED,
                    f"request {seq} of client session {client_id} was already applied and "
                    f"its result is no longer kept (only the last "
                    f"{self._config.session_results_kept} are)",
                )
            return result  # type: ignore[return-value]
        inner = tagged.command
        if type(inner) is Batch:
            result = self._apply_batch(inner)
        else:
            result = self._handlers[type(inner)](inner)
        record.last_seq = seq
        results = record.results
        results[seq] = result
        if len(results) > self._config.session_results_kept:
            del results[next(iter(results))]
        return result

    # ------------------------------------------------------------------ commands

    def _noop(self, _: Noop) -> None:
        return None

    def _write(self, key: bytes, value: bytes, existed: bool) -> int:
        if not existed:
            self._sorted_keys.note_insert(key)
            self._count += 1
        self._revision += 1
        entry = (value, self._revision)
        overlay = self._overlay
        if overlay is None:
            self._entries[key] = entry
        elif self._view is not None:
            overlay[key] = entry
        else:  # folding the overlay back: the map is ours again
            overlay.pop(key, None)
            self._entries[key] = entry
        return self._revision

    def _too_large(self, size: int) -> CommandError:
        return CommandError(
            ErrorCode.VALUE_TOO_LARGE,
            f"the value would be {size} bytes, over the {self._config.max_value_bytes} byte limit",
        )

    def _put(self, command: Put) -> Result:
        return self._put_value(command.key, command.value, command.condition)

    def _put_value(self, key: bytes, value: bytes, condition: PutCondition) -> Result:
        if len(value) > self._config.max_value_bytes:
            return self._too_large(len(value))
        old = self._lookup(key)
        if old is None:
            if condition is PutCondition.IF_PRESENT:
                return None
            self._write(key, value, existed=False)
            return None
        if condition is PutCondition.IF_ABSENT:
            return old[0]
        self._write(key, value, existed=True)
        return old[0]

    def _delete(self, command: Delete) -> bytes | None:
        key = command.key
        overlay = self._overlay
        if overlay is None:
            old = self._entries.pop(key, None)
        else:
            old = self._lookup(key)
            if old is not None and self._view is not None:
                overlay[key] = None
            elif old is not None:
                overlay.pop(key, None)
                self._entries.pop(key, None)
        if old is None:
            return None
        self._sorted_keys.note_remove(key)
        self._count -= 1
        self._revision += 1
        return old[0]

    def _cas(self, command: Cas) -> Result:
        old = self._lookup(command.key)
        current = None if old is None else old[0]
        if current != command.expected:
            return CasResult(False, current, 0 if old is None else old[1])
        return self._swap(command.key, old, command.value)

    def _cas_revision(self, command: CasRevision) -> Result:
        old = self._lookup(command.key)
        current_revision = 0 if old is None else old[1]
        if current_revision != command.expected_revision:
            return CasResult(False, None if old is None else old[0], current_revision)
        return self._swap(command.key, old, command.value)

    def _swap(self, key: bytes, old: tuple[bytes, int] | None, value: bytes | None) -> Result:
        if value is None:
            if old is not None:
                self._delete(Delete(key))
            return CasResult(True, None, 0)
        if len(value) > self._config.max_value_bytes:
            return self._too_large(len(value))
        return CasResult(True, value, self._write(key, value, existed=old is not None))

    def _append(self, command: Append) -> Result:
        old = self._lookup(command.key)
        value = command.suffix if old is None else old[0] + command.suffix
        if len(value) > self._config.max_value_bytes:
            return self._too_large(len(value))
        self._write(command.key, value, existed=old is not None)
        return len(value)

    def _incr(self, command: Incr) -> Result:
        old = self._lookup(command.key)
        if old is None:
            current = 0
        else:
            parsed = parse_int64(old[0])
            if parsed is None:
                return _NOT_AN_INTEGER
            current = parsed
        value = current + command.delta
        if not INT64_MIN <= value <= INT64_MAX:
            return _OVERFLOW
        self._write(command.key, b"%d" % value, existed=old is not None)
        return value

    # ------------------------------------------------------------------ snapshots

    def freeze(self) -> KvSnapshot:
        """A frozen state that another thread may serialise while `apply` goes on.

        Copy-on-write: the snapshot borrows the map as it is, and until the snapshot
        is released the machine leaves the map alone and records writes in an
        overlay, which it folds back in afterwards (one dict update per key written
        meanwhile). So freezing costs a copy of the small session table only, and
        nothing per key. If an earlier view is still out, this one gets its own
        copy of the map instead (O(n)).
        """
        self._settle_view(fold_everything=True)
        sessions = tuple(
            (client_id, record.last_seq, record.last_active_ms, tuple(record.results.items()))
            for client_id, record in self._sessions.items()
        )
        borrowed = self._view is None
        entries = self._entries if borrowed else dict(self._live_items())
        snapshot = KvSnapshot(
            self._applied_index,
            self._revision,
            self._log_time_ms,
            self._next_client_id,
            entries,
            sessions,
            borrowed=borrowed,
        )
        if borrowed:
            self._view = weakref.ref(snapshot)
            self._overlay = {}
        return snapshot

    def _live_items(self) -> Iterator[tuple[bytes, tuple[bytes, int]]]:
        for key in self._live_keys():
            entry = self._lookup(key)
            assert entry is not None
            yield key, entry

    def _settle_view(self, fold_everything: bool = False) -> None:
        """Once the view that borrows the map is released, fold the overlay back
        into the map, at most `_FOLD_PER_APPLY` keys per call so that no single
        apply pays for all the writes made during a long snapshot."""
        if self._view is not None:
            view = self._view()
            if view is not None and not view._released:
                return
            self._view = None
        overlay = self._overlay
        if overlay is None:
            return
        entries = self._entries
        count = len(overlay) if fold_everything else min(len(overlay), self._FOLD_PER_APPLY)
        for _ in range(count):
            key, entry = overlay.popitem()
            if entry is None:
                entries.pop(key, None)
            else:
                entries[key] = entry
        if not overlay:
            self._overlay = None

    def snapshot(self) -> bytes:
        """The serialised state: `freeze().to_bytes()`."""
        return self.freeze().to_bytes()

    def install(self, snapshot: KvSnapshot) -> None:
        """Replace the whole state with `snapshot`'s. A snapshot from `from_bytes`
        is taken over (and spent); a view from `freeze` is copied and released."""
        entries = snapshot._readable_entries()
        if snapshot._borrowed:
            entries = entries.copy()
            snapshot.release()
        else:
            snapshot._entries = None
        self._entries = entries
        self._overlay = None
        self._view = None
        self._count = len(entries)
        self._applied_index = snapshot.applied_index
        self._revision = snapshot.revision
        self._log_time_ms = snapshot.log_time_ms
        self._next_client_id = snapshot.next_client_id
        self._sessions = OrderedDict(
            (client_id, _SessionRecord(last_seq, last_active_ms, dict(results)))
            for client_id, last_seq, last_active_ms, results in snapshot.sessions
        )
        self._sorted_keys.reset()

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a serialised snapshot's. Raises
        `KvSnapshotError` (and changes nothing) if `data` is not one."""
        self.install(KvSnapshot.from_bytes(data))


def parse_int64(raw: bytes) -> int | None:
    """The integer `raw` spells in canonical base 10 (Redis's string2ll: optional
    minus sign, no leading zeros, no spaces or plus sign), or None if it is not
    one or does not fit in a signed 64-bit integer."""
    if not 0 < len(raw) <= 20:
        return None
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or (digits[:1] == b"0" and raw != b"0"):
        return None
    value = int(raw)
    if not INT64_MIN <= value <= INT64_MAX:
        return None
    return value
