"""proxy.conditions: a conditional delete's ETag, LastModifiedTime and Size against what it finds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.conditions import delete_conditions_hold

MODIFIED = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("etag", "modified", "size", "holds"),
    [
        (None, None, None, True),
        ("abc", None, None, True),
        ('"abc"', None, None, True),
        (" * ", None, None, True),
        ("abd", None, None, False),
        (None, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None, True),  # to the second, as S3 keeps it
        (None, datetime(2026, 1, 2, 3, 4, 5), None, True),  # naive: UTC
        (None, datetime(2026, 1, 2, 4, 4, 5, tzinfo=UTC) - timedelta(hours=1, seconds=1), None, False),
        (None, None, 7, True),
        (None, None, 0, False),
        ("*", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), 8, False),  # every condition must hold
    ],
)
def test_delete_conditions(etag: str | None, modified: datetime | None, size: int | None, holds: bool) -> None:
    found = delete_conditions_hold(etag, modified, size, found_etag='"abc"', found_modified=MODIFIED, found_size=7)
    assert found is holds
