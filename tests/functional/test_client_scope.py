"""Per-client scopes (``clients[].buckets`` and ``clients[].prefix``) through the real proxy in
front of moto and rclone, driven with boto3: a client scoped to bucket A under ``cluster1/``
reaches nothing else, while an unscoped client still sees everything.

The scope rules themselves, the config fields and the service's own checks are tested in process
in tests/unit/test_client_scope.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support.servers import REGION, ProxyProcess, S3Server

SCOPED_KEY, SCOPED_SECRET = "scoped", "the-scoped-secret"
PREFIX = "cluster1/"


# ------------------------------------------------------------------------------------------
# Through the real proxy
# ------------------------------------------------------------------------------------------


@pytest.fixture
def other_bucket(upstream: S3Server) -> Iterator[str]:
    name = upstream.create_bucket()
    yield name
    with contextlib.suppress(Exception):
        upstream.delete_bucket(name)


def _clients(bucket: str) -> list[dict[str, Any]]:
    return [
        {"access_key_id": "medusa", "secret_access_key": "secret-for-tests"},
        {"access_key_id": SCOPED_KEY, "secret_access_key": SCOPED_SECRET, "buckets": [bucket], "prefix": PREFIX},
    ]


def _denied(call: Callable[..., Any], **kwargs: Any) -> None:
    with pytest.raises(ClientError) as err:
        call(**kwargs)
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response
    # A HEAD has no body: botocore names the error by its status.
    assert response["Error"]["Code"] in ("AccessDenied", "403"), response
    if response["Error"]["Code"] == "AccessDenied":
        assert response["Error"]["Message"] == "Access Denied"


def _keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_scoped_client_reaches_only_its_bucket_and_prefix(
    make_proxy: Callable[..., ProxyProcess], bucket: str, other_bucket: str, raw_client: Any
) -> None:
    proxy = make_proxy(clients=_clients(bucket))
    admin = proxy.client(**MEDUSA_CLIENT_CONFIG)
    scoped = proxy.client(access_key_id=SCOPED_KEY, secret_access_key=SCOPED_SECRET, **MEDUSA_CLIENT_CONFIG)
    a, b = bucket, other_bucket
    for bkt, key in (
        (a, "cluster1/node1/data/x.db"),
        (a, "cluster1/index/i"),
        (a, "other/node1/data/y.db"),
        (b, "cluster1/node1/data/z.db"),
    ):
        admin.put_object(Bucket=bkt, Key=key, Body=f"{bkt}/{key}".encode())

    # In scope: everything works.
    assert (
        scoped.get_object(Bucket=a, Key="cluster1/node1/data/x.db")["Body"].read()
        == f"{a}/cluster1/node1/data/x.db".encode()
    )
    scoped.head_object(Bucket=a, Key="cluster1/index/i")
    scoped.put_object(Bucket=a, Key="cluster1/node1/data/new.db", Body=b"new")
    assert _keys(scoped, a, PREFIX) == ["cluster1/index/i", "cluster1/node1/data/new.db", "cluster1/node1/data/x.db"]
    assert [o["Key"] for o in scoped.list_objects(Bucket=a, Prefix="cluster1/index/").get("Contents", [])] == [
        "cluster1/index/i"
    ]
    scoped.head_bucket(Bucket=a)
    scoped.get_bucket_location(Bucket=a)
    scoped.copy_object(Bucket=a, Key="cluster1/copy.db", CopySource={"Bucket": a, "Key": "cluster1/node1/data/x.db"})
    assert admin.get_object(Bucket=a, Key="cluster1/copy.db")["Body"].read() == f"{a}/cluster1/node1/data/x.db".encode()
    scoped.delete_object(Bucket=a, Key="cluster1/copy.db")
    listed = [bk["Name"] for bk in scoped.list_buckets()["Buckets"]]
    assert listed == [a]

    # The other bucket: nothing.
    z = "cluster1/node1/data/z.db"
    _denied(scoped.get_object, Bucket=b, Key=z)
    _denied(scoped.head_object, Bucket=b, Key=z)
    _denied(scoped.put_object, Bucket=b, Key="cluster1/new", Body=b"x")
    _denied(scoped.delete_object, Bucket=b, Key=z)
    _denied(scoped.list_objects_v2, Bucket=b, Prefix=PREFIX)
    _denied(scoped.list_objects, Bucket=b, Prefix=PREFIX)
    _denied(scoped.head_bucket, Bucket=b)
    _denied(scoped.get_bucket_location, Bucket=b)
    _denied(scoped.list_multipart_uploads, Bucket=b, Prefix=PREFIX)
    _denied(scoped.create_multipart_upload, Bucket=b, Key="cluster1/mp")
    _denied(scoped.delete_objects, Bucket=b, Delete={"Objects": [{"Key": z}]})
    _denied(scoped.copy_object, Bucket=a, Key="cluster1/stolen", CopySource={"Bucket": b, "Key": z})
    _denied(
        scoped.copy_object, Bucket=b, Key="cluster1/pushed", CopySource={"Bucket": a, "Key": "cluster1/node1/data/x.db"}
    )

    # The same bucket outside the prefix: nothing either.
    y = "other/node1/data/y.db"
    _denied(scoped.get_object, Bucket=a, Key=y)
    _denied(scoped.head_object, Bucket=a, Key=y)
    _denied(scoped.put_object, Bucket=a, Key="other/new", Body=b"x")
    _denied(scoped.delete_object, Bucket=a, Key=y)
    _denied(scoped.list_objects_v2, Bucket=a)
    _denied(scoped.list_objects_v2, Bucket=a, Prefix="other/")
    _denied(scoped.list_objects_v2, Bucket=a, Prefix="cluster1")
    _denied(scoped.list_objects, Bucket=a)
    _denied(scoped.list_multipart_uploads, Bucket=a)
    _denied(scoped.create_multipart_upload, Bucket=a, Key="other/mp")
    _denied(scoped.copy_object, Bucket=a, Key="cluster1/stolen", CopySource={"Bucket": a, "Key": y})
    _denied(
        scoped.copy_object, Bucket=a, Key="other/pushed", CopySource={"Bucket": a, "Key": "cluster1/node1/data/x.db"}
    )
    _denied(scoped.put_object, Bucket=a, Key="cluster1/../other/escape", Body=b"x")
    _denied(scoped.get_object, Bucket=a, Key="cluster1/../other/node1/data/y.db")

    # Multipart: inside the prefix it works; a part copied from outside is refused.
    upload = scoped.create_multipart_upload(Bucket=a, Key="cluster1/mp")["UploadId"]
    try:
        for source in ({"Bucket": b, "Key": z}, {"Bucket": a, "Key": y}):
            _denied(
                scoped.upload_part_copy, Bucket=a, Key="cluster1/mp", UploadId=upload, PartNumber=1, CopySource=source
            )
        _denied(scoped.upload_part, Bucket=a, Key="other/mp", UploadId=upload, PartNumber=1, Body=b"x")
        _denied(scoped.list_parts, Bucket=a, Key="other/mp", UploadId=upload)
        _denied(scoped.abort_multipart_upload, Bucket=a, Key="other/mp", UploadId=upload)
        _denied(
            scoped.complete_multipart_upload,
            Bucket=a,
            Key="other/mp",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]},
        )
        try:
            uploads = scoped.list_multipart_uploads(Bucket=a, Prefix=PREFIX).get("Uploads", [])
        except ClientError as err:  # rclone answers NoSuchUpload when it lists none
            assert err.response["Error"]["Code"] == "NoSuchUpload"
        else:
            assert [u["Key"] for u in uploads] == ["cluster1/mp"]
    finally:
        scoped.abort_multipart_upload(Bucket=a, Key="cluster1/mp", UploadId=upload)

    # DeleteObjects with one key outside the prefix: refused whole, nothing deleted.
    _denied(scoped.delete_objects, Bucket=a, Delete={"Objects": [{"Key": "cluster1/index/i"}, {"Key": y}]})
    assert _keys(raw_client, a) == ["cluster1/index/i", "cluster1/node1/data/new.db", "cluster1/node1/data/x.db", y]
    deleted = scoped.delete_objects(Bucket=a, Delete={"Objects": [{"Key": "cluster1/node1/data/new.db"}]})
    assert [d["Key"] for d in deleted["Deleted"]] == ["cluster1/node1/data/new.db"]

    # A presigned URL is the same client: the same scope.
    url = scoped.generate_presigned_url("get_object", Params={"Bucket": b, "Key": z})
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(url, timeout=10)
    assert http_err.value.code == 403 and b"<Code>AccessDenied</Code>" in http_err.value.read()

    # The unscoped client still sees everything.
    assert _keys(admin, a) == ["cluster1/index/i", "cluster1/node1/data/x.db", y]
    assert _keys(admin, b) == [z]
    assert admin.get_object(Bucket=b, Key=z)["Body"].read() == f"{b}/{z}".encode()
    assert {a, b} <= {bk["Name"] for bk in admin.list_buckets()["Buckets"]}
    admin.copy_object(Bucket=b, Key="copied", CopySource={"Bucket": a, "Key": y})

    # Refusals are access-log lines like any other error.
    log = proxy.log_text()
    assert "error=AccessDenied" in log and "status=403" in log


def test_a_bad_signature_keeps_its_error(
    make_proxy: Callable[..., ProxyProcess], bucket: str, other_bucket: str
) -> None:
    proxy = make_proxy(clients=_clients(bucket))
    wrong = proxy.client(access_key_id=SCOPED_KEY, secret_access_key="not-the-secret", **MEDUSA_CLIENT_CONFIG)
    with pytest.raises(ClientError) as err:
        wrong.get_object(Bucket=other_bucket, Key="cluster1/x")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = proxy.client(access_key_id="nobody", secret_access_key="x", **MEDUSA_CLIENT_CONFIG)
    with pytest.raises(ClientError) as err:
        unknown.list_buckets()
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def _signed_head(proxy: ProxyProcess, method: str, path: str, headers: dict[str, str]) -> bytes:
    request = AWSRequest(method, proxy.endpoint_url + path, headers=headers)
    S3SigV4Auth(Credentials(SCOPED_KEY, SCOPED_SECRET), "s3", REGION).add_auth(request)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {proxy.host}:{proxy.port}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_expect_continue_is_refused_before_the_body(
    make_proxy: Callable[..., ProxyProcess], bucket: str, other_bucket: str, raw_client: Any
) -> None:
    proxy = make_proxy(clients=_clients(bucket))
    headers = {"Content-Length": "1048576", "Expect": "100-continue", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(_signed_head(proxy, "PUT", f"/{other_bucket}/cluster1/big", headers))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"<Code>AccessDenied</Code>" in answer
    # In scope, the client is told to go on.
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(_signed_head(proxy, "PUT", f"/{bucket}/cluster1/big", headers))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
    assert raw_client.list_objects_v2(Bucket=other_bucket).get("KeyCount", 0) == 0


def test_sighup_applies_new_scopes(make_proxy: Callable[..., ProxyProcess], bucket: str, other_bucket: str) -> None:
    proxy = make_proxy(clients=_clients(bucket))
    assert proxy.process is not None and proxy.process.proc is not None
    scoped = proxy.client(access_key_id=SCOPED_KEY, secret_access_key=SCOPED_SECRET, **MEDUSA_CLIENT_CONFIG)
    _denied(scoped.put_object, Bucket=other_bucket, Key="cluster2/x", Body=b"x")

    proxy.config["clients"] = [
        {
            "access_key_id": SCOPED_KEY,
            "secret_access_key": SCOPED_SECRET,
            "buckets": [other_bucket],
            "prefix": "cluster2/",
        }
    ]
    proxy.write_config()
    reloads = proxy.log_text().count("reloaded ")
    os.kill(proxy.process.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while proxy.log_text().count("reloaded ") == reloads:
        assert time.monotonic() < deadline, proxy.log_text()
        time.sleep(0.05)
    scoped.put_object(Bucket=other_bucket, Key="cluster2/x", Body=b"x")
    _denied(scoped.get_object, Bucket=bucket, Key="cluster1/x")
    assert [bk["Name"] for bk in scoped.list_buckets()["Buckets"]] == [other_bucket]
