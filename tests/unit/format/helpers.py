"""Shared helpers for the format tests (small chunk sizes keep them fast)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from proxy.format import ObjectDecryptor, Trailer, encrypt_object
from proxy.format.keys import KeyRing, MasterKey

RAW_A = bytes(range(32))
RAW_B = bytes(range(32, 64))
RING = KeyRing([MasterKey(RAW_A)])
RING_B = KeyRing([MasterKey(RAW_B)])
RING_AB = KeyRing([MasterKey(RAW_B), MasterKey(RAW_A)])


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast for MiBs)."""
    out = bytearray()
    ctr = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{ctr}".encode()).digest() * 64
        ctr += 1
    return bytes(out[:n])


def make(
    data: bytes,
    parts: Sequence[tuple[int, int]] | None = None,
    chunk_size: int = 16,
    key: str = "bucketless/key",
    ring: KeyRing = RING,
) -> bytes:
    return encrypt_object(ring, key, data, parts=parts, chunk_size=chunk_size)


def split_parts(n: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    assert sum(sizes) == n
    return [(i + 1, s) for i, s in enumerate(sizes)]


def stream_decrypt(
    stored: bytes,
    mode: str,
    *,
    chunk_size: int = 16,
    piece: int = 7,
    key: str | None = "bucketless/key",
    ring: KeyRing = RING,
    released: bytearray | None = None,
) -> bytearray:
    """Decrypt in `mode` = trailer | hint | buffered, feeding `piece`-byte pieces.

    `released` collects what was returned before any exception.
    """
    out = released if released is not None else bytearray()
    if mode == "trailer":
        dec = ObjectDecryptor.with_trailer(ring, Trailer.from_tail(stored), key)
    elif mode == "hint":
        t = Trailer.from_tail(stored)
        dec = ObjectDecryptor(ring, key, key_id=t.key_id, salt=t.salt, chunk_size=chunk_size)
    else:
        dec = ObjectDecryptor(ring, key, chunk_size=chunk_size)
    for i in range(0, len(stored), piece):
        out += dec.feed(stored[i : i + piece])
    out += dec.finish()
    return out


def rnd_sizes(rng: random.Random, total: int, n: int) -> list[int]:
    cuts = sorted(rng.randint(0, total) for _ in range(n - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
