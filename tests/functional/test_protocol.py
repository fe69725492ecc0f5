"""The S3 protocol through the real proxy process: authentication, errors, addressing, raw HTTP.

Every request here goes over a real socket to ``python -m proxy serve`` in front of moto or
rclone.  Requests that no SDK sends on plain http (aws-chunked bodies, skewed clocks, wrong
payload hashes) are signed with botocore's own ``S3SigV4Auth`` and sent with ``http.client``
or a raw socket.  After every refused upload the raw upstream is checked: nothing stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import io
import socket
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote, unquote_plus

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from tests.support.servers import REGION, ProxyProcess, make_client

# SeaweedFS too (tests/conftest.py): a store's differences show up here first.
pytestmark = pytest.mark.all_upstreams

MIB = 1 << 20
MARKER = b"PLAINTEXT-MARKER-protocol"
DATA_KEY = "node1/data/ks1/table-1/nb-1-big-Data.db"
META_KEY = "node1/backup1/meta/schema.cql"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MEDUSA = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}


def payload(size: int, seed: int = 0) -> bytes:
    block = (MARKER + hashlib.sha256(str(seed).encode()).digest() * 40)[:1000]
    return (block * (size // len(block) + 1))[:size]


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


# ------------------------------------------------------------------------------------------
# Raw, botocore-signed HTTP
# ------------------------------------------------------------------------------------------


class _Signer(S3SigV4Auth):
    """botocore's S3 signer; ``payload_value`` replaces the body hash it would compute."""

    def __init__(self, credentials: Credentials, payload_value: str | None) -> None:
        super().__init__(credentials, "s3", REGION)
        self.payload_value = payload_value

    def payload(self, request: Any) -> str:
        if self.payload_value is not None:
            return self.payload_value
        return str(super().payload(request))


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def code(self) -> str | None:
        if not self.body:
            return None
        return ET.fromstring(self.body).findtext("Code")


def sign(
    proxy: ProxyProcess,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    payload_value: str | None = None,
    secret: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """Headers (Host and Authorization included) botocore would send for this request.

    ``target`` is the path plus query, already percent-encoded as on the wire.  ``at`` freezes
    the signing clock (naive UTC, as botocore wants it).
    """
    request = AWSRequest(method, proxy.endpoint_url + target, headers=dict(headers or {}), data=body)
    signer = _Signer(Credentials(proxy.access_key, secret or proxy.secret_key), payload_value)
    if at is None:
        signer.add_auth(request)
    else:
        frozen = at.astimezone(UTC).replace(tzinfo=None)
        with mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: frozen):
            signer.add_auth(request)
    signed = {k: v for k, v in request.headers.items()}
    signed["Host"] = f"{proxy.host}:{proxy.port}"
    return signed


def send(
    proxy: ProxyProcess,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | Iterable[bytes] = b"",
    timeout: float = 60,
) -> Reply:
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    try:
        if isinstance(body, bytes):
            conn.request(method, target, body=body, headers=headers)
        else:
            conn.request(method, target, body=body, headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def signed_request(
    proxy: ProxyProcess, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None, **kw: Any
) -> Reply:
    return send(proxy, method, target, sign(proxy, method, target, headers=headers, body=body, **kw), body)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# ------------------------------------------------------------------------------------------
# Checks shared by the tests
# ------------------------------------------------------------------------------------------


def raw_keys(raw_client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in raw_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def assert_nothing_stored(raw_client: Any, bucket: str) -> None:
    """No object and no pending multipart upload in the raw bucket, now and a moment later."""
    for _ in range(2):
        assert raw_keys(raw_client, bucket) == []
        assert raw_uploads(raw_client, bucket) == []
        time.sleep(0.3)


def raw_uploads(raw_client: Any, bucket: str) -> list[tuple[str, str]]:
    try:
        uploads = raw_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except ClientError as err:  # rclone answers NoSuchUpload when there are none
        if err.response["Error"]["Code"] != "NoSuchUpload":
            raise
        uploads = []
    return [(u["Key"], u["UploadId"]) for u in uploads]


def assert_serving(proxy: ProxyProcess, bucket: str) -> None:
    """The proxy still answers signed requests correctly after an error."""
    assert proxy.running
    client = proxy.client(**MEDUSA)
    key = "alive/meta/probe"
    client.put_object(Bucket=bucket, Key=key, Body=b"still here")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"still here"
    client.delete_object(Bucket=bucket, Key=key)


def client_error(call: Any, *args: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    response = err.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# ------------------------------------------------------------------------------------------
# Authentication failures
# ------------------------------------------------------------------------------------------


def test_wrong_secret_is_signature_does_not_match(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    bad = proxy.client(secret_access_key="not-the-secret", **MEDUSA)
    assert client_error(bad.put_object, Bucket=bucket, Key=DATA_KEY, Body=b"x" * 100) == ("SignatureDoesNotMatch", 403)
    assert client_error(bad.list_objects_v2, Bucket=bucket) == ("SignatureDoesNotMatch", 403)
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


def test_unknown_access_key(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    stranger = proxy.client(access_key_id="nobody", **MEDUSA)
    assert client_error(stranger.put_object, Bucket=bucket, Key=META_KEY, Body=b"x") == ("InvalidAccessKeyId", 403)
    assert client_error(stranger.list_buckets) == ("InvalidAccessKeyId", 403)
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


def test_no_auth_is_access_denied(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    get = send(proxy, "GET", f"/{bucket}?list-type=2", {})
    assert (get.status, get.code) == (403, "AccessDenied")
    put = send(proxy, "PUT", f"/{bucket}/{META_KEY}", {"Content-Type": "text/plain"}, b"anonymous")
    assert (put.status, put.code) == (403, "AccessDenied")
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


def test_skewed_clock(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    past = datetime.now(UTC) - timedelta(minutes=20)
    reply = signed_request(proxy, "PUT", f"/{bucket}/{META_KEY}", b"late", at=past)
    assert (reply.status, reply.code) == (403, "RequestTimeTooSkewed")
    future = datetime.now(UTC) + timedelta(minutes=20)
    assert signed_request(proxy, "GET", f"/{bucket}", at=future).code == "RequestTimeTooSkewed"
    # Inside the 15 minutes S3 allows: accepted.
    ok = signed_request(proxy, "PUT", f"/{bucket}/{META_KEY}", b"on time", at=datetime.now(UTC) - timedelta(minutes=10))
    assert ok.status == 200, ok.body
    assert raw_keys(raw_client, bucket) == [META_KEY]
    assert_serving(proxy, bucket)


def test_payload_hash_mismatch_small(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    for key in (DATA_KEY, META_KEY):
        reply = signed_request(
            proxy,
            "PUT",
            f"/{bucket}/{key}",
            b"the real body",
            payload_value=hashlib.sha256(b"another body").hexdigest(),
        )
        assert (reply.status, reply.code) == (400, "XAmzContentSHA256Mismatch"), key
        assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


@pytest.mark.parametrize("key", [DATA_KEY, META_KEY], ids=["data", "meta"])
def test_payload_hash_mismatch_streamed(proxy: ProxyProcess, raw_client: Any, bucket: str, key: str) -> None:
    """A 6 MiB body streamed upstream while it arrives: the wrong hash is known only at the
    end, so the proxy must cut the upstream request short (nothing stored)."""
    data = payload(6 * MIB + 3, 1)
    wrong = bytearray(data)
    wrong[-1] ^= 1
    headers = sign(
        proxy,
        "PUT",
        f"/{bucket}/{key}",
        headers={"Content-Length": str(len(data))},
        payload_value=hashlib.sha256(bytes(wrong)).hexdigest(),
    )
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
    try:
        conn.putrequest("PUT", f"/{bucket}/{key}", skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        for piece in pieces(data, 256 * 1024):
            conn.send(piece)
        resp = conn.getresponse()
        reply = Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()
    assert (reply.status, reply.code) == (400, "XAmzContentSHA256Mismatch")
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


def test_wrong_content_md5(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data = payload(2 * MIB, 2)
    for key in (DATA_KEY, META_KEY):
        assert client_error(
            proxy_client.put_object, Bucket=bucket, Key=key, Body=data, ContentMD5=b64(hashlib.md5(b"other").digest())
        ) == ("BadDigest", 400)
        assert_nothing_stored(raw_client, bucket)
    # The right MD5 is accepted.
    for key in (DATA_KEY, META_KEY):
        proxy_client.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=b64(hashlib.md5(data).digest()))
        assert proxy_client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_malformed_content_md5(proxy_client: Any, proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    assert client_error(
        proxy_client.put_object, Bucket=bucket, Key=DATA_KEY, Body=b"abc", ContentMD5="not base64 at all"
    ) == ("InvalidDigest", 400)
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


def test_wrong_checksum_crc32(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data = payload(MIB + 17, 3)
    for key in (DATA_KEY, META_KEY):
        assert client_error(
            proxy_client.put_object, Bucket=bucket, Key=key, Body=data, ChecksumCRC32=crc32_b64(b"other")
        ) == ("BadDigest", 400)
        assert_nothing_stored(raw_client, bucket)
    for key in (DATA_KEY, META_KEY):
        proxy_client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumCRC32=crc32_b64(data))
        assert proxy_client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_unsigned_payload_header_auth(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    """``x-amz-content-sha256: UNSIGNED-PAYLOAD`` (boto3 < 1.36 over https): the signature covers
    the headers only, so Content-MD5 is what protects the body."""
    data = payload(MIB + 9, 15)
    md5 = b64(hashlib.md5(data).digest())
    ok = signed_request(
        proxy, "PUT", f"/{bucket}/{DATA_KEY}", data, payload_value="UNSIGNED-PAYLOAD", headers={"Content-MD5": md5}
    )
    assert ok.status == 200, ok.body
    assert ok.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert proxy.client(**MEDUSA).get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == data
    raw_client.delete_object(Bucket=bucket, Key=DATA_KEY)
    corrupted = data[:-1] + bytes([data[-1] ^ 1])
    bad = signed_request(
        proxy, "PUT", f"/{bucket}/{DATA_KEY}", corrupted, payload_value="UNSIGNED-PAYLOAD", headers={"Content-MD5": md5}
    )
    assert (bad.status, bad.code) == (400, "BadDigest")
    assert_nothing_stored(raw_client, bucket)


# ------------------------------------------------------------------------------------------
# Presigned URLs
# ------------------------------------------------------------------------------------------


def presigner(proxy: ProxyProcess) -> Any:
    """SigV4 presigning.  Note: boto3 in us-east-1 without an explicit signature_version
    presigns with SigV2 (AWSAccessKeyId/Signature/Expires), which the proxy does not accept."""
    return proxy.client(signature_version="s3v4", **MEDUSA)


def test_presigned_put_and_get(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    client = presigner(proxy)
    data = payload(300_000, 4)
    put_url = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": DATA_KEY}, ExpiresIn=300)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in put_url
    # urllib's default Content-Type for a body is application/x-www-form-urlencoded, which the
    # proxy forwards and moto's server then parses as a form (it stores an empty object, also
    # without the proxy): say what the body is, as any real uploader would.
    put = urllib.request.Request(put_url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(put, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    stored = raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
    assert MARKER not in stored and len(stored) > len(data)
    get_url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": DATA_KEY}, ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=30) as resp:
        assert resp.read() == data
    # A presigned URL is bound to its method and key.
    tampered = get_url.replace(DATA_KEY, DATA_KEY + "x")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(tampered, timeout=30)
    assert err.value.code == 403
    assert ET.fromstring(err.value.read()).findtext("Code") == "SignatureDoesNotMatch"


def test_presigned_expired(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    client = presigner(proxy)
    client.put_object(Bucket=bucket, Key=META_KEY, Body=b"meta")
    get_url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": META_KEY}, ExpiresIn=1)
    put_url = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": DATA_KEY}, ExpiresIn=1)
    time.sleep(2.2)
    for request in (urllib.request.Request(get_url), urllib.request.Request(put_url, data=b"too late", method="PUT")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 403
        assert ET.fromstring(err.value.read()).findtext("Code") == "AccessDenied"
    assert raw_keys(raw_client, bucket) == [META_KEY]
    assert_serving(proxy, bucket)


# ------------------------------------------------------------------------------------------
# aws-chunked bodies
# ------------------------------------------------------------------------------------------


def _unsigned_trailer_put(proxy: ProxyProcess, bucket: str, key: str, data: bytes, framed: bytes) -> Reply:
    """PUT an aws-chunked body (STREAMING-UNSIGNED-PAYLOAD-TRAILER) with HTTP chunked transfer
    encoding and no Content-Length, exactly as boto3's defaults send it over https."""
    headers = sign(
        proxy,
        "PUT",
        f"/{bucket}/{key}",
        headers={
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(len(data)),
            "X-Amz-Trailer": "x-amz-checksum-crc32",
            "X-Amz-Sdk-Checksum-Algorithm": "CRC32",
        },
        payload_value="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    return send(proxy, "PUT", f"/{bucket}/{key}", headers, pieces(framed, 100_000))


def test_aws_chunked_unsigned_trailer(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    data = payload(3 * MIB + 11, 5)
    framed = AwsChunkedWrapper(io.BytesIO(data), Crc32Checksum, "x-amz-checksum-crc32", chunk_size=MIB).read()
    assert framed.endswith(f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n\r\n".encode())
    reply = _unsigned_trailer_put(proxy, bucket, DATA_KEY, data, framed)
    assert reply.status == 200, reply.body
    assert reply.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    # The answer's CRC32 is the client's, of the plaintext it sent (verified by the proxy): never
    # one of the stored ciphertext.
    assert [h.lower() for h in reply.headers if h.lower().startswith("x-amz-checksum")] == ["x-amz-checksum-crc32"]
    assert reply.headers["x-amz-checksum-crc32"] == crc32_b64(data)
    client = proxy.client(**MEDUSA)
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == data
    stored = raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
    assert MARKER not in stored and len(stored) > len(data)


def test_aws_chunked_unsigned_trailer_bad_crc(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    data = payload(2 * MIB + 5, 6)
    framed = AwsChunkedWrapper(io.BytesIO(data), Crc32Checksum, "x-amz-checksum-crc32", chunk_size=MIB).read()
    good = f"x-amz-checksum-crc32:{crc32_b64(data)}".encode()
    bad = f"x-amz-checksum-crc32:{crc32_b64(b'nope')}".encode()
    assert good in framed
    reply = _unsigned_trailer_put(proxy, bucket, DATA_KEY, data, framed.replace(good, bad))
    assert (reply.status, reply.code) == (400, "BadDigest")
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


def _signing_key(secret: str, date: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def chunk_signed_body(
    headers: dict[str, str],
    secret: str,
    data: bytes,
    chunk_size: int,
    corrupt_chunk: int | None = None,
    trailers: dict[str, str] | None = None,
) -> bytes:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD framing, following the AWS documentation
    ("Signature Calculations for the Authorization Header: Transferring Payload in Multiple
    Chunks"): each chunk's signature chains from the seed signature of the headers."""
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = _signing_key(secret, amz_date[:8])
    previous = headers["Authorization"].rsplit("Signature=", 1)[1]
    out = bytearray()
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    for index, chunk in enumerate(chunks):
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256, hashlib.sha256(chunk).hexdigest()]
        )
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        signature = previous
        if index == corrupt_chunk:
            signature = ("0" if signature[0] != "0" else "1") + signature[1:]
        out += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk
        if chunk or trailers is None:
            out += b"\r\n"
    if trailers is None:
        return bytes(out)
    # STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: the trailers are signed too, chained on.
    lines = "".join(f"{k}:{v}\n" for k, v in trailers.items())
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous, hashlib.sha256(lines.encode()).hexdigest()]
    )
    trailer_signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    for k, v in trailers.items():
        out += f"{k}:{v}\r\n".encode()
    out += f"x-amz-trailer-signature:{trailer_signature}\r\n\r\n".encode()
    return bytes(out)


def _chunk_signed_put(
    proxy: ProxyProcess, bucket: str, key: str, data: bytes, chunk_size: int, corrupt_chunk: int | None = None
) -> Reply:
    n_chunks = -(-len(data) // chunk_size) + 1
    sizes = [min(chunk_size, len(data) - i) for i in range(0, len(data), chunk_size)] + [0]
    encoded_length = sum(len(f"{s:x};chunk-signature=") + 64 + 2 + s + 2 for s in sizes)
    assert len(sizes) == n_chunks
    headers = sign(
        proxy,
        "PUT",
        f"/{bucket}/{key}",
        headers={
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(len(data)),
            "Content-Length": str(encoded_length),
        },
        payload_value="STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    )
    body = chunk_signed_body(headers, proxy.secret_key, data, chunk_size, corrupt_chunk)
    assert len(body) == encoded_length
    return send(proxy, "PUT", f"/{bucket}/{key}", headers, body)


def test_aws_chunked_signed(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    data = payload(2 * MIB + 100, 7)
    reply = _chunk_signed_put(proxy, bucket, DATA_KEY, data, 64 * 1024)
    assert reply.status == 200, reply.body
    assert reply.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    client = proxy.client(**MEDUSA)
    assert client.head_object(Bucket=bucket, Key=DATA_KEY)["ContentLength"] == len(data)
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == data
    stored = raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
    assert MARKER not in stored and len(stored) > len(data)


@pytest.mark.parametrize("crc", ["right", "wrong"])
def test_aws_chunked_signed_trailer_no_content_length(
    proxy: ProxyProcess, raw_client: Any, bucket: str, crc: str
) -> None:
    """Chunk signatures plus a signed CRC32 trailer, over HTTP chunked transfer encoding."""
    data = payload(MIB + 333, 14)
    headers = sign(
        proxy,
        "PUT",
        f"/{bucket}/{DATA_KEY}",
        headers={
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(len(data)),
            "X-Amz-Trailer": "x-amz-checksum-crc32",
        },
        payload_value="STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    )
    value = crc32_b64(data) if crc == "right" else crc32_b64(b"other")
    body = chunk_signed_body(headers, proxy.secret_key, data, 128 * 1024, trailers={"x-amz-checksum-crc32": value})
    reply = send(proxy, "PUT", f"/{bucket}/{DATA_KEY}", headers, pieces(body, 50_000))
    if crc == "wrong":
        assert (reply.status, reply.code) == (400, "BadDigest")
        assert_nothing_stored(raw_client, bucket)
        assert_serving(proxy, bucket)
        return
    assert reply.status == 200, reply.body
    assert reply.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    client = proxy.client(**MEDUSA)
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == data
    assert MARKER not in raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()


def test_aws_chunked_signed_corrupted_signature(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    data = payload(2 * MIB + 100, 8)
    chunk_size = 64 * 1024
    n_data = -(-len(data) // chunk_size)
    # The first chunk, one in the middle, the last data chunk, the final empty chunk.
    for index in (0, n_data // 2, n_data - 1, n_data):
        reply = _chunk_signed_put(proxy, bucket, DATA_KEY, data, chunk_size, corrupt_chunk=index)
        assert (reply.status, reply.code) == (403, "SignatureDoesNotMatch"), index
        assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)


# ------------------------------------------------------------------------------------------
# Malformed XML, unsupported operations
# ------------------------------------------------------------------------------------------


def test_delete_objects_malformed_xml(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    raw_client.put_object(Bucket=bucket, Key="a", Body=b"keep me")
    for body in (
        b"<Delete><Object><Key>a</Key>",
        b"not xml at all",
        b"",
        b"<Delete><Object><Key>a</Key></Object></Nope>",
    ):
        reply = signed_request(
            proxy,
            "POST",
            f"/{bucket}?delete",
            body,
            headers={"Content-MD5": b64(hashlib.md5(body).digest()), "Content-Type": "application/xml"},
        )
        assert (reply.status, reply.code) == (400, "MalformedXML"), (body, reply.body)
        assert raw_keys(raw_client, bucket) == ["a"]
    assert_serving(proxy, bucket)


def test_complete_multipart_malformed_xml(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    client = proxy.client(**MEDUSA)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=DATA_KEY)["UploadId"]
    part = client.upload_part(Bucket=bucket, Key=DATA_KEY, UploadId=upload_id, PartNumber=1, Body=b"only part")
    target = f"/{bucket}/{quote(DATA_KEY)}?uploadId={quote(upload_id, safe='')}"
    for body in (
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>",
        b"\x00\xff garbage",
        b"<CompleteMultipartUpload></CompleteMultipartUpload>",
    ):
        reply = signed_request(proxy, "POST", target, body)
        assert (reply.status, reply.code) == (400, "MalformedXML"), reply.body
    assert raw_keys(raw_client, bucket) == []
    # Still serving, and the upload itself was not harmed.
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=DATA_KEY,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == b"only part"


def test_unsupported_operations_are_not_implemented(proxy: ProxyProcess, bucket: str) -> None:
    client = proxy.client(**MEDUSA)
    client.put_object(Bucket=bucket, Key=META_KEY, Body=b"x")
    calls = [
        (client.get_bucket_cors, {"Bucket": bucket}),
        (client.get_bucket_website, {"Bucket": bucket}),
        (client.get_bucket_logging, {"Bucket": bucket}),
        (client.get_bucket_replication, {"Bucket": bucket}),
    ]
    for call, kwargs in calls:
        assert client_error(call, **kwargs) == ("NotImplemented", 501), call
    # As S3 XML on the wire.
    reply = signed_request(proxy, "GET", f"/{bucket}?website")
    assert reply.status == 501
    assert reply.headers["Content-Type"] == "application/xml"
    root = ET.fromstring(reply.body)
    assert root.tag == "Error" and root.findtext("Code") == "NotImplemented"
    assert root.findtext("RequestId") == reply.headers["x-amz-request-id"]
    assert_serving(proxy, bucket)


# ------------------------------------------------------------------------------------------
# Addressing
# ------------------------------------------------------------------------------------------


@pytest.fixture
def localhost_subdomains(monkeypatch: pytest.MonkeyPatch) -> None:
    """``*.localhost`` resolves to 127.0.0.1 in this process (glibc here does not do it)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_virtual_host_addressing(proxy: ProxyProcess, raw_client: Any, bucket: str, localhost_subdomains: None) -> None:
    seen: list[str] = []
    client = make_client(
        f"http://localhost:{proxy.port}",
        proxy.access_key,
        proxy.secret_key,
        s3={"addressing_style": "virtual"},
        **MEDUSA,
    )
    client.meta.events.register("before-send.s3", lambda request, **kw: seen.append(request.url))
    data = payload(MIB + 7, 9)
    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == data
    assert client.get_object(Bucket=bucket, Key=DATA_KEY, Range="bytes=5-9")["Body"].read() == data[5:10]
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(DATA_KEY, len(data))]
    assert client.head_object(Bucket=bucket, Key=DATA_KEY)["ContentLength"] == len(data)
    # Really virtual-host style on the wire, and really stored (encrypted) in that bucket.
    assert seen and all(url.startswith(f"http://{bucket}.localhost:{proxy.port}/") for url in seen)
    assert MARKER not in raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
    client.delete_object(Bucket=bucket, Key=DATA_KEY)
    assert raw_keys(raw_client, bucket) == []


# ------------------------------------------------------------------------------------------
# Bucket operations, multipart bookkeeping, copy, listings
# ------------------------------------------------------------------------------------------


def test_bucket_operations(proxy_client: Any, bucket: str) -> None:
    names = [b["Name"] for b in proxy_client.list_buckets()["Buckets"]]
    assert bucket in names
    assert proxy_client.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client_error(proxy_client.head_bucket, Bucket=bucket + "-missing")[1] == 404
    assert client_error(proxy_client.list_objects_v2, Bucket=bucket + "-missing") == ("NoSuchBucket", 404)
    location = proxy_client.get_bucket_location(Bucket=bucket)
    assert location["LocationConstraint"] in (None, "", "us-east-1")


def test_list_parts_plaintext_sizes_and_abort(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    parts = [payload(5 * MIB, 10), payload(1234, 11)]
    upload = proxy_client.create_multipart_upload(Bucket=bucket, Key=DATA_KEY)
    upload_id = upload["UploadId"]
    other = proxy_client.create_multipart_upload(Bucket=bucket, Key="node1/meta/other")["UploadId"]
    etags = []
    for number, data in enumerate(parts, start=1):
        etags.append(
            proxy_client.upload_part(Bucket=bucket, Key=DATA_KEY, UploadId=upload_id, PartNumber=number, Body=data)[
                "ETag"
            ]
        )
    assert [e.strip('"') for e in etags] == [hashlib.md5(p).hexdigest() for p in parts]

    listed = proxy_client.list_parts(Bucket=bucket, Key=DATA_KEY, UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"], p["ETag"].strip('"')) for p in listed["Parts"]] == [
        (n, len(d), hashlib.md5(d).hexdigest()) for n, d in enumerate(parts, start=1)
    ]
    raw_sizes = [p["Size"] for p in raw_client.list_parts(Bucket=bucket, Key=DATA_KEY, UploadId=upload_id)["Parts"]]
    assert raw_sizes != [len(d) for d in parts]  # the stored parts are ciphertext

    uploads = proxy_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert sorted((u["Key"], u["UploadId"]) for u in uploads) == sorted(
        [(DATA_KEY, upload_id), ("node1/meta/other", other)]
    )

    proxy_client.abort_multipart_upload(Bucket=bucket, Key=DATA_KEY, UploadId=upload_id)
    proxy_client.abort_multipart_upload(Bucket=bucket, Key="node1/meta/other", UploadId=other)
    assert raw_uploads(raw_client, bucket) == []
    with contextlib.suppress(ClientError):  # rclone: NoSuchUpload when there are none
        assert proxy_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    code, status = client_error(proxy_client.list_parts, Bucket=bucket, Key=DATA_KEY, UploadId=upload_id)
    assert (code, status) == ("NoSuchUpload", 404)
    assert raw_keys(raw_client, bucket) == []


def test_copy_object_metadata_key_passthrough(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data = b'{"tokens": [1, 2, 3]} ' + MARKER
    proxy_client.put_object(Bucket=bucket, Key=META_KEY, Body=data, ContentType="application/json")
    target = "node1/backup2/meta/schema.cql"
    result = proxy_client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": META_KEY})
    assert result["CopyObjectResult"]["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert raw_client.get_object(Bucket=bucket, Key=target)["Body"].read() == data
    got = proxy_client.get_object(Bucket=bucket, Key=target)
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/json"


ODD_KEYS = [
    "odd/meta/with space",
    "odd/meta/plus+sign",
    "odd/meta/a b+c%20d",
    "odd/data/ünïcödé ✓",
    "odd/data/amp&eq=q?x",
    "odd/meta/tilde~star*",
]


def test_encoding_type_url_listing_odd_keys(
    proxy: ProxyProcess, proxy_client: Any, raw_client: Any, bucket: str
) -> None:
    for key in ODD_KEYS:
        proxy_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert sorted(raw_keys(raw_client, bucket)) == sorted(ODD_KEYS)
    # boto3 asks for encoding-type=url and decodes: the keys come back exactly.
    v2 = proxy_client.list_objects_v2(Bucket=bucket, Prefix="odd/")["Contents"]
    assert sorted(o["Key"] for o in v2) == sorted(ODD_KEYS)
    assert all(o["Size"] == len(o["Key"].encode()) for o in v2)
    v1 = proxy_client.list_objects(Bucket=bucket, Prefix="odd/")["Contents"]
    assert sorted(o["Key"] for o in v1) == sorted(ODD_KEYS)
    # Prefixes with '+', spaces and unicode select the right keys.
    for prefix in ("odd/meta/plus+", "odd/meta/a b+", "odd/data/ü", "odd/meta/with "):
        got = proxy_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        assert [o["Key"] for o in got] == [k for k in ODD_KEYS if k.startswith(prefix)], prefix
    # Every key readable by its own name.
    for key in ODD_KEYS:
        assert proxy_client.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    # On the wire: the XML carries url-encoded keys, as S3 does.
    reply = signed_request(proxy, "GET", f"/{bucket}?encoding-type=url&list-type=2&prefix=odd%2F")
    assert reply.status == 200
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    root = ET.fromstring(reply.body)
    assert root.findtext("s3:EncodingType", namespaces=ns) == "url"
    wire_keys = [k.text or "" for k in root.iterfind("s3:Contents/s3:Key", ns)]
    assert all(" " not in k for k in wire_keys)
    assert any("%2B" in k for k in wire_keys)  # a literal '+' must be encoded, or it reads as ' '
    assert sorted(unquote_plus(k) for k in wire_keys) == sorted(ODD_KEYS)
    # Without encoding-type the keys are plain XML text.
    plain = signed_request(proxy, "GET", f"/{bucket}?list-type=2&prefix=odd%2F")
    plain_keys = [k.text for k in ET.fromstring(plain.body).iterfind("s3:Contents/s3:Key", ns)]
    assert sorted(plain_keys) == sorted(ODD_KEYS)


# ------------------------------------------------------------------------------------------
# Expect: 100-continue
# ------------------------------------------------------------------------------------------


def _read_head(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("key", [DATA_KEY, META_KEY], ids=["data", "meta"])
def test_expect_100_continue(proxy: ProxyProcess, raw_client: Any, bucket: str, key: str) -> None:
    data = payload(200_000, 13)
    target = f"/{bucket}/{key}"
    headers = sign(
        proxy, "PUT", target, headers={"Content-Length": str(len(data)), "Expect": "100-continue"}, body=data
    )
    head = f"PUT {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(head.encode())
        started = time.monotonic()
        interim = _read_head(sock, started + 0.5)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        assert time.monotonic() - started < 0.5
        assert raw_keys(raw_client, bucket) == []  # nothing happens before the body
        sock.sendall(data)
        final = _read_head(sock, time.monotonic() + 30)
    status_line = final.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK", final
    got = raw_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert (got == data) is (key == META_KEY)
    client = proxy.client(**MEDUSA)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_expect_100_continue_refused_before_body(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    """A bad signature is refused before the body: no 100 Continue, so the client keeps its body."""
    data = b"z" * 1000
    target = f"/{bucket}/{META_KEY}"
    headers = sign(
        proxy,
        "PUT",
        target,
        headers={"Content-Length": str(len(data)), "Expect": "100-continue"},
        body=data,
        secret="wrong",
    )
    head = f"PUT {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(head.encode())
        first = _read_head(sock, time.monotonic() + 5)
        assert first.startswith(b"HTTP/1.1 403"), first
    assert_nothing_stored(raw_client, bucket)
    assert_serving(proxy, bucket)
