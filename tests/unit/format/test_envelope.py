"""Format version 2 (envelope keys): known answers, round trips, and every tampering refused.

Regenerate the vectors (only for an intended, versioned format change) with
`MCP_REGEN_VECTORS=1 pytest tests/unit/format/test_envelope.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from proxy.format import Trailer, decrypt_object
from proxy.format.codec import RangeDecryptor, encrypt_object
from proxy.format.constants import PROVIDER_AWS_KMS
from proxy.format.errors import TamperedError, UnknownKeyError, UnsupportedFormatError
from proxy.format.keys import DataKey, WrappedKey, derive_object_keys, local_data_key, unwrap_local
from tests.unit.format.helpers import RAW_A, RING, RING_AB, RING_B, pattern, stream_decrypt
from tests.unit.format.test_vectors import CASES, SALT, TIMESTAMP, iv_counter

PATH = Path(__file__).parent / "vectors" / "envelope_vectors.json"
DATA_KEY = bytes(range(200, 232))


def data_key() -> DataKey:
    return local_data_key(RING.primary, DATA_KEY)


def build(case: dict[str, Any], dk: DataKey | None = None) -> bytes:
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
        data_key=dk or data_key(),
    )


def generate() -> dict[str, Any]:
    dk = data_key()
    keys = derive_object_keys(dk, SALT)
    out: dict[str, Any] = {
        "master_key_hex": RAW_A.hex(),
        "data_key_hex": DATA_KEY.hex(),
        "wrapped_data_key_hex": dk.wrapped.blob.hex(),
        "salt_hex": SALT.hex(),
        "hkdf": {
            "signing_key_hex": keys.signing_key.hex(),
            "encryption_key_hex": keys.encryption_key.hex(),
            "mac_key_hex": keys.mac_key.hex(),
        },
        "objects": [],
    }
    for case in CASES:
        stored = build(case)
        entry = dict(case, stored_size=len(stored), stored_sha256=hashlib.sha256(stored).hexdigest())
        entry["trailer_hex"] = Trailer.from_tail(stored).record.hex()
        out["objects"].append(entry)
    return out


if os.environ.get("MCP_REGEN_VECTORS") == "1":  # pragma: no cover
    PATH.write_text(json.dumps(generate(), indent=1, ensure_ascii=False) + "\n")

VECTORS = json.loads(PATH.read_text())


def test_key_vectors() -> None:
    """The wrap (AES key wrap is deterministic) and the v2 derivation, as recorded."""
    got = generate()
    for field in ("master_key_hex", "data_key_hex", "wrapped_data_key_hex", "salt_hex", "hkdf"):
        assert got[field] == VECTORS[field], field
    # A v2 object's keys are not its master key's v1 keys.
    assert derive_object_keys(RING.primary, SALT).mac_key.hex() != VECTORS["hkdf"]["mac_key_hex"]


@pytest.mark.parametrize("entry", VECTORS["objects"], ids=lambda e: e["name"])
def test_encrypt_vector_and_round_trip(entry: dict[str, Any]) -> None:
    case = next(c for c in CASES if c["name"] == entry["name"])
    stored = build(case)
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (entry["stored_size"], entry["stored_sha256"])
    trailer = Trailer.from_tail(stored)
    assert trailer.record.hex() == entry["trailer_hex"]
    assert trailer.version == 2 and trailer.key_id == RING.primary.key_id
    assert trailer.wrapped == WrappedKey(1, "", bytes.fromhex(VECTORS["wrapped_data_key_hex"]))
    plaintext = pattern(case["size"], 7)
    assert decrypt_object(RING, stored, case["key"]) == plaintext
    assert decrypt_object(RING_AB, stored) == plaintext  # found by key id in a ring
    for mode in ("trailer", "buffered"):
        assert stream_decrypt(stored, mode, chunk_size=case["chunk_size"], key=case["key"]) == plaintext


def test_range_reads_of_a_v2_object() -> None:
    data = pattern(50, 7)
    stored = build(next(c for c in CASES if c["name"] == "multipart"))
    trailer = Trailer.from_tail(stored)
    for first, last in ((0, 0), (3, 40), (31, 49), (0, 49)):
        span = trailer.layout.stored_range(first, last)
        dec = RangeDecryptor(RING, trailer, span)
        got = dec.feed(stored[span.start : span.end + 1]) + dec.finish()
        assert got == data[first : last + 1]


def test_unwrap_local_round_trip_and_refusals() -> None:
    dk = local_data_key(RING.primary)
    assert unwrap_local(RING.primary, dk.wrapped).raw == dk.raw
    with pytest.raises(TamperedError, match="does not unwrap"):
        unwrap_local(RING_B.primary, dk.wrapped)  # another master key
    flipped = WrappedKey(1, "", bytes([dk.wrapped.blob[0] ^ 1]) + dk.wrapped.blob[1:])
    with pytest.raises(TamperedError, match="does not unwrap"):
        unwrap_local(RING.primary, flipped)
    assert "DataKey(key_id=" in repr(dk) and dk.raw.hex() not in repr(dk)


STORED = build(next(c for c in CASES if c["name"] == "multipart"))
TRAILER = Trailer.from_tail(STORED)


def with_trailer_body(body: bytes, *, mac: bytes | None = None) -> bytes:
    """STORED with its trailer's body replaced (framing recomputed, MAC kept unless given)."""
    mac = TRAILER.mac if mac is None else mac
    L = len(body) + 32 + 12
    record = L.to_bytes(4, "big") + body + mac + (L + 4).to_bytes(4, "big") + b"MCPTEND1"
    return STORED[: len(STORED) - TRAILER.record_len] + record


@pytest.mark.parametrize(
    ("what", "change", "error"),
    [
        ("wrapped key bit", lambda b: b[:-30] + bytes([b[-30] ^ 1]) + b[-29:], TamperedError),
        ("key reference added", lambda b: b[:-46] + b"\x00\x01r" + b[-44:], TamperedError),
        ("context bucket added", lambda b: b[:-2] + b"\x00\x01x", TamperedError),
        # another provider (a newer writer's, or forged): never unwrapped locally
        ("provider byte", lambda b: b[:-47] + b"\x03" + b[-46:], UnsupportedFormatError),
    ],
)
def test_tampered_envelope_fields_are_refused(what: str, change: Any, error: type[Exception]) -> None:
    body = change(TRAILER.body)
    assert body != TRAILER.body
    with pytest.raises(error):
        decrypt_object(RING, with_trailer_body(body))


def test_truncated_envelope_and_version_swaps_are_refused() -> None:
    body = TRAILER.body
    with pytest.raises(TamperedError, match="envelope fields"):
        Trailer.from_tail(with_trailer_body(body[:-1]))
    with pytest.raises(TamperedError, match="without its wrapped data key"):
        Trailer.from_tail(with_trailer_body(body[: -(1 + 2 + 2 + 40 + 2)]))
    as_v1 = body[:4] + b"\x01" + body[5:]  # a v1 reader's layout with v2's extra bytes
    with pytest.raises(TamperedError, match="object key length"):
        Trailer.from_tail(with_trailer_body(as_v1))
    v1_object = encrypt_object(RING, "k", b"x" * 20, chunk_size=16)
    v1_body = Trailer.from_tail(v1_object).body
    with pytest.raises(TamperedError, match="without its wrapped data key"):
        Trailer.parse(with_trailer_body(v1_body[:4] + b"\x02" + v1_body[5:])[-(len(v1_body) + 48) :])


def test_keys_that_do_not_fit_are_refused() -> None:
    with pytest.raises(UnknownKeyError):
        decrypt_object(RING_B, STORED)
    other = local_data_key(RING.primary)
    with pytest.raises(TamperedError, match="not the one this trailer holds"):
        TRAILER.verify(RING, other)
    kms = WrappedKey(PROVIDER_AWS_KMS, "arn:aws:kms:us-east-1:1:key/x", b"blob", "bucket")
    kms_object = encrypt_object(RING, "k", b"y" * 20, chunk_size=16, data_key=DataKey(DATA_KEY, kms, b"\x01" * 8))
    kms_trailer = Trailer.from_tail(kms_object)
    assert kms_trailer.wrapped == kms
    with pytest.raises(UnsupportedFormatError, match="must unwrap it first"):
        decrypt_object(RING, kms_object)
    keys = kms_trailer.verify(RING, DataKey(DATA_KEY, kms, b"\x01" * 8))  # what a KMS unwrapped
    assert keys.key_id == b"\x01" * 8
