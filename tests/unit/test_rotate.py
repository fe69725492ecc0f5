"""``rotate``'s part plan: S3 takes parts of 5 MiB and more (all but the last, the trailer's)."""

from __future__ import annotations

import itertools

import pytest

from proxy.tools.rotate import MIN_PART, copy_ranges


@pytest.mark.parametrize("size", [MIN_PART, MIN_PART + 1, 2 * MIN_PART - 1, 64 << 20, (3 << 30) + 7])
def test_copy_ranges_cover_the_data_in_parts_of_at_least_5_mib(size: int) -> None:
    ranges = copy_ranges(size)
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    assert all(b + 1 == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert all(last - first + 1 >= MIN_PART for first, last in ranges)
    assert all(last - first + 1 <= 5 << 30 for first, last in ranges)


def test_copy_ranges_refuse_less_than_5_mib() -> None:
    with pytest.raises(ValueError):
        copy_ranges(MIN_PART - 1)
