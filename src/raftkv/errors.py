"""The errors raftkv reports to its users, shared by the server, its APIs and the
client. Each API translates them once, at its boundary, into an HTTP status or a
RESP error; the client translates them back.

    RaftkvError
     ├── InvalidRequest      the caller's fault: fix the request (HTTP 400, -ERR)
     │    ├── ValueTooLarge     (413)
     │    └── WrongType         (-WRONGTYPE / 400: INCR on a non-integer)
     ├── KeyNotFound         the key does not exist (404, nil)
     ├── PreconditionFailed  a compare-and-set did not match (412)
     ├── Conflict            a membership change is already in progress (409)
     ├── Unavailable         retry later, maybe elsewhere (503 + Retry-After, -TRYAGAIN)
     │    ├── NoLeader
     │    └── Timeout        the outcome is unknown: the write may or may not apply
     └── Removed             this node was removed from the cluster (410)
"""

from __future__ import annotations


class RaftkvError(Exception):
    """Base class of every error raftkv reports to a user."""


class InvalidRequest(RaftkvError):
    """The request is malformed or names something that cannot exist."""


class ValueTooLarge(InvalidRequest):
    """The value (or the request body) is larger than the server accepts."""


class WrongType(InvalidRequest):
    """The operation does not fit the value (INCR on a value that is not an integer)."""


class KeyNotFound(RaftkvError):
    """The key does not exist."""


class PreconditionFailed(RaftkvError):
    """A compare-and-set found a different value or revision than expected."""


class Conflict(RaftkvError):
    """Another membership change is still in progress."""


class Unavailable(RaftkvError):
    """The cluster cannot serve the request now; retrying later may succeed."""


class NoLeader(Unavailable):
    """No leader was known within the request timeout."""


class Timeout(Unavailable):
    """The request did not complete in time; a write may or may not have applied."""


class Removed(RaftkvError):
    """This node has been removed from the cluster and no longer serves requests."""


__all__ = [
    "Conflict",
    "InvalidRequest",
    "KeyNotFound",
    "NoLeader",
    "PreconditionFailed",
    "RaftkvError",
    "Removed",
    "Timeout",
    "Unavailable",
    "ValueTooLarge",
    "WrongType",
]
