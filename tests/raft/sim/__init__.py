"""Deterministic simulation of a `raftkv.raft` cluster: harness and tests.

The harness, from the bottom up:

- `network`: directed links, partitions, and the weather (drops, duplicates,
  delays, stragglers) that decides when each copy of a message arrives.
- `invariants`: Raft's safety properties as checkers over observed logs.
- `kv`: the small key-value state machine the nodes apply committed entries to.
- `workload`: clients issuing puts, appends and linearizable reads; their history.
- `cluster`: the nodes, each a host for one `RawNode` with a durable disk and a
  write in flight, driven one event at a time from one seed; the safety checks run
  where the state they constrain changes.
- `chaos`: random partitions, weather, crashes (some at chosen points of a Ready),
  membership changes, leader transfers, forced elections and compactions.
- `simulation`: one seeded run, its settling phase (liveness) and its end checks
  (whole-log matching, equal stores, linearizability).

Run `pytest tests/raft/sim`; `test_random` says how to replay a seed or run more.
"""
