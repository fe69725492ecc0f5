"""Verification of the integrity values a client sends with a body.

``Content-MD5`` and ``x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}`` (as headers, or
announced in ``x-amz-trailer`` and carried in the aws-chunked trailer) are checked against the
plaintext the proxy received, then the front end drops them: the upstream gets ciphertext.

The body's MD5 is computed when ``Content-MD5`` was sent or the caller asks for it (``md5=True``,
the default of ``from_headers``, for ``md5_hex``). The request body path passes ``md5=False``: the
encrypting path computes the plaintext MD5 (the ETag) in its own pass, and a passthrough PUT gets
its ETag from the upstream, so MD5 is not run twice over every byte (it is the slowest hash here,
about 600 MB/s per core).

Speed: MD5, SHA-1, SHA-256 (hashlib) and CRC32 (zlib) run in C. CRC32C and CRC64NVME use
``google-crc32c``, ``crc32c`` or ``awscrt`` when one is installed (none is a dependency);
otherwise a pure-Python slicing-by-8 table implementation (8 bytes per step) is used, which is
correct but slow (tens of MB/s): fine for the default clients (boto3 and the AWS CLI use CRC32),
a bottleneck only for clients configured for CRC32C on large bodies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import HeadersLike, collect_headers

# --------------------------------------------------------------------------------------------
# CRCs
# --------------------------------------------------------------------------------------------


def _slicing_tables(poly: int) -> tuple[list[int], ...]:
    """Eight 256-entry tables for a reflected CRC (slicing-by-8)."""
    t0 = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t0.append(c)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ t0[prev[i] & 0xFF] for i in range(256)])
    return tuple(tables)


class _PyCrc:
    """Reflected CRC with init and final XOR of all ones, 8 bytes per Python step."""

    def __init__(self, poly: int, width: int) -> None:
        self.mask = (1 << width) - 1
        self._poly = poly
        self._tables: tuple[list[int], ...] | None = None

    def __call__(self, data: bytes | memoryview, value: int = 0) -> int:
        if self._tables is None:
            self._tables = _slicing_tables(self._poly)
        t0, t1, t2, t3, t4, t5, t6, t7 = self._tables
        crc = value ^ self.mask
        view = memoryview(data).cast("B")
        whole = len(view) - len(view) % 8
        for (word,) in struct.iter_unpack("<Q", view[:whole]):
            x = crc ^ word
            crc = (
                t7[x & 0xFF]
                ^ t6[(x >> 8) & 0xFF]
                ^ t5[(x >> 16) & 0xFF]
                ^ t4[(x >> 24) & 0xFF]
                ^ t3[(x >> 32) & 0xFF]
                ^ t2[(x >> 40) & 0xFF]
                ^ t1[(x >> 48) & 0xFF]
                ^ t0[x >> 56]
            )
        for byte in view[whole:]:
            crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        return crc ^ self.mask


def _fast_crc32c() -> Callable[[bytes | memoryview, int], int] | None:
    try:
        import google_crc32c

        return lambda data, value: int(google_crc32c.extend(value, bytes(data)))
    except ImportError:
        pass
    try:
        import crc32c

        return lambda data, value: int(crc32c.crc32c(data, value))
    except ImportError:
        pass
    try:
        from awscrt import checksums

        return lambda data, value: int(checksums.crc32c(data, value))
    except ImportError:
        return None


def _fast_crc64nvme() -> Callable[[bytes | memoryview, int], int] | None:
    try:
        from awscrt import checksums

        if hasattr(checksums, "crc64nvme"):
            return lambda data, value: int(checksums.crc64nvme(data, value))
    except ImportError:
        pass
    return None


py_crc32c = _PyCrc(0x82F63B78, 32)
py_crc64nvme = _PyCrc(0x9A6C9329AC4BC9B5, 64)
crc32c: Callable[[bytes | memoryview, int], int] = _fast_crc32c() or py_crc32c
crc64nvme: Callable[[bytes | memoryview, int], int] = _fast_crc64nvme() or py_crc64nvme


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A CRC with the hashlib interface (big-endian digest, as S3 encodes it)."""

    def __init__(self, function: Callable[[Any, int], int], width: int) -> None:
        self._function = function
        self._bytes = width // 8
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = self._function(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._bytes, "big")


@dataclass(frozen=True)
class Algorithm:
    name: str  # as in the header suffix: crc32
    label: str  # as in S3's messages: CRC32
    digest_size: int
    new: Callable[[], _Hasher]

    @property
    def header(self) -> str:
        return f"x-amz-checksum-{self.name}"


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("crc32", "CRC32", 4, lambda: _Crc(zlib.crc32, 32)),
        Algorithm("crc32c", "CRC32C", 4, lambda: _Crc(crc32c, 32)),
        Algorithm("crc64nvme", "CRC64NVME", 8, lambda: _Crc(crc64nvme, 64)),
        Algorithm("sha1", "SHA1", 20, lambda: hashlib.sha1(usedforsecurity=False)),
        Algorithm("sha256", "SHA256", 32, hashlib.sha256),
    )
}
_BY_HEADER = {a.header: a for a in ALGORITHMS.values()}


# --------------------------------------------------------------------------------------------
# BodyChecksums
# --------------------------------------------------------------------------------------------


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class BodyChecksums:
    """What the client asked to be verified for one body, and the running digests."""

    def __init__(
        self,
        content_md5: bytes | None = None,
        algorithm: Algorithm | None = None,
        expected: bytes | None = None,
        in_trailer: bool = False,
        *,
        md5: bool = True,
    ) -> None:
        self.content_md5 = content_md5
        self.algorithm = algorithm
        self.expected = expected  # None while it is still to come in the trailer
        self.in_trailer = in_trailer
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 or content_md5 is not None else None
        self._hasher = algorithm.new() if algorithm is not None else None
        self.size = 0

    @classmethod
    def from_headers(
        cls, headers: HeadersLike, trailer_names: Iterable[str] = (), *, md5: bool = True
    ) -> BodyChecksums:
        """Read Content-MD5, x-amz-checksum-* and x-amz-trailer; malformed values fail here.

        ``md5=False``: hash the body with MD5 only if ``Content-MD5`` asks for it (``md5_hex``
        is then unavailable without it).
        """
        hdrs = collect_headers(headers)
        content_md5 = None
        if "content-md5" in hdrs:
            content_md5 = _b64(hdrs["content-md5"][0])
            if content_md5 is None or len(content_md5) != 16:
                raise S3Error.of("InvalidDigest")
        found: list[tuple[Algorithm, bytes | None, bool]] = []
        for name, values in hdrs.items():
            algorithm = _BY_HEADER.get(name)
            if algorithm is not None:
                found.append((algorithm, _decode_checksum(algorithm, values[0], "header"), False))
        for name in trailer_names:
            algorithm = _BY_HEADER.get(name.strip().lower())
            if algorithm is not None:
                found.append((algorithm, None, True))
        if len(found) > 1:
            raise S3Error.invalid_request(
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
            )
        sdk = hdrs.get("x-amz-sdk-checksum-algorithm")
        if sdk:
            wanted = sdk[0].strip().lower()
            if not found or found[0][0].name != wanted:
                raise S3Error.invalid_request(
                    "x-amz-sdk-checksum-algorithm specified, but no corresponding "
                    "x-amz-checksum-* or x-amz-trailer headers were found."
                )
        if not found:
            return cls(content_md5, md5=md5)
        algorithm, expected, in_trailer = found[0]
        return cls(content_md5, algorithm, expected, in_trailer, md5=md5)

    @property
    def hashing(self) -> bool:
        """Whether ``update`` hashes anything (else it only counts bytes)."""
        return self._md5 is not None or self._hasher is not None

    def update(self, data: bytes | memoryview) -> None:
        """Add the next plaintext piece (hashlib releases the GIL: callable from a thread)."""
        if self._md5 is not None:
            self._md5.update(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self.size += len(data)

    def _md5_object(self) -> Any:
        if self._md5 is None:
            raise RuntimeError("the body MD5 was not computed (md5=False and no Content-MD5)")
        return self._md5

    @property
    def md5_digest(self) -> bytes:
        return bytes(self._md5_object().digest())

    @property
    def md5_hex(self) -> str:
        """The body's MD5, i.e. the ETag of a single-part object."""
        return str(self._md5_object().hexdigest())

    def checksum_b64(self) -> str | None:
        """The computed value of the requested checksum, base64 as S3 writes it."""
        if self._hasher is None:
            return None
        return base64.b64encode(self._hasher.digest()).decode("ascii")

    def verify(self, trailers: Mapping[str, str] | None = None) -> None:
        """Call after the last ``update``: BadDigest (or InvalidRequest) on any mismatch."""
        if self.content_md5 is not None and self.md5_digest != self.content_md5:
            raise S3Error.of(
                "BadDigest",
                ExpectedDigest=self.content_md5.hex(),
                CalculatedDigest=self.md5_hex,
            )
        algorithm = self.algorithm
        if algorithm is None or self._hasher is None:
            return
        expected = self.expected
        if self.in_trailer:
            value = {k.lower(): v for k, v in (trailers or {}).items()}.get(algorithm.header)
            if value is None:
                raise S3Error.invalid_request(f"The {algorithm.header} trailing header was declared but not sent.")
            expected = _decode_checksum(algorithm, value, "trailing header")
        if self._hasher.digest() != expected:
            raise S3Error.of(
                "BadDigest",
                f"The {algorithm.label} you specified did not match the calculated checksum.",
            )


def _decode_checksum(algorithm: Algorithm, value: str, where: str) -> bytes:
    raw = _b64(value)
    if raw is None or len(raw) != algorithm.digest_size:
        raise S3Error.invalid_request(f"Value for {algorithm.header} {where} is invalid.")
    return raw
