"""Authenticated manifests (proxy.format.manifest_mac) and the manifest walk (proxy.manifest): pure.

Known-answer vectors: tests/unit/format/vectors/manifest_vectors.json. Regenerate (only for an
intended, versioned format change) with `MCP_REGEN_VECTORS=1 pytest tests/unit/test_manifest_mac.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from proxy.format.errors import UnknownKeyError
from proxy.format.keys import MANIFEST_HKDF_INFO, MasterKey, derive_manifest_key, derive_object_keys, key_id
from proxy.format.manifest_mac import (
    SEAL_SIZE,
    ManifestSealError,
    find_seal,
    manifest_mac,
    seal,
    seal_in_place,
    verify_manifest,
)
from proxy.manifest import (
    MAX_DEPTH,
    PIECE,
    NotAManifest,
    Stored,
    check,
    iter_entries,
    restore,
    restore_pieces,
    restored_digest,
    rewrite,
    rewrite_into,
)
from tests.unit.format.helpers import RAW_A, RAW_B, RING, RING_AB, RING_B

PATH = Path(__file__).parent / "format" / "vectors" / "manifest_vectors.json"
MASTER = MasterKey(RAW_A)
SALT = bytes(range(200, 216))
OTHER_SALT = bytes(range(16))
KEY = "index/backup_index/bk1/manifest_node1.example.com.json"


def medusa(sections: list[dict[str, Any]]) -> bytes:
    return json.dumps(sections).encode()


REWRITTEN = medusa(
    [
        {
            "keyspace": "ks1",
            "columnfamily": "t1-0123456789abcdef0123456789abcdef",
            "objects": [
                {
                    "path": "node1.example.com/data/ks1/t1-0123456789abcdef0123456789abcdef/nb-1-big-Data.db",
                    "MD5": "0f343b0931126a20f133d67c2b018a3b",
                    "size": 1109,
                    "source_size": 1024,
                    "source_MD5": "b6d81b360a5672d80c27430f39153e2c",
                },
                {
                    "path": "node1.example.com/data/ks1/t1-0123456789abcdef0123456789abcdef/nb-1-big-TOC.txt",
                    "MD5": "d41d8cd98f00b204e9800998ecf8427e",
                    "size": 0,
                },
            ],
        },
        {"keyspace": "system", "columnfamily": "local-7ad54392bcdd35a684174e047860b377", "objects": []},
    ]
)

CASES: list[dict[str, Any]] = [
    {"name": "empty", "object_key": KEY, "salt": SALT, "manifest": b"[]"},
    {"name": "medusa", "object_key": KEY, "salt": SALT, "manifest": REWRITTEN},
    {
        "name": "node-copy",
        "object_key": "pfx/node1.example.com/bk1/meta/manifest.json",
        "salt": OTHER_SALT,
        "manifest": REWRITTEN,
    },
    {
        "name": "unicode-key",
        "object_key": "k/\u00e9t\u00e9/meta/manifest.json",
        "salt": SALT,
        "manifest": medusa([{"keyspace": "k", "columnfamily": "t", "objects": [{"path": "a", "MD5": "b", "size": 1}]}]),
    },
]


def _case_stored(case: dict[str, Any]) -> bytes:
    return seal(MASTER, case["object_key"], case["manifest"], case["salt"])


def invalid_cases() -> list[dict[str, Any]]:
    """Tamper cases built from the "medusa" vector: each must fail verification under KEY."""
    good = _case_stored(CASES[1])
    found = find_seal(good)
    assert found is not None
    body, element = good[: found.body_len], good[found.body_len + 2 :]
    mac_hex, salt_hex = found.mac.hex(), found.salt.hex()
    other = _case_stored(CASES[2])  # the same manifest under another name and salt
    other_seal = find_seal(other)
    assert other_seal is not None
    edited = body.replace(b'"size": 1109', b'"size": 1108')
    assert edited != body
    cases = [
        ("edited-entry", edited + b", " + element),
        ("source-value-edited", body.replace(b'"source_size": 1024', b'"source_size": 1025') + b", " + element),
        ("moved-with-its-own-seal", other),
        ("seal-stripped", body + b"]"),
        ("seal-truncated", good[:-1]),
        ("seal-truncated-inside", good[:-20] + good[-4:]),
        ("unknown-key-id", good.replace(MASTER.key_id.hex().encode(), key_id(bytes(32)).hex().encode())),
        ("other-key-id", good.replace(MASTER.key_id.hex().encode(), key_id(RAW_B).hex().encode())),
        ("salt-swapped", good.replace(salt_hex.encode(), other_seal.salt.hex().encode())),
        ("mac-flipped", good.replace(mac_hex.encode(), (("1" if mac_hex[0] == "0" else "0") + mac_hex[1:]).encode())),
        ("mac-uppercase", good.replace(mac_hex.encode(), mac_hex.upper().encode())),
        ("mac-of-another-name", body + b", " + element.replace(mac_hex.encode(), other_seal.mac.hex().encode())),
        ("extra-space-after-comma", body + b",  " + element),
        ("newline-before-seal", body + b",\n" + element),
        ("no-separator", body + element),
        ("whitespace-after", good + b"\n"),
        ("space-inside-seal", good.replace(b'"version": 1', b'"version":  1')),
        ("version-2", good.replace(b'"version": 1', b'"version": 2')),
        (
            "fields-reordered",
            body
            + b", "
            + element.replace(
                b'"key_id": "' + found.key_id.hex().encode() + b'", "salt": "' + salt_hex.encode() + b'"',
                b'"salt": "' + salt_hex.encode() + b'", "key_id": "' + found.key_id.hex().encode() + b'"',
            ),
        ),
        ("empty-with-separator", b"[, " + _case_stored(CASES[0])[1:]),
        ("entry-appended-before-seal", body + b', {"keyspace": "x", "objects": []}, ' + element),
        ("body-truncated", body[:-40] + b"}, " + element),
    ]
    out = [{"name": name, "object_key": KEY, "stored": stored.decode()} for name, stored in cases]
    # The genuine manifest, read under another backup's name or the node's copy's name.
    out += [
        {"name": "moved-to-another-backup", "object_key": KEY.replace("bk1", "bk2"), "stored": good.decode()},
        {"name": "moved-to-the-node-copy", "object_key": CASES[2]["object_key"], "stored": good.decode()},
    ]
    return out


def generate() -> dict[str, Any]:
    out: dict[str, Any] = {
        "master_key_hex": RAW_A.hex(),
        "key_id_hex": MASTER.key_id_hex,
        "hkdf_info": MANIFEST_HKDF_INFO.decode(),
        "mac_context": "MCPM-mac-v1",
        "seal_size": SEAL_SIZE,
        "valid": [],
        "invalid": invalid_cases(),
    }
    for case in CASES:
        stored = _case_stored(case)
        found = find_seal(stored)
        assert found is not None
        out["valid"].append(
            {
                "name": case["name"],
                "object_key": case["object_key"],
                "salt_hex": case["salt"].hex(),
                "mac_key_hex": derive_manifest_key(RAW_A, case["salt"]).hex(),
                "manifest": case["manifest"].decode(),
                "stored": stored.decode(),
                "mac_hex": found.mac.hex(),
            }
        )
    return out


if os.environ.get("MCP_REGEN_VECTORS") == "1":  # pragma: no cover
    PATH.write_text(json.dumps(generate(), indent=1, ensure_ascii=False) + "\n")

VECTORS = json.loads(PATH.read_text())


# --- known answers ---------------------------------------------------------------------------


def test_vectors_are_current() -> None:
    assert generate() == VECTORS


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vector(vector: dict[str, Any]) -> None:
    salt = bytes.fromhex(vector["salt_hex"])
    stored = vector["stored"].encode()
    assert derive_manifest_key(RAW_A, salt).hex() == vector["mac_key_hex"]
    assert seal(MASTER, vector["object_key"], vector["manifest"].encode(), salt) == stored
    found, name = verify_manifest(RING, stored, vector["object_key"])
    assert name == vector["object_key"] and found.mac.hex() == vector["mac_hex"]
    assert stored[: found.body_len] + b"]" == vector["manifest"].encode()
    # The MAC, recomputed from the definition in docs/FORMAT.md with nothing but the stdlib.
    import hmac

    k = vector["object_key"].encode()
    body = vector["manifest"].encode()[:-1]
    expected = hmac.new(
        bytes.fromhex(vector["mac_key_hex"]), b"MCPM-mac-v1" + len(k).to_bytes(2, "big") + k + body, hashlib.sha256
    ).hexdigest()
    assert expected == vector["mac_hex"]
    # Readable without the key: a JSON array whose last element is the seal.
    document = json.loads(stored)
    assert document[-1] == {
        "medusa_crypt_proxy": {
            "version": 1,
            "key_id": VECTORS["key_id_hex"],
            "salt": vector["salt_hex"],
            "mac": vector["mac_hex"],
        }
    }
    assert document[:-1] == json.loads(vector["manifest"])


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector(vector: dict[str, Any]) -> None:
    stored = vector["stored"].encode()
    with pytest.raises((ManifestSealError, UnknownKeyError)):
        verify_manifest(RING, stored, vector["object_key"])
    with pytest.raises((ManifestSealError, UnknownKeyError)):
        verify_manifest(RING_AB, stored, vector["object_key"])


def test_unknown_key_id_is_named() -> None:
    stored = seal(MasterKey(RAW_B), KEY, REWRITTEN)
    with pytest.raises(UnknownKeyError) as err:
        verify_manifest(RING, stored, KEY)
    assert MasterKey(RAW_B).key_id_hex in str(err.value)
    verify_manifest(RING_AB, stored, KEY)  # rotation: every key of the ring verifies
    verify_manifest(RING_B, stored, KEY)


# --- seal, verify ------------------------------------------------------------------------------


def test_random_salt_and_accepted_names() -> None:
    a, b = seal(MASTER, KEY, REWRITTEN), seal(MASTER, KEY, REWRITTEN)
    assert a != b and len(a) == len(b) == len(REWRITTEN) - 1 + 2 + SEAL_SIZE
    moved = "moved/" + KEY
    with pytest.raises(ManifestSealError, match="mismatch"):
        verify_manifest(RING, a, moved)
    _, name = verify_manifest(RING, a, [moved, KEY])
    assert name == KEY


def test_mac_key_is_not_an_object_key() -> None:
    keys = derive_object_keys(RAW_A, SALT)
    mac_key = derive_manifest_key(RAW_A, SALT)
    assert mac_key not in (keys.mac_key, keys.signing_key + keys.encryption_key)
    assert manifest_mac(mac_key, "a", b"[") != manifest_mac(mac_key, "a[", b"")  # the key length is bound


@pytest.mark.parametrize("manifest", [b"[{}]\n", b"[ ]", b"[{} ]", b"{}", b"", b"[1]", b"[[]]"])
def test_only_canonical_arrays_are_sealed(manifest: bytes) -> None:
    with pytest.raises(ValueError):
        seal(MASTER, KEY, manifest)


def test_seal_in_place_keeps_the_buffer() -> None:
    buf = bytearray(REWRITTEN)
    seal_in_place(MASTER, KEY, buf, SALT)
    assert bytes(buf) == seal(MASTER, KEY, REWRITTEN, SALT)


@pytest.mark.parametrize("stored", [b"", b"[]", REWRITTEN, b"x" * 300, b"MCPTEND1"])
def test_no_seal(stored: bytes) -> None:
    assert find_seal(stored) is None
    with pytest.raises(ManifestSealError, match="no MAC"):
        verify_manifest(RING, stored, KEY)


# --- the walk, rewrite and restore ----------------------------------------------------------


def entries(n: int, prefix: str = "node1/data/ks/t") -> list[dict[str, Any]]:
    return [
        {"path": f"{prefix}/nb-{i}-big-Data.db", "MD5": hashlib.md5(str(i).encode()).hexdigest(), "size": i}
        for i in range(n)
    ]


def test_rewrite_seal_restore_round_trip() -> None:
    body = medusa(
        [
            {"keyspace": "ks", "columnfamily": "t", "objects": entries(50)},
            {"keyspace": "ks", "columnfamily": "u", "objects": entries(3, "node1/data/ks/u")},
        ]
    )
    stored_objects = {e["path"]: Stored(e["size"] + 85, "ab" * 16) for e in entries(50)[::2]}
    out = bytearray()
    assert rewrite_into(body.decode(), stored_objects, out) == 25
    rewritten = bytes(out)
    sealed = seal(MASTER, KEY, rewritten)
    found, _ = verify_manifest(RING, sealed, KEY)
    assert sealed[: found.body_len] + b"]" == rewritten
    assert restore(rewritten) == body
    assert restored_digest(rewritten.decode()) == (len(body), hashlib.md5(body).hexdigest())


def test_restore_streams_in_pieces() -> None:
    body = medusa([{"keyspace": "ks", "columnfamily": "t", "objects": entries(20000)}])
    out = bytearray()
    rewrite_into(body.decode(), {e["path"]: Stored(1, "c" * 32) for e in entries(20000)}, out)
    pieces = list(restore_pieces(out.decode()))
    assert len(pieces) > 3 and max(len(p) for p in pieces) < 2 * PIECE + 1000
    assert b"".join(pieces) == body


def test_entries_not_restorable_exactly_stay_as_written() -> None:
    odd = (
        b'[{"objects": [{"path": "a", "MD5": "ABCDEF0123456789ABCDEF0123456789", "size": 1}, '
        b'{"size": 2, "path": "b", "MD5": "00", "path": "b"}, {"path":"c","MD5":"e","size":3}]}]'
    )
    out = bytearray()
    assert rewrite_into(odd.decode(), {p: Stored(9, "f" * 32) for p in "abc"}, out) == 0
    assert bytes(out) == odd


def test_a_manifest_with_source_fields_is_refused() -> None:
    body = b'[{"objects": [{"path": "a", "MD5": "e", "size": 3, "source_size": 1, "source_MD5": "x"}]}]'
    with pytest.raises(NotAManifest, match="already has"):
        rewrite_into(body.decode(), {}, bytearray())
    assert rewrite(body, {}) is None


def test_seed_manifest_restores_hex() -> None:
    import base64

    md5 = hashlib.md5(b"x").digest()
    stored = json.dumps(
        [
            {
                "objects": [
                    {
                        "path": "a",
                        "MD5": "e" * 32,
                        "size": 99,
                        "source_size": 1,
                        "source_MD5": base64.b64encode(md5).decode(),
                    }
                ]
            }
        ]
    ).encode()
    assert json.loads(restore(stored))[0]["objects"][0] == {"path": "a", "MD5": md5.hex(), "size": 1}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected '\\['"),
        ("not json", "expected '\\['"),
        ('{"objects": []}', "expected '\\['"),
        ("[1]", "section"),
        ("[{}]", "no objects list"),
        ('[{"objects": {}}]', "objects list"),
        ('[{"objects": [1]}]', "string path"),
        ('[{"objects": [{"path": 1}]}]', "string path"),
        ('[{"objects": [],}]', "key"),
        ('[{"objects": []},]', "section"),
        ('[{"objects": [{"path": "a"},]}]', "not JSON"),
        ('[{"objects": [], "objects": []}]', "two objects"),
        ('[{"objects": []}] x', "extra data"),
        ('[{"objects": []}', "after a section"),
        ('[{"objects": [{"path": "a\x01"}]}]', "not JSON"),
        ('[{"objects": [' + nested(MAX_DEPTH) + "]}]", "nested deeper"),
        ('[{"objects": [{"path": "a", "x": ' + nested(MAX_DEPTH - 3) + "}]}]", "nested deeper"),
        ('[{"objects": [], "x": ' + nested(MAX_DEPTH - 1) + "}]", "nested deeper"),
        ('[{"objects": [' + nested(100000) + "]}]", "nested deeper"),
        ("[" * 100000, "section"),
        ('[{"objects": [{"path": "a", "size": ' + "9" * 5000 + "}]}]", "not JSON"),
    ],
)
def test_not_a_manifest(text: str, reason: str) -> None:
    with pytest.raises(NotAManifest, match=reason):
        check(text)
    assert restore(text.encode()) == text.encode()
    assert rewrite(text.encode(), {"a": Stored(1, "e")}) is None


def test_depth_limit_is_exact() -> None:
    deepest_entry = '[{"objects": [{"path": "a", "x": ' + nested(MAX_DEPTH - 4) + "}]}]"
    assert check(deepest_entry) == 1
    assert check('[{"objects": [], "x": ' + nested(MAX_DEPTH - 2) + "}]") == 0


def test_walk_gives_entry_spans() -> None:
    text = ' [ {"keyspace": "k", "objects" : [ {"path": "a"} , {"path": "b", "size": [1, {"z": null}]}]} ] '
    spans = [(text[s:e], entry) for s, e, entry in iter_entries(text)]
    assert spans == [
        ('{"path": "a"}', {"path": "a"}),
        ('{"path": "b", "size": [1, {"z": null}]}', {"path": "b", "size": [1, {"z": None}]}),
    ]


def reference_restore(body: bytes) -> bytes:
    """The restore as the proxy did it before the walk: json.loads, change, json.dumps."""
    from proxy.manifest import _medusa_md5

    document = json.loads(body)
    for section in document:
        for entry in section["objects"]:
            if "source_size" in entry and "source_MD5" in entry:
                entry["size"] = entry.pop("source_size")
                entry["MD5"] = _medusa_md5(entry.pop("source_MD5"))
    return json.dumps(document).encode()


def test_restore_agrees_with_the_json_reference() -> None:
    """The fast path (canonical rewritten entries) and the general one give json's answer."""
    import base64
    import random

    rng = random.Random(7)
    md5 = hashlib.md5(b"z")
    shapes: list[dict[str, Any]] = [
        {"path": "a/b", "MD5": "e" * 32, "size": 5, "source_size": 3, "source_MD5": md5.hexdigest()},
        {"path": "a/b", "MD5": "e" * 32, "size": 5, "source_size": 3, "source_MD5": md5.hexdigest() + "-12"},
        {"path": "a/b", "MD5": "e" * 32, "size": 5, "source_size": 0, "source_MD5": md5.hexdigest().upper()},
        {"path": "a/b", "MD5": "e", "size": 5, "source_size": 3, "source_MD5": base64.b64encode(md5.digest()).decode()},
        {"path": '\u00e9t\u00e9/"q"\\/\n', "MD5": "e" * 32, "size": 5, "source_size": 3, "source_MD5": md5.hexdigest()},
        {"path": "a", "MD5": "e" * 32, "size": 5, "source_size": 10**30, "source_MD5": md5.hexdigest()},
        {"path": "a", "MD5": "e" * 32, "size": -5, "source_size": -1, "source_MD5": md5.hexdigest()},
        {"path": "a", "size": 5, "MD5": "e" * 32, "source_size": 3, "source_MD5": md5.hexdigest()},
        {
            "path": "a",
            "MD5": "e" * 32,
            "size": 5,
            "extra": [1, {"b": None}],
            "source_size": 3,
            "source_MD5": md5.hexdigest(),
        },
        {"path": "a", "source_size": 3, "source_MD5": md5.hexdigest()},
        {"path": "a", "MD5": "e" * 32, "size": 5.5, "source_size": 3.25, "source_MD5": md5.hexdigest()},
        {"path": "a", "MD5": "e" * 32, "size": 5},
        {"path": "a", "MD5": "e" * 32, "size": 5, "source_size": 3},
        {"path": "\x7f~ ", "MD5": "e" * 32, "size": 5, "source_size": 3, "source_MD5": md5.hexdigest()},
    ]
    for _ in range(20):
        objects = [dict(rng.choice(shapes)) for _ in range(rng.randrange(0, 12))]
        body = medusa(
            [
                {"keyspace": "k", "columnfamily": "t", "objects": objects},
                {"keyspace": "k", "columnfamily": "u", "objects": objects[::-1], "x": {"y": [1]}},
            ]
        )
        assert restore(body) == reference_restore(body)
