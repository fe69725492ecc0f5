"""The manifest rewrite (proxy.manifest): pure functions.

Through the real proxy: tests/functional/test_manifest.py; authenticated manifests and the
manifest walk: tests/unit/test_manifest_mac.py.
"""

from __future__ import annotations

import json

import pytest

from proxy.manifest import Stored, is_manifest_key, object_paths, restore, rewrite
from tests.support.medusa_helpers import medusa_manifest

MIB = 1 << 20


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("node1/bk1/meta/manifest.json", True),
        ("pfx/node1/bk1/meta/manifest.json", True),
        ("index/backup_index/bk1/manifest_node1.json", True),
        ("pfx/index/backup_index/bk1/manifest_node1.json", True),
        ("node1/bk1/meta/schema.cql", False),
        ("index/backup_index/bk1/tokenmap_node1.json", False),
        ("node1/data/ks/t/manifest.json", False),
    ],
)
def test_is_manifest_key(key: str, expected: bool) -> None:
    assert is_manifest_key(key) is expected


def test_rewrite_and_restore_round_trip() -> None:
    body = medusa_manifest(
        [("n/data/a", "aa" * 16, 10), ("n/data/b", "bb" * 16 + "-2", 6 * MIB), ("n/data/plain", "cc" * 16, 3)]
    )
    stored = {"n/data/a": Stored(200, "11" * 16), "n/data/b": Stored(6 * MIB + 900, "22" * 16 + "-3")}
    new = rewrite(body, stored)
    assert new is not None
    entries = json.loads(new)[0]["objects"]
    assert entries[0] == {"path": "n/data/a", "MD5": "11" * 16, "size": 200, "source_size": 10, "source_MD5": "aa" * 16}
    assert entries[1]["size"] == 6 * MIB + 900 and entries[1]["source_MD5"] == "bb" * 16 + "-2"
    assert entries[2] == {"path": "n/data/plain", "MD5": "cc" * 16, "size": 3}  # not encrypted: as is
    assert restore(new) == body
    assert rewrite(new, stored) is None  # idempotent: already rewritten entries stay
    assert object_paths(body) == ["n/data/a", "n/data/b", "n/data/plain"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"a": 1}',
        b"[1, 2]",
        json.dumps([{"objects": [{}]}]).encode(),
        json.dumps([{"keyspace": "k", "objects": []}], indent=2).encode(),
    ],
)
def test_non_manifests_are_left_alone(body: bytes) -> None:
    assert rewrite(body, {"x": Stored(1, "e")}) is None
    assert restore(body) == body
