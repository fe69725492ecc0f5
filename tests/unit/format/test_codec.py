import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.format import (
    CHUNK_SIZE,
    ObjectDecryptor,
    PartEncryptor,
    PartInfo,
    RangeDecryptor,
    Trailer,
    build_trailer,
    decrypt_object,
    encrypt_object,
    new_salt,
    part_stored_size,
    plaintext_size_from_stored,
)
from proxy.format.errors import FormatError
from proxy.format.keys import derive_object_keys
from tests.unit.format.helpers import RING, RING_AB, make, pattern, rnd_sizes, stream_decrypt

C = CHUNK_SIZE
MODES = ["trailer", "hint", "buffered"]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, C - 1, C, C + 1, 3 * C + 5])
def test_round_trip_real_chunk_size(size: int) -> None:
    data = pattern(size, size)
    stored = encrypt_object(RING, "a/b.db", data)
    t = Trailer.from_tail(stored[-4096:])
    assert len(stored) == part_stored_size(size) + t.record_len == t.object_stored_size
    assert plaintext_size_from_stored(len(stored) - t.record_len) == size
    assert t.etag == hashlib.md5(data).hexdigest() and t.plaintext_size == size
    assert t.chunk_size == C and t.object_key == "a/b.db"
    assert decrypt_object(RING, stored, "a/b.db") == data
    for mode in MODES:
        assert stream_decrypt(stored, mode, chunk_size=C, piece=300_001, key="a/b.db") == data


LAYOUTS = {
    "equal": [(1, 64), (2, 64), (3, 64)],
    "short-last": [(1, 64), (2, 64), (3, 5)],
    "irregular": [(1, 33), (2, 7), (3, 100), (4, 0), (5, 16)],
    "non-consecutive": [(2, 20), (5, 20), (6, 20), (900, 1), (10000, 40)],
    "empty-parts": [(1, 0), (2, 0)],
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("mode", MODES)
def test_multipart_layouts(name: str, mode: str) -> None:
    parts = LAYOUTS[name]
    data = pattern(sum(s for _, s in parts), 3)
    stored = make(data, parts, chunk_size=16)
    t = Trailer.from_tail(stored)
    md5s = b"".join(hashlib.md5(x).digest() for x in _cut(data, [s for _, s in parts]))
    assert t.etag == f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"
    assert t.layout.parts() == parts
    for piece in (1, 5, 101, len(stored)):
        assert stream_decrypt(stored, mode, piece=piece) == data


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos : pos + s])
        pos += s
    return out


def test_parts_encrypted_out_of_order_and_concurrently() -> None:
    parts = [(1, 50), (2, 50), (3, 17)]
    data = pattern(117, 9)
    chunks = _cut(data, [50, 50, 17])
    salt = new_salt()
    keys = derive_object_keys(RING.primary, salt)
    encs = {pn: PartEncryptor(keys, pn, chunk_size=16) for pn, _ in parts}
    out: dict[int, bytearray] = {pn: bytearray() for pn, _ in parts}
    # interleave pieces of all parts, in reverse part order
    for off in range(0, 50, 9):
        for pn in (3, 2, 1):
            out[pn] += encs[pn].update(memoryview(chunks[pn - 1])[off : off + 9])
    for pn in (2, 3, 1):
        out[pn] += encs[pn].finish()
        assert len(out[pn]) == encs[pn].stored_size == part_stored_size(len(chunks[pn - 1]), 16)
        assert encs[pn].md5 == hashlib.md5(chunks[pn - 1]).digest()
        assert encs[pn].plaintext_size == len(chunks[pn - 1])
    infos = [encs[pn].part_info() for pn in (1, 2, 3)]
    trailer = build_trailer(RING.primary, salt, "k", infos, False, chunk_size=16)
    stored = bytes(out[1] + out[2] + out[3]) + trailer
    for mode in MODES:
        assert stream_decrypt(stored, mode, key="k") == data


def test_part_encryptor_edges() -> None:
    keys = derive_object_keys(RING.primary, new_salt())
    e = PartEncryptor(keys, 1, chunk_size=16)
    assert e.update(b"") == b"" and len(e.update(b"x" * 16)) == 101 and e.chunk_count == 1
    assert e.finish() == b"" and e.chunk_count == 1
    with pytest.raises(ValueError):
        e.update(b"x")
    e = PartEncryptor(keys, 1, chunk_size=16)
    assert len(e.finish()) == 85 and e.chunk_count == 1
    with pytest.raises(ValueError):
        build_trailer(RING.primary, new_salt(), "k", [PartInfo(1, 0, b"0" * 16)] * 2, True)
    with pytest.raises(ValueError):
        PartEncryptor(keys, 1, chunk_size=C + 1)


def test_key_rotation() -> None:
    data = pattern(40)
    old = make(data)  # primary A
    new = make(data, ring=RING_AB)  # primary B
    assert Trailer.from_tail(new).key_id != Trailer.from_tail(old).key_id
    for stored in (old, new):
        assert stream_decrypt(stored, "trailer", ring=RING_AB) == data


def test_range_decryptor_every_range() -> None:
    parts = [(1, 32), (2, 0), (3, 19), (4, 32)]
    data = pattern(83, 4)
    stored = make(data, parts)
    t = Trailer.from_tail(stored)
    keys = t.verify(RING)
    for a in range(83):
        for b in range(a, 83):
            sr = t.layout.stored_range(a, b)
            rd = RangeDecryptor(RING, t, sr, "bucketless/key", object_keys=keys)
            body = stored[sr.start : sr.end + 1]
            got = bytearray()
            for i in range(0, len(body), 37):
                got += rd.feed(body[i : i + 37])
            got += rd.finish()
            assert got == data[a : b + 1], (a, b)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 400),
    nparts=st.integers(1, 6),
    C=st.sampled_from([1, 3, 16, 17, 64]),
    piece=st.integers(1, 300),
    seed=st.integers(0, 2**32),
    mode=st.sampled_from(MODES),
)
def test_property_round_trip(size: int, nparts: int, C: int, piece: int, seed: int, mode: str) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    parts = None if nparts == 1 else [(i + 1, s) for i, s in enumerate(rnd_sizes(rng, size, nparts))]
    stored = make(data, parts, chunk_size=C)
    assert stream_decrypt(stored, mode, chunk_size=C, piece=piece) == data
    t = Trailer.from_tail(stored)
    if size:
        a = rng.randrange(size)
        b = rng.randrange(a, size)
        sr = t.layout.stored_range(a, b)
        rd = RangeDecryptor(RING, t, sr)
        assert rd.feed(stored[sr.start : sr.end + 1]) + rd.finish() == data[a : b + 1]


def test_buffered_mode_limit() -> None:
    stored = make(pattern(200))
    dec = ObjectDecryptor(RING, None, chunk_size=16, max_buffer=1000)
    with pytest.raises(FormatError, match="trailer first"):
        dec.feed(stored)


def _counter_ivs() -> "tuple[object, object]":
    ivs = iter(range(10**9))
    return (lambda n: next(ivs).to_bytes(n, "big")), (lambda: 1_700_000_000)


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 600),
    C=st.sampled_from([1, 3, 16, 17, 64, 100]),
    pieces=st.lists(st.integers(1, 250), min_size=1, max_size=8),
    part_number=st.integers(1, 10_000),
)
def test_streaming_encryptor_stores_the_same_bytes(size: int, C: int, pieces: list[int], part_number: int) -> None:
    """With the part size known, records come out piece by piece, and their bytes are exactly
    those of the whole-record encryptor (same IVs and clock), so every other test covers them."""
    data = random.Random(size * 7919 + C).randbytes(size)
    keys = derive_object_keys(RING.primary, bytes(16))
    outputs = []
    for part_size in (None, size):
        iv_source, clock = _counter_ivs()
        enc = PartEncryptor(
            keys,
            part_number,
            chunk_size=C,
            iv_source=iv_source,
            clock=clock,  # type: ignore[arg-type]
            part_size=part_size,
        )
        stored, pos, i = bytearray(), 0, 0
        while pos < size:
            step = pieces[i % len(pieces)]
            out = enc.update(data[pos : pos + step])
            if part_size is not None:  # never more than what the piece completes
                assert len(out) <= step + 85 * (step // C + 2)
            stored += out
            pos, i = pos + step, i + 1
        stored += enc.finish()
        assert enc.stored_size == len(stored) == part_stored_size(size, C)
        outputs.append((bytes(stored), enc.md5))
    assert outputs[0] == outputs[1]


def test_streaming_encryptor_refuses_a_wrong_length() -> None:
    keys = derive_object_keys(RING.primary, bytes(16))
    longer = PartEncryptor(keys, 1, part_size=10)
    with pytest.raises(ValueError, match="more than"):
        longer.update(b"x" * 11)
    shorter = PartEncryptor(keys, 1, part_size=10)
    shorter.update(b"x" * 9)
    with pytest.raises(ValueError, match="ended after 9"):
        shorter.finish()
