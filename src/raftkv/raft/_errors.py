"""Errors the consensus core raises to its host.

They split by whose fault it is: `ProposalDropped` and `ConfChangePending` are the
caller's to retry or report; storage errors describe the log's state; anything else
(an `AssertionError`) is a bug in the core or a broken host contract, and the node
must stop.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error the core raises on purpose."""


class ProposalDropped(RaftError):
    """The proposal was not accepted: no leader is known, leadership is being
    transferred, this node was removed, or the uncommitted-bytes cap is reached.
    Nothing was appended; the caller may retry later."""


class ConfChangePending(ProposalDropped):
    """A membership change is already in progress; only one may be pending."""


class StepLocalMessage(RaftError):
    """A message type that only the core itself may generate was stepped in."""


class StorageError(RaftError):
    """Base class for log storage errors."""


class CompactedError(StorageError):
    """The requested index is older than the first index still in storage."""


class UnavailableError(StorageError):
    """The requested index is newer than the last index in storage."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one already held was offered."""


class SnapshotTemporarilyUnavailable(StorageError):
    """The storage cannot produce a snapshot right now; the core retries later."""


class InvalidConfChange(RaftError):
    """The membership change makes no sense for the current configuration (adding an
    existing voter, removing a non-member or the last voter, a bad node id)."""


class LeaderTransferRefused(RaftError):
    """Leadership cannot be transferred to that node (it is not a voter)."""
