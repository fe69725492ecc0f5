import base64
import os
import struct

import pytest
from cryptography.fernet import Fernet

from proxy.format.errors import TamperedError
from proxy.format.keys import derive_object_keys
from proxy.format.token import (
    decrypt_token,
    encrypt_token,
    open_record_into,
    record_geometry,
    seal_record,
)

KEYS = derive_object_keys(bytes(range(32)), bytes(16))
SK, EK = KEYS.signing_key, KEYS.encryption_key
FERNET = Fernet(KEYS.fernet_key())


def b64(t: bytes) -> bytes:
    return base64.urlsafe_b64encode(t)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 31, 32, 1000, 65536 + 3])
def test_fernet_interop_both_ways(n: int) -> None:
    payload = os.urandom(n)
    ours = encrypt_token(SK, EK, payload)
    assert FERNET.decrypt(b64(ours)) == payload
    theirs = FERNET.encrypt(payload)
    assert decrypt_token(SK, EK, base64.urlsafe_b64decode(theirs)) == payload


def test_same_bytes_as_fernet_class() -> None:
    iv, ts, payload = bytes(range(16)), 1_700_000_000, b"hello fernet" * 9
    theirs = FERNET._encrypt_from_parts(payload, ts, iv)  # the reference construction
    assert b64(encrypt_token(SK, EK, payload, iv=iv, timestamp=ts)) == theirs


def test_no_ttl_and_bad_tokens() -> None:
    old = encrypt_token(SK, EK, b"x", timestamp=1)
    assert decrypt_token(SK, EK, old) == b"x"
    bad = bytearray(old)
    bad[-1] ^= 1
    with pytest.raises(TamperedError):
        decrypt_token(SK, EK, bad)
    with pytest.raises(TamperedError):
        decrypt_token(SK, EK, b"\x81" + old[1:])


@pytest.mark.parametrize("m", [*range(0, 70), 1000, 65536, 1 << 20])
def test_record_size_is_85_plus_m(m: int) -> None:
    L, tl, k = record_geometry(m)
    rec = seal_record(SK, EK, 3, 7, os.urandom(m))
    assert len(rec) == 85 + m == 4 + 57 + 16 * ((m + 8) // 16) + 16 + k
    assert struct.unpack(">I", rec[:4])[0] == L == tl + k
    assert k == (m + 8) % 16 and not any(rec[4 + tl :])


@pytest.mark.parametrize("m", [0, 1, 7, 8, 9, 24, 100, 1 << 20])
def test_record_token_is_fernet_and_round_trips(m: int) -> None:
    chunk = os.urandom(m)
    rec = seal_record(SK, EK, 0xDEADBEEF, 42, chunk)
    _, tl, _ = record_geometry(m)
    token = bytes(rec[4 : 4 + tl])
    assert FERNET.decrypt(b64(token)) == struct.pack(">II", 0xDEADBEEF, 42) + chunk
    out = bytearray(len(rec))
    got = open_record_into(SK, EK, memoryview(rec), memoryview(out), (0xDEADBEEF, 42), "t")
    assert got == (0xDEADBEEF, 42, m) and out[:m] == chunk


def test_fernet_class_token_opens_as_record() -> None:
    chunk = os.urandom(40)
    token = base64.urlsafe_b64decode(FERNET.encrypt(struct.pack(">II", 1, 0) + chunk))
    k = (40 + 8) % 16
    rec = (len(token) + k).to_bytes(4, "big") + token + bytes(k)
    assert len(rec) == 85 + 40
    out = bytearray(len(rec))
    assert open_record_into(SK, EK, memoryview(rec), memoryview(out), (1, 0), "t")[2] == 40
    assert out[:40] == chunk


def test_record_binding_checked_after_hmac() -> None:
    rec = seal_record(SK, EK, 1, 0, b"abc")
    out = memoryview(bytearray(200))
    with pytest.raises(TamperedError, match="bound to part 1 chunk 0, expected part 1 chunk 1"):
        open_record_into(SK, EK, memoryview(rec), out, (1, 1), "part 1 chunk 1")
    other = derive_object_keys(bytes(range(32)), bytes([1]) + bytes(15))
    with pytest.raises(TamperedError, match="HMAC"):
        open_record_into(other.signing_key, other.encryption_key, memoryview(rec), out, None, "x")
