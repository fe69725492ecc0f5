"""The upstream requests the proxy makes without botocore, checked against botocore itself.

rclone verifies signatures, so a wrong one shows as None here, not as a silent fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote_plus

import pytest

from proxy.config import Upstream as UpstreamConfig
from proxy.upstream import Upstream
from tests.support.servers import S3Server

ODD_KEYS = ["plain", "n/data/a b+c=d&e", "n/data/ünï cødé/%41~*", "n/data/(x)!'$,;@:", "n/x/deep/er", "top"]


# The override is deprecated in pytest-asyncio 1.5 in favour of a conftest-wide hook; it is kept
# module-local here on purpose.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the proxy runs uvloop, whose transports differ from asyncio's."""
    import uvloop

    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


def started(server: S3Server, secret: str | None = None) -> Upstream:
    return Upstream(
        UpstreamConfig(
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            addressing_style="path",
            access_key_id=server.access_key,
            secret_access_key=secret or server.secret_key,
        )
    )


@pytest.fixture
async def fast_upstream(upstream: S3Server) -> AsyncIterator[Upstream]:
    client = started(upstream)
    await client.start()
    yield client
    await client.close()


async def test_fast_range_is_signed_correctly(rclone_server: Any) -> None:
    bucket = rclone_server.create_bucket()
    raw = rclone_server.client()
    for key in ODD_KEYS:
        raw.put_object(Bucket=bucket, Key=key, Body=b"0123456789")

    async def fast_reads(secret: str, spec: str | None = "bytes=-4") -> list[bytes | None]:
        upstream = started(rclone_server, secret)
        await upstream.start()
        try:
            return [
                await upstream.direct_range(bucket, key, spec, raw.head_object(Bucket=bucket, Key=key)["ETag"])
                for key in ODD_KEYS
            ]
        finally:
            await upstream.close()

    assert await fast_reads(rclone_server.secret_key) == [b"6789"] * len(ODD_KEYS)
    assert await fast_reads(rclone_server.secret_key, None) == [b"0123456789"] * len(ODD_KEYS)  # whole
    assert await fast_reads("wrong-secret") == [None] * len(ODD_KEYS)  # refused, so the caller falls back


def botocore_page(reply: dict[str, Any], v2: bool) -> dict[str, Any]:
    """botocore's page without transport details; v1's Prefix is left encoded by botocore."""
    page = {k: v for k, v in reply.items() if k not in ("ResponseMetadata", "EncodingType")}
    if not v2 and reply.get("EncodingType") == "url" and "Prefix" in page:
        page["Prefix"] = unquote_plus(page["Prefix"])
    return page


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
async def test_fast_list_is_botocores_listing(
    fast_upstream: Upstream, upstream: S3Server, bucket: str, v2: bool
) -> None:
    raw = upstream.client()
    for i, key in enumerate(ODD_KEYS):
        raw.put_object(Bucket=bucket, Key=key, Body=b"x" * (i + 1))
    cases: list[dict[str, str]] = [
        {},
        {"prefix": "n/"},
        {"prefix": "n/", "delimiter": "/"},
        {"delimiter": "/"},
        {"prefix": "n/data/ü"},
        {"max-keys": "2"},
    ]
    for params in cases:
        query = [(name, value) for name, value in params.items()]
        page = await fast_upstream.direct_list(bucket, query, v2)
        assert page is not None, params
        names = {"prefix": "Prefix", "delimiter": "Delimiter", "max-keys": "MaxKeys"}
        kwargs: dict[str, Any] = {names[k]: (int(v) if k == "max-keys" else v) for k, v in params.items()}
        expected = await fast_upstream.call("list_objects_v2" if v2 else "list_objects", Bucket=bucket, **kwargs)
        assert page == botocore_page(expected, v2), params
        assert page.get("Contents") or page.get("CommonPrefixes"), params

    # paging: the continuation token / marker of the fast page works in the next one
    keys: list[str] = []
    query: list[tuple[str, str]] = [("max-keys", "2")]
    while True:
        page = await fast_upstream.direct_list(bucket, query, v2)
        assert page is not None
        keys += [entry["Key"] for entry in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page.get("NextContinuationToken") if v2 else page.get("NextMarker", keys[-1])
        query = [("max-keys", "2"), ("continuation-token" if v2 else "marker", token)]
    assert keys == sorted(ODD_KEYS)


async def test_fast_list_of_a_large_page(fast_upstream: Upstream, upstream: S3Server, bucket: str) -> None:
    """A page of more than 4 KiB: rclone (Go's HTTP server) sends it chunked, moto with a length;
    both are parsed here, not left to botocore."""
    from concurrent.futures import ThreadPoolExecutor

    raw = upstream.client()
    keys = [f"node1/data/ks/tbl/nb-{i}-big-Data.db" for i in range(120)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: raw.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))
    page = await fast_upstream.direct_list(bucket, [], True)
    assert page is not None
    assert [entry["Key"] for entry in page["Contents"]] == sorted(keys)
    assert page == botocore_page(await fast_upstream.call("list_objects_v2", Bucket=bucket), True)


async def test_fast_list_refused_signature_falls_back(rclone_server: Any) -> None:
    bucket = rclone_server.create_bucket()
    upstream = started(rclone_server, "wrong-secret")
    await upstream.start()
    try:
        assert await upstream.direct_list(bucket, [], True) is None
    finally:
        await upstream.close()


async def test_get_records_reads_stored_bytes_in_place(
    fast_upstream: Upstream, upstream: S3Server, bucket: str
) -> None:
    stored = bytes(range(256)) * 9000  # 2.3 MB
    raw = upstream.client()
    etag = raw.put_object(Bucket=bucket, Key="n/data/ünï cødé", Body=stored)["ETag"]

    async def read(spec: str | None, if_match: str) -> tuple[list[int], bytes] | None:
        got = await fast_upstream.direct_records(bucket, "n/data/ünï cødé", spec, if_match, 1 << 20)
        if got is None:
            return None
        reply, pieces = got
        assert reply.length == (len(stored) if spec is None else 1_500_000)
        sizes, data = [], bytearray()
        async for piece in pieces:
            sizes.append(len(piece))
            data += piece  # a piece is valid until the next is asked for
        return sizes, bytes(data)

    assert await read(None, etag) == ([1 << 20, 1 << 20, len(stored) - (2 << 20)], stored)
    assert await read("bytes=100000-1599999", "") == ([1 << 20, 1_500_000 - (1 << 20)], stored[100000:1600000])
    if upstream.name == "moto":  # rclone ignores If-Match
        assert await read(None, '"0123456789abcdef0123456789abcdef"') is None  # 412: botocore maps it


async def test_fast_head_is_botocores_head(fast_upstream: Upstream, upstream: S3Server, bucket: str) -> None:
    from proxy.s3.errors import S3Error

    raw = upstream.client()
    for key in ODD_KEYS:
        raw.put_object(Bucket=bucket, Key=key, Body=b"0123456789", Metadata={"mcp-format": "1", "Owner": "x y"})
        fast = await fast_upstream.direct_head(bucket, key)
        assert fast is not None, key
        slow = await fast_upstream.call("head_object", Bucket=bucket, Key=key)
        assert (fast.etag, fast.size, fast.last_modified, fast.metadata) == (
            slow["ETag"],
            slow["ContentLength"],
            slow["LastModified"],
            slow["Metadata"],
        ), key
        assert fast.headers["content-length"] == "10"
    with pytest.raises(S3Error) as missing:
        await fast_upstream.direct_head(bucket, "n/data/absent")
    assert (missing.value.code, missing.value.status) == ("NoSuchKey", 404)


async def test_fast_put_stores_what_botocore_would(fast_upstream: Upstream, upstream: S3Server, bucket: str) -> None:
    import hashlib

    raw = upstream.client()
    for i, key in enumerate(ODD_KEYS):
        body = bytes([i]) * (1000 + i)
        params: dict[str, Any] = {"Metadata": {"mcp-format": "1", "who": "medusa"}}
        if i % 2:
            params["ContentType"] = "application/x-test"
        reply = await fast_upstream.direct_put(bucket, key, body, params)
        assert reply is not None and reply.etag.strip('"') == hashlib.md5(body).hexdigest()
        raw.put_object(Bucket=bucket, Key=f"{key}-by-botocore", Body=body, **params)
        head, expected = (raw.head_object(Bucket=bucket, Key=name) for name in (key, f"{key}-by-botocore"))
        for field in ("Metadata", "ContentType", "ETag", "ContentLength"):
            assert head[field] == expected[field], (key, field)
        assert raw.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert await fast_upstream.direct_put(bucket, "k", b"x", {"CacheControl": "no-cache"}) is None  # botocore's job


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_fast_paths_over_tls(tmp_path: Any) -> None:
    """An https upstream (rclone with a self-signed certificate): every fast path works over TLS,
    and with verification on, the unknown certificate is refused (None: botocore decides)."""
    import http.client
    import ssl

    from proxy.daemon.tls import make_self_signed
    from tests.support.servers import RcloneS3Server

    cert, key = make_self_signed(tmp_path / "tls")

    class TLSRclone(RcloneS3Server):
        @property
        def endpoint_url(self) -> str:
            return f"https://{self.host}:{self.port}"

        def _ready(self) -> bool:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=1, context=ssl._create_unverified_context()
            )
            try:
                conn.request("GET", "/")
                return conn.getresponse().status > 0
            except OSError:
                return False
            finally:
                conn.close()

    with TLSRclone(tmp_path / "up", extra_args=["--cert", str(cert), "--key", str(key)]) as server:
        raw = make_tls_client(server)
        raw.create_bucket(Bucket="tls-bucket")
        stored = bytes(range(256)) * 9000
        raw.put_object(Bucket="tls-bucket", Key="n/data/x", Body=stored)
        for verify in (False, True):
            upstream = Upstream(
                UpstreamConfig(
                    endpoint_url=server.endpoint_url,
                    region="us-east-1",
                    addressing_style="path",
                    access_key_id=server.access_key,
                    secret_access_key=server.secret_key,
                    verify_tls=verify,
                )
            )
            await upstream.start()
            try:
                got = await upstream.direct_records("tls-bucket", "n/data/x", None, "", 1 << 20)
                tail = await upstream.direct_range("tls-bucket", "n/data/x", "bytes=-10", "")
                if not verify:
                    assert got is not None and tail == stored[-10:]
                    data = bytearray()
                    async for piece in got[1]:
                        data += piece
                    assert data == stored
                    assert (await upstream.direct_list("tls-bucket", [], True) or {}).get("KeyCount") == 1
                    head = await upstream.direct_head("tls-bucket", "n/data/x")
                    assert head is not None and head.size == len(stored)
                else:
                    assert got is None and tail is None
            finally:
                await upstream.close()


def make_tls_client(server: S3Server) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        verify=False,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


async def test_read_range_refuses_an_answer_longer_than_asked(
    fast_upstream: Upstream, upstream: S3Server, bucket: str
) -> None:
    """A small read never takes in more than its range (or ``limit``): a body that is longer
    (an object swapped for a large one, a store that ignores Range) is refused, not read."""
    from proxy.s3.errors import S3Error

    data = bytes(range(100))
    etag = upstream.client().put_object(Bucket=bucket, Key="n/small", Body=data)["ETag"]
    assert await fast_upstream.read_range(bucket, "n/small", None, etag, 100) == data
    assert await fast_upstream.read_range(bucket, "n/small", "bytes=10-19", etag) == data[10:20]
    assert await fast_upstream.read_range(bucket, "n/small", "bytes=-30", etag, 5) == data[-30:]  # the range wins
    with pytest.raises(S3Error) as refused:
        await fast_upstream.read_range(bucket, "n/small", None, etag, 99)
    assert "larger than 99 bytes" in refused.value.message
