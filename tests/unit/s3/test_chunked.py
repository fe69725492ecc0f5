"""aws-chunked decoding: bodies built by botocore (unsigned + trailer) and by an independent
helper following the AWS documentation (chunk-signed, with and without trailer)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import random
import zlib
from collections.abc import Iterable
from typing import Any

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha256Checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.s3.checksums import BodyChecksums
from proxy.s3.chunked import AwsChunkedDecoder
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import AuthResult, PayloadMode
from tests.unit.s3.test_sigv4 import AKID, FROZEN, SECRET, _to_wire, capture, lookup

SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY = hashlib.sha256(b"").hexdigest()


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN.replace(tzinfo=None))


class _StreamingAuth(S3SigV4Auth):
    """botocore's S3 signer with a streaming x-amz-content-sha256 value (for the seed)."""

    mode = SIGNED

    def payload(self, request: Any) -> str:
        return self.mode


def signed_request(mode: str, decoded_length: int, trailer: str | None = None) -> AuthResult:
    """A PUT signed by botocore with a streaming payload mode, verified by our sigv4."""
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": str(decoded_length),
    }
    if trailer:
        headers["X-Amz-Trailer"] = trailer
    request = AWSRequest("PUT", "https://s3.example.com/medusa-bkp/some%20key", headers=headers)
    signer = _StreamingAuth(Credentials(AKID, SECRET), "s3", "eu-west-1")
    signer.mode = mode
    signer.add_auth(request)
    wire = _to_wire("PUT", request.url, request.headers, None)
    auth = wire.verify()
    assert auth.payload_mode is PayloadMode(mode)
    return auth


def _doc_signing_key(date: str) -> bytes:
    key = ("AWS4" + SECRET).encode()
    for part in (date, "eu-west-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def build_signed_body(seed: str, data: bytes, chunk_size: int, trailers: dict[str, str] | None = None) -> bytes:
    """The AWS documentation's chunk-signed encoding, written independently of the proxy."""
    amz_date = "20261129T120000Z"
    scope = "20261129/eu-west-1/s3/aws4_request"
    key = _doc_signing_key("20261129")
    previous = seed
    out = bytearray()
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    for chunk in chunks:
        sts = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY, hashlib.sha256(chunk).hexdigest()]
        )
        previous = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk
        if chunk:
            out += b"\r\n"
    if trailers is None:
        return bytes(out + b"\r\n")
    lines = "".join(f"{k}:{v}\n" for k, v in trailers.items())
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous, hashlib.sha256(lines.encode()).hexdigest()])
    signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    for k, v in trailers.items():
        out += f"{k}:{v}\r\n".encode()
    out += f"x-amz-trailer-signature:{signature}\r\n\r\n".encode()
    return bytes(out)


def botocore_unsigned_body(
    data: bytes, chunk_size: int, checksum: Any = Crc32Checksum, name: str = "x-amz-checksum-crc32"
) -> bytes:
    """Exactly what botocore sends for STREAMING-UNSIGNED-PAYLOAD-TRAILER."""
    return AwsChunkedWrapper(io.BytesIO(data), checksum, name, chunk_size=chunk_size).read()


def splits(body: bytes, how: str, seed: int = 0) -> Iterable[bytes]:
    if how == "whole":
        yield body
    elif how == "bytes":
        for i in range(len(body)):
            yield body[i : i + 1]
    else:
        rng = random.Random(seed)
        i = 0
        while i < len(body):
            n = rng.randint(1, 50)
            yield body[i : i + n]
            i += n


def decode(decoder: AwsChunkedDecoder, pieces: Iterable[bytes]) -> tuple[bytes, dict[str, str]]:
    out = bytearray()
    for piece in pieces:
        for part in decoder.feed(piece):
            out += part
    return bytes(out), decoder.finish()


def _crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


# ------------------------------------------------------------------------------------------
# Unsigned with trailer (boto3 / AWS CLI default over https)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_real_boto3_put_object_body(how: str) -> None:
    body = bytes(range(256)) * 3
    wire = capture(lambda c: c.put_object(Bucket="medusa-bkp", Key="k", Body=body))
    auth = wire.verify()
    assert auth.payload_mode is PayloadMode.STREAMING_UNSIGNED_TRAILER
    trailer_names = [wire.header("X-Amz-Trailer")]
    decoded_length = int(wire.header("X-Amz-Decoded-Content-Length"))
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, decoded_length, trailer_names)
    data, trailers = decode(decoder, splits(wire.body, how))
    assert data == body
    assert trailers == {"x-amz-checksum-crc32": _crc32_b64(body)}
    checks = BodyChecksums.from_headers(wire.headers, trailer_names)
    checks.update(data)
    checks.verify(trailers)
    assert checks.md5_hex == hashlib.md5(body).hexdigest()


def test_real_boto3_multi_mib_body_in_random_pieces() -> None:
    body = random.Random(1).randbytes(2 * 1024 * 1024 + 12345)
    wire = capture(lambda c: c.upload_part(Bucket="medusa-bkp", Key="k", UploadId="u", PartNumber=1, Body=body))
    auth = wire.verify()
    assert wire.body.count(b"\r\n") >= 6  # three 1 MiB-or-less chunks
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), ["x-amz-checksum-crc32"])
    rng = random.Random(2)
    pieces, i = [], 0
    while i < len(wire.body):
        n = rng.choice([1, 2, 7, 4096, 65536, 300000])
        pieces.append(wire.body[i : i + n])
        i += n
    data, trailers = decode(decoder, pieces)
    assert data == body and trailers["x-amz-checksum-crc32"] == _crc32_b64(body)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_unsigned_trailer_small_chunks(chunk_size: int, how: str) -> None:
    body = b"The quick brown fox jumps over the lazy dog" * 3
    encoded = botocore_unsigned_body(body, chunk_size, Sha256Checksum, "x-amz-checksum-sha256")
    decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, len(body), ["x-amz-checksum-sha256"])
    data, trailers = decode(decoder, splits(encoded, how, seed=chunk_size))
    assert data == body
    assert trailers == {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(body).digest()).decode()}


def test_unsigned_payload_streams_before_chunk_end() -> None:
    decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, 10, [])
    assert b"".join(decoder.feed(b"a\r\nhello")) == b"hello"
    assert b"".join(decoder.feed(b"world\r\n0\r\n\r\n")) == b"world"
    assert decoder.finish() == {}


def test_empty_body() -> None:
    encoded = botocore_unsigned_body(b"", 1024)
    assert encoded.startswith(b"0\r\n")
    decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, 0, ["x-amz-checksum-crc32"])
    assert decode(decoder, [encoded]) == (b"", {"x-amz-checksum-crc32": _crc32_b64(b"")})


def test_bad_trailer_checksum() -> None:
    body = b"payload bytes"
    encoded = botocore_unsigned_body(body, 5).replace(_crc32_b64(body).encode(), _crc32_b64(b"other").encode())
    decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, len(body), ["x-amz-checksum-crc32"])
    data, trailers = decode(decoder, [encoded])
    checks = BodyChecksums.from_headers({}, ["x-amz-checksum-crc32"])
    checks.update(data)
    with pytest.raises(S3Error) as err:
        checks.verify(trailers)
    assert err.value.code == "BadDigest"
    assert err.value.message == "The CRC32 you specified did not match the calculated checksum."


# ------------------------------------------------------------------------------------------
# Chunk-signed (Java SDK, minio-go)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 8192])
@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_signed_chunks(chunk_size: int, how: str) -> None:
    body = random.Random(chunk_size).randbytes(300)
    auth = signed_request(SIGNED, len(body))
    encoded = build_signed_body(auth.seed_signature, body, chunk_size)
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), [])
    assert decode(decoder, splits(encoded, how)) == (body, {})


def test_signed_chunk_held_until_verified() -> None:
    body = b"0123456789"
    auth = signed_request(SIGNED, len(body))
    encoded = build_signed_body(auth.seed_signature, body, 10)
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), [])
    end_of_data = encoded.index(b"\r\n") + 2 + 10
    assert decoder.feed(encoded[: end_of_data + 1]) == []  # data complete, CRLF not yet
    assert b"".join(decoder.feed(encoded[end_of_data + 1 :])) == body
    decoder.finish()


@pytest.mark.parametrize("target", ["signature", "data", "final-signature", "order"])
def test_signed_chunks_tampered(target: str) -> None:
    body = b"A" * 20 + b"B" * 20
    auth = signed_request(SIGNED, len(body))
    encoded = bytearray(build_signed_body(auth.seed_signature, body, 20))
    if target == "signature":
        i = encoded.index(b"chunk-signature=") + len(b"chunk-signature=")
        encoded[i] = ord("0") if encoded[i] != ord("0") else ord("1")
    elif target == "data":
        encoded[encoded.index(b"B")] = ord("C")
    elif target == "final-signature":
        i = encoded.rindex(b"chunk-signature=") + len(b"chunk-signature=")
        encoded[i + 5] = ord("0") if encoded[i + 5] != ord("0") else ord("1")
    else:  # swap the two data chunks: each one is fine alone, the chain is not
        first = bytes(encoded[: encoded.index(b"\r\n", 100) + 2])
        assert b"A" * 20 in first
        swapped = encoded.replace(b"A" * 20, b"X" * 20).replace(b"B" * 20, b"A" * 20)
        encoded = swapped.replace(b"X" * 20, b"B" * 20)
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), [])
    with pytest.raises(S3Error) as err:
        decode(decoder, [bytes(encoded)])
    assert err.value.code == "SignatureDoesNotMatch"


def test_signed_chunks_with_wrong_seed() -> None:
    body = b"hello"
    auth = signed_request(SIGNED, len(body))
    encoded = build_signed_body("0" * 64, body, 5)
    with pytest.raises(S3Error) as err:
        decode(AwsChunkedDecoder(auth, auth.payload_mode, len(body), []), [encoded])
    assert err.value.code == "SignatureDoesNotMatch"


def test_signed_requires_signatures() -> None:
    body = b"hello"
    auth = signed_request(SIGNED, len(body))
    unsigned = botocore_unsigned_body(body, 5, None)
    with pytest.raises(S3Error) as err:
        decode(AwsChunkedDecoder(auth, auth.payload_mode, len(body), []), [unsigned])
    assert err.value.code == "InvalidRequest"
    with pytest.raises(ValueError):
        AwsChunkedDecoder(None, SIGNED, 5, [])


@pytest.mark.parametrize("how", ["whole", "bytes", "random"])
def test_signed_with_trailer(how: str) -> None:
    body = b"x" * 100
    auth = signed_request(SIGNED_TRAILER, len(body), "x-amz-checksum-crc32")
    trailers = {"x-amz-checksum-crc32": _crc32_b64(body)}
    encoded = build_signed_body(auth.seed_signature, body, 33, trailers)
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), ["x-amz-checksum-crc32"])
    assert decode(decoder, splits(encoded, how)) == (body, trailers)


@pytest.mark.parametrize("target", ["value", "signature", "missing-signature"])
def test_signed_trailer_tampered(target: str) -> None:
    body = b"x" * 100
    auth = signed_request(SIGNED_TRAILER, len(body), "x-amz-checksum-crc32")
    good = _crc32_b64(body)
    encoded = build_signed_body(auth.seed_signature, body, 64, {"x-amz-checksum-crc32": good})
    if target == "value":
        encoded = encoded.replace(good.encode(), _crc32_b64(b"y").encode())
        code = "SignatureDoesNotMatch"
    elif target == "signature":
        i = encoded.index(b"x-amz-trailer-signature:") + len(b"x-amz-trailer-signature:")
        encoded = encoded[:i] + b"f" * 64 + encoded[i + 64 :]
        code = "SignatureDoesNotMatch"
    else:
        encoded = encoded[: encoded.index(b"x-amz-trailer-signature:")] + b"\r\n"
        code = "MalformedTrailerError"
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), ["x-amz-checksum-crc32"])
    with pytest.raises(S3Error) as err:
        decode(decoder, [encoded])
    assert err.value.code == code


# ------------------------------------------------------------------------------------------
# Framing and length errors
# ------------------------------------------------------------------------------------------


def test_truncated_anywhere() -> None:
    body = b"0123456789abcdef"
    encoded = botocore_unsigned_body(body, 5)
    for cut in range(len(encoded) - 2):  # the final empty line alone may be missing
        decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, len(body), ["x-amz-checksum-crc32"])
        with pytest.raises(S3Error) as err:
            decode(decoder, [encoded[:cut]])
        assert err.value.code in ("IncompleteBody", "MalformedTrailerError"), cut
    decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, len(body), ["x-amz-checksum-crc32"])
    assert decode(decoder, [encoded[:-2]])[0] == body


def test_truncated_signed() -> None:
    body = b"0123456789"
    auth = signed_request(SIGNED, len(body))
    encoded = build_signed_body(auth.seed_signature, body, 4)
    for cut in range(len(encoded) - 2):
        decoder = AwsChunkedDecoder(auth, auth.payload_mode, len(body), [])
        with pytest.raises(S3Error) as err:
            decode(decoder, [encoded[:cut]])
        assert err.value.code == "IncompleteBody", cut


def test_decoded_length_mismatch() -> None:
    body = b"0123456789"
    encoded = botocore_unsigned_body(body, 4)
    short = AwsChunkedDecoder(None, UNSIGNED_TRAILER, len(body) + 1, ["x-amz-checksum-crc32"])
    with pytest.raises(S3Error) as err:
        decode(short, [encoded])
    assert err.value.code == "IncompleteBody"
    long = AwsChunkedDecoder(None, UNSIGNED_TRAILER, len(body) - 1, ["x-amz-checksum-crc32"])
    with pytest.raises(S3Error) as err:
        decode(long, [encoded])
    assert err.value.code == "InvalidRequest"


@pytest.mark.parametrize(
    "encoded,code",
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", "InvalidRequest"),  # not hex
        (b"5\r\nhelloXX0\r\n\r\n", "InvalidRequest"),  # no CRLF after data
        (b"5\nhello\r\n0\r\n\r\n", "InvalidRequest"),  # bare LF
        (b"5\r\nhello\r\n0\r\n\r\nmore", "InvalidRequest"),  # data after the end
        (b"5" * 5000, "InvalidRequest"),  # endless line
        (b"5\r\nhello\r\n0\r\nx-amz-meta-a:1\r\n\r\n", "MalformedTrailerError"),  # undeclared
        (b"5\r\nhello\r\n0\r\nno-colon\r\n\r\n", "MalformedTrailerError"),
        (b"5\r\nhello\r\n0\r\n\r\n", "MalformedTrailerError"),  # declared, not sent
    ],
)
def test_framing_errors(encoded: bytes, code: str) -> None:
    expected = ["x-amz-checksum-crc32"] if code == "MalformedTrailerError" else []
    decoder = AwsChunkedDecoder(None, UNSIGNED_TRAILER, None, expected)
    with pytest.raises(S3Error) as err:
        decode(decoder, [encoded])
    assert err.value.code == code


def test_trailers_refused_without_trailer_mode() -> None:
    auth = signed_request(SIGNED, 0)
    encoded = build_signed_body(auth.seed_signature, b"", 5)[:-2] + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    with pytest.raises(S3Error) as err:
        decode(AwsChunkedDecoder(auth, auth.payload_mode, 0, []), [encoded])
    assert err.value.code == "InvalidRequest"


def test_oversized_signed_chunk() -> None:
    auth = signed_request(SIGNED, 100)
    encoded = build_signed_body(auth.seed_signature, b"x" * 100, 100)
    decoder = AwsChunkedDecoder(auth, auth.payload_mode, 100, [], max_chunk_size=64)
    with pytest.raises(S3Error) as err:
        decode(decoder, [encoded])
    assert err.value.code == "InvalidRequest"


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------

_AUTH_CACHE: dict[str, AuthResult] = {}


def _cached_auth(mode: str) -> AuthResult:
    # Decoded length is not part of what the chunk signatures cover; one seed is enough.
    if mode not in _AUTH_CACHE:
        _AUTH_CACHE[mode] = signed_request(mode, 0)
    return _AUTH_CACHE[mode]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=400),
    chunk_size=st.integers(1, 200),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
    signed=st.booleans(),
)
def test_any_split_round_trips(body: bytes, chunk_size: int, cuts: list[int], signed: bool) -> None:
    if signed:
        auth: AuthResult | None = _cached_auth(SIGNED_TRAILER)
        assert auth is not None
        encoded = build_signed_body(auth.seed_signature, body, chunk_size, {"x-amz-checksum-crc32": _crc32_b64(body)})
        mode = SIGNED_TRAILER
    else:
        auth = None
        encoded = botocore_unsigned_body(body, chunk_size)
        mode = UNSIGNED_TRAILER
    points = sorted({c % (len(encoded) + 1) for c in cuts} | {0, len(encoded)})
    pieces = [encoded[a:b] for a, b in itertools.pairwise(points)]
    decoder = AwsChunkedDecoder(auth, mode, len(body), ["x-amz-checksum-crc32"])
    data, trailers = decode(decoder, pieces)
    assert data == body
    assert trailers == {"x-amz-checksum-crc32": _crc32_b64(body)}


def test_frozen_date_matches_helper() -> None:
    assert FROZEN.strftime("%Y%m%dT%H%M%SZ") == "20261129T120000Z"
    assert lookup(AKID) == SECRET
