"""Data keys from AWS KMS (format version 2), with moto's KMS in server mode as the key service.

The proxy runs as a real server in front of moto's and rclone's S3; its KMS is moto's (a real
implementation of the KMS API, the same process as the moto upstream). One GenerateDataKey per
object or upload, Decrypt only for a data key not in memory; a KMS that refuses or is gone gives
clean S3 errors and stores nothing unreadable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from proxy.format.constants import PROVIDER_AWS_KMS
from proxy.format.trailer import Trailer
from tests.support.servers import MotoServer, ProxyProcess

MiB = 1 << 20


def kms_client(moto: MotoServer) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=moto.endpoint_url,
        region_name=moto.region,
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
    )


def kms_config(moto: MotoServer, key_arn: str, **extra: Any) -> dict[str, Any]:
    kms = {
        "key_id": key_arn,
        "endpoint_url": moto.endpoint_url,
        "region": moto.region,
        "access_key_id": moto.access_key,
        "secret_access_key": moto.secret_key,
        "request_timeout": 2,
        **extra,
    }
    return {"format_version": 2, "kms": kms}


def kms_requests(proxy: ProxyProcess) -> dict[tuple[str, str], float]:
    text = _metrics(proxy)
    found = re.findall(r'kms_requests_total\{operation="(\w+)",outcome="(\w+)"\} ([0-9.e+]+)', text)
    return {(op, outcome): float(value) for op, outcome, value in found}


def _metrics(proxy: ProxyProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def stored_trailer(raw: Any, bucket: str, key: str) -> Trailer:
    data = raw.get_object(Bucket=bucket, Key=key)["Body"].read()
    return Trailer.from_tail(data)


@pytest.fixture
def kms_key(moto_server: MotoServer) -> str:
    return str(kms_client(moto_server).create_key(Description="medusa-crypt-proxy test")["KeyMetadata"]["Arn"])


def test_objects_and_uploads_get_their_data_keys_from_kms(
    make_proxy: Callable[..., ProxyProcess], moto_server: MotoServer, kms_key: str, bucket: str, raw_client: Any
) -> None:
    proxy = make_proxy(encryption=kms_config(moto_server, kms_key))
    client = proxy.client()
    small, large = os.urandom(3000), os.urandom(12 * MiB + 5)
    client.put_object(Bucket=bucket, Key="n/data/small", Body=small)
    transfer = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    client.upload_fileobj(_Reader(large), bucket, "n/data/large", Config=transfer)
    after_writes = kms_requests(proxy)
    assert after_writes.get(("GenerateDataKey", "ok")) == 2  # one per object or upload, not per part
    assert after_writes.get(("Decrypt", "ok"), 0) == 0  # the upload's parts find its key in memory
    # One audit line per KMS call, naming the key and the object; build_info names the KMS key.
    audited = re.findall(r"event=key_use .*operation=GenerateDataKey .*key=(\S+) outcome=ok", proxy.log_text())
    assert sorted(audited) == ["n/data/large", "n/data/small"]
    assert f"kms:{kms_key}" in re.search(r'build_info\{[^}]*key_ids="([^"]*)"', _metrics(proxy))[1]  # type: ignore[index]

    for key, data in (("n/data/small", small), ("n/data/large", large)):
        trailer = stored_trailer(raw_client, bucket, key)
        assert trailer.version == 2 and trailer.wrapped is not None
        assert (trailer.wrapped.provider, trailer.wrapped.key_ref) == (PROVIDER_AWS_KMS, kms_key)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    part = client.get_object(Bucket=bucket, Key="n/data/large", Range="bytes=5242000-10485999")["Body"].read()
    assert part == large[5242000:10486000]

    proxy.restart()  # an empty cache: Decrypt once per data key, then from memory
    before = kms_requests(proxy).get(("Decrypt", "ok"), 0)
    for _ in range(3):
        assert client.get_object(Bucket=bucket, Key="n/data/large")["Body"].read() == large
    assert kms_requests(proxy).get(("Decrypt", "ok"), 0) == before + 1


def test_a_kms_that_refuses_or_is_gone_gives_clean_errors_and_stores_nothing(
    make_proxy: Callable[..., ProxyProcess], moto_server: MotoServer, kms_key: str, bucket: str, raw_client: Any
) -> None:
    proxy = make_proxy(encryption=kms_config(moto_server, kms_key, cache_seconds=0))
    client = proxy.client(retries={"max_attempts": 1})
    client.put_object(Bucket=bucket, Key="n/data/kept", Body=b"x" * 1000)

    # Refused: a key the KMS does not have (moto enforces no disabled state or key policy).
    missing = kms_key.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    refusing = dict(kms_config(moto_server, kms_key, cache_seconds=0)["kms"], key_id=missing)
    proxy.restart(encryption={**proxy.config["encryption"], "kms": refusing})
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="n/data/new", Body=b"y" * 1000)
    assert refused.value.response["Error"]["Code"] == "InternalError"
    assert "key service refused GenerateDataKey: NotFoundException" in refused.value.response["Error"]["Message"]
    assert "Contents" not in raw_client.list_objects_v2(Bucket=bucket, Prefix="n/data/new")
    assert kms_requests(proxy).get(("GenerateDataKey", "error"), 0) >= 1
    # What is stored stays readable: its trailer names the key it was made under.
    assert client.get_object(Bucket=bucket, Key="n/data/kept")["Body"].read() == b"x" * 1000

    # Gone: a KMS endpoint nobody answers is 503, retryable, and nothing is stored either.
    gone = dict(kms_config(moto_server, kms_key)["kms"], endpoint_url="http://127.0.0.1:9")
    proxy.restart(encryption={**proxy.config["encryption"], "kms": gone})
    with pytest.raises(ClientError) as unreachable:
        client.put_object(Bucket=bucket, Key="n/data/new", Body=b"z" * 1000)
    assert unreachable.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "Contents" not in raw_client.list_objects_v2(Bucket=bucket, Prefix="n/data/new")


def test_a_wrapped_key_from_another_object_is_refused(
    make_proxy: Callable[..., ProxyProcess], moto_server: MotoServer, kms_key: str, bucket: str, raw_client: Any
) -> None:
    """Another object's trailer (its KMS-wrapped key included) does not make a copy readable
    under a new name: the trailer names its object, and KMS's context names it too."""
    proxy = make_proxy(encryption=kms_config(moto_server, kms_key))
    client = proxy.client(retries={"max_attempts": 1})
    client.put_object(Bucket=bucket, Key="n/data/a", Body=b"a" * 2000)
    raw_client.copy_object(Bucket=bucket, Key="n/data/b", CopySource={"Bucket": bucket, "Key": "n/data/a"})
    with pytest.raises(ClientError) as refused:
        client.get_object(Bucket=bucket, Key="n/data/b")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


class _Reader:
    """A file-like object over bytes (upload_fileobj reads it in parts)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        chunk, self._pos = self._data[self._pos : end], end
        return chunk
