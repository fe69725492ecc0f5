"""CreateBucket and DeleteBucket through the real proxy in front of moto and rclone, driven with
boto3: each step answers exactly what the same step answers straight on the upstream (status and
S3 error code), the bucket it makes is real and usable, and a client whose scope does not allow a
bucket can neither create nor delete it.

The parameter translation is tested in process in tests/unit/objects/test_buckets.py; the AWS CLI's
``aws s3 mb`` / ``rb`` in tests/e2e/test_awscli.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support.servers import ProxyProcess, S3Server

DATA_KEY = "node1/backup1/data/ks1/t-1/nb-1-big-Data.db"
SCOPED_KEY, SCOPED_SECRET = "scoped", "the-scoped-secret"


@pytest.fixture
def names(upstream: S3Server) -> Iterator[Callable[[], str]]:
    """Fresh bucket names; whatever of them exists at the end is emptied and deleted."""
    made: list[str] = []

    def new() -> str:
        made.append(f"mb-{uuid.uuid4().hex[:16]}")
        return made[-1]

    yield new
    for name in made:
        with contextlib.suppress(Exception):
            upstream.delete_bucket(name)


def outcome(call: Callable[..., Any], **kwargs: Any) -> tuple[int, str]:
    """(HTTP status, S3 error code or "") of one call."""
    try:
        reply = call(**kwargs)
    except ClientError as err:
        return err.response["ResponseMetadata"]["HTTPStatusCode"], err.response["Error"]["Code"]
    return reply["ResponseMetadata"]["HTTPStatusCode"], ""


def lifecycle(client: Any, name: str) -> list[tuple[str, tuple[int, str]]]:
    """The steps of a bucket's life, each with its outcome."""
    steps: list[tuple[str, tuple[int, str]]] = []

    def step(label: str, call: Callable[..., Any], **kwargs: Any) -> None:
        steps.append((label, outcome(call, **kwargs)))

    step("create", client.create_bucket, Bucket=name)
    step("create again", client.create_bucket, Bucket=name)
    step("put", client.put_object, Bucket=name, Key=DATA_KEY, Body=b"sstable bytes")
    step("delete non-empty", client.delete_bucket, Bucket=name)
    step("delete object", client.delete_object, Bucket=name, Key=DATA_KEY)
    step("delete", client.delete_bucket, Bucket=name)
    step("delete again", client.delete_bucket, Bucket=name)
    step("head deleted", client.head_bucket, Bucket=name)
    return steps


def test_bucket_lifecycle_answers_as_the_upstream_does(
    proxy: ProxyProcess, upstream: S3Server, names: Callable[[], str]
) -> None:
    direct = lifecycle(upstream.client(), names())
    proxied = lifecycle(proxy.client(**MEDUSA_CLIENT_CONFIG), names())
    assert proxied == direct
    answers = dict(proxied)
    # What every S3 store says here (moto answers a second create with 200, rclone with 409).
    assert answers["create"] == (200, "")
    assert answers["delete non-empty"] == (409, "BucketNotEmpty")
    assert answers["delete"] == (204, "")
    assert answers["delete again"] == (404, "NoSuchBucket")
    assert answers["head deleted"][0] == 404


def test_created_bucket_is_real_and_serves_encrypted_objects(
    proxy: ProxyProcess, upstream: S3Server, names: Callable[[], str]
) -> None:
    name = names()
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    created = client.create_bucket(Bucket=name)
    assert created["Location"] == f"/{name}"
    raw = upstream.client()
    assert name in [b["Name"] for b in raw.list_buckets()["Buckets"]]
    client.put_object(Bucket=name, Key=DATA_KEY, Body=b"PLAINTEXT " * 1000)
    assert b"PLAINTEXT" not in raw.get_object(Bucket=name, Key=DATA_KEY)["Body"].read()
    assert client.get_object(Bucket=name, Key=DATA_KEY)["Body"].read() == b"PLAINTEXT " * 1000
    client.delete_object(Bucket=name, Key=DATA_KEY)
    client.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in raw.list_buckets()["Buckets"]]


def test_create_bucket_configuration_and_headers_reach_the_upstream(
    proxy: ProxyProcess, upstream: S3Server, names: Callable[[], str]
) -> None:
    """A LocationConstraint body, x-amz-acl and x-amz-bucket-object-lock-enabled go upstream; moto
    keeps them (rclone ignores them, and says so with the same answers as without the proxy)."""
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    located, locked = names(), names()
    client.create_bucket(Bucket=located, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    client.create_bucket(Bucket=locked, ACL="private", ObjectLockEnabledForBucket=True)
    raw = upstream.client()
    if upstream.name == "moto":
        assert raw.get_bucket_location(Bucket=located)["LocationConstraint"] == "eu-west-1"
        lock = raw.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"]
        assert lock["ObjectLockEnabled"] == "Enabled"
        # moto refuses us-east-1 named explicitly; the proxy passes that refusal on.
        assert outcome(
            client.create_bucket, Bucket=names(), CreateBucketConfiguration={"LocationConstraint": "us-east-1"}
        ) == (400, "InvalidLocationConstraint")
    else:
        assert {located, locked} <= {b["Name"] for b in raw.list_buckets()["Buckets"]}


def test_scoped_clients_create_and_delete_only_their_own_buckets(
    make_proxy: Callable[..., ProxyProcess], upstream: S3Server, names: Callable[[], str]
) -> None:
    mine, other, prefixed = names(), names(), names()
    proxy = make_proxy(
        clients=[
            {"access_key_id": "medusa", "secret_access_key": "secret-for-tests"},
            {"access_key_id": SCOPED_KEY, "secret_access_key": SCOPED_SECRET, "buckets": [mine]},
            {"access_key_id": "prefixed", "secret_access_key": "the-prefixed-secret", "prefix": "cluster1/"},
        ]
    )
    scoped = proxy.client(access_key_id=SCOPED_KEY, secret_access_key=SCOPED_SECRET, **MEDUSA_CLIENT_CONFIG)
    limited = proxy.client(access_key_id="prefixed", secret_access_key="the-prefixed-secret", **MEDUSA_CLIENT_CONFIG)
    raw = upstream.client()

    def exists(name: str) -> bool:
        return name in {b["Name"] for b in raw.list_buckets()["Buckets"]}

    # A bucket outside the client's list: refused, nothing made, nothing removed.
    assert outcome(scoped.create_bucket, Bucket=other) == (403, "AccessDenied")
    assert not exists(other)
    raw.create_bucket(Bucket=other)
    assert outcome(scoped.delete_bucket, Bucket=other) == (403, "AccessDenied")
    assert exists(other)

    # A client limited to a key prefix owns no whole bucket: refused either way.
    assert outcome(limited.create_bucket, Bucket=prefixed) == (403, "AccessDenied")
    assert not exists(prefixed)
    assert outcome(limited.delete_bucket, Bucket=other) == (403, "AccessDenied")
    assert exists(other)

    # Its own bucket: allowed.
    assert outcome(scoped.create_bucket, Bucket=mine) == (200, "")
    assert exists(mine)
    assert outcome(scoped.delete_bucket, Bucket=mine) == (204, "")
    assert not exists(mine)
