"""PassthroughService's own bookkeeping, in process against the fake upstream: the multipart
uploads it starts are counted in ``multipart_uploads_in_flight`` until completed or aborted, and
only those (an upload another process started never takes the gauge down)."""

from __future__ import annotations

import pytest

from proxy.metrics import Metrics
from proxy.objects.passthrough import CurrentEtags, PassthroughService, write_conditions
from proxy.s3.api import Request
from proxy.s3.errors import S3Error
from tests.support.fake_upstream import BytesBody, FakeUpstream

KEY = "prefix/host1/backup1/meta/schema.cql"


def in_flight(metrics: Metrics) -> float:
    return metrics._gauge_value(metrics.multipart_uploads_in_flight)


async def start(service: PassthroughService) -> str:
    reply = await service.handle(Request("CreateMultipartUpload", "bucket", KEY, {"uploads": ""}, {}))
    assert isinstance(reply.body, bytes)
    return reply.body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()


async def test_plaintext_multipart_uploads_are_counted_while_in_flight() -> None:
    upstream, metrics = FakeUpstream(), Metrics()
    service = PassthroughService(upstream, metrics=metrics)  # type: ignore[arg-type]
    completed, aborted = await start(service), await start(service)
    assert in_flight(metrics) == 2

    part = await service.handle(
        Request("UploadPart", "bucket", KEY, {"uploadId": completed, "partNumber": "1"}, {}, BytesBody(b"x" * 10))
    )
    listing = (
        f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{part.headers['ETag']}</ETag></Part>"
        "</CompleteMultipartUpload>"
    ).encode()
    await service.handle(
        Request("CompleteMultipartUpload", "bucket", KEY, {"uploadId": completed}, {}, BytesBody(listing))
    )
    assert in_flight(metrics) == 1
    await service.handle(Request("AbortMultipartUpload", "bucket", KEY, {"uploadId": aborted}, {}))
    assert in_flight(metrics) == 0

    # One this process did not start (another proxy's, or before a restart): the gauge stays.
    other = await start(PassthroughService(upstream, metrics=Metrics()))  # type: ignore[arg-type]
    mine = await start(service)
    await service.handle(Request("AbortMultipartUpload", "bucket", KEY, {"uploadId": other}, {}))
    assert in_flight(metrics) == 1
    # Gone upstream: it can never finish, so it is off the gauge too.
    upstream.uploads.pop(mine)
    with pytest.raises(S3Error) as err:
        await service.handle(Request("AbortMultipartUpload", "bucket", KEY, {"uploadId": mine}, {}))
    assert err.value.code == "NoSuchUpload"
    assert in_flight(metrics) == 0


def _found(etags: tuple[str, str] | None) -> CurrentEtags:
    async def current() -> tuple[str, str] | None:
        return etags

    return current


async def test_write_conditions_check_the_client_view_and_guard_the_stored_version() -> None:
    stored = ('"plain-md5"', '"cipher-md5"')  # what the client sees, what the bucket holds
    assert await write_conditions({}, _found(None)) == {}
    assert await write_conditions({"if-none-match": "*"}, _found(None)) == {"IfNoneMatch": "*"}
    # If-Match names the plaintext ETag; the bucket is asked for the version it found.
    assert await write_conditions({"if-match": "plain-md5"}, _found(stored)) == {"IfMatch": '"cipher-md5"'}
    assert await write_conditions({"if-match": "*"}, _found(stored)) == {"IfMatch": '"cipher-md5"'}
    assert await write_conditions({"if-match": '"x"'}, _found(("x", ""))) == {}  # no ETag upstream: check only
    for headers, found, code in (
        ({"if-none-match": "*"}, stored, "PreconditionFailed"),
        ({"if-match": '"cipher-md5"'}, stored, "PreconditionFailed"),
        ({"if-match": '"plain-md5"'}, None, "NoSuchKey"),
        ({"if-none-match": '"plain-md5"'}, stored, "NotImplemented"),
    ):
        with pytest.raises(S3Error) as caught:
            await write_conditions(headers, _found(found))
        assert caught.value.code == code, headers
