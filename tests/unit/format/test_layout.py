import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.format.layout import (
    Layout,
    RecordRef,
    Run,
    object_stored_size,
    part_plaintext_size_from_stored,
    part_stored_size,
    plaintext_size_from_stored,
    record_size,
)


def brute_records(parts: list[tuple[int, int]], C: int) -> list[tuple[int, int, int, int, int]]:
    """(part, index, m, stored_offset, plaintext_offset) of every record, by scanning."""
    out = []
    so = po = 0
    for pn, size in parts:
        n = max(1, -(-size // C))
        for c in range(n):
            m = min(C, size - c * C)
            out.append((pn, c, m, so, po))
            so += record_size(m)
            po += m
    return out


def check_all_ranges(parts: list[tuple[int, int]], C: int, rng: random.Random | None) -> None:
    lay = Layout.from_parts(parts, C)
    recs = brute_records(parts, C)
    total = sum(s for _, s in parts)
    assert lay.plaintext_size == total
    assert lay.stored_size == sum(record_size(r[2]) for r in recs)
    assert lay.chunk_count == len(recs)
    assert lay.parts() == [p for p in parts]
    pairs = (
        [(a, b) for a in range(total) for b in range(a, total)]
        if rng is None
        else [tuple(sorted((rng.randrange(total), rng.randrange(total)))) for _ in range(200)]
    )
    for a, b in pairs:
        sr = lay.stored_range(a, b)
        ia = next(i for i, r in enumerate(recs) if r[4] <= a < r[4] + r[2])
        ib = next(i for i, r in enumerate(recs) if r[4] <= b < r[4] + r[2])
        assert sr.start == recs[ia][3]
        assert sr.end == recs[ib][3] + record_size(recs[ib][2]) - 1
        assert sr.records == tuple(RecordRef(*r[:3]) for r in recs[ia : ib + 1])
        assert sr.skip == a - recs[ia][4] and sr.length == b - a + 1
        assert sr.http_range == f"bytes={sr.start}-{sr.end}"
        loc = lay.locate(a)
        assert (loc.part_number, loc.chunk_index, loc.record_offset) == (*recs[ia][:2], recs[ia][3])


@pytest.mark.parametrize("C", [1, 5, 16])
def test_sizes_inverse_exhaustive(C: int) -> None:
    valid = {part_stored_size(s, C): s for s in range(0, 20 * C + 3)}
    for stored in range(0, max(valid) + 1):
        if stored in valid:
            assert part_plaintext_size_from_stored(stored, C) == valid[stored]
            assert plaintext_size_from_stored(stored, C) == valid[stored]
        else:
            with pytest.raises(ValueError):
                part_plaintext_size_from_stored(stored, C)


def test_sizes_real_chunk() -> None:
    C = 1 << 20
    for s in [0, 1, 15, 16, 17, C - 1, C, C + 1, 3 * C + 5, 5 * C, 50 * C, 1 << 30]:
        st_ = part_stored_size(s)
        assert st_ == s + 85 * max(1, -(-s // C))
        assert part_plaintext_size_from_stored(st_) == s
    assert part_stored_size(0) == 85 == record_size(0)
    lay = Layout.single(10 * C)
    assert object_stored_size(lay, 200) == 10 * C + 850 + 200


@pytest.mark.parametrize(
    "parts",
    [
        [(1, 0)],
        [(1, 1)],
        [(1, 37)],
        [(1, 16), (2, 16), (3, 16)],
        [(1, 32), (2, 32), (3, 5)],
        [(1, 7), (2, 0), (3, 20), (5, 0), (9, 3)],
        [(2, 0), (3, 0), (4, 9)],
        [(1, 9), (2, 0)],
    ],
)
def test_every_range_small_objects(parts: list[tuple[int, int]]) -> None:
    for C in (1, 4, 16):
        if sum(s for _, s in parts):
            check_all_ranges(parts, C, None)
        else:
            lay = Layout.from_parts(parts, C)
            assert lay.plaintext_size == 0
            with pytest.raises(ValueError):
                lay.stored_range(0, 0)


@settings(max_examples=150, deadline=None)
@given(
    C=st.integers(1, 40),
    sizes=st.lists(st.integers(0, 120), min_size=1, max_size=12),
    gaps=st.lists(st.integers(1, 3), min_size=12, max_size=12),
    seed=st.integers(0, 2**32),
)
def test_random_layouts(C: int, sizes: list[int], gaps: list[int], seed: int) -> None:
    pn = 0
    parts = []
    for s, g in zip(sizes, gaps, strict=False):
        pn += g
        parts.append((pn, s))
    if sum(sizes):
        check_all_ranges(parts, C, random.Random(seed))


def test_runs_collapse_and_validation() -> None:
    lay = Layout.from_parts([(1, 8), (2, 8), (3, 8), (5, 8), (6, 2)], 4)
    assert lay.runs == (Run(1, 3, 8), Run(5, 1, 8), Run(6, 1, 2))
    big = Layout([Run(1, 10000, 5 << 20)])
    assert big.locate((5 << 20) * 9999 + 3).part_number == 10000
    with pytest.raises(ValueError):
        Layout.from_parts([(2, 1), (1, 1)])
    with pytest.raises(ValueError):
        Layout([Run(1, 0, 5)])
    with pytest.raises(ValueError):
        Layout([])
