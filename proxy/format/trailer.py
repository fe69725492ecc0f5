"""The trailer record: the authenticated description of an object, at its very end.

Its fields are readable without any key (for `inspect` and bucket verification) and
MAC-verified with the per-object MAC key derived from the master key (version 1) or from the
data key the trailer holds wrapped (version 2), and the salt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from proxy.format import keys as _keys
from proxy.format.constants import (
    CHUNK_SIZE,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    HMAC_SIZE,
    KEY_ID_SIZE,
    MAX_TRAILER_RECORD,
    PROVIDER_LOCAL,
    SALT_SIZE,
    TRAILER_FIXED_SIZE,
    TRAILER_MAC_CONTEXT,
    TRAILER_MAGIC,
    TRAILER_VERSION,
    TRAILER_VERSION_ENVELOPE,
)
from proxy.format.errors import (
    FormatError,
    TamperedError,
    TruncatedError,
    UnsupportedFormatError,
    WrongObjectError,
)
from proxy.format.layout import Layout, Run

if TYPE_CHECKING:
    from proxy.format.keys import DataKey, KeyRing, ObjectKeys

from proxy.format.keys import WrappedKey

__all__ = ["Trailer", "encode_trailer", "parse_footer", "verify_trailer"]

_FIXED = struct.Struct(">4sBB8s16sIQ16sIQH")  # 72 bytes, then runs, then key
_RUN = struct.Struct(">IIQ")
_KEYLEN = struct.Struct(">H")
_FOOTER = struct.Struct(">I8s")


def parse_footer(last_bytes: bytes | bytearray | memoryview) -> int:
    """trailer_record_len from the last 12 (or more) bytes of an object.

    Raises FormatError when the footer magic is absent (not an encrypted object, or one
    whose tail was cut: use detect.classify to tell) and TamperedError for a bad length.
    """
    if len(last_bytes) < FOOTER_SIZE:
        raise FormatError("fewer than 12 bytes: no trailer footer")
    n, magic = _FOOTER.unpack(bytes(last_bytes[-FOOTER_SIZE:]))
    if magic != FOOTER_MAGIC:
        raise FormatError("no trailer footer magic at the end of the object")
    if not TRAILER_FIXED_SIZE <= n <= MAX_TRAILER_RECORD:
        raise TamperedError(f"trailer footer gives an impossible trailer length {n}")
    return int(n)


def _mac(mac_key: bytes, body: bytes) -> bytes:
    h = hmac.HMAC(mac_key, hashes.SHA256())
    h.update(TRAILER_MAC_CONTEXT)
    h.update(body)
    return h.finalize()


def encode_trailer(
    keys: ObjectKeys,
    *,
    chunk_size: int,
    plaintext_size: int,
    etag_md5: bytes,
    etag_parts: int,
    chunk_count: int,
    runs: list[Run],
    object_key: str,
) -> bytes:
    """Serialize and MAC a trailer record (u32 L + body + mac + footer)."""
    key_bytes = object_key.encode("utf-8")
    if len(key_bytes) > 0xFFFF or len(runs) > 0xFFFF:
        raise ValueError("object key or part layout too large for a trailer")
    body = b"".join(
        [
            _FIXED.pack(
                TRAILER_MAGIC,
                TRAILER_VERSION if keys.wrapped is None else TRAILER_VERSION_ENVELOPE,
                0,
                keys.key_id,
                keys.salt,
                chunk_size,
                plaintext_size,
                etag_md5,
                etag_parts,
                chunk_count,
                len(runs),
            ),
            *(_RUN.pack(r.first_part_number, r.part_count, r.part_size) for r in runs),
            _KEYLEN.pack(len(key_bytes)),
            key_bytes,
            b"" if keys.wrapped is None else keys.wrapped.to_bytes(),
        ]
    )
    L = len(body) + HMAC_SIZE + FOOTER_SIZE
    return b"".join([L.to_bytes(4, "big"), body, _mac(keys.mac_key, body), _FOOTER.pack(L + 4, FOOTER_MAGIC)])


@dataclass(frozen=True)
class Trailer:
    """A parsed (not yet verified) trailer. `verify` checks its MAC with the key ring."""

    version: int
    flags: int
    key_id: bytes
    salt: bytes
    chunk_size: int
    plaintext_size: int
    etag_md5: bytes
    etag_parts: int
    chunk_count: int
    runs: tuple[Run, ...]
    object_key: str
    mac: bytes = field(repr=False)
    body: bytes = field(repr=False)
    record: bytes = field(repr=False)
    layout: Layout = field(repr=False, compare=False)
    wrapped: WrappedKey | None = field(default=None, repr=False)  # version 2: the data key, wrapped

    @classmethod
    def parse(cls, record_bytes: bytes | bytearray | memoryview) -> Trailer:
        """Parse a whole trailer record (from its u32 L to the end of the footer); no key."""
        rec = bytes(record_bytes)
        body, mac = _framed(rec)
        if body[:4] != TRAILER_MAGIC:
            raise TamperedError("trailer body magic missing")
        (
            _magic,
            version,
            flags,
            key_id,
            salt,
            chunk_size,
            plaintext_size,
            etag_md5,
            etag_parts,
            chunk_count,
            run_count,
        ) = _FIXED.unpack_from(body, 0)
        if version not in (TRAILER_VERSION, TRAILER_VERSION_ENVELOPE):
            raise UnsupportedFormatError(f"unsupported trailer format version {version}")
        if flags != 0:
            raise UnsupportedFormatError(f"unsupported trailer flags {flags:#04x}")
        pos = _FIXED.size
        if run_count < 1 or len(body) < pos + run_count * _RUN.size + _KEYLEN.size:
            raise TamperedError("trailer run table inconsistent with its length")
        runs = tuple(Run(*_RUN.unpack_from(body, pos + i * _RUN.size)) for i in range(run_count))
        pos += run_count * _RUN.size
        (klen,) = _KEYLEN.unpack_from(body, pos)
        pos += _KEYLEN.size
        if pos + klen > len(body) or (version == TRAILER_VERSION and pos + klen != len(body)):
            raise TamperedError("trailer object key length inconsistent with its length")
        try:
            object_key = body[pos : pos + klen].decode("utf-8")
        except UnicodeDecodeError:
            raise TamperedError("trailer object key is not UTF-8") from None
        if version == TRAILER_VERSION_ENVELOPE and pos + klen == len(body):
            raise TamperedError("version 2 trailer without its wrapped data key")
        wrapped = WrappedKey.from_bytes(body[pos + klen :]) if version == TRAILER_VERSION_ENVELOPE else None
        layout = _checked_layout(runs, chunk_size, plaintext_size, chunk_count, etag_parts)
        return cls(
            version=version,
            flags=flags,
            key_id=key_id,
            salt=salt,
            chunk_size=chunk_size,
            plaintext_size=plaintext_size,
            etag_md5=etag_md5,
            etag_parts=etag_parts,
            chunk_count=chunk_count,
            runs=runs,
            object_key=object_key,
            mac=mac,
            body=body,
            record=rec,
            layout=layout,
            wrapped=wrapped,
        )

    @classmethod
    def from_tail(cls, tail: bytes | bytearray | memoryview) -> Trailer:
        """Parse the trailer from a suffix of the object (e.g. a `bytes=-TRAILER_PROBE` read).

        Raises TruncatedError when the suffix is shorter than the trailer: fetch
        `parse_footer(tail)` bytes from the end and call again.
        """
        n = parse_footer(tail)
        if n > len(tail):
            raise TruncatedError(f"trailer is {n} bytes but only {len(tail)} were given")
        return cls.parse(tail[len(tail) - n :])

    @property
    def etag(self) -> str:
        """The plaintext S3 ETag, unquoted: md5 hex, or md5-of-md5s hex "-N" for multipart."""
        h = self.etag_md5.hex()
        return h if self.etag_parts == 0 else f"{h}-{self.etag_parts}"

    @property
    def key_id_hex(self) -> str:
        """Key id of the master key that encrypted the object."""
        return self.key_id.hex()

    @property
    def record_len(self) -> int:
        """Stored size of the trailer record (what the footer says)."""
        return len(self.record)

    @property
    def object_stored_size(self) -> int:
        """Expected stored size of the whole object."""
        return self.layout.stored_size + self.record_len

    def verify(self, keyring: KeyRing, data_key: DataKey | None = None) -> ObjectKeys:
        """Check the MAC with the object's derived key; return the object keys. A version 2
        trailer's data key is unwrapped here when a local key wrapped it, else it is given
        (``data_key``, unwrapped by its provider).

        Raises UnknownKeyError (naming the key id) or TamperedError.
        """
        return verify_trailer(keyring, self, data_key)

    def check_stored(
        self, keyring: KeyRing, object_key: str, stored_size: int, data_key: DataKey | None = None
    ) -> ObjectKeys:
        """Everything a stored object's trailer vouches for, checked: its MAC, the S3 key it was
        written under and the object's stored size (a cut or extended object). Returns the keys."""
        keys = self.verify(keyring, data_key)
        self.check_object_key(object_key)
        if self.object_stored_size != stored_size:
            raise TamperedError(f"stored size {stored_size} differs from the trailer's {self.object_stored_size}")
        return keys

    def rewrapped(self, data_key: DataKey) -> bytes:
        """This trailer's record with its data key wrapped anew (``data_key``: the same key,
        wrapped by another master key or provider): what moves a version 2 object to a new key
        without touching its chunks, which depend on the data key only. The MAC is recomputed,
        since it covers the envelope fields; everything else is kept. TamperedError unless
        ``data_key`` is the key this trailer's MAC was made with."""
        if self.wrapped is None:
            raise UnsupportedFormatError("a version 1 trailer has no data key to wrap again")
        keys = _keys.derive_object_keys(data_key, self.salt)
        if not compare_digest(_mac(keys.mac_key, self.body), self.mac):
            raise TamperedError("the data key given is not the one this trailer was written with")
        return encode_trailer(
            keys,
            chunk_size=self.chunk_size,
            plaintext_size=self.plaintext_size,
            etag_md5=self.etag_md5,
            etag_parts=self.etag_parts,
            chunk_count=self.chunk_count,
            runs=list(self.runs),
            object_key=self.object_key,
        )

    def check_object_key(self, expected_object_key: str | None) -> None:
        """WrongObjectError if the object was written under another S3 key."""
        if expected_object_key is not None and expected_object_key != self.object_key:
            raise WrongObjectError(
                f"stored object was written as {self.object_key!r}, "
                f"not {expected_object_key!r} (swapped or copied outside the proxy)"
            )


def verify_trailer(keyring: KeyRing, trailer: Trailer, data_key: DataKey | None = None) -> ObjectKeys:
    """Derive the object keys (from the ring's master key, or the data key) and verify the
    trailer MAC (constant time)."""
    if len(trailer.key_id) != KEY_ID_SIZE or len(trailer.salt) != SALT_SIZE:
        raise TamperedError("trailer key id or salt has the wrong length")
    wrapped = trailer.wrapped
    if wrapped is None:
        keys = _keys.derive_object_keys(keyring.get(trailer.key_id), trailer.salt)
    else:
        if data_key is None:
            if wrapped.provider != PROVIDER_LOCAL:
                raise UnsupportedFormatError(f"the data key's provider {wrapped.provider} must unwrap it first")
            data_key = _keys.unwrap_local(keyring.get(trailer.key_id), wrapped)
        if data_key.wrapped != wrapped or data_key.key_id != trailer.key_id:
            raise TamperedError("the data key given is not the one this trailer holds")
        keys = _keys.derive_object_keys(data_key, trailer.salt)
    h = hmac.HMAC(keys.mac_key, hashes.SHA256())
    h.update(TRAILER_MAC_CONTEXT)
    h.update(trailer.body)
    try:
        h.verify(trailer.mac)
    except InvalidSignature:
        raise TamperedError("trailer MAC mismatch (trailer modified)") from None
    return keys


def _framed(rec: bytes) -> tuple[bytes, bytes]:
    """A trailer record's body and MAC, once its length field, footer and size agree."""
    n = len(rec)
    if n < TRAILER_FIXED_SIZE:
        raise TruncatedError(f"trailer record of {n} bytes is too short")
    if n > MAX_TRAILER_RECORD:
        raise TamperedError(f"trailer record of {n} bytes is too long")
    L = int.from_bytes(rec[0:4], "big")
    flen, fmagic = _FOOTER.unpack(rec[-FOOTER_SIZE:])
    if fmagic != FOOTER_MAGIC:
        raise TamperedError("trailer footer magic missing")
    if n != L + 4 or flen != n:
        raise TamperedError(f"trailer framing inconsistent (L={L}, footer length={flen}, record={n} bytes)")
    return rec[4 : n - HMAC_SIZE - FOOTER_SIZE], rec[n - HMAC_SIZE - FOOTER_SIZE : n - FOOTER_SIZE]


def _checked_layout(
    runs: tuple[Run, ...], chunk_size: int, plaintext_size: int, chunk_count: int, etag_parts: int
) -> Layout:
    """The part layout the runs describe, once it agrees with the trailer's other fields."""
    if not 1 <= chunk_size <= CHUNK_SIZE:
        raise TamperedError(f"trailer chunk size {chunk_size} out of range")
    try:
        layout = Layout(runs, chunk_size)
    except ValueError as e:
        raise TamperedError(f"trailer part layout invalid: {e}") from None
    if layout.plaintext_size != plaintext_size or layout.chunk_count != chunk_count:
        raise TamperedError("trailer sizes disagree with its part layout")
    if etag_parts == 0 and layout.part_count != 1:
        raise TamperedError("trailer says single PUT but lists several parts")
    if etag_parts not in (0, layout.part_count):
        raise TamperedError("trailer ETag part count disagrees with its part layout")
    return layout
