"""Configuration of one Raft node. Every knob says what it trades off."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """The configuration is unsafe or inconsistent; the message says which knob."""


@dataclass(frozen=True, slots=True)
class Config:
    #: This node's id: a positive integer, unique in the cluster.
    id: int
    #: Ticks a follower waits without hearing from a leader before it campaigns
    #: (randomized in [election_tick, 2 * election_tick)). Larger means fewer
    #: spurious elections on a slow network but slower fail-over. Must be well above
    #: heartbeat_tick, or followers campaign between two heartbeats.
    election_tick: int = 10
    #: Ticks between a leader's heartbeats. Smaller detects a lost leader sooner and
    #: serves ReadIndex faster, at the cost of more messages.
    heartbeat_tick: int = 1
    #: Byte cap on the entries of one append message. Larger batches more per
    #: message; smaller bounds the cost of a message that must be retransmitted.
    max_size_per_msg_bytes: int = 1 << 20
    #: How many appends may be in flight to one follower in the replicate state.
    #: Larger pipelines more on a high-latency link; it bounds the leader's memory.
    max_inflight_msgs: int = 256
    #: Byte bound on appends in flight to one follower; 0 means no byte bound. The
    #: leader never lets the window pass it (an entry larger than the bound alone
    #: goes into an empty window). Smaller bounds the leader's memory and a slow
    #: follower's share of the link; larger pipelines more bytes per round trip.
    max_inflight_bytes: int = 0
    #: Cap on the bytes of uncommitted entries a leader accepts before it refuses
    #: proposals (backpressure); 0 means no cap.
    max_uncommitted_entries_bytes: int = 0
    #: Byte cap on the committed entries handed to the host in one Ready.
    max_applying_bytes: int = 64 << 20
    #: Pre-vote (Raft thesis 9.6): a node first asks whether it could win before it
    #: raises its term, so a node rejoining after a partition cannot depose a healthy
    #: leader or inflate terms.
    pre_vote: bool = True
    #: Check quorum: a leader that has not heard from a quorum within an election
    #: timeout steps down, and followers ignore vote requests while they hear from a
    #: leader (leader lease), so a node cut off and then back cannot disrupt a
    #: healthy leader. Off, a leader cut off from the others keeps leading, and its
    #: clients wait (its ReadIndex needs a heartbeat quorum), until it hears a
    #: newer term.
    check_quorum: bool = True
    #: Whether a leader sends every follower an append as soon as its commit index
    #: advances (etcd's behaviour). Off, a follower learns the new commit index
    #: with its next append or heartbeat, or at once when something waits on it
    #: there: a proposal it forwarded, a read index it asked for, or a membership
    #: change (which a node being removed must apply to leave; a new leader's first
    #: entry counts, as the tail it commits may hold one). That saves a
    #: message and its answer per follower per commit; followers that wait on
    #: nothing apply up to a heartbeat later while the leader is idle.
    eager_commit: bool = True
    #: The last index the host has applied (on restart: the index of the state
    #: machine snapshot it restored). Committed entries after it are delivered again.
    applied: int = 0

    def validate(self) -> None:
        if self.id <= 0:
            raise ConfigError(f"node id must be a positive integer, got {self.id}")
        if self.heartbeat_tick <= 0:
            raise ConfigError(f"heartbeat_tick must be positive, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"election_tick ({self.election_tick}) must be greater than heartbeat_tick "
                f"({self.heartbeat_tick}), or followers campaign between heartbeats"
            )
        if self.max_inflight_msgs <= 0:
            raise ConfigError(f"max_inflight_msgs must be positive, got {self.max_inflight_msgs}")
        if self.max_size_per_msg_bytes <= 0:
            raise ConfigError(
                f"max_size_per_msg_bytes must be positive, got {self.max_size_per_msg_bytes}"
            )
        if self.max_applying_bytes <= 0:
            raise ConfigError(f"max_applying_bytes must be positive, got {self.max_applying_bytes}")
        for knob in ("max_inflight_bytes", "max_uncommitted_entries_bytes"):
            value = getattr(self, knob)
            if value < 0:
                raise ConfigError(f"{knob} must be >= 0 (0 means no cap), got {value}")
        if 0 < self.max_inflight_bytes < self.max_size_per_msg_bytes:
            raise ConfigError(
                "max_inflight_bytes must be 0 or at least max_size_per_msg_bytes, "
                "or a single full append could never be sent"
            )
        if self.applied < 0:
            raise ConfigError(f"applied must be >= 0, got {self.applied}")
