"""The byte layout of WAL records: what is encoded decodes to the same values, and
any damaged bit is noticed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftkv.raft import Entry, EntryType, HardState
from raftkv.storage import SnapshotMarker, WALMetadata
from raftkv.storage import _records as records
from raftkv.storage._records import RecordType

from .helpers import entries


def encoded(batch: list[Entry]) -> bytes:
    return b"".join(records.encode_entries(batch))


def test_a_batch_of_one_term_round_trips() -> None:
    batch = entries(5, 260, term=3)
    assert records.decode_entries(encoded(batch)) == batch


def test_varying_terms_and_conf_changes_round_trip() -> None:
    batch = [
        Entry(1, 10, EntryType.NORMAL, b"a"),
        Entry(2, 11, EntryType.CONF_CHANGE, b"cc"),
        Entry(2, 12, EntryType.NORMAL, b""),
        Entry(7, 13, EntryType.NORMAL, b"z" * 1000),
    ]
    decoded = records.decode_entries(encoded(batch))
    assert decoded == batch
    assert [type(entry.type) for entry in decoded] == [EntryType] * 4


def test_empty_and_large_data_round_trip() -> None:
    batch = [Entry(1, 1, data=b""), Entry(1, 2, data=bytes(range(256)) * 8192)]
    assert records.decode_entries(encoded(batch)) == batch


@given(
    first=st.integers(min_value=1, max_value=2**62),
    items=st.lists(
        st.tuples(st.integers(0, 2**40), st.sampled_from(EntryType), st.binary(max_size=300)),
        min_size=1,
        max_size=40,
    ),
)
def test_any_batch_round_trips(first: int, items: list[tuple[int, EntryType, bytes]]) -> None:
    batch = [
        Entry(term, first + position, kind, data)
        for position, (term, kind, data) in enumerate(items)
    ]
    assert records.decode_entries(encoded(batch)) == batch


def test_a_batch_with_a_hole_in_its_indexes_is_refused() -> None:
    with pytest.raises(AssertionError, match="consecutive"):
        records.encode_entries([Entry(1, 1), Entry(1, 3)])


def test_a_payload_claiming_more_entries_than_it_holds_is_refused() -> None:
    payload = bytearray(encoded(entries(1, 3)))
    payload[16] = 4  # the count field
    with pytest.raises(ValueError, match="does not hold 4 entries"):
        records.decode_entries(bytes(payload))


def test_hard_state_marker_and_metadata_round_trip() -> None:
    hard_state = HardState(term=9, vote=3, commit=2**40)
    assert records.decode_hard_state(records.encode_hard_state(hard_state)) == hard_state
    marker = SnapshotMarker(index=77, term=4)
    assert records.decode_snapshot_marker(records.encode_snapshot_marker(marker)) == marker
    metadata = WALMetadata(node_id=2, cluster_id=0xDEADBEEF)
    payload = records.encode_metadata(metadata, segment_seq=5)
    assert records.decode_metadata(payload) == (records.WAL_FORMAT_VERSION, metadata, 5)


@pytest.mark.parametrize("payload_size", [0, 1, 7, 8, 9, 100])
def test_a_record_reads_back_and_the_next_starts_aligned(payload_size: int) -> None:
    payload = bytes(range(payload_size))
    data = records.encode_record(RecordType.HARD_STATE, payload) * 2
    first = records.read_record(data, 0)
    assert first is not None
    assert (first.type, first.payload) == (RecordType.HARD_STATE, payload)
    assert first.next_offset % records.ALIGNMENT_BYTES == 0
    second = records.read_record(data, first.next_offset)
    assert second is not None and second.payload == payload


def test_every_flipped_bit_of_header_or_payload_is_noticed() -> None:
    record = records.encode_record(RecordType.ENTRIES, encoded(entries(1, 2)))
    covered = records.HEADER_SIZE_BYTES + len(encoded(entries(1, 2)))
    for position in range(covered):
        for bit in range(8):
            damaged = bytearray(record)
            damaged[position] ^= 1 << bit
            assert records.read_record(bytes(damaged), 0) is None, (position, bit)


def test_a_record_cut_anywhere_is_noticed() -> None:
    record = records.encode_record(RecordType.ENTRIES, encoded(entries(1, 2)))
    unpadded = len(record) - (-len(encoded(entries(1, 2))) & 7)
    for size in range(unpadded):
        assert records.read_record(record[:size], 0) is None, size


def test_zeros_are_not_a_record() -> None:
    assert records.read_record(bytes(64), 0) is None


def test_the_search_for_an_intact_record_skips_damage_and_misalignment() -> None:
    good = records.encode_record(RecordType.SNAPSHOT, b"x" * 16)
    garbage = b"\x02\x00\x00\x00" * 6  # looks like headers, but not at aligned offsets
    data = b"\xff" * 4 + garbage + good
    assert len(b"\xff" * 4 + garbage) % 8 == 4
    assert records.find_intact_record(data, 0, len(data)) is None
    data = b"\xff" * 8 + garbage + good
    assert records.find_intact_record(data, 0, len(data)) == 8 + len(garbage)
    assert records.find_intact_record(data, 0, 8 + len(garbage)) is None


def test_the_hard_state_record_is_a_framed_hard_state() -> None:
    hard_state = HardState(term=3, vote=2, commit=99)
    record = records.hard_state_record(hard_state)
    assert record == records.encode_record(
        RecordType.HARD_STATE, records.encode_hard_state(hard_state)
    )
    read = records.read_record(record, 0)
    assert read is not None and read.next_offset == len(record)
