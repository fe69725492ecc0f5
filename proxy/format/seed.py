"""Reader of the seed's old in-Medusa encryption ("seed-fernet"), see docs/FORMAT.md.

Layout of one stored data file (no header, no trailer, one Fernet key for everything):

    object = record(chunk 0) || record(chunk 1) || ... || record(chunk n-1)
    record = u32 BE n || token            token = Fernet.encrypt(chunk), base64url text, n bytes

Every chunk is exactly 1 MiB of plaintext except the last, which is shorter (or also
1 MiB); an empty file is zero records (one empty token is accepted too). A Fernet token's
length depends only on its plaintext length `m`:

    binary = 0x80 || ts(8) || IV(16) || AES-CBC(PKCS7(chunk)) (16 * (m // 16 + 1)) || HMAC(32)
           = 73 + 16 * (m // 16) bytes;  token = base64url(binary) = 4 * ceil(binary / 3)

so every full record has the same stored size `R` (1398204 bytes for 1 MiB chunks) and
record `i` starts at `i * R`. The last record's length gives its plaintext size only up
to the 16-byte padding, so an object's plaintext size is NOT derivable from its stored
size alone (except for 0 and exact multiples of 1 MiB): take it from the manifest's
`source_size` (checked against the stored size by `seed_plaintext_size`) or decrypt only
the last record (`seed_last_record_range` + `seed_last_record_plaintext_size`).

What this format does not protect (the tokens carry no position or object binding):
whole records swapped among full records, whole trailing full records dropped, or a whole
object replaced by another encrypted under the same key all decrypt "successfully". Give
`SeedDecryptor` the manifest's `source_size`/`source_MD5` to catch those at `finish()`.

Pure and synchronous; decryption uses `cryptography.fernet` (MultiFernet over the keys,
no TTL). Outputs are `bytearray`, like proxy.format.codec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from proxy.format.errors import FormatError, TamperedError, TruncatedError

if TYPE_CHECKING:
    from proxy.format.keys import KeyRing

__all__ = [
    "SEED_CHUNK_SIZE",
    "SEED_FULL_RECORD_SIZE",
    "SeedDecryptor",
    "SeedObjectInfo",
    "SeedRangeDecryptor",
    "SeedStoredRange",
    "fernet_keys_from_ring",
    "seed_last_record_plaintext_size",
    "seed_last_record_range",
    "seed_plaintext_size",
    "seed_plaintext_size_bounds",
    "seed_record_size",
    "seed_stored_range",
    "seed_token_size",
    "source_md5_hex",
]

Buffer = bytes | bytearray | memoryview

#: Plaintext bytes per record of the seed format (the last record may hold fewer).
SEED_CHUNK_SIZE = 1024 * 1024
#: Fernet token framing: version (1) + timestamp (8) + IV (16) + HMAC (32) = 57 bytes,
#: plus PKCS7-padded ciphertext of 16 * (m // 16 + 1) bytes.
_TOKEN_FIXED = 1 + 8 + 16 + 32
_LEN_PREFIX = 4


def seed_token_size(m: int) -> int:
    """Length of `Fernet.encrypt(m bytes)` (base64url text with padding)."""
    if m < 0:
        raise ValueError("negative plaintext length")
    binary = _TOKEN_FIXED + 16 * (m // 16 + 1)
    return 4 * -(-binary // 3)


def seed_record_size(m: int) -> int:
    """Stored size of one record holding `m` plaintext bytes (length prefix included)."""
    return _LEN_PREFIX + seed_token_size(m)


#: Stored size of a record holding a full 1 MiB chunk: record i starts at i * this.
SEED_FULL_RECORD_SIZE = seed_record_size(SEED_CHUNK_SIZE)
_MIN_TOKEN = seed_token_size(0)


def _check_chunk_size(chunk_size: int) -> None:
    # A multiple of 16 keeps a short last record strictly smaller than a full one.
    if chunk_size <= 0 or chunk_size % 16 or chunk_size > SEED_CHUNK_SIZE:
        raise ValueError("chunk_size must be a positive multiple of 16, at most 1 MiB")


def fernet_keys_from_ring(ring: KeyRing) -> list[bytes]:
    """The ring's keys as Fernet keys (a seed key file has the same format as ours)."""
    return [base64.urlsafe_b64encode(k.raw) for k in ring.keys]


def _multifernet(fernet_keys: Sequence[bytes | str]) -> MultiFernet:
    if not fernet_keys:
        raise ValueError("at least one seed Fernet key is needed")
    try:
        return MultiFernet([Fernet(k) for k in fernet_keys])
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("a seed key is not a Fernet key (url-safe base64 of 32 bytes)") from None


def source_md5_hex(value: str) -> str:
    """A manifest `source_MD5` (the seed writes base64; hex also accepted) as 32 hex chars,
    i.e. the plaintext ETag without quotes."""
    v = value.strip().strip('"')
    if len(v) == 32:
        try:
            return bytes.fromhex(v).hex()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise ValueError(f"not a base64 or hex MD5: {value!r}")
    return raw.hex()


# --------------------------------------------------------------------------- sizes


def seed_plaintext_size_bounds(stored_size: int, *, chunk_size: int = SEED_CHUNK_SIZE) -> tuple[int, int]:
    """(lowest, highest) plaintext size a well-formed seed object of `stored_size` can have.

    Equal when the size is exact: 0 (no records), or n full records. Otherwise the last
    record's length fixes its plaintext size to 16 consecutive values. TamperedError if no
    seed object has this stored size.
    """
    _check_chunk_size(chunk_size)
    if stored_size < 0:
        raise ValueError("negative stored size")
    if stored_size == 0:
        return 0, 0
    full = seed_record_size(chunk_size)
    q, r = divmod(stored_size, full)
    if r == 0:
        return q * chunk_size, q * chunk_size
    tl = r - _LEN_PREFIX
    if tl >= _MIN_TOKEN and tl % 4 == 0:
        hi_binary = tl // 4 * 3
        for binary in (hi_binary, hi_binary - 1, hi_binary - 2):
            j, rest = divmod(binary - _TOKEN_FIXED - 16, 16)
            if rest == 0 and 0 <= j < chunk_size // 16:
                return q * chunk_size + 16 * j, q * chunk_size + 16 * j + 15
    raise TamperedError(f"stored size {stored_size} is not the size of any seed-format object")


def seed_plaintext_size(stored_size: int, source_size: int | None = None, *, chunk_size: int = SEED_CHUNK_SIZE) -> int:
    """Plaintext size of a seed object: the manifest's `source_size` after checking it fits
    the stored size (TamperedError if not), or, without it, the size when the stored size
    alone determines it (ValueError otherwise: use seed_last_record_plaintext_size)."""
    lo, hi = seed_plaintext_size_bounds(stored_size, chunk_size=chunk_size)
    if source_size is not None:
        if not lo <= source_size <= hi:
            raise TamperedError(
                f"source_size {source_size} does not fit stored size {stored_size} "
                f"(a seed object of that size holds {lo}..{hi} plaintext bytes)"
            )
        return source_size
    if lo != hi:
        raise ValueError(
            f"stored size {stored_size} holds {lo}..{hi} plaintext bytes: the exact size "
            "needs the manifest's source_size or the last record decrypted"
        )
    return lo


def seed_last_record_range(stored_size: int, *, chunk_size: int = SEED_CHUNK_SIZE) -> tuple[int, int] | None:
    """Stored bytes [start, end] (inclusive) of the last record, None for an empty object.

    One small ranged GET of these bytes + seed_last_record_plaintext_size gives the exact
    plaintext size without the manifest.
    """
    seed_plaintext_size_bounds(stored_size, chunk_size=chunk_size)  # validates the size
    if stored_size == 0:
        return None
    full = seed_record_size(chunk_size)
    start = (stored_size - 1) // full * full
    return start, stored_size - 1


def seed_last_record_plaintext_size(
    stored_size: int,
    last_record_bytes: Buffer,
    fernet_keys: Sequence[bytes | str],
    *,
    chunk_size: int = SEED_CHUNK_SIZE,
) -> int:
    """Exact plaintext size of a seed object from the bytes of seed_last_record_range().

    Verifies (decrypts) that record; TamperedError/TruncatedError if it is not a valid
    last record of an object of `stored_size`.
    """
    lo, hi = seed_plaintext_size_bounds(stored_size, chunk_size=chunk_size)
    rng = seed_last_record_range(stored_size, chunk_size=chunk_size)
    if rng is None:
        return 0
    start, end = rng
    rec = bytes(last_record_bytes)
    if len(rec) != end - start + 1:
        raise TruncatedError(f"last record is {end - start + 1} bytes at stored offset {start}, got {len(rec)}")
    n = int.from_bytes(rec[:4], "big")
    where = f"last record (stored offset {start})"
    if n != len(rec) - _LEN_PREFIX:
        raise TamperedError(f"{where}: length field {n} does not fill the object")
    m = len(_open_token(_multifernet(fernet_keys), rec[4:], where, chunk_size))
    size = start // seed_record_size(chunk_size) * chunk_size + m
    if not lo <= size <= hi:
        raise TamperedError(f"{where}: holds {m} plaintext bytes, impossible at this size")
    return size


# --------------------------------------------------------------------------- records


def _open_token(fernet: MultiFernet, token: bytes, where: str, chunk_size: int) -> bytes:
    """Verify and decrypt one token exactly as Fernet.encrypt writes it."""
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        raise TamperedError(f"{where}: token is not base64url") from None
    # urlsafe_b64decode skips foreign bytes: require the canonical text Fernet wrote.
    if base64.urlsafe_b64encode(raw) != token:
        raise TamperedError(f"{where}: token is not canonical base64url")
    try:
        plain = fernet.decrypt(token)
    except InvalidToken:
        raise TamperedError(f"{where}: token does not verify under any seed key (modified, or wrong key)") from None
    if len(plain) > chunk_size or seed_token_size(len(plain)) != len(token):
        raise TamperedError(f"{where}: {len(plain)} plaintext bytes do not fit a record of this size")
    return plain


class _Framer:
    """Cuts stored bytes into `u32 n || n bytes` records with plausible n."""

    def __init__(self, offset: int, chunk_size: int) -> None:
        self._buf = bytearray()
        self.offset = offset  # stored offset of the first byte in _buf
        self._max = seed_token_size(chunk_size)

    def split(self, data: Buffer) -> list[tuple[bytes, int]]:
        self._buf += data
        buf = self._buf
        out: list[tuple[bytes, int]] = []
        pos = 0
        while len(buf) - pos >= _LEN_PREFIX:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if not _MIN_TOKEN <= n <= self._max or n % 4:
                raise TamperedError(f"record at stored offset {self.offset}: impossible length field {n}")
            if len(buf) - pos < _LEN_PREFIX + n:
                break
            out.append((bytes(buf[pos + 4 : pos + 4 + n]), self.offset))
            pos += _LEN_PREFIX + n
            self.offset += _LEN_PREFIX + n
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


@dataclass(frozen=True)
class SeedObjectInfo:
    """What decrypting a whole seed object established."""

    plaintext_size: int
    md5_hex: str
    record_count: int

    @property
    def etag(self) -> str:
        """The plaintext's single-PUT ETag (hex MD5, no quotes)."""
        return self.md5_hex


class SeedDecryptor:
    """Streaming decryptor of a whole seed object.

    Each record is verified before its plaintext is released; a record that is not a
    full chunk must be the last. Without `expected_size`, dropping whole trailing full
    records is undetectable (the format has no trailer); without `expected_md5`, neither
    is reordering full records. Given (the manifest's `source_size`, `source_MD5` as
    base64/hex text or raw 16 bytes), `finish()` fails on any mismatch, so output is only
    known complete and authentic once `finish()` returned.
    """

    def __init__(
        self,
        fernet_keys: Sequence[bytes | str],
        *,
        expected_size: int | None = None,
        expected_md5: str | bytes | None = None,
        chunk_size: int = SEED_CHUNK_SIZE,
    ) -> None:
        _check_chunk_size(chunk_size)
        self._fernet = _multifernet(fernet_keys)
        self._chunk = chunk_size
        self._framer = _Framer(0, chunk_size)
        self._expected_size = expected_size
        if isinstance(expected_md5, str):
            expected_md5 = bytes.fromhex(source_md5_hex(expected_md5))
        if expected_md5 is not None and len(expected_md5) != 16:
            raise ValueError("expected_md5 must be 16 raw bytes")
        self._expected_md5 = expected_md5
        self._md5 = hashlib.md5()
        self._size = 0
        self._records = 0
        self._closed = False  # a short record was seen: nothing may follow
        self._done = False
        self._failed = False

    def feed(self, data: Buffer) -> bytearray:
        """Add stored bytes; return the plaintext of the records they completed."""
        if self._failed:
            raise FormatError("decryptor already failed")
        if self._done:
            raise ValueError("feed() after finish()")
        try:
            return self._feed(data)
        except BaseException:
            self._failed = True
            raise

    def _feed(self, data: Buffer) -> bytearray:
        if self._closed and len(memoryview(data)):
            raise TamperedError(f"bytes at stored offset {self._framer.offset} after the short last record")
        out = bytearray()
        for token, off in self._framer.split(data):
            where = f"record {self._records} (stored offset {off})"
            if self._closed:
                raise TamperedError(f"{where}: record after the short last record")
            plain = _open_token(self._fernet, token, where, self._chunk)
            if len(plain) < self._chunk:
                self._closed = True
            self._records += 1
            self._size += len(plain)
            if self._expected_size is not None:
                if self._size > self._expected_size:
                    raise TamperedError(f"{where}: object holds more than the expected {self._expected_size} bytes")
                if self._closed and self._size < self._expected_size:
                    raise TruncatedError(
                        f"{where}: object ends at {self._size} plaintext bytes, the manifest "
                        f"says {self._expected_size} (records dropped)"
                    )
            self._md5.update(plain)
            out += plain
        if self._closed and self._framer.pending:
            raise TamperedError(f"bytes at stored offset {self._framer.offset} after the short last record")
        return out

    def finish(self) -> bytearray:
        """Check the object ended cleanly (and matches the expected size/MD5, if given)."""
        if self._failed:
            raise FormatError("decryptor already failed")
        if self._done:
            raise ValueError("finish() called twice")
        self._done = True
        self._failed = True  # until every check passed
        if self._framer.pending:
            raise TruncatedError(
                f"object ends inside a record at stored offset {self._framer.offset} "
                f"({self._framer.pending} bytes of it)"
            )
        if self._expected_size is not None and self._size != self._expected_size:
            raise TruncatedError(
                f"object holds {self._size} plaintext bytes, the manifest says {self._expected_size} (records dropped)"
            )
        if self._expected_md5 is not None and self._md5.digest() != self._expected_md5:
            raise TamperedError(
                "plaintext MD5 differs from the manifest's source_MD5 (records reordered, or another object)"
            )
        self._failed = False
        return bytearray()

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes released so far."""
        return self._size

    @property
    def record_count(self) -> int:
        """Records verified so far."""
        return self._records

    @property
    def md5_hex(self) -> str:
        """Hex MD5 of the plaintext released so far (the plaintext ETag after finish())."""
        return self._md5.hexdigest()

    def info(self) -> SeedObjectInfo:
        """Summary (call after finish())."""
        return SeedObjectInfo(self._size, self.md5_hex, self._records)


# --------------------------------------------------------------------------- ranges


class SeedStoredRange(NamedTuple):
    """Stored bytes [start, end] (inclusive, as in an HTTP Range) holding plaintext
    [first, last]: decrypt the records from `first_record_index` on, drop `skip` bytes,
    keep `length` bytes."""

    start: int
    end: int
    first_record_index: int
    skip: int
    length: int

    @property
    def http_range(self) -> str:
        """The Range header value for the upstream GET."""
        return f"bytes={self.start}-{self.end}"

    def record_count(self, chunk_size: int = SEED_CHUNK_SIZE) -> int:
        """Records the range covers."""
        return (self.skip + self.length - 1) // chunk_size + 1


def seed_stored_range(
    first: int,
    last: int,
    stored_size: int | None = None,
    *,
    chunk_size: int = SEED_CHUNK_SIZE,
) -> SeedStoredRange:
    """Map plaintext bytes [first, last] (inclusive; `last` clamped by the caller to the
    plaintext size - 1) to the stored records holding them.

    Record i starts at i * R. Without `stored_size` the end is that of a full record,
    which may lie past the object's end (S3 returns the bytes up to the end, which is what
    a short last record needs); with it, the end is clamped to the object.
    """
    _check_chunk_size(chunk_size)
    if not 0 <= first <= last:
        raise ValueError("need 0 <= first <= last")
    R = seed_record_size(chunk_size)
    i0, i1 = first // chunk_size, last // chunk_size
    start, end = i0 * R, (i1 + 1) * R - 1
    if stored_size is not None:
        if start >= stored_size:
            raise ValueError(f"plaintext byte {first} lies past the stored object")
        end = min(end, stored_size - 1)
    return SeedStoredRange(start, end, i0, first - i0 * chunk_size, last - first + 1)


class SeedRangeDecryptor:
    """Decrypts the records of a SeedStoredRange (fetched with its http_range) and trims
    them. Every record but the range's last must be a full chunk; `finish()` raises
    TruncatedError unless all requested plaintext arrived (e.g. `last` past the end)."""

    def __init__(
        self,
        fernet_keys: Sequence[bytes | str],
        stored_range: SeedStoredRange,
        *,
        chunk_size: int = SEED_CHUNK_SIZE,
    ) -> None:
        _check_chunk_size(chunk_size)
        self._fernet = _multifernet(fernet_keys)
        self._chunk = chunk_size
        self._range = stored_range
        self._framer = _Framer(stored_range.start, chunk_size)
        self._index = stored_range.first_record_index
        self._remaining = stored_range.record_count(chunk_size)
        self._skip = stored_range.skip
        self._left = stored_range.length
        self._short = False

    def feed(self, data: Buffer) -> bytearray:
        """Add stored bytes of the range; return the requested plaintext they complete."""
        if self._short and len(memoryview(data)):
            raise TamperedError(f"bytes at stored offset {self._framer.offset} after a short record")
        out = bytearray()
        for token, off in self._framer.split(data):
            where = f"record {self._index} (stored offset {off})"
            if self._remaining == 0 or self._short:
                raise TamperedError(f"{where}: beyond the range, or after a short record")
            plain = _open_token(self._fernet, token, where, self._chunk)
            self._index += 1
            self._remaining -= 1
            m = len(plain)
            if m < self._chunk:
                self._short = True
            drop = min(self._skip, m)
            self._skip -= drop
            keep = min(m - drop, self._left)
            self._left -= keep
            out += memoryview(plain)[drop : drop + keep]
        if self._short and self._framer.pending:
            raise TamperedError(f"bytes at stored offset {self._framer.offset} after a short record")
        return out

    def finish(self) -> bytearray:
        """TruncatedError unless every requested plaintext byte arrived."""
        if self._framer.pending:
            raise TruncatedError(f"range ends inside a record at stored offset {self._framer.offset}")
        if self._left:
            raise TruncatedError(
                f"range ended {self._left} plaintext bytes short of the request "
                f"(object shorter than requested, or records missing)"
            )
        return bytearray()
