"""CreateBucket and DeleteBucket in process: the client's headers and CreateBucketConfiguration
as botocore parameters, the upstream's region when the client names none, the upstream's errors
as they are, on both services (passthrough, and encryption on).

Through a running proxy on moto and rclone: tests/functional/test_buckets.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cache import StateStore
from proxy.config import parse_config
from proxy.keyfiles import generate_key_file, load_key_ring
from proxy.metrics import Metrics
from proxy.objects import ObjectService
from proxy.objects.passthrough import PassthroughService
from proxy.s3.api import Request
from proxy.s3.errors import S3Error
from tests.support.fake_upstream import BytesBody, FakeUpstream

CONFIG_LOCATION = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
)


def create(bucket: str, body: bytes = b"", **headers: str) -> Request:
    return Request("CreateBucket", bucket, None, {}, headers, BytesBody(body))


def delete(bucket: str) -> Request:
    return Request("DeleteBucket", bucket, None, {}, {})


async def test_create_bucket_forwards_headers_and_configuration() -> None:
    upstream = FakeUpstream("existing")
    service = PassthroughService(upstream)  # type: ignore[arg-type]
    reply = await service.handle(
        create(
            "new-bucket",
            CONFIG_LOCATION,
            **{"x-amz-acl": "private", "x-amz-bucket-object-lock-enabled": "True", "x-amz-object-ownership": "X"},
        )
    )
    assert (reply.status, reply.headers) == (200, {"Location": "/new-bucket"})
    assert upstream.bucket_params["new-bucket"] == {
        "ACL": "private",
        "ObjectLockEnabledForBucket": True,
        "ObjectOwnership": "X",
        "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"},
    }


async def test_create_bucket_without_configuration_takes_the_upstream_region() -> None:
    upstream = FakeUpstream("existing")
    service = PassthroughService(upstream)  # type: ignore[arg-type]
    await service.handle(create("in-us-east-1"))
    assert upstream.bucket_params["in-us-east-1"] == {}  # S3's default region: no constraint
    upstream.cfg.region = "eu-central-1"
    await service.handle(create("in-eu"))
    assert upstream.bucket_params["in-eu"] == {"CreateBucketConfiguration": {"LocationConstraint": "eu-central-1"}}


@pytest.mark.parametrize(
    "body",
    [
        b"<CreateBucketConfiguration><Bucket><Type>Directory</Type></Bucket></CreateBucketConfiguration>",
        b"<Delete><Object><Key>k</Key></Object></Delete>",
        b"not xml",
    ],
)
async def test_create_bucket_refuses_what_it_does_not_understand(body: bytes) -> None:
    upstream = FakeUpstream()
    with pytest.raises(S3Error) as err:
        await PassthroughService(upstream).handle(create("new-bucket", body))  # type: ignore[arg-type]
    assert (err.value.code, err.value.status) == ("MalformedXML", 400)
    assert "create_bucket" not in upstream.calls


async def test_create_bucket_refuses_a_bad_object_lock_flag() -> None:
    upstream = FakeUpstream()
    with pytest.raises(S3Error) as err:
        await PassthroughService(upstream).handle(  # type: ignore[arg-type]
            create("new-bucket", **{"x-amz-bucket-object-lock-enabled": "yes"})
        )
    assert (err.value.code, err.value.status) == ("InvalidArgument", 400)


async def test_bucket_lifecycle_with_encryption_on(tmp_path: Path) -> None:
    """The encrypting service serves both operations too, with the upstream's errors unchanged."""
    key_file = tmp_path / "k.key"
    generate_key_file(key_file)
    config = parse_config(
        {
            "clients": [{"access_key_id": "a", "secret_access_key": "s"}],
            "encryption": {"key_files": [str(key_file)]},
            "cache": {"path": str(tmp_path / "cache.sqlite")},
        },
        environ={},
    )
    upstream = FakeUpstream("existing")
    store = StateStore(config.cache.path)
    service = ObjectService(config, upstream, Metrics(), load_key_ring([str(key_file)]), store)  # type: ignore[arg-type]
    await service.start()
    try:
        assert (await service.handle(create("fresh"))).status == 200
        with pytest.raises(S3Error) as err:
            await service.handle(create("fresh"))
        assert (err.value.code, err.value.status) == ("BucketAlreadyOwnedByYou", 409)
        await service.handle(
            Request("PutObject", "fresh", "host/data/ks/t/nb-1-big-Data.db", {}, {}, BytesBody(b"x" * 100))
        )
        with pytest.raises(S3Error) as err:
            await service.handle(delete("fresh"))
        assert (err.value.code, err.value.status) == ("BucketNotEmpty", 409)
        await service.handle(Request("DeleteObject", "fresh", "host/data/ks/t/nb-1-big-Data.db", {}, {}))
        assert (await service.handle(delete("fresh"))).status == 204
        with pytest.raises(S3Error) as err:
            await service.handle(delete("fresh"))
        assert (err.value.code, err.value.status) == ("NoSuchBucket", 404)
    finally:
        await service.close()
