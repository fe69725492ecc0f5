"""S3 object semantics through the proxy (issue 18): what clients other than Medusa rely on.

Each test runs on moto and on rclone, through one proxy whose ``enc/`` keys are encrypted and
``plain/`` keys pass through, so every behaviour is checked for both kinds of key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from tests.functional.test_protocol import _unsigned_trailer_put, send, sign, signed_request
from tests.support.servers import ProxyProcess, S3Server

MIB = 1 << 20
MARKER = b"PLAINTEXT-MARKER-c0nf"
KINDS = ("enc", "plain")


def payload(size: int, seed: int = 0) -> bytes:
    block = (MARKER + hashlib.sha256(str(seed).encode()).digest() * 40)[:1000]
    return (block * (size // len(block) + 1))[:size]


def error_of(call: Callable[..., Any], **params: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def mixed_proxy(make_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    return make_proxy(encryption={"encrypted_patterns": ["enc/*"], "plaintext_patterns": ["plain/*"]})


@pytest.fixture
def client(mixed_proxy: ProxyProcess) -> Any:
    return mixed_proxy.client()


def test_managed_copy_uses_upload_part_copy_across_kinds(client: Any, raw_client: Any, bucket: str) -> None:
    """boto3's ``copy()`` of a 20 MiB object (UploadPartCopy of 8 MiB ranges) from and to
    encrypted and plaintext keys reads back byte-identical, stored as the destination's kind."""
    data = payload(20 * MIB, 7)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=2)
    client.put_object(Bucket=bucket, Key="enc/src", Body=data)
    client.put_object(Bucket=bucket, Key="plain/src", Body=data)
    for source, target in (("enc/src", "enc/copy"), ("enc/src", "plain/copy"), ("plain/src", "enc/copy2")):
        client.copy({"Bucket": bucket, "Key": source}, bucket, target, Config=config)
        got = client.get_object(Bucket=bucket, Key=target)
        assert got["ContentLength"] == len(data)
        assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(data).digest(), (source, target)
        stored = raw_client.get_object(Bucket=bucket, Key=target)["Body"].read()
        assert (MARKER in stored) == target.startswith("plain/"), target


def test_upload_part_copy_range_into_encrypted_key(client: Any, raw_client: Any, bucket: str) -> None:
    data = payload(6 * MIB, 3)
    client.put_object(Bucket=bucket, Key="enc/src", Body=data)
    upload = client.create_multipart_upload(Bucket=bucket, Key="enc/dst")["UploadId"]
    source = {"Bucket": bucket, "Key": "enc/src"}
    step = {"Bucket": bucket, "Key": "enc/dst", "UploadId": upload, "CopySource": source}
    first = client.upload_part_copy(PartNumber=1, CopySourceRange=f"bytes=0-{5 * MIB - 1}", **step)
    assert first["CopyPartResult"]["ETag"].strip('"') == hashlib.md5(data[: 5 * MIB]).hexdigest()
    second = client.upload_part_copy(PartNumber=2, CopySourceRange=f"bytes=100-{6 * MIB - 1}", **step)
    assert error_of(client.upload_part_copy, PartNumber=3, CopySourceRange=f"bytes=0-{6 * MIB}", **step) == (
        "InvalidRange",
        416,
    )
    assert error_of(client.upload_part_copy, PartNumber=3, CopySourceRange="bytes=5-", **step)[1] == 400
    assert error_of(client.upload_part_copy, PartNumber=3, **{**step, "UploadId": "nope"}) == ("NoSuchUpload", 404)
    parts = [
        {"PartNumber": 1, "ETag": first["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]},
    ]
    client.complete_multipart_upload(Bucket=bucket, Key="enc/dst", UploadId=upload, MultipartUpload={"Parts": parts})
    expected = data[: 5 * MIB] + data[100:]
    assert client.get_object(Bucket=bucket, Key="enc/dst")["Body"].read() == expected
    assert MARKER not in raw_client.get_object(Bucket=bucket, Key="enc/dst")["Body"].read()


@pytest.fixture
def lock_bucket(upstream: S3Server, raw_client: Any) -> Iterator[str]:
    """A bucket created with object lock enabled (moto keeps locks; rclone ignores them)."""
    name = f"lock-{uuid.uuid4().hex[:12]}"
    raw_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name
    with contextlib.suppress(Exception):  # a locked object stays: GOVERNANCE lets us remove it
        for page in raw_client.get_paginator("list_object_versions").paginate(Bucket=name):
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                with contextlib.suppress(Exception):
                    raw_client.put_object_legal_hold(
                        Bucket=name, Key=version["Key"], VersionId=version["VersionId"], LegalHold={"Status": "OFF"}
                    )
                raw_client.delete_object(
                    Bucket=name, Key=version["Key"], VersionId=version["VersionId"], BypassGovernanceRetention=True
                )
        upstream.delete_bucket(name)


def lock_of(reply: dict[str, Any]) -> tuple[Any, Any, Any]:
    return reply.get("ObjectLockMode"), reply.get("ObjectLockRetainUntilDate"), reply.get("ObjectLockLegalHoldStatus")


def test_object_lock_is_never_dropped(client: Any, raw_client: Any, upstream: S3Server, lock_bucket: str) -> None:
    """PutObject, multipart uploads and CopyObject through the proxy store the lock the client
    asked for (HEAD/GET show it), or answer what the bucket answers the same request sent to it
    directly (moto refuses locks on CopyObject and drops those of multipart uploads; rclone
    ignores locks): never a lock silently lost by the proxy."""
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    lock = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until, "ObjectLockLegalHoldStatus": "ON"}
    asked = ("GOVERNANCE", until, "ON")
    b = lock_bucket
    body = payload(3000)

    def put(c: Any, key: str) -> None:
        c.put_object(Bucket=b, Key=key, Body=body, ChecksumAlgorithm="CRC32", **lock)

    def multipart(c: Any, key: str) -> None:
        upload = c.create_multipart_upload(Bucket=b, Key=key, **lock)["UploadId"]
        part = c.upload_part(Bucket=b, Key=key, UploadId=upload, PartNumber=1, Body=body)
        parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        c.complete_multipart_upload(Bucket=b, Key=key, UploadId=upload, MultipartUpload=parts)

    def copy(c: Any, key: str) -> None:
        source = key.replace("copy", "put")
        c.copy_object(Bucket=b, Key=key, CopySource={"Bucket": b, "Key": source}, **lock)

    def outcome(c: Any, write: Callable[[Any, str], None], key: str) -> tuple[str, Any]:
        try:
            write(c, key)
        except ClientError as exc:
            return "refused", exc.response["Error"]["Code"]
        stored = lock_of(raw_client.head_object(Bucket=b, Key=key))
        assert lock_of(c.head_object(Bucket=b, Key=key)) == stored, key
        got = c.get_object(Bucket=b, Key=key)
        assert lock_of(got) == stored, key
        assert got["Body"].read() == body
        return "stored", stored

    for name, write in (("put", put), ("mp", multipart), ("copy", copy)):
        direct = outcome(raw_client, write, f"direct/{name}")
        if upstream.name == "moto" and name == "put":
            assert direct == ("stored", asked)
        for kind in KINDS:
            proxied = outcome(client, write, f"{kind}/{name}")
            assert proxied in (direct, ("stored", asked)), (kind, name, proxied, direct)
            assert proxied[0] == "refused" or proxied[1] in (direct[1], asked)


def sse_of(reply: dict[str, Any]) -> tuple[Any, Any]:
    return reply.get("ServerSideEncryption"), reply.get("SSEKMSKeyId")


def test_sse_headers_go_up_and_come_back(client: Any, raw_client: Any, upstream: S3Server, bucket: str) -> None:
    """The bucket's own encryption at rest under the proxy's: the SSE request headers reach the
    bucket and its SSE answer headers reach the client, as the bucket answers them directly."""
    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/backups", "BucketKeyEnabled": True}
    direct = raw_client.put_object(Bucket=bucket, Key="direct", Body=b"x", **sse)
    expected = sse_of(direct)
    kept = sse_of(raw_client.head_object(Bucket=bucket, Key="direct"))  # rclone: not kept
    if upstream.name == "moto":
        assert expected == kept == ("aws:kms", "alias/backups")
    for kind in KINDS:
        assert sse_of(client.put_object(Bucket=bucket, Key=f"{kind}/put", Body=payload(3000), **sse)) == expected
        created = client.create_multipart_upload(Bucket=bucket, Key=f"{kind}/mp", **sse)
        assert sse_of(created) == expected
        body = payload(5 * MIB + 10)
        part = client.upload_part(
            Bucket=bucket, Key=f"{kind}/mp", UploadId=created["UploadId"], PartNumber=1, Body=body
        )
        assert sse_of(part) == expected
        done = client.complete_multipart_upload(
            Bucket=bucket,
            Key=f"{kind}/mp",
            UploadId=created["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
        assert sse_of(done) == expected
        # UploadPartCopy (read and encrypted by the proxy for an encrypted key) says the same.
        copying = client.create_multipart_upload(Bucket=bucket, Key=f"{kind}/partcopy", **sse)
        part_copy = client.upload_part_copy(
            Bucket=bucket,
            Key=f"{kind}/partcopy",
            UploadId=copying["UploadId"],
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": f"{kind}/mp"},
        )
        assert sse_of(part_copy) == expected
        client.abort_multipart_upload(Bucket=bucket, Key=f"{kind}/partcopy", UploadId=copying["UploadId"])
        copied = client.copy_object(
            Bucket=bucket, Key=f"{kind}/copy", CopySource={"Bucket": bucket, "Key": f"{kind}/put"}, **sse
        )
        assert sse_of(copied) == expected
        for key in (f"{kind}/put", f"{kind}/mp", f"{kind}/copy"):
            assert sse_of(raw_client.head_object(Bucket=bucket, Key=key)) == kept, key
            assert sse_of(client.head_object(Bucket=bucket, Key=key)) == kept, key
            assert sse_of(client.get_object(Bucket=bucket, Key=key)) == kept, key
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="enc/c", Body=b"x", SSECustomerAlgorithm="AES256", SSECustomerKey="k" * 32)
    # SSE-C cannot coexist with the proxy's encryption: refused as S3 refuses a disallowed request.
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Code"] == "InvalidRequest"


def test_conditional_writes_refuse_instead_of_overwriting(client: Any, bucket: str) -> None:
    """If-None-Match: * and If-Match on PutObject and CompleteMultipartUpload answer S3's 412
    (404 for If-Match on no object) and leave the object as it was, on moto (which checks them
    too) and on rclone (which ignores them: the proxy's own check)."""
    for kind in KINDS:
        key = f"{kind}/cond"
        first = client.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
        assert first["ETag"].strip('"') == hashlib.md5(b"first").hexdigest()
        assert error_of(client.put_object, Bucket=bucket, Key=key, Body=b"2nd", IfNoneMatch="*") == (
            "PreconditionFailed",
            412,
        )
        assert error_of(client.put_object, Bucket=bucket, Key=key, Body=b"2nd", IfMatch='"0" ') == (
            "PreconditionFailed",
            412,
        )
        assert error_of(client.put_object, Bucket=bucket, Key=f"{kind}/none", Body=b"x", IfMatch=first["ETag"]) == (
            "NoSuchKey",
            404,
        )
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"
        second = client.put_object(Bucket=bucket, Key=key, Body=b"second", IfMatch=first["ETag"])
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"second"

        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"third")
        parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
        step = {"Bucket": bucket, "Key": key, "UploadId": upload, "MultipartUpload": parts}
        assert error_of(client.complete_multipart_upload, IfNoneMatch="*", **step) == ("PreconditionFailed", 412)
        assert error_of(client.complete_multipart_upload, IfMatch=first["ETag"], **step) == ("PreconditionFailed", 412)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"second"
        client.complete_multipart_upload(IfMatch=second["ETag"], **step)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"third"


def test_a_repeated_complete_answers_the_same(client: Any, raw_client: Any, bucket: str) -> None:
    """A client that lost Complete's answer sends it again: S3 answers the same result."""
    data = payload(5 * MIB + 100, 5)
    for kind in KINDS:
        key = f"{kind}/again"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        one = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=data[: 5 * MIB])
        two = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=2, Body=data[5 * MIB :])
        parts = [{"PartNumber": 1, "ETag": one["ETag"]}, {"PartNumber": 2, "ETag": two["ETag"]}]
        step = {"Bucket": bucket, "Key": key, "UploadId": upload, "MultipartUpload": {"Parts": parts}}
        done = client.complete_multipart_upload(**step)
        again = client.complete_multipart_upload(**step)
        assert (again["ETag"], again["Key"], again["Bucket"]) == (done["ETag"], key, bucket)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        # Not for another key, nor for an upload that never was (for plaintext keys that is the
        # bucket's to answer: moto's 500).
        if kind == "enc":
            assert error_of(client.complete_multipart_upload, **{**step, "Key": "enc/other"})[0] == "NoSuchUpload"
            assert error_of(client.complete_multipart_upload, **{**step, "UploadId": "nope"})[0] == "NoSuchUpload"


def test_writes_answer_version_id_and_the_clients_checksum(
    client: Any, raw_client: Any, upstream: S3Server, bucket: str
) -> None:
    """PutObject, CopyObject and Complete give the version the bucket stored; PutObject and
    UploadPart the client's checksum (verified by the proxy over the plaintext it received),
    never one of the stored ciphertext."""
    with contextlib.suppress(ClientError):  # rclone has no versioning: no version ids at all
        raw_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = payload(5 * MIB + 1, 9)
    sha = hashlib.sha256(data).digest()
    for kind in KINDS:
        key = f"{kind}/v"
        put = client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        assert base64.b64decode(put["ChecksumSHA256"]) == sha
        assert put.get("VersionId") == raw_client.head_object(Bucket=bucket, Key=key).get("VersionId")
        assert bool(put.get("VersionId")) == (upstream.name == "moto")
        copied = client.copy_object(Bucket=bucket, Key=f"{kind}/c", CopySource={"Bucket": bucket, "Key": key})
        assert copied.get("VersionId") == raw_client.head_object(Bucket=bucket, Key=f"{kind}/c").get("VersionId")
        upload = client.create_multipart_upload(Bucket=bucket, Key=f"{kind}/m", ChecksumAlgorithm="SHA256")
        part = client.upload_part(
            Bucket=bucket,
            Key=f"{kind}/m",
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=data,
            ChecksumAlgorithm="SHA256",
        )
        assert base64.b64decode(part["ChecksumSHA256"]) == sha
        done = client.complete_multipart_upload(
            Bucket=bucket,
            Key=f"{kind}/m",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )
        assert done.get("VersionId") == raw_client.head_object(Bucket=bucket, Key=f"{kind}/m").get("VersionId")
        assert client.get_object(Bucket=bucket, Key=f"{kind}/m")["Body"].read() == data


def test_not_modified_copy_onto_itself_bad_metadata_and_v1_prefix(
    mixed_proxy: ProxyProcess, client: Any, raw_client: Any, bucket: str
) -> None:
    """304 names the version (ETag); a copy onto itself changing nothing is S3's 400; a header
    botocore cannot send is the client's 400, not a 503; a v1 listing's Prefix is plain text
    without encoding-type=url."""
    for kind in KINDS:
        key = f"{kind}/same"
        etag = client.put_object(Bucket=bucket, Key=key, Body=b"same", Metadata={"a": "1"})["ETag"]
        assert etag.strip('"') == hashlib.md5(b"same").hexdigest()
        for call in (client.head_object, client.get_object):
            with pytest.raises(ClientError) as caught:
                call(Bucket=bucket, Key=key, IfNoneMatch=etag)
            response = caught.value.response
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 304
            assert response["ResponseMetadata"]["HTTPHeaders"].get("etag") == etag
        source = {"Bucket": bucket, "Key": key}
        assert error_of(client.copy_object, Bucket=bucket, Key=key, CopySource=source) == ("InvalidRequest", 400)
        client.copy_object(Bucket=bucket, Key=key, CopySource=source, MetadataDirective="REPLACE", Metadata={"a": "2"})
        assert client.head_object(Bucket=bucket, Key=key)["Metadata"] == {"a": "2"}
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"same"

        # Metadata in UTF-8, which botocore refuses to send (non-ASCII): the client's error.
        target = f"/{bucket}/{kind}/bad"
        headers = sign(mixed_proxy, "PUT", target, headers={"x-amz-meta-k": "caf\u00e9"}, body=b"x")
        headers["x-amz-meta-k"] = "caf\u00e9".encode().decode("latin-1")  # http.client sends latin-1
        bad = send(mixed_proxy, "PUT", target, headers, b"x")
        assert (bad.status, bad.code) == (400, "InvalidArgument"), bad.body
        # Latin-1 bytes (not UTF-8) are signed as sent, and refused the same way.
        headers = sign(mixed_proxy, "PUT", target, headers={"x-amz-meta-k": "caf\u00e9"}, body=b"x")
        assert send(mixed_proxy, "PUT", target, headers, b"x").status in (400, 403)
        assert error_of(client.head_object, Bucket=bucket, Key=f"{kind}/bad") == ("404", 404)

    client.put_object(Bucket=bucket, Key="plain/a b+c/x", Body=b"x")
    listed = signed_request(mixed_proxy, "GET", f"/{bucket}?prefix=plain%2Fa%20b%2Bc%2F")
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    root = ET.fromstring(listed.body)
    assert root.findtext("s3:Prefix", namespaces=ns) == "plain/a b+c/"
    assert [k.text for k in root.iterfind("s3:Contents/s3:Key", ns)] == ["plain/a b+c/x"]


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone serve s3 keeps no versions
def test_a_copy_of_a_given_version_copies_that_version(client: Any, raw_client: Any, bucket: str) -> None:
    """CopyObject and UploadPartCopy naming a source version (``?versionId=``) copy that version,
    not the current object: read decrypted for an encrypted source, server side between plaintext
    keys; the answer names the version read (``x-amz-copy-source-version-id``), and an encrypted
    destination stores ciphertext. A copy of an older version onto its own key restores it."""
    raw_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old, new = payload(3000, 1), payload(4000, 2)
    for src_kind in KINDS:
        src = f"{src_kind}/src"
        first = client.put_object(Bucket=bucket, Key=src, Body=old)["VersionId"]
        client.put_object(Bucket=bucket, Key=src, Body=new)
        source = {"Bucket": bucket, "Key": src, "VersionId": first}
        for dst_kind in KINDS:
            dst = f"{dst_kind}/from-{src_kind}"
            copied = client.copy_object(Bucket=bucket, Key=dst, CopySource=source)
            assert copied["CopySourceVersionId"] == first
            assert copied["CopyObjectResult"]["ETag"].strip('"') == hashlib.md5(old).hexdigest()
            assert client.get_object(Bucket=bucket, Key=dst)["Body"].read() == old, (src, dst)
            assert (MARKER in raw_client.get_object(Bucket=bucket, Key=dst)["Body"].read()) == (dst_kind == "plain")

            upload = client.create_multipart_upload(Bucket=bucket, Key=dst)["UploadId"]
            step = {"Bucket": bucket, "Key": dst, "UploadId": upload, "CopySource": source}
            part = client.upload_part_copy(PartNumber=1, CopySourceRange="bytes=10-2009", **step)
            assert part["CopySourceVersionId"] == first
            assert part["CopyPartResult"]["ETag"].strip('"') == hashlib.md5(old[10:2010]).hexdigest()
            parts = [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]
            client.complete_multipart_upload(Bucket=bucket, Key=dst, UploadId=upload, MultipartUpload={"Parts": parts})
            assert client.get_object(Bucket=bucket, Key=dst)["Body"].read() == old[10:2010], (src, dst)

        # Without a version: the current one, named in the answer.
        current = client.copy_object(Bucket=bucket, Key=f"{src_kind}/now", CopySource={"Bucket": bucket, "Key": src})
        assert current["CopySourceVersionId"] == client.head_object(Bucket=bucket, Key=src)["VersionId"]
        assert client.get_object(Bucket=bucket, Key=f"{src_kind}/now")["Body"].read() == new
        # The older version copied onto its key becomes the current object again.
        client.copy_object(Bucket=bucket, Key=src, CopySource=source)
        assert client.get_object(Bucket=bucket, Key=src)["Body"].read() == old
        assert client.get_object(Bucket=bucket, Key=src, VersionId=first)["Body"].read() == old
        # A version that is not there: the bucket's answer, nothing written.
        missing = {**source, "VersionId": "3sL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY"}
        direct = error_of(raw_client.copy_object, Bucket=bucket, Key=f"{src_kind}/none", CopySource=missing)
        assert direct == ("NoSuchVersion", 404)
        assert error_of(client.copy_object, Bucket=bucket, Key=f"{src_kind}/none", CopySource=missing) == direct
        assert error_of(client.get_object, Bucket=bucket, Key=src, VersionId=missing["VersionId"]) == direct
        assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=f"{src_kind}/none")


def test_a_chunked_put_without_its_length_is_missing_content_length(
    mixed_proxy: ProxyProcess, client: Any, bucket: str
) -> None:
    """A PUT in HTTP chunked transfer encoding without Content-Length (nor aws-chunked's
    x-amz-decoded-content-length): S3's ``411 MissingContentLength``, nothing stored, for both
    kinds of key; the same with the decoded length given is a PUT like any other."""
    for kind in KINDS:
        for operation, target in (("PutObject", f"/{bucket}/{kind}/te"), ("UploadPart", None)):
            if target is None:
                upload = client.create_multipart_upload(Bucket=bucket, Key=f"{kind}/te-mp")["UploadId"]
                target = f"/{bucket}/{kind}/te-mp?partNumber=1&uploadId={upload}"
            headers = sign(mixed_proxy, "PUT", target, body=b"bar")
            assert not {"content-length", "transfer-encoding"} & {name.lower() for name in headers}
            reply = send(mixed_proxy, "PUT", target, headers, iter([b"b", b"ar"]))  # sent chunked
            assert (reply.status, reply.code) == (411, "MissingContentLength"), (operation, reply.body)
        assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=f"{kind}/te")
        data = payload(MIB + 7, 4)
        framed = AwsChunkedWrapper(io.BytesIO(data), Crc32Checksum, "x-amz-checksum-crc32", chunk_size=MIB).read()
        reply = _unsigned_trailer_put(mixed_proxy, bucket, f"{kind}/aws-chunked", data, framed)
        assert reply.status == 200, reply.body
        assert client.get_object(Bucket=bucket, Key=f"{kind}/aws-chunked")["Body"].read() == data


def test_a_bucket_gone_is_no_such_bucket(client: Any, upstream: S3Server, bucket: str) -> None:
    """A GET or copy that finds no object because its bucket is gone answers S3's
    ``404 NoSuchBucket`` (the proxy's HEAD of an encrypted key has no error code to say so);
    a key missing from a bucket that is there stays ``NoSuchKey``."""
    gone = upstream.create_bucket()
    for kind in KINDS:
        client.put_object(Bucket=gone, Key=f"{kind}/x", Body=b"x")
        client.put_object(Bucket=bucket, Key=f"{kind}/x", Body=b"x")
    upstream.delete_bucket(gone)
    for kind in KINDS:
        assert error_of(client.get_object, Bucket=gone, Key=f"{kind}/x") == ("NoSuchBucket", 404)
        assert error_of(client.get_object, Bucket=bucket, Key=f"{kind}/missing") == ("NoSuchKey", 404)
        source = {"Bucket": gone, "Key": f"{kind}/x"}
        for dst_kind in KINDS:
            copy = {"Bucket": bucket, "Key": f"{dst_kind}/copy", "CopySource": source}
            assert error_of(client.copy_object, **copy) == ("NoSuchBucket", 404), (kind, dst_kind)
        missing = {"Bucket": bucket, "Key": f"{kind}/copy", "CopySource": {"Bucket": bucket, "Key": f"{kind}/missing"}}
        assert error_of(client.copy_object, **missing) == ("NoSuchKey", 404)


def _delete(client: Any, bucket: str, *objects: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """DeleteObjects of ``objects``: the keys deleted, and (key, code) of each error."""
    reply = client.delete_objects(Bucket=bucket, Delete={"Objects": list(objects)})
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200
    return [d["Key"] for d in reply.get("Deleted", [])], [(e["Key"], e["Code"]) for e in reply.get("Errors", [])]


@pytest.mark.all_upstreams  # the delete names the stored ETag found: every store must take it
def test_conditional_deletes_compare_the_clients_view(client: Any, raw_client: Any, bucket: str) -> None:
    """DeleteObjects' per-object ETag, LastModifiedTime and Size, and DeleteObject's If-Match,
    x-amz-if-match-last-modified-time and x-amz-if-match-size, as S3 applies them (ceph/s3-tests'
    conditional deletes): a condition that does not hold refuses that object alone
    (PreconditionFailed), one that holds deletes it, nothing there deletes nothing without an
    error. An encrypted object's ETag and Size are the plaintext's: the stored ETag does not hold."""
    data = payload(3000, 5)
    for kind in KINDS:
        key = f"{kind}/cond"
        etag = client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
        assert etag.strip('"') == hashlib.md5(data).hexdigest()
        mtime = client.head_object(Bucket=bucket, Key=key)["LastModified"]
        stored = raw_client.head_object(Bucket=bucket, Key=key)
        client.put_object(Bucket=bucket, Key=f"{kind}/other", Body=b"x")
        refused = [
            {"ETag": "badetag"},
            {"Size": 9999},
            {"LastModifiedTime": datetime(2015, 1, 1, tzinfo=UTC)},
            {"ETag": etag, "Size": len(data) + 1},
        ]
        if kind == "enc":
            refused += [{"ETag": stored["ETag"]}, {"Size": stored["ContentLength"]}]
        for condition in refused:
            assert _delete(client, bucket, {"Key": key, **condition}) == ([], [(key, "PreconditionFailed")]), condition
        # One object refused, another (unconditional) deleted in the same request.
        assert _delete(client, bucket, {"Key": key, "ETag": "badetag"}, {"Key": f"{kind}/other"}) == (
            [f"{kind}/other"],
            [(key, "PreconditionFailed")],
        )
        for call in (
            {"IfMatch": '"badetag"'},
            {"IfMatchSize": 9999},
            {"IfMatchLastModifiedTime": datetime(2015, 1, 1, tzinfo=UTC)},
        ):
            assert error_of(client.delete_object, Bucket=bucket, Key=key, **call) == ("PreconditionFailed", 412), call
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data  # still there
        holds = {"Key": key, "ETag": etag, "Size": len(data), "LastModifiedTime": mtime}
        assert _delete(client, bucket, holds) == ([key], [])
        assert error_of(client.head_object, Bucket=bucket, Key=key) == ("404", 404)
        assert _delete(client, bucket, {"Key": key, "ETag": "badetag"}) == ([key], [])  # nothing there
        client.put_object(Bucket=bucket, Key=key, Body=data)
        client.delete_object(Bucket=bucket, Key=key, IfMatch=etag, IfMatchSize=len(data))
        assert error_of(client.head_object, Bucket=bucket, Key=key) == ("404", 404)
        client.delete_object(Bucket=bucket, Key=key, IfMatch='"badetag"')  # nothing there: 204


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone serve s3 keeps no versions
def test_conditional_deletes_of_versions(client: Any, raw_client: Any, bucket: str) -> None:
    """In a versioned bucket: a condition on the current object holds or not as above; once it is
    a delete marker, only ``*`` holds; a condition on a given version is checked on that version."""
    raw_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = payload(2000, 6)
    for kind in KINDS:
        key = f"{kind}/v"
        first = client.put_object(Bucket=bucket, Key=key, Body=data)
        client.put_object(Bucket=bucket, Key=key, Body=b"newer")
        old = {"Key": key, "VersionId": first["VersionId"]}
        assert _delete(client, bucket, {**old, "ETag": "badetag"}) == ([], [(key, "PreconditionFailed")])
        assert _delete(client, bucket, {**old, "Size": 5}) == ([], [(key, "PreconditionFailed")])
        assert _delete(client, bucket, {**old, "ETag": first["ETag"], "Size": len(data)}) == ([key], [])
        assert _delete(client, bucket, {**old, "ETag": "badetag"}) == ([key], [])  # that version is gone
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"newer"

        marker = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key, "Size": 5}]})
        assert marker["Deleted"][0]["DeleteMarker"]
        assert _delete(client, bucket, {"Key": key, "ETag": "badetag"}) == ([], [(key, "PreconditionFailed")])
        assert error_of(client.delete_object, Bucket=bucket, Key=key, IfMatch='"badetag"') == (
            "PreconditionFailed",
            412,
        )
        assert client.delete_object(Bucket=bucket, Key=key, IfMatch="*")["DeleteMarker"]


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone serve s3 has no GetObjectAttributes
def test_object_attributes_checksum_is_never_of_ciphertext(client: Any, raw_client: Any, bucket: str) -> None:
    """GetObjectAttributes' Checksum is the bucket's, of the bytes it stores: for an encrypted key
    it is left out (it would be of ciphertext) while the ETag and size are the plaintext's; for a
    plaintext key it is what the bucket has, passed through. The client's checksum of a PUT is
    verified by the proxy and answered, not sent on (a documented difference, README)."""
    data = payload(1024, 8)
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    wanted = ["ETag", "Checksum", "ObjectSize", "StorageClass"]
    for kind in KINDS:
        key = f"{kind}/attrs"
        put = client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        assert put["ChecksumSHA256"] == sha
        attributes = client.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=wanted)
        assert (attributes["ETag"], attributes["ObjectSize"]) == (hashlib.md5(data).hexdigest(), len(data))
        stored = raw_client.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=wanted)
        if kind == "plain":
            assert attributes.get("Checksum") == stored.get("Checksum")
        else:
            assert "Checksum" not in attributes
            assert stored["ObjectSize"] > len(data)  # what the bucket describes is the ciphertext
