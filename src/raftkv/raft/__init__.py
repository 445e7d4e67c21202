"""raftkv.raft: a pure, deterministic Raft consensus core.

The core does no I/O. It has no sockets, files, clocks, threads or global
randomness: input is `RawNode.tick()`, `RawNode.step(message)` and the request
methods (`propose`, `read_index`, ...); output is a `Ready`. The same seed (the
injected `random.Random`) and the same inputs give the same outputs.

The host contract. Whenever `has_ready()` is true, the host takes `rd = ready()`
and does, in this order:

1. Persist. If `rd.snapshot` is set, store it and restore the state machine from
   it. Append `rd.entries` to the log (replacing any suffix they conflict with) and
   store `rd.hard_state` if set. When `rd.must_sync` is true, these writes must be
   durable (fsynced) before step 2 sends `rd.messages`.
2. Send. `rd.early_messages` (a leader's appends and heartbeats, a follower's
   answers to heartbeats) may be sent before or while step 1 runs; `rd.messages`
   only after step 1 is durable, because they promise what was persisted (a vote,
   an acknowledged append).
3. Apply `rd.committed_entries` in order. For a CONF_CHANGE entry, decode it with
   `ConfChange.decode` and call `apply_conf_change`. An empty NORMAL entry is a new
   leader's no-op. Then answer each `rd.read_states` request once the applied index
   reaches its `index`.
4. Call `advance(rd)`.

Between `ready()` and `advance()` the host may keep stepping input in (messages,
ticks, proposals). Three calls let it act on that input before `advance()`, while
it waits for step 1: `take_early_messages()` (a leader's appends for proposals
made meanwhile, to send at once), `take_committed_entries()` (entries committed
meanwhile, to apply at once, after `rd.committed_entries`; it works with no Ready
pending too) and `persisted(rd)` (step 1 is durable: a leader counts its own write
towards commit before `advance()`).

On restart, build a new `RawNode` over the durable storage with
`Config(applied=<index of the restored state machine snapshot>)`: committed entries
after it are delivered again and must be applied again.
"""

from ._config import Config, ConfigError
from ._errors import (
    CompactedError,
    ConfChangePending,
    InvalidConfChange,
    LeaderTransferRefused,
    ProposalDropped,
    RaftError,
    SnapshotOutOfDateError,
    SnapshotTemporarilyUnavailable,
    StepLocalMessage,
    StorageError,
    UnavailableError,
)
from ._rawnode import RawNode
from ._storage import MemoryStorage, Storage
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
    ProgressStatus,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    Status,
)

__all__ = [
    "NONE",
    "CompactedError",
    "ConfChange",
    "ConfChangePending",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "InvalidConfChange",
    "LeaderTransferRefused",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProgressStatus",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailable",
    "SoftState",
    "Status",
    "StepLocalMessage",
    "Storage",
    "StorageError",
    "UnavailableError",
]
