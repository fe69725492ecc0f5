"""Size and range math: plaintext <-> stored sizes, and plaintext ranges -> stored ranges.

Everything is O(1) per part or O(log runs) per query (prefix sums + bisect over runs of
equal-sized parts), never a scan over chunks.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.format.constants import CHUNK_SIZE, RECORD_OVERHEAD

__all__ = [
    "Layout",
    "Location",
    "RecordRef",
    "Run",
    "StoredRange",
    "chunk_count",
    "object_stored_size",
    "part_plaintext_size_from_stored",
    "part_stored_size",
    "plaintext_size_from_stored",
    "record_size",
]


def record_size(m: int) -> int:
    """Stored size of a chunk record holding m plaintext bytes."""
    return RECORD_OVERHEAD + m


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Chunks of a part of `size` plaintext bytes (an empty part still has one)."""
    return max(1, -(-size // chunk_size))


def part_stored_size(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Stored size of a part of `size` plaintext bytes."""
    if size < 0:
        raise ValueError("negative size")
    return size + RECORD_OVERHEAD * chunk_count(size, chunk_size)


def part_plaintext_size_from_stored(stored: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Exact inverse of part_stored_size; ValueError when no plaintext size maps to `stored`."""
    t = stored - RECORD_OVERHEAD
    if t < 0:
        raise ValueError(f"stored size {stored} is smaller than one record")
    if t == 0:
        return 0
    q, r = divmod(t, chunk_size + RECORD_OVERHEAD)
    if r == 0 or r > chunk_size:
        raise ValueError(f"stored size {stored} is not a valid encrypted part size")
    return q * chunk_size + r


def plaintext_size_from_stored(stored_without_trailer: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Plaintext size of a single-part object from its stored size minus the trailer.

    Also right for a multipart object whose parts, except a non-empty last one, are
    multiples of the chunk size (all its records but the last are full).
    """
    return part_plaintext_size_from_stored(stored_without_trailer, chunk_size)


@dataclass(frozen=True)
class Run:
    """`part_count` parts numbered first_part_number.. consecutively, each part_size bytes."""

    first_part_number: int
    part_count: int
    part_size: int


@dataclass(frozen=True)
class Location:
    """Where one plaintext byte lives."""

    part_number: int
    chunk_index: int
    offset_in_chunk: int
    chunk_length: int
    record_offset: int  # stored offset of the record holding the byte


@dataclass(frozen=True)
class RecordRef:
    """A chunk record a reader expects: its binding and plaintext length."""

    part_number: int
    chunk_index: int
    m: int


@dataclass(frozen=True)
class StoredRange:
    """Stored bytes [start, end] (inclusive, as in an HTTP Range) holding plaintext
    [first, last]: decrypt `records` in order, drop `skip` bytes, keep `length` bytes."""

    start: int
    end: int
    records: tuple[RecordRef, ...]
    skip: int
    length: int

    @property
    def http_range(self) -> str:
        """The Range header value for the upstream GET."""
        return f"bytes={self.start}-{self.end}"


def _runs_of(parts: Iterable[tuple[int, int]]) -> list[Run]:
    runs: list[Run] = []
    for pn, size in parts:
        if runs:
            last = runs[-1]
            if pn <= last.first_part_number + last.part_count - 1:
                raise ValueError("part numbers must be strictly ascending")
            if last.part_size == size and pn == last.first_part_number + last.part_count:
                runs[-1] = Run(last.first_part_number, last.part_count + 1, size)
                continue
        if size < 0 or pn < 0 or pn > 0xFFFFFFFF:
            raise ValueError("invalid part number or size")
        runs.append(Run(pn, 1, size))
    return runs


class Layout:
    """The ordered parts of an object, kept as runs with plaintext and stored prefix sums."""

    def __init__(self, runs: Sequence[Run], chunk_size: int = CHUNK_SIZE) -> None:
        if not runs:
            raise ValueError("an object has at least one part")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.chunk_size = chunk_size
        self.runs: tuple[Run, ...] = tuple(runs)
        self._pt_start: list[int] = []
        self._st_start: list[int] = []
        self._chunk_start: list[int] = []
        pt = st = ch = 0
        prev_end = -1
        for r in self.runs:
            if r.part_count < 1 or r.part_size < 0 or r.first_part_number <= prev_end:
                raise ValueError("invalid run (empty, negative or part numbers not ascending)")
            prev_end = r.first_part_number + r.part_count - 1
            if prev_end > 0xFFFFFFFF:
                raise ValueError("part number out of range")
            self._pt_start.append(pt)
            self._st_start.append(st)
            self._chunk_start.append(ch)
            pt += r.part_count * r.part_size
            st += r.part_count * part_stored_size(r.part_size, chunk_size)
            ch += r.part_count * chunk_count(r.part_size, chunk_size)
        self.plaintext_size = pt
        self.stored_size = st  # data records only, trailer excluded
        self.chunk_count = ch

    @classmethod
    def from_parts(cls, parts: Iterable[tuple[int, int]], chunk_size: int = CHUNK_SIZE) -> Layout:
        """Build from (part_number, plaintext_size) pairs in ascending part order."""
        return cls(_runs_of(parts), chunk_size)

    @classmethod
    def single(cls, size: int, chunk_size: int = CHUNK_SIZE, part_number: int = 1) -> Layout:
        """Layout of a single-PUT object."""
        return cls([Run(part_number, 1, size)], chunk_size)

    @property
    def part_count(self) -> int:
        """Number of parts."""
        return sum(r.part_count for r in self.runs)

    def parts(self) -> list[tuple[int, int]]:
        """(part_number, plaintext_size) for every part (O(parts); for tools and tests)."""
        return [(r.first_part_number + i, r.part_size) for r in self.runs for i in range(r.part_count)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.runs == other.runs and self.chunk_size == other.chunk_size

    def __hash__(self) -> int:
        return hash((self.runs, self.chunk_size))

    def __repr__(self) -> str:
        return f"Layout(runs={list(self.runs)!r}, chunk_size={self.chunk_size})"

    def locate(self, offset: int) -> Location:
        """The record holding plaintext byte `offset` (O(log runs))."""
        if not 0 <= offset < self.plaintext_size:
            raise ValueError(f"offset {offset} outside plaintext of {self.plaintext_size} bytes")
        i = bisect_right(self._pt_start, offset) - 1
        r = self.runs[i]
        j, in_part = divmod(offset - self._pt_start[i], r.part_size)
        c, in_chunk = divmod(in_part, self.chunk_size)
        part_stored = part_stored_size(r.part_size, self.chunk_size)
        rec_off = self._st_start[i] + j * part_stored + c * (self.chunk_size + RECORD_OVERHEAD)
        m = min(self.chunk_size, r.part_size - c * self.chunk_size)
        return Location(r.first_part_number + j, c, in_chunk, m, rec_off)

    def stored_range(self, first: int, last: int) -> StoredRange:
        """Stored records covering plaintext bytes first..last (inclusive) and how to trim."""
        if not 0 <= first <= last < self.plaintext_size:
            raise ValueError(f"range {first}-{last} outside plaintext of {self.plaintext_size} bytes")
        a = self.locate(first)
        b = self.locate(last)
        records: list[RecordRef] = []
        # Walk records from a to b; only non-empty parts can lie strictly between, but empty
        # parts' records are inside the stored span too and must be read and checked.
        i = bisect_right(self._pt_start, first) - 1
        pn, c = a.part_number, a.chunk_index
        while True:
            r = self.runs[i]
            size = r.part_size
            n = chunk_count(size, self.chunk_size)
            m = min(self.chunk_size, size - c * self.chunk_size)
            records.append(RecordRef(pn, c, m))
            if pn == b.part_number and c == b.chunk_index:
                break
            c += 1
            if c == n:
                c = 0
                if pn == r.first_part_number + r.part_count - 1:
                    i += 1
                    pn = self.runs[i].first_part_number
                else:
                    pn += 1
        end = b.record_offset + RECORD_OVERHEAD + b.chunk_length - 1
        return StoredRange(a.record_offset, end, tuple(records), a.offset_in_chunk, last - first + 1)


def object_stored_size(layout: Layout, trailer_len: int) -> int:
    """Stored size of the whole object: data records plus the trailer record."""
    return layout.stored_size + trailer_len
