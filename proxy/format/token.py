"""Fast binary Fernet tokens and chunk records, built from hazmat primitives.

A token here is byte-for-byte the base64url-decoded form of a Fernet token:
``0x80 | timestamp u64 BE | IV (16) | AES-128-CBC(PKCS7(payload)) | HMAC-SHA256``.
Skipping base64 and writing straight into preallocated buffers (``update_into``)
is what makes this ~3-5x faster than ``cryptography.fernet.Fernet`` while staying
spec-compatible (proved in tests/unit/format/test_token.py).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.format.constants import (
    BLOCK_SIZE,
    FERNET_VERSION,
    HEADER_SIZE,
    HMAC_SIZE,
    MIN_CHUNK_L,
    RECORD_OVERHEAD,
    TOKEN_PREFIX_SIZE,
)
from proxy.format.errors import TamperedError

__all__ = [
    "RecordSealer",
    "decrypt_token",
    "encrypt_token",
    "open_record_into",
    "record_geometry",
    "seal_record",
    "seal_record_into",
    "write_length",
]

Buffer = bytes | bytearray | memoryview
_HEADER = struct.Struct(">II")
_PREFIX = struct.Struct(">IBQ")  # record L, version, timestamp
_PADS = [bytes([p]) * p for p in range(17)]


def _sha256() -> hashes.SHA256:
    return hashes.SHA256()


def record_geometry(m: int) -> tuple[int, int, int]:
    """(L, token_len, filler_len) of the chunk record holding m plaintext bytes."""
    k = (m + HEADER_SIZE) % BLOCK_SIZE
    L = MIN_CHUNK_L + m
    return L, L - k, k


# --------------------------------------------------------------------------- generic tokens


def encrypt_token(
    signing_key: bytes,
    encryption_key: bytes,
    payload: Buffer,
    *,
    iv: bytes | None = None,
    timestamp: int | None = None,
) -> bytes:
    """A binary Fernet token of `payload` (for interop and tests; records use seal_record)."""
    iv = os.urandom(16) if iv is None else iv
    ts = int(time.time()) if timestamp is None else timestamp
    n = len(payload)
    pad = BLOCK_SIZE - n % BLOCK_SIZE
    ctlen = n + pad
    out = bytearray(TOKEN_PREFIX_SIZE + ctlen + HMAC_SIZE + BLOCK_SIZE)
    mv = memoryview(out)
    out[0] = FERNET_VERSION
    struct.pack_into(">Q", out, 1, ts)
    out[9:25] = iv
    enc = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    w = TOKEN_PREFIX_SIZE
    w += enc.update_into(payload, mv[w:])
    w += enc.update_into(_PADS[pad], mv[w:])
    enc.finalize()
    h = hmac.HMAC(signing_key, _sha256())
    h.update(mv[:w])
    mv[w : w + HMAC_SIZE] = h.finalize()
    mv.release()
    return bytes(out[: w + HMAC_SIZE])


def decrypt_token(signing_key: bytes, encryption_key: bytes, token: Buffer) -> bytes:
    """Verify (HMAC first, constant time) and decrypt a binary Fernet token; no TTL."""
    tv = memoryview(token)
    if len(tv) < TOKEN_PREFIX_SIZE + BLOCK_SIZE + HMAC_SIZE or tv[0] != FERNET_VERSION:
        raise TamperedError("not a Fernet token (bad length or version byte)")
    if (len(tv) - TOKEN_PREFIX_SIZE - HMAC_SIZE) % BLOCK_SIZE:
        raise TamperedError("not a Fernet token (ciphertext not a whole number of blocks)")
    h = hmac.HMAC(signing_key, _sha256())
    h.update(tv[:-HMAC_SIZE])
    try:
        h.verify(bytes(tv[-HMAC_SIZE:]))
    except InvalidSignature:
        raise TamperedError("Fernet token HMAC mismatch") from None
    dec = Cipher(algorithms.AES(encryption_key), modes.CBC(bytes(tv[9:25]))).decryptor()
    pt = dec.update(tv[TOKEN_PREFIX_SIZE:-HMAC_SIZE]) + dec.finalize()
    p = pt[-1]
    if not 1 <= p <= BLOCK_SIZE or pt[-p:] != _PADS[p]:
        raise TamperedError("Fernet token has invalid padding")
    return pt[:-p]


# --------------------------------------------------------------------------- chunk records


class RecordSealer:
    """One chunk record being written, the only code that lays one out (docs/FORMAT.md,
    "Records"): ``start`` writes the length field, token prefix, IV and the encrypted binding
    header; ``add`` encrypts plaintext as it arrives (CBC and the HMAC are both incremental);
    ``finish`` pads, authenticates and writes the zero filler."""

    __slots__ = ("_cbc", "_mac")

    def __init__(self) -> None:
        self._cbc: Any = None
        self._mac: Any = None

    @property
    def is_open(self) -> bool:
        """Whether a record is started and not yet finished."""
        return self._cbc is not None

    def start(
        self,
        out: memoryview,
        L: int,
        signing_key: bytes,
        encryption_key: bytes,
        part_number: int,
        chunk_index: int,
        iv: bytes,
        timestamp: int,
    ) -> int:
        """Write the record's head at ``out[0:]``; bytes written. ``L`` may be 0 and written later
        (``write_length``) when the chunk's size is not known yet."""
        _PREFIX.pack_into(out, 0, L, FERNET_VERSION, timestamp)
        out[13:29] = iv
        self._cbc = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
        w = 4 + TOKEN_PREFIX_SIZE
        w += self._cbc.update_into(_HEADER.pack(part_number, chunk_index), out[w:])
        self._mac = hmac.HMAC(signing_key, _sha256())
        self._mac.update(out[4:w])
        return w

    def add(self, piece: Buffer, out: memoryview) -> int:
        """Encrypt ``piece`` into ``out[0:]``; bytes written."""
        w: int = self._cbc.update_into(piece, out)
        self._mac.update(out[:w])
        return w

    def finish(self, out: memoryview, m: int) -> int:
        """Pad and close a record of ``m`` plaintext bytes into ``out[0:]``: the last cipher
        block, the HMAC and the zero filler; bytes written."""
        w = self._cbc.update_into(_PADS[BLOCK_SIZE - (m + HEADER_SIZE) % BLOCK_SIZE], out)
        self._cbc.finalize()
        self._mac.update(out[:w])
        out[w : w + HMAC_SIZE] = self._mac.finalize()
        end = w + HMAC_SIZE
        k = record_geometry(m)[2]
        if k:
            out[end : end + k] = bytes(k)
        self._cbc = self._mac = None
        return end + k


def write_length(out: memoryview, m: int) -> None:
    """The length field of a record whose ``m`` plaintext bytes are known only at its end."""
    out[0:4] = record_geometry(m)[0].to_bytes(4, "big")


def seal_record_into(
    out: memoryview,
    signing_key: bytes,
    encryption_key: bytes,
    part_number: int,
    chunk_index: int,
    pieces: Sequence[Buffer],
    m: int,
    iv: bytes,
    timestamp: int,
) -> int:
    """Write the record of one chunk (given as `pieces` totalling m bytes) at out[0:85+m].

    Pieces avoid concatenating a held-back tail with new input: CBC takes them in turn.
    Returns the record size (85 + m).
    """
    sealer = RecordSealer()
    w = sealer.start(out, record_geometry(m)[0], signing_key, encryption_key, part_number, chunk_index, iv, timestamp)
    for piece in pieces:
        if len(piece):
            w += sealer.add(piece, out[w:])
    w += sealer.finish(out[w:], m)
    assert w == RECORD_OVERHEAD + m
    return w


def seal_record(
    signing_key: bytes,
    encryption_key: bytes,
    part_number: int,
    chunk_index: int,
    chunk: Buffer,
    *,
    iv: bytes | None = None,
    timestamp: int | None = None,
) -> bytearray:
    """One chunk record as a new buffer (convenience around seal_record_into)."""
    m = len(chunk)
    out = bytearray(RECORD_OVERHEAD + m)
    with memoryview(out) as mv:
        seal_record_into(
            mv,
            signing_key,
            encryption_key,
            part_number,
            chunk_index,
            (chunk,),
            m,
            os.urandom(16) if iv is None else iv,
            int(time.time()) if timestamp is None else timestamp,
        )
    return out


def open_record_into(
    signing_key: bytes,
    encryption_key: bytes,
    record: memoryview,
    out: memoryview,
    expected: tuple[int, int] | None,
    where: str,
) -> tuple[int, int, int]:
    """Verify and decrypt one complete chunk record (4 + L bytes) into `out`.

    Order: version byte, HMAC (constant time) before any decryption, filler zeros,
    then padding and the binding header. `out` needs len(ciphertext) + 7 bytes; the
    chunk plaintext lands at out[0:m] (bytes after m are scratch). Returns
    (part_number, chunk_index, m) from the binding header, which must equal `expected`
    (part_number, chunk_index) when given.
    `where` (part/chunk/offset, never key material) goes into error messages.
    """
    L = int.from_bytes(record[0:4], "big")
    m = L - MIN_CHUNK_L
    _, tl, k = record_geometry(m)
    token = record[4 : 4 + tl]
    if token[0] != FERNET_VERSION:
        raise TamperedError(f"{where}: not a chunk record (version byte {token[0]:#04x})")
    mac_at = tl - HMAC_SIZE
    h = hmac.HMAC(signing_key, _sha256())
    h.update(token[:mac_at])
    try:
        h.verify(bytes(token[mac_at:]))
    except InvalidSignature:
        raise TamperedError(f"{where}: chunk HMAC mismatch (modified, from another object, or wrong key)") from None
    if k and any(record[4 + tl : 4 + L]):
        raise TamperedError(f"{where}: non-zero filler bytes")
    ct = token[TOKEN_PREFIX_SIZE:mac_at]
    first = bytes(ct[:BLOCK_SIZE])
    dec = Cipher(algorithms.AES(encryption_key), modes.CBC(bytes(token[9:25]))).decryptor()
    b0 = dec.update(first)
    rest = len(ct) - BLOCK_SIZE
    if rest:
        # CBC: blocks 1.. decrypt on their own with the previous ciphertext block as IV,
        # which lets the chunk land at out[0] without a copy to strip the header.
        dec2 = Cipher(algorithms.AES(encryption_key), modes.CBC(first)).decryptor()
        dec2.update_into(ct[BLOCK_SIZE:], out[HEADER_SIZE:])
        dec2.finalize()
    out[0:HEADER_SIZE] = b0[HEADER_SIZE:]
    body_len = len(ct) - HEADER_SIZE  # chunk + padding
    p = out[body_len - 1]
    if not 1 <= p <= BLOCK_SIZE or p > body_len + HEADER_SIZE:
        raise TamperedError(f"{where}: invalid padding")
    pad_start = body_len - p
    # (pad_start < 0 would mean padding reaching into the header: impossible with a valid L)
    pad_ok = pad_start >= 0 and bytes(out[pad_start:body_len]) == _PADS[p]
    if not pad_ok or pad_start != m:
        raise TamperedError(f"{where}: invalid padding or length")
    got: tuple[int, int] = _HEADER.unpack(b0[:HEADER_SIZE])
    if expected is not None and got != expected:
        raise TamperedError(
            f"{where}: chunk is bound to part {got[0]} chunk {got[1]}, expected part "
            f"{expected[0]} chunk {expected[1]} (reordered, dropped, duplicated or moved)"
        )
    return got[0], got[1], m
