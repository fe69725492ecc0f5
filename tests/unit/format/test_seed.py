"""The seed's old in-Medusa Fernet format: objects made here with Fernet.encrypt, exactly
as the seed's EncryptionManager lays them out (u32 BE length || token per 1 MiB chunk)."""

from __future__ import annotations

import base64
import hashlib
import random
import struct

import pytest
from cryptography.fernet import Fernet

from proxy.format import TamperedError, TruncatedError, classify
from proxy.format.keys import KeyRing, MasterKey
from proxy.format.seed import (
    SEED_CHUNK_SIZE,
    SEED_FULL_RECORD_SIZE,
    SeedDecryptor,
    SeedRangeDecryptor,
    seed_last_record_plaintext_size,
    seed_last_record_range,
    seed_plaintext_size,
    seed_plaintext_size_bounds,
    seed_record_size,
    seed_stored_range,
    seed_token_size,
    source_md5_hex,
)
from proxy.tools.files import decrypt_file, inspect_file
from tests.unit.format.helpers import RAW_A, RAW_B, RING, RING_B, pattern

MiB = SEED_CHUNK_SIZE
KEY = base64.urlsafe_b64encode(RAW_A)  # the same key as tests.unit.format.helpers.RING
OTHER = base64.urlsafe_b64encode(RAW_B)
SIZES = [0, 1, 16, MiB - 1, MiB, MiB + 1, 3 * MiB + 5]
SMALL = 32  # chunk size of the small objects used for exhaustive checks


def rnd(n: int, seed: int = 0) -> bytes:
    """Random bytes whose chunks all differ (pattern() repeats every 2 KiB)."""
    return random.Random(seed).randbytes(n)


def seed_encrypt(data: bytes, key: bytes = KEY, chunk: int = MiB, empty_token: bool = False) -> bytes:
    """What the seed writes: one `u32 len || Fernet.encrypt(chunk)` per chunk."""
    f = Fernet(key)
    out = bytearray()
    for i in range(0, len(data), chunk):
        tok = f.encrypt(data[i : i + chunk])
        out += struct.pack(">I", len(tok)) + tok
    if not data and empty_token:
        tok = f.encrypt(b"")
        out += struct.pack(">I", len(tok)) + tok
    return bytes(out)


def records(stored: bytes) -> list[bytes]:
    """Split a stored object into its records (prefix included)."""
    out, pos = [], 0
    while pos < len(stored):
        n = int.from_bytes(stored[pos : pos + 4], "big")
        out.append(stored[pos : pos + 4 + n])
        pos += 4 + n
    return out


def decrypt(stored: bytes, keys: list[bytes] | None = None, piece: int | None = None, **kw: object) -> bytes:
    dec = SeedDecryptor(keys or [KEY], **kw)  # type: ignore[arg-type]
    out = bytearray()
    step = piece or max(1, len(stored))
    for i in range(0, len(stored), step):
        out += dec.feed(stored[i : i + step])
    out += dec.finish()
    return bytes(out)


@pytest.fixture(scope="module")
def objects() -> dict[int, tuple[bytes, bytes]]:
    return {n: (data := rnd(n, n), seed_encrypt(data)) for n in SIZES}


# --------------------------------------------------------------------------- sizes


def test_token_and_record_sizes() -> None:
    f = Fernet(KEY)
    for m in [*range(0, 70), MiB - 17, MiB - 16, MiB - 1, MiB]:
        assert len(f.encrypt(bytes(m))) == seed_token_size(m)
    assert SEED_FULL_RECORD_SIZE == seed_record_size(MiB) == 4 + 1398200
    # a short last record is always strictly smaller than a full one
    assert seed_record_size(MiB - 1) < SEED_FULL_RECORD_SIZE


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_sizes(objects: dict[int, tuple[bytes, bytes]], size: int) -> None:
    data, stored = objects[size]
    assert len(records(stored)) == -(-size // MiB)
    for i, rec in enumerate(records(stored)[:-1]):
        assert stored[i * SEED_FULL_RECORD_SIZE : (i + 1) * SEED_FULL_RECORD_SIZE] == rec
    md5_b64 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert decrypt(stored) == data
    assert decrypt(stored, expected_size=size, expected_md5=md5_b64) == data
    assert decrypt(stored, [OTHER, KEY]) == data  # MultiFernet: any configured key
    lo, hi = seed_plaintext_size_bounds(len(stored))
    assert lo <= size <= hi and hi - lo in (0, 15)
    assert seed_plaintext_size(len(stored), size) == size
    if size % MiB == 0:
        assert seed_plaintext_size(len(stored)) == size
    rng = seed_last_record_range(len(stored))
    if size == 0:
        assert rng is None and stored == b""
        assert seed_last_record_plaintext_size(0, b"", [KEY]) == 0
    else:
        assert rng is not None
        assert stored[rng[0] :] == records(stored)[-1] and rng[1] == len(stored) - 1
        assert seed_last_record_plaintext_size(len(stored), stored[rng[0] :], [OTHER, KEY]) == size
        assert classify(stored[:10], stored[-12:], len(stored)) == "seed-fernet"


def test_empty_file_as_one_empty_token() -> None:
    stored = seed_encrypt(b"", empty_token=True)
    assert len(stored) == seed_record_size(0) == 104
    assert decrypt(stored) == b"" and decrypt(stored, expected_size=0) == b""
    assert seed_plaintext_size_bounds(104) == (0, 15)
    assert seed_last_record_plaintext_size(104, stored, [KEY]) == 0
    assert decrypt(b"") == b""


def test_size_ambiguity_and_source_size() -> None:
    stored = seed_encrypt(pattern(MiB + 20))
    assert seed_plaintext_size_bounds(len(stored)) == (MiB + 16, MiB + 31)
    with pytest.raises(ValueError, match="source_size"):
        seed_plaintext_size(len(stored))
    with pytest.raises(TamperedError):
        seed_plaintext_size(len(stored), MiB + 32)
    assert seed_plaintext_size(len(stored), MiB + 31) == MiB + 31


def test_bounds_exhaustive_small_chunks() -> None:
    """Every plaintext size up to a few chunks maps to bounds holding it; others invalid."""
    valid: dict[int, tuple[int, int]] = {}
    for size in range(0, 4 * SMALL + 1):
        stored = len(seed_encrypt(bytes(size), chunk=SMALL)) if size else 0
        lo, hi = seed_plaintext_size_bounds(stored, chunk_size=SMALL)
        assert lo <= size <= hi and hi - lo in (0, 15)
        assert valid.setdefault(stored, (lo, hi)) == (lo, hi)
    for stored in range(0, max(valid) + 1):
        if stored in valid:
            continue
        if stored == seed_record_size(0):  # one empty token
            continue
        with pytest.raises(TamperedError):
            seed_plaintext_size_bounds(stored, chunk_size=SMALL)
    for bad in (1, 103, SEED_FULL_RECORD_SIZE + 1, 2 * SEED_FULL_RECORD_SIZE + 105):
        with pytest.raises(TamperedError):
            seed_plaintext_size_bounds(bad)


def test_source_md5_hex() -> None:
    d = hashlib.md5(b"x").digest()
    assert source_md5_hex(base64.b64encode(d).decode()) == d.hex()
    assert source_md5_hex(d.hex().upper()) == d.hex()
    assert source_md5_hex(f'"{d.hex()}"') == d.hex()
    with pytest.raises(ValueError):
        source_md5_hex("nope")


# --------------------------------------------------------------------------- streaming


def test_streaming_random_splits(objects: dict[int, tuple[bytes, bytes]]) -> None:
    rng = random.Random(5)
    data, stored = objects[3 * MiB + 5]
    for _ in range(3):
        dec = SeedDecryptor([KEY], expected_size=len(data))
        out, pos = bytearray(), 0
        while pos < len(stored):
            n = rng.choice([1, 3, 4, 5, rng.randrange(1, 600_000)])
            out += dec.feed(stored[pos : pos + n])
            pos += n
        out += dec.finish()
        assert out == data and dec.info().etag == hashlib.md5(data).hexdigest()
        assert dec.info().record_count == 4


@pytest.mark.parametrize("size", [1, SMALL - 1, SMALL, SMALL + 1, 5 * SMALL + 7])
def test_streaming_byte_by_byte_small(size: int) -> None:
    data = rnd(size, 9)
    stored = seed_encrypt(data, chunk=SMALL)
    assert decrypt(stored, piece=1, chunk_size=SMALL) == data
    assert decrypt(stored, piece=7, chunk_size=SMALL, expected_size=size) == data


# --------------------------------------------------------------------------- ranges


def _range(stored: bytes, first: int, last: int, chunk: int, clamp: bool, piece: int) -> bytes:
    r = seed_stored_range(first, last, len(stored) if clamp else None, chunk_size=chunk)
    body = stored[r.start : r.end + 1]  # S3 clamps a range past the end
    dec = SeedRangeDecryptor([OTHER, KEY], r, chunk_size=chunk)
    out = bytearray()
    for i in range(0, len(body), piece):
        out += dec.feed(body[i : i + piece])
    out += dec.finish()
    return bytes(out)


@pytest.mark.parametrize("size", [1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 2 * SMALL + 5])
def test_every_range_small(size: int) -> None:
    data = rnd(size, size)
    stored = seed_encrypt(data, chunk=SMALL)
    rng = random.Random(size)
    for first in range(size):
        for last in range(first, size):
            got = _range(stored, first, last, SMALL, rng.random() < 0.5, rng.choice([1, 13, 1 << 20]))
            assert got == data[first : last + 1], (first, last)
    # a range past the plaintext end cannot be served from these bytes
    r = seed_stored_range(0, size, chunk_size=SMALL)
    dec = SeedRangeDecryptor([KEY], r, chunk_size=SMALL)
    dec.feed(stored[r.start : r.end + 1])
    with pytest.raises(TruncatedError):
        dec.finish()


def test_ranges_real_chunk_size(objects: dict[int, tuple[bytes, bytes]]) -> None:
    data, stored = objects[3 * MiB + 5]
    n = len(data)
    cases = [
        (0, 0),
        (0, n - 1),
        (MiB - 1, MiB),
        (MiB, 2 * MiB - 1),
        (3 * MiB, n - 1),
        (n - 1, n - 1),
        (5, 3 * MiB + 1),
        (2 * MiB + 7, 2 * MiB + 7),
    ]
    for first, last in cases:
        r = seed_stored_range(first, last)
        assert r.start == first // MiB * SEED_FULL_RECORD_SIZE
        assert r.http_range == f"bytes={r.start}-{r.end}"
        for clamp in (False, True):
            assert _range(stored, first, last, MiB, clamp, 1 << 20) == data[first : last + 1]
    start, end, index, skip, length = seed_stored_range(MiB + 3, 2 * MiB + 4, len(stored))
    assert (start, end, index, skip, length) == (SEED_FULL_RECORD_SIZE, 3 * SEED_FULL_RECORD_SIZE - 1, 1, 3, MiB + 2)
    with pytest.raises(ValueError):
        seed_stored_range(4 * MiB, 4 * MiB, len(stored))


def test_range_tampering() -> None:
    data = rnd(4 * SMALL + 9)
    stored = bytearray(seed_encrypt(data, chunk=SMALL))
    R = seed_record_size(SMALL)
    stored[R + 40] ^= 1
    r = seed_stored_range(SMALL, SMALL, chunk_size=SMALL)
    with pytest.raises(TamperedError):
        SeedRangeDecryptor([KEY], r, chunk_size=SMALL).feed(stored[r.start : r.end + 1])
    # a short record where a full one belongs shifts the grid: caught
    recs = records(seed_encrypt(data, chunk=SMALL))
    moved = b"".join([recs[0], recs[-1], *recs[1:-1]])
    for first, last in [(0, 2 * SMALL), (SMALL, SMALL), (2 * SMALL, 3 * SMALL)]:
        r = seed_stored_range(first, last, len(moved), chunk_size=SMALL)
        dec = SeedRangeDecryptor([KEY], r, chunk_size=SMALL)
        with pytest.raises(TamperedError):
            dec.feed(moved[r.start : r.end + 1])
            dec.finish()


# --------------------------------------------------------------------------- tampering


def test_wrong_key(objects: dict[int, tuple[bytes, bytes]]) -> None:
    _, stored = objects[MiB + 1]
    with pytest.raises(TamperedError, match="wrong key"):
        decrypt(stored, [OTHER])
    rng = seed_last_record_range(len(stored))
    assert rng is not None
    with pytest.raises(TamperedError):
        seed_last_record_plaintext_size(len(stored), stored[rng[0] :], [OTHER])


def test_bit_flips_everywhere_small() -> None:
    data = rnd(2 * SMALL + 3)
    stored = seed_encrypt(data, chunk=SMALL)
    for i in range(len(stored)):
        for bit in (0, 7):
            bad = bytearray(stored)
            bad[i] ^= 1 << bit
            with pytest.raises(TamperedError):
                decrypt(bytes(bad), chunk_size=SMALL, piece=11)


def test_bit_flip_real_size(objects: dict[int, tuple[bytes, bytes]]) -> None:
    _, stored = objects[MiB + 1]
    for pos in (0, 3, 4, 10, 500_000, SEED_FULL_RECORD_SIZE - 1, SEED_FULL_RECORD_SIZE + 50, len(stored) - 1):
        bad = bytearray(stored)
        bad[pos] ^= 0x04
        with pytest.raises(TamperedError):
            decrypt(bytes(bad))


def test_non_canonical_base64_refused() -> None:
    """Fernet itself would accept a token whose last character's unused bits changed."""
    stored = seed_encrypt(b"abc")
    tok = stored[4:]
    pad = tok.index(b"=")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = alphabet.index(tok[pad - 1 : pad])
    variant = tok[: pad - 1] + alphabet[c ^ 1 : (c ^ 1) + 1] + tok[pad:]
    assert base64.urlsafe_b64decode(variant) == base64.urlsafe_b64decode(tok)
    Fernet(KEY).decrypt(variant)  # accepted by Fernet alone
    with pytest.raises(TamperedError, match="canonical"):
        decrypt(stored[:4] + variant)


def test_truncation_every_cut_small() -> None:
    data = rnd(3 * SMALL + 5)
    stored = seed_encrypt(data, chunk=SMALL)
    ends = {0}
    for rec in records(stored):
        ends.add(max(ends) + len(rec))
    for cut in range(len(stored)):
        with pytest.raises(TruncatedError):
            decrypt(stored[:cut], chunk_size=SMALL, expected_size=len(data))
        if cut not in ends:  # inside a record: caught even without the manifest
            with pytest.raises(TruncatedError):
                decrypt(stored[:cut], chunk_size=SMALL)
        else:  # whole trailing full records dropped: only the manifest size shows it
            assert decrypt(stored[:cut], chunk_size=SMALL) == data[: cut // seed_record_size(SMALL) * SMALL]


def test_trailing_garbage_and_sizes(objects: dict[int, tuple[bytes, bytes]]) -> None:
    for size in (1, MiB, MiB + 1):
        data, stored = objects[size]
        for extra in (b"\x00", b"\x00\x00\x00\x68", stored[-200:], records(stored)[-1]):
            with pytest.raises(TamperedError):
                decrypt(stored + extra, expected_size=size)
            if size % MiB or extra != records(stored)[-1]:
                with pytest.raises(TamperedError):
                    decrypt(stored + extra)
            else:  # a repeated full record is a valid longer object: only the manifest shows it
                assert decrypt(stored + extra) == data + data[-MiB:]
        with pytest.raises(TruncatedError):
            decrypt(stored, expected_size=size + 1)
        if size:
            with pytest.raises(TamperedError):
                decrypt(stored, expected_size=size - 1)
    # an oversized length field is refused before buffering it
    with pytest.raises(TamperedError, match="impossible length"):
        SeedDecryptor([KEY]).feed(struct.pack(">I", 2 * SEED_FULL_RECORD_SIZE) + b"gAAAAA")


def test_swapped_records() -> None:
    data = rnd(3 * SMALL + 5)
    recs = records(seed_encrypt(data, chunk=SMALL))
    # the short last record moved before a full one: caught by the layout
    with pytest.raises(TamperedError):
        decrypt(b"".join([recs[0], recs[3], recs[1], recs[2]]), chunk_size=SMALL)
    # two full records swapped: no binding in the format, only the manifest MD5 shows it
    swapped = b"".join([recs[1], recs[0], recs[2], recs[3]])
    assert decrypt(swapped, chunk_size=SMALL) == data[SMALL : 2 * SMALL] + data[:SMALL] + data[2 * SMALL :]
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    with pytest.raises(TamperedError, match="source_MD5"):
        decrypt(swapped, chunk_size=SMALL, expected_size=len(data), expected_md5=md5)
    # a duplicated full record: size check
    with pytest.raises(TamperedError):
        decrypt(b"".join([recs[0], *recs]), chunk_size=SMALL, expected_size=len(data))


def test_last_record_tampering(objects: dict[int, tuple[bytes, bytes]]) -> None:
    _, stored = objects[MiB + 1]
    rng = seed_last_record_range(len(stored))
    assert rng is not None
    last = bytearray(stored[rng[0] :])
    with pytest.raises(TruncatedError):
        seed_last_record_plaintext_size(len(stored), last[:-1], [KEY])
    last[20] ^= 1
    with pytest.raises(TamperedError):
        seed_last_record_plaintext_size(len(stored), last, [KEY])


# --------------------------------------------------------------------------- offline tool


def test_offline_decrypt_file(tmp_path, objects: dict[int, tuple[bytes, bytes]]) -> None:
    data, stored = objects[3 * MiB + 5]
    enc, out = tmp_path / "Data.db", tmp_path / "out"
    enc.write_bytes(stored)
    assert inspect_file(enc)["classification"] == "seed-fernet"
    assert inspect_file(enc)["plaintext_size_min"] <= len(data) <= inspect_file(enc)["plaintext_size_max"]
    # the seed key given as the (only) key file, as `decrypt --key-file seed.key` does
    info = decrypt_file(RING, enc, out)
    assert out.read_bytes() == data and info.etag == hashlib.md5(data).hexdigest()
    out.unlink()
    # our key ring plus a separately configured seed key
    info = decrypt_file(RING_B, enc, out, "ignored/for/seed", seed_keys=[KEY])
    assert out.read_bytes() == data
    out.unlink()
    decrypt_file(RING_B, enc, out, seed_keys=KeyRing([MasterKey(RAW_A)]))
    assert out.read_bytes() == data
    out.unlink()
    with pytest.raises(TamperedError):
        decrypt_file(RING_B, enc, out)
    bad = bytearray(stored)
    bad[2 * SEED_FULL_RECORD_SIZE + 99] ^= 1
    enc.write_bytes(bad)
    with pytest.raises(TamperedError):
        decrypt_file(RING, enc, out)
    enc.write_bytes(stored[:-1])
    with pytest.raises(TruncatedError):
        decrypt_file(RING, enc, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Data.db"]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert decrypt_file(RING_B, empty, out, seed_keys=[KEY]).plaintext_size == 0
    assert out.read_bytes() == b""
