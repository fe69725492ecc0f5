"""Known-answer vectors: any change of the stored format must break these loudly.

Regenerate (only for an intended, versioned format change) with
`MCP_REGEN_VECTORS=1 pytest tests/unit/format/test_vectors.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.format import Trailer, decrypt_object, encrypt_object
from proxy.format.keys import derive_object_keys, key_id
from tests.unit.format.helpers import RAW_A, RING, pattern

PATH = Path(__file__).parent / "vectors" / "vectors.json"
SALT = bytes(range(100, 116))
TIMESTAMP = 1_700_000_000
CASES: list[dict[str, Any]] = [
    {"name": "empty", "size": 0, "chunk_size": 1048576, "parts": None, "key": "a/empty"},
    {"name": "one-byte", "size": 1, "chunk_size": 1048576, "parts": None, "key": "a/one"},
    {"name": "seventeen", "size": 17, "chunk_size": 1048576, "parts": None, "key": "k/é"},
    {"name": "small-chunks", "size": 40, "chunk_size": 16, "parts": None, "key": "x"},
    {
        "name": "multipart",
        "size": 50,
        "chunk_size": 16,
        "parts": [[1, 16], [2, 16], [3, 0], [7, 18]],
        "key": "backups/node1/data/ks/tbl/nb-1-big-Data.db",
    },
    {"name": "chunk-plus-one", "size": 1048577, "chunk_size": 1048576, "parts": None, "key": "b"},
]


def iv_counter() -> Callable[[int], bytes]:
    n = 0

    def iv(size: int) -> bytes:
        nonlocal n
        n += 1
        return hashlib.sha256(b"test-iv" + n.to_bytes(4, "big")).digest()[:size]

    return iv


def build(case: dict[str, Any]) -> bytes:
    parts = None if case["parts"] is None else [tuple(p) for p in case["parts"]]
    return encrypt_object(
        RING,
        case["key"],
        pattern(case["size"], 7),
        parts=parts,
        chunk_size=case["chunk_size"],
        salt=SALT,
        iv_source=iv_counter(),
        clock=lambda: TIMESTAMP,
    )


def generate() -> dict[str, Any]:
    keys = derive_object_keys(RAW_A, SALT)
    out: dict[str, Any] = {
        "master_key_hex": RAW_A.hex(),
        "key_id_hex": key_id(RAW_A).hex(),
        "salt_hex": SALT.hex(),
        "hkdf": {
            "signing_key_hex": keys.signing_key.hex(),
            "encryption_key_hex": keys.encryption_key.hex(),
            "mac_key_hex": keys.mac_key.hex(),
        },
        "timestamp": TIMESTAMP,
        "iv_rule": "iv_n = sha256(b'test-iv' + u32be(n))[:16], n = 1, 2, ... per record",
        "plaintext_rule": "tests.unit.format.helpers.pattern(size, 7)",
        "objects": [],
    }
    for case in CASES:
        stored = build(case)
        t = Trailer.from_tail(stored)
        entry = dict(case)
        entry.update(
            stored_size=len(stored),
            stored_sha256=hashlib.sha256(stored).hexdigest(),
            etag=t.etag,
            trailer_hex=t.record.hex(),
        )
        if len(stored) <= 4096:
            entry["stored_hex"] = stored.hex()
        out["objects"].append(entry)
    return out


if os.environ.get("MCP_REGEN_VECTORS") == "1":  # pragma: no cover
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(json.dumps(generate(), indent=1, ensure_ascii=False) + "\n")

VECTORS = json.loads(PATH.read_text())


def test_keys_vector() -> None:
    got = generate()
    for field in ("master_key_hex", "key_id_hex", "salt_hex", "hkdf"):
        assert got[field] == VECTORS[field]


@pytest.mark.parametrize("entry", VECTORS["objects"], ids=lambda e: e["name"])
def test_encrypt_vector(entry: dict[str, Any]) -> None:
    case = next(c for c in CASES if c["name"] == entry["name"])
    stored = build(case)
    assert len(stored) == entry["stored_size"]
    assert hashlib.sha256(stored).hexdigest() == entry["stored_sha256"]
    if "stored_hex" in entry:
        assert stored.hex() == entry["stored_hex"]


@pytest.mark.parametrize("entry", VECTORS["objects"], ids=lambda e: e["name"])
def test_decrypt_vector(entry: dict[str, Any]) -> None:
    """The committed bytes decrypt, so the decoder cannot drift from the format either."""
    stored = bytes.fromhex(entry["stored_hex"]) if "stored_hex" in entry else build(entry)
    t = Trailer.from_tail(stored)
    assert t.record.hex() == entry["trailer_hex"] and t.etag == entry["etag"]
    assert decrypt_object(RING, stored, entry["key"]) == pattern(entry["size"], 7)
