"""proxy.objects in process: the real ObjectService in front of an in-memory bucket.

Each test drives the service with the ``Request`` the front end would build and looks at what
the bucket stores, so that the dispatch by kind, the plaintext view and the integrity checks are
tested without a server (the functional suites repeat them through a running proxy on moto and
rclone).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.cache import StateStore
from proxy.config import parse_config
from proxy.keyfiles import generate_key_file, load_key_ring
from proxy.metrics import Metrics
from proxy.objects import ObjectService
from proxy.objects.views import IntegrityRefusal
from proxy.s3.api import Reply, Request
from proxy.s3.errors import S3Error
from tests.support.fake_upstream import BytesBody, FakeUpstream
from tests.support.medusa_helpers import medusa_manifest

BUCKET = "bucket"
DATA_KEY = "prefix/host1/data/ks1/t-1/nb-1-big-Data.db"
SCHEMA_KEY = "prefix/host1/backup1/meta/schema.cql"
MANIFEST_KEY = "prefix/host1/backup1/meta/manifest.json"


async def body_of(reply: Reply) -> bytes:
    if isinstance(reply.body, bytes):
        return reply.body
    return b"".join([bytes(piece) async for piece in reply.body])


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def make_config(tmp_path: Path, format_version: int) -> Any:
    key_file = tmp_path / "master.key"
    if not key_file.exists():
        generate_key_file(key_file)
    return parse_config(
        {
            "clients": [{"access_key_id": "medusa", "secret_access_key": "secret"}],
            "encryption": {"key_files": [str(key_file)], "format_version": format_version},
            "cache": {"path": str(tmp_path / "cache.sqlite")},
        },
        environ={},
    )


@pytest.fixture(params=[1, 2], ids=["format-v1", "format-v2"])
async def service(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[ObjectService, FakeUpstream]]:
    """The service writing the object format ``request.param`` (every test runs with both)."""
    config = make_config(tmp_path, request.param)
    upstream = FakeUpstream(BUCKET)
    svc = ObjectService(
        config,
        upstream,  # type: ignore[arg-type]
        Metrics(),
        load_key_ring(config.encryption.key_files),
        StateStore(config.cache.path),
    )
    await svc.start()
    try:
        yield svc, upstream
    finally:
        await svc.close()


def request(operation: str, key: str | None = None, body: bytes | None = None, **headers: str) -> Request:
    query: dict[str, Any] = {}
    for name in ("uploadId", "partNumber"):
        if name in headers:
            query[name] = headers.pop(name)
    return Request(
        operation,
        BUCKET,
        key,
        query,
        {k.replace("_", "-").lower(): v for k, v in headers.items()},
        BytesBody(body) if body is not None else None,
    )


async def put(svc: ObjectService, key: str, data: bytes) -> Reply:
    return await svc.handle(request("PutObject", key, data))


async def test_an_encrypted_key_is_stored_encrypted_and_read_back_as_plaintext(service: Any) -> None:
    svc, upstream = service
    data = os.urandom(300_000) + b"a plaintext marker"
    reply = await put(svc, DATA_KEY, data)
    assert reply.headers["ETag"] == f'"{md5(data)}"'
    stored = upstream.stored[(BUCKET, DATA_KEY)].data
    assert b"a plaintext marker" not in stored and len(stored) > len(data)

    head = await svc.handle(request("HeadObject", DATA_KEY))
    assert (head.headers["Content-Length"], head.headers["ETag"]) == (str(len(data)), f'"{md5(data)}"')
    got = await svc.handle(request("GetObject", DATA_KEY))
    assert await body_of(got) == data
    part = await svc.handle(request("GetObject", DATA_KEY, range="bytes=299990-"))
    assert part.status == 206 and await body_of(part) == data[299990:]


async def test_a_plaintext_key_passes_through_unchanged(service: Any) -> None:
    svc, upstream = service
    await put(svc, SCHEMA_KEY, b"CREATE TABLE ks1.t (k int PRIMARY KEY);")
    assert upstream.stored[(BUCKET, SCHEMA_KEY)].data == b"CREATE TABLE ks1.t (k int PRIMARY KEY);"
    assert (
        await body_of(await svc.handle(request("GetObject", SCHEMA_KEY))) == upstream.stored[(BUCKET, SCHEMA_KEY)].data
    )


async def test_a_listing_shows_the_plaintext_view(service: Any) -> None:
    svc, _ = service
    data = os.urandom(12345)
    await put(svc, DATA_KEY, data)
    listing = await body_of(await svc.handle(Request("ListObjectsV2", BUCKET, None, {"prefix": "prefix/"}, {})))
    assert f"<Size>{len(data)}</Size>".encode() in listing
    assert md5(data).encode() in listing


async def test_a_tampered_object_is_refused_on_every_read(service: Any) -> None:
    svc, upstream = service
    data = os.urandom(200_000)
    await put(svc, DATA_KEY, data)
    stored = upstream.stored[(BUCKET, DATA_KEY)]
    flipped = bytearray(stored.data)
    flipped[100] ^= 1
    upstream.stored[(BUCKET, DATA_KEY)] = type(stored)(bytes(flipped), stored.metadata)

    with pytest.raises(IntegrityRefusal, match="chunk HMAC"):  # the trailer verifies; the record does not
        await body_of(await svc.handle(request("GetObject", DATA_KEY)))

    trailer_flip = bytearray(stored.data)
    trailer_flip[-20] ^= 1
    upstream.stored[(BUCKET, DATA_KEY)] = type(stored)(bytes(trailer_flip), stored.metadata)
    with pytest.raises(IntegrityRefusal):
        await svc.handle(request("HeadObject", DATA_KEY))
    listing = await body_of(await svc.handle(Request("ListObjectsV2", BUCKET, None, {"prefix": "prefix/"}, {})))
    assert b"<Size>-1</Size>" in listing  # listed as damaged, not failing the page


async def test_an_object_moved_to_another_key_is_refused(service: Any) -> None:
    svc, upstream = service
    await put(svc, DATA_KEY, b"x" * 1000)
    other = DATA_KEY.replace("nb-1", "nb-2")
    upstream.stored[(BUCKET, other)] = upstream.stored[(BUCKET, DATA_KEY)]
    with pytest.raises(IntegrityRefusal, match="written as"):
        await svc.handle(request("HeadObject", other))


async def test_a_manifest_is_rewritten_sealed_and_read_back_byte_for_byte(service: Any) -> None:
    svc, upstream = service
    data = os.urandom(5000)
    await put(svc, DATA_KEY, data)
    manifest = medusa_manifest([(DATA_KEY, md5(data), len(data))])
    reply = await put(svc, MANIFEST_KEY, manifest)
    assert reply.headers["ETag"] == f'"{md5(manifest)}"'
    stored = upstream.stored[(BUCKET, MANIFEST_KEY)].data
    assert stored != manifest
    entry = json.loads(stored[: stored.rindex(b"]") + 1] if stored.endswith(b"]") else stored)[0]["objects"][0]
    assert entry["size"] == len(upstream.stored[(BUCKET, DATA_KEY)].data)  # the stored size, for Medusa's checks
    assert await body_of(await svc.handle(request("GetObject", MANIFEST_KEY))) == manifest
    head = await svc.handle(request("HeadObject", MANIFEST_KEY))
    assert head.headers["Content-Length"] == str(len(manifest))


async def test_a_multipart_upload_into_an_encrypted_key(service: Any) -> None:
    svc, upstream = service
    created = await body_of(await svc.handle(request("CreateMultipartUpload", DATA_KEY)))
    upload_id = created.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    parts = [os.urandom(5 << 20), os.urandom(1000)]
    etags = []
    for number, part in enumerate(parts, 1):
        reply = await svc.handle(request("UploadPart", DATA_KEY, part, uploadId=upload_id, partNumber=str(number)))
        etags.append(reply.headers["ETag"])
    assert etags == [f'"{md5(p)}"' for p in parts]
    complete = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1))
    await svc.handle(
        request(
            "CompleteMultipartUpload",
            DATA_KEY,
            f"<CompleteMultipartUpload>{complete}</CompleteMultipartUpload>".encode(),
            uploadId=upload_id,
        )
    )
    whole = b"".join(parts)
    assert whole[:1000] not in upstream.stored[(BUCKET, DATA_KEY)].data
    assert await body_of(await svc.handle(request("GetObject", DATA_KEY))) == whole
    head = await svc.handle(request("HeadObject", DATA_KEY))
    digest = hashlib.md5(b"".join(bytes.fromhex(md5(p)) for p in parts), usedforsecurity=False).hexdigest()
    assert head.headers["ETag"] == f'"{digest}-2"'


async def test_a_multipart_upload_into_a_plaintext_key_passes_through(service: Any) -> None:
    svc, upstream = service
    created = await body_of(await svc.handle(request("CreateMultipartUpload", SCHEMA_KEY)))
    upload_id = created.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
    reply = await svc.handle(request("UploadPart", SCHEMA_KEY, b"schema", uploadId=upload_id, partNumber="1"))
    assert upload_id in upstream.uploads and upstream.uploads[upload_id]["parts"][1][0] == b"schema"
    body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{reply.headers['ETag']}</ETag></Part>"
    await svc.handle(
        request(
            "CompleteMultipartUpload", SCHEMA_KEY, (body + "</CompleteMultipartUpload>").encode(), uploadId=upload_id
        )
    )
    assert upstream.stored[(BUCKET, SCHEMA_KEY)].data == b"schema"


async def test_a_copy_between_kinds_reads_plaintext_and_writes_the_destination_kind(service: Any) -> None:
    svc, upstream = service
    data = b"table data " * 100
    await put(svc, DATA_KEY, data)
    copy = request("CopyObject", SCHEMA_KEY, x_amz_copy_source=f"/{BUCKET}/{DATA_KEY}")
    await svc.handle(copy)
    assert upstream.stored[(BUCKET, SCHEMA_KEY)].data == data  # plaintext destination: stored as is
    back = DATA_KEY.replace("nb-1", "nb-3")
    await svc.handle(request("CopyObject", back, x_amz_copy_source=f"/{BUCKET}/{SCHEMA_KEY}"))
    assert upstream.stored[(BUCKET, back)].data != data
    assert await body_of(await svc.handle(request("GetObject", back))) == data


async def test_unknown_operations_are_not_implemented(service: Any) -> None:
    svc, _ = service
    with pytest.raises(S3Error) as err:
        await svc.handle(request("PutBucketLifecycle"))
    assert (err.value.code, err.value.status) == ("NotImplemented", 501)


async def test_format_v2_writes_envelope_keys_and_both_formats_stay_readable(tmp_path: Path) -> None:
    """Objects and uploads written with format_version 2 carry a wrapped data key (the upload's
    state keeps it wrapped, never the key); a service writing version 1 reads them, and the other
    way round."""
    import sqlite3

    from proxy.format.trailer import Trailer

    upstream = FakeUpstream(BUCKET)
    services = {}
    for version in (1, 2):
        config = make_config(tmp_path, version)
        ring = load_key_ring(config.encryption.key_files)
        services[version] = ObjectService(config, upstream, Metrics(), ring, StateStore(config.cache.path))  # type: ignore[arg-type]
        await services[version].start()
    try:
        small, large = os.urandom(1000), os.urandom(3 << 20)
        await put(services[1], "a/data/v1", small)
        await put(services[2], "a/data/v2", large)
        created = await body_of(await services[2].handle(request("CreateMultipartUpload", DATA_KEY)))
        upload_id = created.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
        wrapped = sqlite3.connect(tmp_path / "cache.sqlite").execute("SELECT wrapped FROM uploads").fetchone()[0]
        assert len(wrapped) == 1 + 2 + 2 + 40 + 2  # the provider byte and an AES-KW-wrapped 32-byte key
        part = await services[2].handle(request("UploadPart", DATA_KEY, small, uploadId=upload_id, partNumber="1"))
        done = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{part.headers['ETag']}</ETag></Part>"
        await services[2].handle(
            request(
                "CompleteMultipartUpload", DATA_KEY, (done + "</CompleteMultipartUpload>").encode(), uploadId=upload_id
            )
        )
        versions = {
            key: Trailer.from_tail(upstream.stored[(BUCKET, key)].data).version
            for key in ("a/data/v1", "a/data/v2", DATA_KEY)
        }
        assert versions == {"a/data/v1": 1, "a/data/v2": 2, DATA_KEY: 2}
        for svc in services.values():
            assert await body_of(await svc.handle(request("GetObject", "a/data/v1"))) == small
            assert (
                await body_of(await svc.handle(request("GetObject", "a/data/v2", range="bytes=1048570-2097160")))
                == large[1048570:2097161]
            )
            assert await body_of(await svc.handle(request("GetObject", DATA_KEY))) == small
    finally:
        for svc in services.values():
            await svc.close()
