"""raftkv: a replicated, fault-tolerant key-value store on its own Raft core."""

__version__ = "0.1.0"
