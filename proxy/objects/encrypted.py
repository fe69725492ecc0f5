"""Encrypted objects: the operations that turn plaintext into the stored format and back.

Everything here keeps the client's view plaintext: sizes, ETags, ranges and conditions are those
of the plaintext; the stored format is ``proxy.format``'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import Any

from proxy.conditions import check_conditions, parse_range
from proxy.format.codec import (
    PartEncryptor,
    PartInfo,
    RangeDecryptor,
    build_trailer,
    new_salt,
)
from proxy.format.keys import derive_object_keys
from proxy.format.layout import part_stored_size, record_size
from proxy.format.seed import (
    SeedRangeDecryptor,
    seed_stored_range,
)
from proxy.format.trailer import Trailer
from proxy.objects.passthrough import (
    SMALL_BODY,
    request_body,
    verified_checksum,
    visible_headers,
    write_conditions,
)
from proxy.objects.views import ObjectChanged, View, Views
from proxy.s3 import xml
from proxy.s3.api import Chunk, Reply, Request, parse_copy_source
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    INTERNAL_META_PREFIX,
    body_limit,
    object_params,
    quote_etag,
    reject_sse_c,
    response_override_params,
    storage_params,
    without_aws_chunked,
)
from proxy.upstream import ObjectHead, Opened, Written, versions, write_headers


class EncryptedObjects:
    """HEAD, GET, PUT and copy of the keys stored in the object format."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.upstream = views.upstream
        self.policy = views.policy

    # --- reads ---------------------------------------------------------------------------

    async def head_object(self, request: Request) -> Reply:
        reply, view = await self.views.head(request.bucket or "", request.key or "")
        return head_reply(request, reply, view)

    async def get_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        if request.query.get("partNumber"):
            raise S3Error("NotImplemented", "GET by partNumber is not supported for encrypted objects", 501)
        for _ in range(_GET_ATTEMPTS - 1):
            with contextlib.suppress(_Overwritten):
                return await self._get_current(request, bucket, key)
        try:
            return await self._get_current(request, bucket, key)
        except _Overwritten:
            raise S3Error("ServiceUnavailable", f"{key!r} kept changing while it was read", 503) from None

    async def _get_current(self, request: Request, bucket: str, key: str) -> Reply:
        """GET of the version the HEAD found; _Overwritten if another replaced it before the GET."""
        head, view = await self.views.head(bucket, key)
        check_conditions(request.headers, view.etag, head.last_modified)
        wanted = parse_range(request.headers.get("range"), view.size)
        version = quote_etag(head.etag)
        overrides = response_override_params(request.query)
        if view.kind == "plaintext":
            spec = None if wanted is None else f"bytes={wanted.first}-{wanted.last}"
            with _overwritten_on_refusal():
                reply, pieces = await self.upstream.open(bucket, key, spec, version, **overrides)
            return self._get_reply(reply, view, wanted, pieces)
        decryptor: Any
        spec = None
        if wanted is None:
            decryptor = await self.views.whole_decryptor(key, view)
        elif view.kind == "seed":
            seed_range = seed_stored_range(wanted.first, wanted.last, head.size)
            spec = seed_range.http_range
            decryptor = SeedRangeDecryptor(self.views.seed_keys, seed_range)
        else:
            assert view.trailer is not None
            stored = view.trailer.layout.stored_range(wanted.first, wanted.last)
            spec = stored.http_range
            keys = view.trailer.verify(self.views.keyring, await self.views.data_key(view.trailer))
            decryptor = RangeDecryptor(
                self.views.keyring, view.trailer, stored, self.views.written_as(key, view.trailer), object_keys=keys
            )
        # Our format is read in place a record at a time (the seed's through botocore).
        piece_size = record_size(view.trailer.chunk_size) if view.trailer is not None else None
        with _overwritten_on_refusal():
            reply, pieces = await self.upstream.open(bucket, key, spec, version, piece_size, **overrides)
            plaintext = await _started(self.views.decrypting(bucket, key, head, pieces, decryptor))
        return self._get_reply(reply, view, wanted, plaintext)

    @staticmethod
    def _get_reply(reply: Opened, view: View, wanted: Any, pieces: AsyncIterator[Chunk]) -> Reply:
        headers = visible_headers(reply)
        headers["ETag"] = quote_etag(view.etag)
        headers["Accept-Ranges"] = "bytes"
        headers.pop("x-amz-mp-parts-count", None)
        if wanted is None:
            return Reply(200, headers, pieces, view.size)
        headers["Content-Range"] = wanted.content_range(view.size)
        return Reply(206, headers, pieces, wanted.length)

    # --- writes --------------------------------------------------------------------------

    async def put_object(self, request: Request) -> Reply:
        reject_sse_c(request.headers)
        body = request_body(request)
        if body.length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        bucket, key = request.bucket or "", request.key or ""
        params = object_params(request.headers)
        params.update(await write_conditions(request.headers, self.views.current_etags(bucket, key)))
        written = await self.put_stream(bucket, key, body, body.length, params)
        return Reply(
            200, {"ETag": quote_etag(written.etag), **write_headers(written.headers), **verified_checksum(body)}
        )

    async def put_stream(
        self, bucket: str, key: str, source: AsyncIterable[Chunk], length: int, params: dict[str, Any]
    ) -> Written:
        """Encrypt ``length`` plaintext bytes from ``source`` into ``key``; the upstream's answer
        with the plaintext ETag."""
        master = await self.views.new_object_key(bucket, key)
        salt = new_salt()
        encryptor = PartEncryptor(derive_object_keys(master, salt), 1, part_size=length)
        trailer_len = len(build_trailer(master, salt, key, [PartInfo(1, length, bytes(16))], single_put=True))
        stored_size = part_stored_size(length) + trailer_len

        async def stored() -> AsyncIterator[Chunk]:
            async for records in self.views.encrypting(encryptor, source):
                yield records
                del records
            last = encryptor.finish()
            trailer = build_trailer(
                master, salt, key, [PartInfo(1, encryptor.plaintext_size, encryptor.md5)], single_put=True
            )
            yield last + trailer

        params = self.views.with_hint(params, master)
        if length <= body_limit(params, SMALL_BODY):
            payload = b"".join([piece async for piece in stored()])
            written = await self.upstream.put(bucket, key, payload, params)
        else:
            written = await self.upstream.put(bucket, key, stored(), params, stored_size)
        etag = encryptor.md5.hex()
        trailer = Trailer.from_tail(
            build_trailer(master, salt, key, [PartInfo(1, length, encryptor.md5)], single_put=True)
        )
        await self.views.remember_written(
            bucket, key, written.etag, stored_size, View("encrypted", length, etag, trailer)
        )
        return Written(etag, written.headers)

    async def copy_object(self, request: Request) -> Reply:
        """A copy from or to an encrypted key (neither a manifest): a verified read of the
        source's plaintext, written as the destination's kind asks."""
        bucket, key = request.bucket or "", request.key or ""
        source = parse_copy_source(request.headers["x-amz-copy-source"])
        reject_sse_c(request.headers)
        with versions.read_as(source.version, source.bucket, source.key):  # a given version, if named
            head, view = (
                (await self.views.head(source.bucket, source.key))
                if self.policy.encrypts(source.key)
                else await self._plain_head(source.bucket, source.key)
            )
            with copy_source_conditions():
                check_conditions(copy_source_condition_headers(request), view.etag, head.last_modified)
            if request.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
                params = object_params(request.headers)
            else:
                params = {**self._copied_params(head), **storage_params(request.headers)}
                if request.headers.get("x-amz-storage-class"):
                    params["StorageClass"] = request.headers["x-amz-storage-class"]
            plaintext = await self._plaintext_stream(source.bucket, source.key, head, view)
            if self.policy.encrypts(key):
                written = await self.put_stream(bucket, key, plaintext, view.size, params)
            elif view.size <= body_limit(params, 0):  # locked: sent whole, with its checksum
                written = await self.upstream.put(bucket, key, b"".join([bytes(p) async for p in plaintext]), params)
            else:
                written = await self.upstream.put(bucket, key, plaintext, params, view.size)
        done = await self.upstream.head(bucket, key)  # the destination as it is now
        reply = Reply.xml(xml.copy_object_result(quote_etag(written.etag), done.last_modified))
        reply.headers.update(write_headers(written.headers))
        reply.headers.update(source_version(head.headers))
        return reply

    async def _plain_head(self, bucket: str, key: str) -> tuple[ObjectHead, View]:
        reply = await self.upstream.head(bucket, key)
        return reply, View("plaintext", reply.size, reply.etag.strip('"'))

    @staticmethod
    def _copied_params(head: ObjectHead) -> dict[str, Any]:
        """What a copy carries over from its source (``x-amz-metadata-directive: COPY``)."""
        params: dict[str, Any] = {
            param: head.headers[name] for name, param in _COPIED_HEADERS.items() if head.headers.get(name)
        }
        if "ContentEncoding" in params:  # a stored aws-chunked (SeaweedFS) is no encoding of the body
            params["ContentEncoding"] = without_aws_chunked(params["ContentEncoding"])
            if not params["ContentEncoding"]:
                del params["ContentEncoding"]
        metadata = {
            k: v for k, v in head.metadata.items() if not ("x-amz-meta-" + k.lower()).startswith(INTERNAL_META_PREFIX)
        }
        if metadata:
            params["Metadata"] = metadata
        return params

    async def _plaintext_stream(self, bucket: str, key: str, head: ObjectHead, view: View) -> AsyncIterator[Chunk]:
        _, pieces = await self.upstream.open(bucket, key, None, quote_etag(head.etag))
        if view.kind == "plaintext":
            return pieces
        return self.views.decrypting(bucket, key, head, pieces, await self.views.whole_decryptor(key, view))


def head_reply(request: Request, reply: ObjectHead, view: View) -> Reply:
    """The answer to a HEAD of a stored object: its plaintext view, the client's conditions checked."""
    check_conditions(request.headers, view.etag, reply.last_modified)
    headers = visible_headers(reply)
    headers["ETag"] = quote_etag(view.etag)
    headers["Content-Length"] = str(view.size)
    headers["Accept-Ranges"] = "bytes"
    headers.pop("x-amz-mp-parts-count", None)
    return Reply(200, headers, b"", view.size)


#: The reply headers of a copy's source that its copy carries over, as botocore's parameters.
_COPIED_HEADERS = {
    "content-type": "ContentType",
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-encoding": "ContentEncoding",
    "content-language": "ContentLanguage",
    "expires": "Expires",
    "x-amz-storage-class": "StorageClass",
}


def source_version(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy's ``x-amz-copy-source-version-id``, as S3 answers it: the version it read (the
    source's ``x-amz-version-id``; none from a bucket that never had versioning)."""
    version = headers.get("x-amz-version-id") or headers.get("X-Amz-Version-Id")
    return {"x-amz-copy-source-version-id": version} if version else {}


def copy_source_condition_headers(request: Request) -> dict[str, str]:
    """A copy's ``x-amz-copy-source-if-*`` headers as the ``if-*`` headers of a read of the source."""
    prefix = "x-amz-copy-source-"
    return {
        name[len(prefix) :].lower(): value
        for name, value in request.headers.items()
        if name.lower().startswith(prefix + "if-")
    }


@contextlib.contextmanager
def copy_source_conditions() -> Iterator[None]:
    """A copy has no "not modified": S3 answers every failed copy-source condition with 412."""
    try:
        yield
    except S3Error as err:
        if err.status != 304:
            raise
        raise S3Error("PreconditionFailed") from None


class ReplyBody:
    """A reply's body as a request's (proxy.s3.api.Body): what a copy reads, it writes."""

    def __init__(self, reply: Reply) -> None:
        self.length: int | None = reply.length
        self._pieces = reply.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if isinstance(self._pieces, bytes):
            yield self._pieces
        else:
            async for piece in self._pieces:
                yield bytes(piece)

    async def read_all(self, limit: int) -> bytes:
        if (self.length or 0) > limit:
            raise S3Error("EntityTooLarge", f"the body is larger than {limit} bytes", 400)
        return b"".join([piece async for piece in self])


# A GET reads the version its HEAD found (If-Match on the stored ETag); a write landing in between
# makes the upstream answer 412, and the GET starts over on the new version.
_GET_ATTEMPTS = 3


class _Overwritten(Exception):
    """The stored object changed between the HEAD and the GET of one read."""


@contextlib.contextmanager
def _overwritten_on_refusal() -> Iterator[None]:
    """412 to the proxy's If-Match, or 416 to a range mapped on the size the HEAD gave (the
    client's range was checked against that view; an upstream without ETags cannot refuse by
    If-Match and refuses the range of a shorter new version instead): the object changed."""
    try:
        yield
    except ObjectChanged:
        raise _Overwritten from None
    except S3Error as err:
        if err.code in ("PreconditionFailed", "InvalidRange"):
            raise _Overwritten from None
        raise


async def _started(pieces: AsyncGenerator[Chunk, None]) -> _Started:
    """``pieces`` with its first piece already read, so that a change of the object found in the
    first record (an upstream without ETags serves the new version to a GET of the old) starts
    the GET over instead of cutting an answer under way."""
    return _Started(await anext(pieces, None), pieces)


class _Started:
    """An async iterator: a piece already read, then the rest; ``aclose`` stops the rest at once
    (the upstream read with it), started or not."""

    def __init__(self, first: Chunk | None, rest: AsyncGenerator[Chunk, None]) -> None:
        self._first, self._rest = first, rest

    def __aiter__(self) -> _Started:
        return self

    async def __anext__(self) -> Chunk:
        first, self._first = self._first, None
        if first is not None:
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        self._first = None
        await self._rest.aclose()
