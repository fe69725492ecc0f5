"""Content-MD5 and x-amz-checksum-* verification, good and bad, header and trailer."""

from __future__ import annotations

import base64
import hashlib
import random
import zlib

import pytest
from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum

from proxy.s3.checksums import (
    ALGORITHMS,
    BodyChecksums,
    crc32c,
    crc64nvme,
    py_crc32c,
    py_crc64nvme,
)
from proxy.s3.errors import S3Error

BODY = random.Random(7).randbytes(10_000)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def expected_b64(name: str, data: bytes) -> str:
    """Reference values: botocore's own checksum classes where they exist without the CRT."""
    if name == "crc32":
        c = Crc32Checksum()
    elif name == "sha1":
        c = Sha1Checksum()
    elif name == "sha256":
        c = Sha256Checksum()
    elif name == "crc32c":
        return b64(py_crc32c(data).to_bytes(4, "big"))
    else:
        return b64(py_crc64nvme(data).to_bytes(8, "big"))
    c.update(data)
    return c.b64digest()


def feed(checks: BodyChecksums, data: bytes, step: int = 777) -> None:
    for i in range(0, len(data), step):
        checks.update(memoryview(data)[i : i + step])


def test_crc_check_values() -> None:
    # The standard check values ("123456789") of CRC-32C (Castagnoli) and CRC-64/NVME.
    assert py_crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"123456789", 0) == 0xE3069283
    assert py_crc64nvme(b"123456789") == 0xAE8B14860A799888
    assert crc64nvme(b"123456789", 0) == 0xAE8B14860A799888
    # Known vector from RFC 3720 (iSCSI): 32 bytes of zeros.
    assert py_crc32c(bytes(32)) == 0x8A9136AA
    assert py_crc32c(b"") == 0


@pytest.mark.parametrize("split", [0, 1, 5, 8, 9, 4097])
def test_crc_incremental(split: int) -> None:
    whole = py_crc32c(BODY)
    assert py_crc32c(BODY[split:], py_crc32c(BODY[:split])) == whole
    whole64 = py_crc64nvme(BODY)
    assert py_crc64nvme(BODY[split:], py_crc64nvme(BODY[:split])) == whole64


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_header_checksum_good_and_bad(name: str) -> None:
    header = f"x-amz-checksum-{name}"
    good = expected_b64(name, BODY)
    checks = BodyChecksums.from_headers({header: good})
    feed(checks, BODY)
    checks.verify({})
    assert checks.checksum_b64() == good

    bad = expected_b64(name, BODY[:-1])
    checks = BodyChecksums.from_headers({header.upper(): bad})
    feed(checks, BODY)
    with pytest.raises(S3Error) as err:
        checks.verify({})
    assert err.value.code == "BadDigest" and err.value.status == 400
    label = ALGORITHMS[name].label
    assert err.value.message == f"The {label} you specified did not match the calculated checksum."


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_trailer_checksum_good_and_bad(name: str) -> None:
    header = f"x-amz-checksum-{name}"
    checks = BodyChecksums.from_headers({"x-amz-sdk-checksum-algorithm": name.upper()}, [header])
    feed(checks, BODY)
    checks.verify({header: expected_b64(name, BODY)})

    checks = BodyChecksums.from_headers({}, [header])
    feed(checks, BODY)
    with pytest.raises(S3Error) as err:
        checks.verify({header: expected_b64(name, b"other")})
    assert err.value.code == "BadDigest"

    checks = BodyChecksums.from_headers({}, [header])
    with pytest.raises(S3Error) as err:
        checks.verify({})
    assert err.value.code == "InvalidRequest"


def test_crc32_matches_zlib() -> None:
    assert expected_b64("crc32", BODY) == b64(zlib.crc32(BODY).to_bytes(4, "big"))


def test_content_md5_good_bad_and_malformed() -> None:
    good = b64(hashlib.md5(BODY).digest())
    checks = BodyChecksums.from_headers({"Content-MD5": good})
    feed(checks, BODY)
    checks.verify()
    assert checks.md5_hex == hashlib.md5(BODY).hexdigest()
    assert checks.md5_digest == hashlib.md5(BODY).digest()
    assert checks.size == len(BODY)

    checks = BodyChecksums.from_headers({"content-md5": b64(hashlib.md5(b"x").digest())})
    feed(checks, BODY)
    with pytest.raises(S3Error) as err:
        checks.verify()
    assert err.value.code == "BadDigest"
    assert err.value.message == "The Content-MD5 you specified did not match what we received."

    for malformed in ("not base64!", b64(b"short"), ""):
        with pytest.raises(S3Error) as err:
            BodyChecksums.from_headers({"Content-MD5": malformed})
        assert err.value.code == "InvalidDigest" and err.value.status == 400


def test_content_md5_and_checksum_together() -> None:
    headers = {
        "Content-MD5": b64(hashlib.md5(BODY).digest()),
        "x-amz-checksum-crc32": expected_b64("crc32", BODY),
    }
    checks = BodyChecksums.from_headers(headers)
    feed(checks, BODY)
    checks.verify()


def test_no_checks_still_gives_md5() -> None:
    checks = BodyChecksums.from_headers([("Host", "h")])
    feed(checks, b"abc")
    checks.verify(None)
    assert checks.md5_hex == hashlib.md5(b"abc").hexdigest()
    assert checks.checksum_b64() is None


@pytest.mark.parametrize(
    "headers,trailers",
    [
        ({"x-amz-checksum-crc32": "nope"}, []),  # not base64
        ({"x-amz-checksum-crc32": b64(b"12345")}, []),  # wrong length
        ({"x-amz-checksum-sha256": b64(b"1234")}, []),
        ({"x-amz-checksum-crc32": b64(b"1234"), "x-amz-checksum-sha1": b64(bytes(20))}, []),
        ({"x-amz-checksum-crc32": b64(b"1234")}, ["x-amz-checksum-crc32c"]),
        ({"x-amz-sdk-checksum-algorithm": "CRC32"}, []),  # announced, not sent
        ({"x-amz-sdk-checksum-algorithm": "SHA1", "x-amz-checksum-crc32": b64(b"1234")}, []),
    ],
)
def test_invalid_requests(headers: dict[str, str], trailers: list[str]) -> None:
    with pytest.raises(S3Error) as err:
        BodyChecksums.from_headers(headers, trailers)
    assert err.value.code == "InvalidRequest"


def test_invalid_trailer_value() -> None:
    checks = BodyChecksums.from_headers({}, ["x-amz-checksum-crc32"])
    with pytest.raises(S3Error) as err:
        checks.verify({"x-amz-checksum-crc32": "@@@"})
    assert err.value.code == "InvalidRequest"


def test_other_checksum_headers_are_not_values() -> None:
    # CreateMultipartUpload / GetObject headers that share the prefix but carry no value.
    checks = BodyChecksums.from_headers(
        {
            "x-amz-checksum-algorithm": "CRC32",
            "x-amz-checksum-type": "COMPOSITE",
            "x-amz-checksum-mode": "ENABLED",
        }
    )
    assert checks.algorithm is None
