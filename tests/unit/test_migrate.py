"""The pure parts of ``migrate``: part layouts from an ETag, the S3 ETag of a layout, and the
cutoff narrowed and written into a config file."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.tools.cutoff import CutoffEditError, edit_config, narrowed
from proxy.tools.migrate import part_layouts
from proxy.tools.rewrite import LayoutETag

MIB = 1 << 20


def s3_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def test_a_plain_md5_is_one_put() -> None:
    assert part_layouts(123, '"' + "a" * 32 + '"', 0) == [None]


def test_the_reported_first_part_comes_first_then_common_sizes() -> None:
    size = 3 * 8 * MIB + 5
    layouts = part_layouts(size, "x-4", 8 * MIB)
    assert layouts[0] == [(1, 8 * MIB), (2, 8 * MIB), (3, 8 * MIB), (4, 5)]
    assert len(layouts) == len({str(layout) for layout in layouts})  # no layout twice
    assert all(layout is not None and sum(s for _, s in layout) == size for layout in layouts)
    assert all(layout is not None and len(layout) == 4 for layout in layouts)


def test_no_layout_when_no_common_size_fits() -> None:
    assert part_layouts(10, "x-3", 0) == []


def test_layout_etag_matches_s3s() -> None:
    data = bytes(range(256)) * (12 * MIB // 256 + 3)
    etag = LayoutETag([(1, 5 * MIB), (2, 5 * MIB), (3, len(data) - 10 * MIB)])
    for at in range(0, len(data), 777_777):  # pieces that straddle part boundaries
        etag.feed(data[at : at + 777_777])
        assert etag.hexdigest().endswith("-3")  # asking on the way changes nothing
    assert etag.hexdigest() == s3_etag(data, 5 * MIB) and etag.fed == len(data)
    whole = LayoutETag(None)
    whole.feed(data)
    assert whole.hexdigest() == hashlib.md5(data).hexdigest()


def test_narrowed_is_a_second_after_the_newest_left_never_wider() -> None:
    cutoff = datetime(2026, 11, 1, tzinfo=UTC)
    left = [datetime(2026, 10, 1, 12, 0, 0, 500_000, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC)]
    assert narrowed(cutoff, left) == datetime(2026, 10, 1, 12, 0, 1, tzinfo=UTC)
    assert narrowed(cutoff, [datetime(2026, 10, 31, 23, 59, 59, 900_000, tzinfo=UTC)]) == cutoff
    assert narrowed(cutoff, []) is None


CONFIG = """\
# the proxy
clients:
  - access_key_id: medusa
    secret_access_key: secret
encryption:
  key_files: [{key}]
  legacy_plaintext_before: "2026-11-01T00:00:00Z"   # encryption switched on
upstream:
  endpoint_url: http://127.0.0.1:9000
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    from proxy.keyfiles import generate_key_file

    key = tmp_path / "k.key"
    generate_key_file(str(key))
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG.format(key=key))
    path.chmod(0o640)
    return path


def test_the_cutoff_is_removed_or_narrowed_and_nothing_else_changes(config_file: Path) -> None:
    before = config_file.read_text().splitlines()
    new = datetime(2026, 10, 1, tzinfo=UTC)
    edit_config(config_file, new, "1 left")
    assert load_config(str(config_file)).encryption.legacy_plaintext_before == new
    after = config_file.read_text().splitlines()
    assert [a for a, b in zip(before, after, strict=True) if a != b] == [before[6]]
    assert (config_file.stat().st_mode & 0o777) == 0o640
    edit_config(config_file, None, "nothing left")
    assert load_config(str(config_file)).encryption.legacy_plaintext_before is None
    assert '# legacy_plaintext_before: "2026-10-01T00:00:00Z"  # removed by migrate' in config_file.read_text()


def test_a_config_it_cannot_edit_safely_is_left_as_it_is(config_file: Path) -> None:
    text = config_file.read_text()
    config_file.write_text(text + "  legacy_plaintext_before: null\n")
    with pytest.raises(CutoffEditError, match="2 legacy_plaintext_before lines"):
        edit_config(config_file, None, "x")
    config_file.write_text(text.replace("key_files:", "key_files_typo:"))
    with pytest.raises(CutoffEditError, match="would not load once edited"):
        edit_config(config_file, None, "x")
    assert "key_files_typo" in config_file.read_text() and list(config_file.parent.glob(".proxy.yaml.*")) == []
