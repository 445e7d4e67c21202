"""Deterministic simulation of a raftkv.raft cluster: harness and tests."""
