"""raftkv: a replicated, fault-tolerant key-value store on its own Raft core.

    import raftkv

    with raftkv.Client(["127.0.0.1:12381", "127.0.0.1:22381", "127.0.0.1:32381"]) as kv:
        kv.put("my-key", "hello")
        kv.get("my-key")                      # b'hello'

`Client` and `AsyncClient` talk to a running cluster; `start_server`,
`start_cluster_server`, `serve` and `make_clerk` run nodes inside a program (see
`raftkv._embed`). Errors are the classes of `raftkv.errors`, exported here too.
"""

__version__ = "0.1.0"

from ._embed import ServerHandle, make_clerk, serve, start_cluster_server, start_server
from .client import AsyncClient, Client, Member, Status
from .errors import (
    Conflict,
    InvalidRequest,
    KeyNotFound,
    NoLeader,
    PreconditionFailed,
    RaftkvError,
    Removed,
    Timeout,
    Unavailable,
    ValueTooLarge,
    WrongType,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "InvalidRequest",
    "KeyNotFound",
    "Member",
    "NoLeader",
    "PreconditionFailed",
    "RaftkvError",
    "Removed",
    "ServerHandle",
    "Status",
    "Timeout",
    "Unavailable",
    "ValueTooLarge",
    "WrongType",
    "__version__",
    "make_clerk",
    "serve",
    "start_cluster_server",
    "start_server",
]
