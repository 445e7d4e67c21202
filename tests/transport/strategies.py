"""Hypothesis strategies for raft messages, shared by the transport tests."""

from __future__ import annotations

from hypothesis import strategies as st

from raftkv.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
small_uint = st.integers(min_value=0, max_value=2**40)
node_ids = st.integers(min_value=1, max_value=2**64 - 1)

entries = st.builds(
    Entry,
    term=uint64,
    index=uint64,
    type=st.sampled_from(EntryType),
    data=st.binary(max_size=64),
)


@st.composite
def append_entries(draw: st.DrawFn) -> tuple[Entry, ...]:
    """Either realistic (consecutive indexes, one term) or arbitrary entries."""
    if draw(st.booleans()):
        first = draw(small_uint)
        term = draw(small_uint)
        count = draw(st.integers(min_value=1, max_value=20))
        kind = draw(st.sampled_from(EntryType))
        datas = draw(st.lists(st.binary(max_size=32), min_size=count, max_size=count))
        return tuple(Entry(term, first + i, kind, data) for i, data in enumerate(datas))
    return tuple(draw(st.lists(entries, max_size=10)))


conf_states = st.builds(
    ConfState,
    voters=st.lists(node_ids, max_size=5).map(lambda ids: tuple(sorted(ids))),
    learners=st.lists(node_ids, max_size=3).map(lambda ids: tuple(sorted(ids))),
)

snapshots = st.builds(
    Snapshot,
    metadata=st.builds(SnapshotMetadata, index=uint64, term=uint64, conf_state=conf_states),
    data=st.binary(max_size=256),
)

messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=node_ids,
    frm=node_ids,
    term=uint64,
    log_term=uint64,
    index=uint64,
    entries=append_entries(),
    commit=uint64,
    reject=st.booleans(),
    reject_hint=uint64,
    snapshot=st.none() | snapshots,
    context=st.binary(max_size=16),
)

# Any value msgpack can carry: the shape of hostile but well-formed msgpack input.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=13) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
