"""Builders for log entries and tools to damage WAL files the way crashes and bad
disks do."""

from __future__ import annotations

from pathlib import Path

from raftkv.raft import Entry, EntryType
from raftkv.storage import _records as records


def entry_data(index: int, term: int) -> bytes:
    """Data that says which entry it belongs to, of a length that varies with it."""
    return f"{index}/{term}/".encode() + bytes([index % 251]) * ((index * 7 + term) % 40)


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    """Entries first..last (inclusive) of one term, with recognizable data."""
    return [
        Entry(term, index, EntryType.NORMAL, entry_data(index, term))
        for index in range(first, last + 1)
    ]


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """(start, end) of each intact record in a segment, in order; `end` excludes
    the padding."""
    data = path.read_bytes()
    spans = []
    offset = 0
    while (record := records.read_record(data, offset)) is not None:
        spans.append((offset, offset + records.HEADER_SIZE_BYTES + len(record.payload)))
        offset = record.next_offset
    return spans


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        (value,) = file.read(1)
        file.seek(offset)
        file.write(bytes([value ^ (1 << bit)]))


def cut(path: Path, size: int) -> None:
    """The file as a crash may leave it when a write never reached its end."""
    with path.open("r+b") as file:
        file.truncate(size)


def zero_from(path: Path, offset: int, end: int) -> None:
    """Zeros over [offset, end): a torn write into a preallocated segment."""
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(bytes(end - offset))
