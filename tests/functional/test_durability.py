"""The plaintext view survives the proxy: fresh caches, restarts, retried and out-of-order parts."""

from __future__ import annotations

import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.cache import SETTLE_SECONDS
from tests.functional.test_objects import MIB, payload, raw_bytes, s3_etag

# SeaweedFS too (tests/conftest.py): a store's differences show up here first.
pytestmark = pytest.mark.all_upstreams

KEY = "node1/data/ks1/t-1/nb-1-big-Data.db"


def view(client: Any, bucket: str, prefix: str = "") -> list[tuple[str, int, str]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [(o["Key"], o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])]


def test_cold_listing_of_2000_objects(make_proxy: Any, bucket: str, upstream: Any) -> None:
    first = make_proxy()
    client = first.client(max_pool_connections=16)
    sizes = [(i * 7919) % 5000 for i in range(2000)]

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"node1/data/ks/t/{i:05d}-Data.db", Body=payload(sizes[i], i))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(2000)))
    started = time.monotonic()
    warm = view(client, bucket)
    warm_seconds = time.monotonic() - started
    assert [(k, s) for k, s, _ in warm] == [(f"node1/data/ks/t/{i:05d}-Data.db", sizes[i]) for i in range(2000)]

    second = make_proxy()  # a new node: same bucket and key, empty cache
    started = time.monotonic()
    cold = view(second.client(), bucket)
    cold_seconds = time.monotonic() - started
    assert cold == warm
    direct_started = time.monotonic()
    view(upstream.client(), bucket)
    direct_seconds = time.monotonic() - direct_started
    print(
        f"\n[{upstream.name}] LIST of 2000 encrypted objects: direct {direct_seconds:.2f}s, "
        f"warm cache {warm_seconds:.2f}s, cold cache {cold_seconds:.2f}s"
    )
    head = second.client().head_object(Bucket=bucket, Key="node1/data/ks/t/01234-Data.db")
    assert head["ContentLength"] == sizes[1234]
    assert head["ETag"].strip('"') == hashlib.md5(payload(sizes[1234], 1234)).hexdigest()


def upload_parts(client: Any, bucket: str, upload_id: str, parts: dict[int, bytes]) -> list[dict[str, Any]]:
    done = []
    for number, data in parts.items():
        reply = client.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=number, Body=data)
        assert reply["ETag"].strip('"') == hashlib.md5(data).hexdigest()
        done.append({"PartNumber": number, "ETag": reply["ETag"]})
    return sorted(done, key=lambda p: p["PartNumber"])


# Retrying a part with other bytes is not tested: moto and rclone both refuse to replace an
# uploaded part with different contents (NotImplemented), and the proxy's ciphertext differs on
# every upload (random IVs). S3 replaces the part; the proxy keeps the latest part's state.
def test_out_of_order_parts(proxy_client: Any, bucket: str) -> None:
    a, b, c = payload(5 * MIB, 1), payload(5 * MIB, 2), payload(MIB + 3, 3)
    upload_id = proxy_client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    later = upload_parts(proxy_client, bucket, upload_id, {3: c, 2: b})
    parts = upload_parts(proxy_client, bucket, upload_id, {1: a}) + later
    listed = proxy_client.list_parts(Bucket=bucket, Key=KEY, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, len(a)), (2, len(b)), (3, len(c))]
    done = proxy_client.complete_multipart_upload(
        Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    data = a + b + c
    assert done["ETag"].strip('"') == s3_etag(data, 5 * MIB)
    assert proxy_client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data


def test_complete_with_a_wrong_part_etag_is_refused(proxy_client: Any, bucket: str) -> None:
    upload_id = proxy_client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    upload_parts(proxy_client, bucket, upload_id, {1: b"x" * 10})
    with pytest.raises(ClientError) as err:
        proxy_client.complete_multipart_upload(
            Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]}
        )
    assert err.value.response["Error"]["Code"] == "InvalidPart"


def test_small_non_last_part_is_refused(proxy_client: Any, bucket: str) -> None:
    upload_id = proxy_client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    parts = upload_parts(proxy_client, bucket, upload_id, {1: b"x" * 10, 2: b"y" * 10})
    with pytest.raises(ClientError) as err:
        proxy_client.complete_multipart_upload(
            Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    assert err.value.response["Error"]["Code"] == "EntityTooSmall"


@pytest.mark.parametrize("keep_cache", [True, False])
def test_restart_between_parts_and_complete(make_proxy: Any, raw_client: Any, bucket: str, keep_cache: bool) -> None:
    """A restart never yields a corrupt object: Complete succeeds, or fails so the client retries."""
    proxy = make_proxy()
    client = proxy.client()
    a, b = payload(5 * MIB, 1), payload(2 * MIB, 2)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    parts = upload_parts(client, bucket, upload_id, {1: a, 2: b})
    proxy.stop()
    cache = Path(proxy.config["cache"]["path"])
    if not keep_cache:
        for path in cache.parent.glob(cache.name + "*"):
            path.unlink()
        shutil.rmtree(cache.parent / "tmp", ignore_errors=True)
    proxy.start()
    client = proxy.client()
    if keep_cache:
        client.complete_multipart_upload(Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts})
        assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == a + b
    else:
        with pytest.raises(ClientError) as err:
            client.complete_multipart_upload(
                Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        assert err.value.response["Error"]["Code"] == "NoSuchUpload"
        with pytest.raises(ClientError):
            raw_bytes(raw_client, bucket, KEY)  # nothing was stored
        client.abort_multipart_upload(Bucket=bucket, Key=KEY, UploadId=upload_id)


def metric(proxy: Any, name: str, **labels: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{proxy.endpoint_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            wanted = all(sample.labels.get(k) == v for k, v in labels.items())
            if sample.name == f"medusa_crypt_proxy_{name}" and wanted:
                return float(sample.value)
    return 0.0


def cache_misses(proxy: Any) -> float:
    return metric(proxy, "cache_lookups_total", result="miss")


def test_deleted_objects_leave_the_cache(proxy: Any, bucket: str) -> None:
    client = proxy.client()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"n/data/{i}", Body=b"x" * i)
    assert metric(proxy, "cache_entries") == 3
    client.delete_object(Bucket=bucket, Key="n/data/0")
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "n/data/1"}, {"Key": "n/data/2"}]})
    time.sleep(1.1)  # cache_entries is counted at most once a second
    assert metric(proxy, "cache_entries") == 0


def test_upstream_without_etags(tmp_path: Path) -> None:
    """rclone --etag-hash "" lists and HEADs objects with empty ETags (its PUT reply still has an MD5):
    versions are then keyed by Last-Modified and size, cached only once settled (a same-size
    overwrite in the same second must not hit an old view): one trailer read, then cache hits."""
    from tests.support.servers import ProxyProcess, RcloneS3Server, proxy_config

    with RcloneS3Server(tmp_path / "up", extra_args=["--etag-hash", ""]) as upstream:
        bucket = upstream.create_bucket()
        config = proxy_config(upstream, tmp_path)
        config["cache"] = {"path": str(tmp_path / "p" / "cache.sqlite")}
        (tmp_path / "p").mkdir()
        proxy = ProxyProcess(config, tmp_path / "p")
        try:
            client = proxy.client()
            data = payload(MIB + 9, 4)
            assert (
                client.put_object(Bucket=bucket, Key=KEY, Body=data)["ETag"].strip('"') == hashlib.md5(data).hexdigest()
            )
            assert upstream.client().head_object(Bucket=bucket, Key=KEY)["ETag"].strip('"') == ""
            time.sleep(SETTLE_SECONDS + 2.5)  # past proxy.cache.settled for this version
            head = client.head_object(Bucket=bucket, Key=KEY)
            assert (head["ContentLength"], head["ETag"].strip('"')) == (len(data), hashlib.md5(data).hexdigest())
            assert cache_misses(proxy) == 1  # the PUT's ETag named another version than HEAD's ""
            assert view(client, bucket) == [(KEY, len(data), head["ETag"])]
            assert client.head_object(Bucket=bucket, Key=KEY)["ETag"] == head["ETag"]
            assert cache_misses(proxy) == 1
            assert client.get_object(Bucket=bucket, Key=KEY, Range="bytes=5-9")["Body"].read() == data[5:10]
            # Having seen HEADs without ETags, the proxy keys what it writes next by Last-Modified.
            for i, size in enumerate((100, MIB + 9)):
                other = payload(size, 7 + i)
                client.put_object(Bucket=bucket, Key=f"{KEY}-{i}", Body=other)
                assert (
                    client.head_object(Bucket=bucket, Key=f"{KEY}-{i}")["ETag"].strip('"')
                    == hashlib.md5(other).hexdigest()
                )
            assert cache_misses(proxy) == 3  # fresh writes: read from their trailers until settled
        finally:
            proxy.stop()


def test_cold_view_of_odd_keys(make_proxy: Any, bucket: str) -> None:
    """A fresh proxy reads trailers of keys that need URL encoding (signed reads of its own)."""
    keys = ["n/data/a b+c=d&e", "n/data/ünï cødé/%41~*", "n/data/(x)!'$,;@:"]
    first = make_proxy().client()
    for i, key in enumerate(keys):
        first.put_object(Bucket=bucket, Key=key, Body=payload(100 + i, i))
    cold = make_proxy().client()
    assert [(k, s) for k, s, _ in view(cold, bucket)] == sorted((k, 100 + i) for i, k in enumerate(keys))
    for i, key in enumerate(keys):
        head = cold.head_object(Bucket=bucket, Key=key)
        assert head["ETag"].strip('"') == hashlib.md5(payload(100 + i, i)).hexdigest()
