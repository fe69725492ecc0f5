"""Objects through the real proxy in front of real S3 servers (moto and rclone), with boto3.

Data keys (``.../data/...``) are encrypted; metadata keys (``.../meta/...``, ``index/...``) pass
through. Every test checks what the client sees *and* what the bucket holds.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

# SeaweedFS too (tests/conftest.py): a store's differences show up here first.
pytestmark = pytest.mark.all_upstreams

MIB = 1 << 20
MARKER = b"PLAINTEXT-MARKER-7f3a"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes with the plaintext marker in every MiB, so leaks are easy to find."""
    block = (MARKER + hashlib.sha256(str(seed).encode()).digest() * 40)[:1000]
    data = (block * (size // len(block) + 1))[:size]
    return data


def s3_etag(data: bytes, part_size: int | None = None) -> str:
    if part_size is None or len(data) < part_size:
        return hashlib.md5(data).hexdigest()
    digests = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def raw_bytes(raw_client: Any, bucket: str, key: str) -> bytes:
    data: bytes = raw_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def cutoff_after(raw_client: Any, bucket: str, key: str | None = None) -> str:
    """A ``legacy_plaintext_before`` that declares ``key`` (default: every object), as stored now,
    older than encryption: one second after the newest upstream Last-Modified (1 s resolution)."""
    if key is not None:
        modified = raw_client.head_object(Bucket=bucket, Key=key)["LastModified"]
    else:
        pages = raw_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        modified = max(o["LastModified"] for page in pages for o in page.get("Contents", []))
    return (modified.replace(microsecond=0) + timedelta(seconds=1)).isoformat()


def wait_past(cutoff: str) -> None:
    """Sleep until the upstream clock's second is past ``cutoff``: what is written next is newer."""
    remaining = (datetime.fromisoformat(cutoff) - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, remaining) + 1.05)


DATA_KEY = "node1/data/ks1/table-1/nb-1-big-Data.db"
META_KEY = "node1/backup1/meta/schema.cql"


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, MIB - 1, MIB, MIB + 1, 3 * MIB + 5])
def test_put_get_head_single(proxy_client: Any, raw_client: Any, bucket: str, size: int) -> None:
    data = payload(size, size)
    put = proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    assert put["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    head = proxy_client.head_object(Bucket=bucket, Key=DATA_KEY)
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    got = proxy_client.get_object(Bucket=bucket, Key=DATA_KEY)
    assert got["ContentLength"] == size
    assert got["Body"].read() == data
    stored = raw_bytes(raw_client, bucket, DATA_KEY)
    assert len(stored) > size  # ciphertext plus records and trailer
    assert MARKER not in stored
    listed = proxy_client.list_objects_v2(Bucket=bucket, Prefix="node1/data/")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"].strip('"')) for o in listed] == [
        (DATA_KEY, size, hashlib.md5(data).hexdigest())
    ]


def test_metadata_passes_through_unchanged(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data = b"CREATE TABLE ks1.t (k int PRIMARY KEY); " + MARKER
    proxy_client.put_object(Bucket=bucket, Key=META_KEY, Body=data)
    assert raw_bytes(raw_client, bucket, META_KEY) == data
    assert proxy_client.get_object(Bucket=bucket, Key=META_KEY)["Body"].read() == data
    index_key = "index/backup_index/backup1/tokenmap_node1.json"
    proxy_client.put_object(Bucket=bucket, Key=index_key, Body=b"{}")
    assert raw_bytes(raw_client, bucket, index_key) == b"{}"


@pytest.mark.parametrize(
    ("size", "part_size"),
    [
        (12 * MIB, 5 * MIB),  # short last part, held back and sent with the trailer
        (16 * MIB, 8 * MIB),  # equal parts (aws cli / boto default part size)
        (10 * MIB + 2, 5 * MIB + 1),  # irregular parts: not multiples of the chunk size
        (100 * MIB + 7, 8 * MIB),  # the largest size the issue names, 13 parts
    ],
)
def test_multipart_round_trip(
    proxy_client: Any, raw_client: Any, bucket: str, tmp_path: Any, size: int, part_size: int
) -> None:
    data = payload(size, part_size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4)
    proxy_client.upload_file(str(src), bucket, DATA_KEY, Config=config)
    head = proxy_client.head_object(Bucket=bucket, Key=DATA_KEY)
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"') == s3_etag(data, part_size)
    dst = tmp_path / "dst.bin"
    proxy_client.download_file(bucket, DATA_KEY, str(dst), Config=config)
    assert dst.read_bytes() == data
    assert MARKER not in raw_bytes(raw_client, bucket, DATA_KEY)
    listed = proxy_client.list_objects_v2(Bucket=bucket)["Contents"]
    assert (listed[0]["Size"], listed[0]["ETag"].strip('"')) == (size, s3_etag(data, part_size))


def test_view_matches_direct_upload(
    proxy_client: Any, raw_client: Any, bucket: str, tmp_path: Any, upstream: Any
) -> None:
    """HEAD and LIST through the proxy equal what the upstream reports for the same plaintext."""
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    sizes = {"a": 0, "b": 100, "c": 6 * MIB, "d": 10 * MIB}
    for name, size in sizes.items():
        src = tmp_path / name
        src.write_bytes(payload(size, size))
        proxy_client.upload_file(str(src), bucket, f"enc/data/{name}", Config=config)
        raw_client.upload_file(str(src), bucket, f"raw/data/{name}", Config=config)
    through = {
        o["Key"].split("/")[-1]: o for o in proxy_client.list_objects_v2(Bucket=bucket, Prefix="enc/")["Contents"]
    }
    direct = {o["Key"].split("/")[-1]: o for o in raw_client.list_objects_v2(Bucket=bucket, Prefix="raw/")["Contents"]}
    for name in sizes:
        assert through[name]["Size"] == direct[name]["Size"]
        if upstream.name == "moto":  # rclone's multipart ETags are not S3's
            assert through[name]["ETag"] == direct[name]["ETag"]
        head = proxy_client.head_object(Bucket=bucket, Key=f"enc/data/{name}")
        assert head["ContentLength"] == sizes[name]


@pytest.mark.parametrize(
    "spec",
    [
        "bytes=0-0",
        "bytes=0-99",
        "bytes=100-",
        "bytes=-1",
        "bytes=-5000",
        "bytes=1048570-1048580",
        "bytes=1048576-2097151",
        "bytes=3145700-",
        "bytes=0-99999999",
    ],
)
def test_range_get(proxy_client: Any, bucket: str, spec: str) -> None:
    data = payload(3 * MIB + 5, 7)
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    got = proxy_client.get_object(Bucket=bucket, Key=DATA_KEY, Range=spec)
    first_s, _, last_s = spec[len("bytes=") :].partition("-")
    if first_s == "":
        first, last = len(data) - int(last_s), len(data) - 1
    else:
        first = int(first_s)
        last = min(int(last_s), len(data) - 1) if last_s else len(data) - 1
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes {first}-{last}/{len(data)}"
    assert got["Body"].read() == data[first : last + 1]


def test_range_past_end_is_416(proxy_client: Any, bucket: str) -> None:
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"abc")
    with pytest.raises(ClientError) as err:
        proxy_client.get_object(Bucket=bucket, Key=DATA_KEY, Range="bytes=3-")
    assert err.value.response["Error"]["Code"] == "InvalidRange"


def test_conditionals_use_plaintext_etag(proxy_client: Any, bucket: str) -> None:
    data = payload(2 * MIB, 3)
    etag = '"' + hashlib.md5(data).hexdigest() + '"'
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    got = proxy_client.get_object(Bucket=bucket, Key=DATA_KEY, Range="bytes=0-9", IfMatch=etag)
    assert got["Body"].read() == data[:10]
    with pytest.raises(ClientError) as err:
        proxy_client.get_object(Bucket=bucket, Key=DATA_KEY, IfMatch='"0123"')
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as err:
        proxy_client.get_object(Bucket=bucket, Key=DATA_KEY, IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as err:
        proxy_client.head_object(Bucket=bucket, Key=DATA_KEY, IfMatch='"0123"')
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_default_boto_client_checksums(proxy_client_default: Any, raw_client: Any, bucket: str, tmp_path: Any) -> None:
    """boto3 defaults: CRC32 checksums, and aws-chunked bodies on multipart uploads."""
    data = payload(9 * MIB, 11)
    proxy_client_default.put_object(Bucket=bucket, Key=DATA_KEY, Body=data[:1000])
    got = proxy_client_default.get_object(Bucket=bucket, Key=DATA_KEY, ChecksumMode="ENABLED")
    assert got["Body"].read() == data[:1000]
    src = tmp_path / "f"
    src.write_bytes(data)
    proxy_client_default.upload_file(str(src), bucket, DATA_KEY)
    dst = tmp_path / "g"
    proxy_client_default.download_file(bucket, DATA_KEY, str(dst))
    assert dst.read_bytes() == data
    assert MARKER not in raw_bytes(raw_client, bucket, DATA_KEY)


def test_listing_v1_v2_delimiter_paging(proxy_client: Any, bucket: str) -> None:
    keys = [f"n/data/k{i:03d} x+y" for i in range(25)] + ["n/meta/m1", "n/meta/m2", "top"]
    for key in keys:
        proxy_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    pages = proxy_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="n/", PaginationConfig={"PageSize": 7}
    )
    listed = [o for page in pages for o in page.get("Contents", [])]
    assert sorted(o["Key"] for o in listed) == sorted(k for k in keys if k.startswith("n/"))
    assert all(o["Size"] == len(o["Key"]) for o in listed)
    top = proxy_client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["n/"]
    assert [o["Key"] for o in top["Contents"]] == ["top"]
    v1 = proxy_client.list_objects(Bucket=bucket, Prefix="n/data/", MaxKeys=10)
    assert v1["IsTruncated"] and len(v1["Contents"]) == 10
    assert all(o["Size"] == len(o["Key"]) for o in v1["Contents"])


def test_delete_and_delete_objects(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    for i in range(3):
        proxy_client.put_object(Bucket=bucket, Key=f"x/data/{i}", Body=b"z")
    proxy_client.delete_object(Bucket=bucket, Key="x/data/0")
    result = proxy_client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x/data/1"}, {"Key": "x/data/2"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["x/data/1", "x/data/2"]
    assert raw_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_copy_reencrypts(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data = payload(MIB + 3, 5)
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data, Metadata={"color": "blue"})
    target = "node2/data/ks1/table-1/copy-Data.db"
    proxy_client.copy_object(Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": DATA_KEY})
    got = proxy_client.get_object(Bucket=bucket, Key=target)
    assert got["Body"].read() == data
    assert got["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    # Stored under its own name: not a byte copy that the name check would refuse.
    assert raw_bytes(raw_client, bucket, target) != raw_bytes(raw_client, bucket, DATA_KEY)


def test_missing_key_is_404(proxy_client: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        proxy_client.head_object(Bucket=bucket, Key=DATA_KEY)
    assert err.value.response["Error"]["Code"] == "404"
    with pytest.raises(ClientError) as err:
        proxy_client.get_object(Bucket=bucket, Key=DATA_KEY)
    assert err.value.response["Error"]["Code"] == "NoSuchKey"


def test_legacy_plaintext_objects_still_served(make_proxy: Any, raw_client: Any, bucket: str) -> None:
    """Objects the operator declared older than encryption (legacy_plaintext_before) are served."""
    data = payload(3 * MIB, 9)
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    proxy_client = make_proxy(
        encryption={"legacy_plaintext_before": cutoff_after(raw_client, bucket, DATA_KEY)}
    ).client()
    head = proxy_client.head_object(Bucket=bucket, Key=DATA_KEY)
    assert head["ContentLength"] == len(data)
    assert proxy_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == data
    got = proxy_client.get_object(Bucket=bucket, Key=DATA_KEY, Range="bytes=10-19")
    assert got["Body"].read() == data[10:20]


def test_fresh_proxy_reports_the_same_view(make_proxy: Any, bucket: str) -> None:
    first = make_proxy()
    client = first.client()
    for i, size in enumerate([0, 10, MIB, 2 * MIB + 7]):
        client.put_object(Bucket=bucket, Key=f"n/data/{i}", Body=os.urandom(size))
    before = client.list_objects_v2(Bucket=bucket)["Contents"]
    second = make_proxy()  # its own, empty cache
    after = second.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in after] == [(o["Key"], o["Size"], o["ETag"]) for o in before]


def test_plaintext_refused_by_default(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"old plaintext")
    with pytest.raises(ClientError) as err:
        proxy_client.get_object(Bucket=bucket, Key=DATA_KEY)
    assert err.value.response["Error"]["Code"] == "InternalError"
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"new")  # what the proxy writes is served
    assert proxy_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == b"new"


def test_copy_source_conditions(proxy_client: Any, bucket: str) -> None:
    data = payload(1000, 6)
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    etag = '"' + hashlib.md5(data).hexdigest() + '"'
    source = {"Bucket": bucket, "Key": DATA_KEY}
    target = "node2/data/ks1/table-1/copy-Data.db"
    proxy_client.copy_object(Bucket=bucket, Key=target, CopySource=source, CopySourceIfMatch=etag)
    for condition in ({"CopySourceIfMatch": '"0000"'}, {"CopySourceIfNoneMatch": etag}):
        with pytest.raises(ClientError) as err:
            proxy_client.copy_object(Bucket=bucket, Key=target, CopySource=source, **condition)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_passthrough_mode(make_proxy: Any, raw_client: Any, bucket: str, tmp_path: Any) -> None:
    """encryption.enabled: false is a transparent, authenticating proxy."""
    client = make_proxy(encryption={"enabled": False, "key_files": []}).client()
    data = payload(6 * MIB + 1, 8)
    src = tmp_path / "f"
    src.write_bytes(data)
    client.upload_file(
        str(src), bucket, DATA_KEY, Config=TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    )
    assert raw_bytes(raw_client, bucket, DATA_KEY) == data
    assert client.get_object(Bucket=bucket, Key=DATA_KEY, Range="bytes=7-9")["Body"].read() == data[7:10]
    assert client.head_object(Bucket=bucket, Key=DATA_KEY)["ContentLength"] == len(data)
