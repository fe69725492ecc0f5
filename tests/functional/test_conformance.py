"""S3 object semantics through the proxy (issue 18): what clients other than Medusa rely on.

Each test runs on moto and on rclone, through one proxy whose ``enc/`` keys are encrypted and
``plain/`` keys pass through, so every behaviour is checked for both kinds of key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.support.servers import ProxyProcess

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
    parts = [
        {"PartNumber": 1, "ETag": first["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]},
    ]
    client.complete_multipart_upload(Bucket=bucket, Key="enc/dst", UploadId=upload, MultipartUpload={"Parts": parts})
    expected = data[: 5 * MIB] + data[100:]
    assert client.get_object(Bucket=bucket, Key="enc/dst")["Body"].read() == expected
    assert MARKER not in raw_client.get_object(Bucket=bucket, Key="enc/dst")["Body"].read()
