"""Encrypted objects: the operations that turn plaintext into the stored format and back.

Everything here keeps the client's view plaintext: sizes, ETags, ranges and conditions are those
of the plaintext; the stored format is ``proxy.format``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import Any

from proxy.cache import CachedView, StateStore, version_of
from proxy.conditions import check_conditions, parse_range
from proxy.config import Config
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
from proxy.keyfiles import load_key_ring
from proxy.metrics import Metrics
from proxy.objects.core import IntegrityRefusal, ObjectChanged, View, cached_view, if_match, mark_damaged
from proxy.objects.manifests import ManifestObjects
from proxy.objects.multipart import MultipartObjects
from proxy.s3 import xml
from proxy.s3.api import Chunk, Reply, Request, parse_copy_source
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    INTERNAL_META_PREFIX,
    object_params,
    quote_etag,
    reject_sse_c,
    response_override_params,
)
from proxy.service import SMALL_BODY, PassthroughService, visible_headers
from proxy.upstream import Upstream


class EncryptedService(ManifestObjects, MultipartObjects):
    """Every S3 operation with the encryption policy applied."""

    async def adjust_listing(self, bucket: str, contents: list[dict[str, Any]]) -> None:
        """Replace stored sizes and ETags with the plaintext view, resolving misses concurrently.

        An entry that fails verification does not fail the page: it is listed as ``DAMAGED``
        (a size and ETag no object can have), so Medusa's verify names it and a differential
        backup uploads the file again; GET and HEAD of it stay refused.
        """
        manifests = [entry for entry in contents if self.policy.is_manifest(entry["Key"])]
        wanted = [entry for entry in contents if self.policy.encrypts(entry["Key"])]
        for entry in manifests:
            try:
                view, _ = await self._manifest_view(
                    bucket, entry["Key"], entry.get("ETag", ""), int(entry.get("Size", 0)), entry.get("LastModified")
                )
            except IntegrityRefusal:
                mark_damaged(entry)
                continue
            entry["Size"], entry["ETag"] = view.size, quote_etag(view.etag)
        if not wanted:
            return

        def version(entry: dict[str, Any]) -> str:
            return version_of(entry.get("ETag"), int(entry.get("Size", 0)), entry.get("LastModified"))

        cached = await self.store.get_views(bucket, [(e["Key"], version(e)) for e in wanted])
        learned: list[tuple[str, str, CachedView]] = []

        async def resolve(entry: dict[str, Any]) -> None:
            hit = cached.get((entry["Key"], version(entry)))
            self.metrics.cache_lookup(hit=hit is not None)
            try:
                if hit is not None:
                    self.recheck_legacy(entry["Key"], hit.kind, entry.get("LastModified"))
                else:
                    view = await self._inspect(
                        bucket,
                        entry["Key"],
                        entry.get("ETag", ""),
                        int(entry.get("Size", 0)),
                        entry.get("LastModified"),
                    )
                    hit = cached_view(view)
                    learned.append((entry["Key"], version(entry), hit))
            except IntegrityRefusal:
                mark_damaged(entry)
                return
            entry["Size"], entry["ETag"] = hit.size, quote_etag(hit.etag)

        await asyncio.gather(*(resolve(entry) for entry in wanted))
        await self.store.put_views(bucket, learned)

    # --- reads ---------------------------------------------------------------------------

    async def head_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        if self.policy.is_manifest(key):
            reply = await self.upstream.call("head_object", Bucket=bucket, Key=key)
            view, _ = await self._manifest_view(
                bucket, key, reply.get("ETag", ""), int(reply.get("ContentLength", 0)), reply.get("LastModified")
            )
        elif not self.policy.encrypts(key):
            return await super().head_object(request)
        else:
            reply, view = await self._head(bucket, key)
        check_conditions(request.headers, view.etag, reply["LastModified"])
        headers = visible_headers(reply)
        headers["ETag"] = quote_etag(view.etag)
        headers["Content-Length"] = str(view.size)
        headers["Accept-Ranges"] = "bytes"
        headers.pop("x-amz-mp-parts-count", None)
        return Reply(200, headers, b"", view.size)

    async def get_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        if self.policy.is_manifest(key):
            served = await self._get_manifest(request, bucket, key)
            if served is not None:
                return served  # else: stored as an encrypted object, served as one below
        elif not self.policy.encrypts(key):
            return await super().get_object(request)
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
        head, view = await self._head(bucket, key)
        check_conditions(request.headers, view.etag, head["LastModified"])
        wanted = parse_range(request.headers.get("range"), view.size)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, **if_match(head.get("ETag", ""))}
        params.update(response_override_params(request.query))
        if view.kind == "plaintext":
            if wanted is not None:
                params["Range"] = f"bytes={wanted.first}-{wanted.last}"
            with _overwritten_on_refusal():
                reply, pieces = await self.upstream.get_stream(**params)
            return self._get_reply(reply, view, wanted, pieces)
        decryptor: Any
        if wanted is None:
            decryptor = self._whole_decryptor(key, view)
        elif view.kind == "seed":
            seed_range = seed_stored_range(wanted.first, wanted.last, int(head["ContentLength"]))
            params["Range"] = seed_range.http_range
            decryptor = SeedRangeDecryptor(self.seed_keys, seed_range)
        else:
            assert view.trailer is not None
            stored = view.trailer.layout.stored_range(wanted.first, wanted.last)
            params["Range"] = stored.http_range
            decryptor = RangeDecryptor(self.keyring, view.trailer, stored, self.written_as(key, view.trailer))
        with _overwritten_on_refusal():
            reply, pieces = await self._stored_stream(params, view)
            plaintext = await _started(self._decrypting(bucket, key, head, pieces, decryptor))
        return self._get_reply(reply, view, wanted, plaintext)

    async def _stored_stream(self, params: dict[str, Any], view: View) -> tuple[dict[str, Any], AsyncIterator[Any]]:
        """The stored bytes to decrypt: read in place a record at a time when the request is a
        plain (ranged) GET of our format, else through botocore."""
        if view.trailer is not None and set(params) <= {"Bucket", "Key", "Range", "IfMatch"}:
            fast = await self.upstream.get_records(
                params["Bucket"],
                params["Key"],
                params.get("Range"),
                params.get("IfMatch", ""),
                record_size(view.trailer.chunk_size),
            )
            if fast is not None:
                return fast
        return await self.upstream.get_stream(**params)

    @staticmethod
    def _get_reply(reply: dict[str, Any], view: View, wanted: Any, pieces: AsyncIterator[Chunk]) -> Reply:
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
        key = request.key or ""
        if self.policy.is_manifest(key):
            return await self._put_manifest(request, request.bucket or "", key)
        if not self.policy.encrypts(key):
            return await super().put_object(request)
        reject_sse_c(request.headers)
        body = self._body(request)
        if body.length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        etag = await self._put_encrypted(request.bucket or "", key, body, body.length, object_params(request.headers))
        return Reply(200, {"ETag": quote_etag(etag)})

    async def _put_encrypted(
        self, bucket: str, key: str, source: AsyncIterable[Chunk], length: int, params: dict[str, Any]
    ) -> str:
        """Encrypt ``length`` plaintext bytes from ``source`` into ``key``; the plaintext ETag."""
        master = self.keyring.primary
        salt = new_salt()
        encryptor = PartEncryptor(derive_object_keys(master, salt), 1, part_size=length)
        trailer_len = len(build_trailer(master, salt, key, [PartInfo(1, length, bytes(16))], single_put=True))
        stored_size = part_stored_size(length) + trailer_len

        async def stored() -> AsyncIterator[Chunk]:
            async for records in self._encrypting(encryptor, source):
                yield records
                del records
            last = encryptor.finish()
            trailer = build_trailer(
                master, salt, key, [PartInfo(1, encryptor.plaintext_size, encryptor.md5)], single_put=True
            )
            yield last + trailer

        params = self._with_hint(params, master)
        if length <= SMALL_BODY:
            payload = b"".join([piece async for piece in stored()])
            reply = await self.upstream.fast_put(bucket, key, payload, params) or await self.upstream.call(
                "put_object", Bucket=bucket, Key=key, Body=payload, **params
            )
        else:
            reply = await self.upstream.send_stream(
                "put_object", stored(), stored_size, Bucket=bucket, Key=key, **params
            )
        etag = encryptor.md5.hex()
        trailer = Trailer.from_tail(
            build_trailer(master, salt, key, [PartInfo(1, length, encryptor.md5)], single_put=True)
        )
        await self._remember_written(
            bucket, key, reply.get("ETag", ""), stored_size, View("encrypted", length, etag, trailer)
        )
        return etag

    async def copy_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        src_bucket, src_key = parse_copy_source(request.headers["x-amz-copy-source"])
        if self.policy.is_manifest(key) or self.policy.is_manifest(src_key):
            return await self._copy_manifest(request, src_bucket, src_key)
        if not self.policy.encrypts(key) and not self.policy.encrypts(src_key):
            return await super().copy_object(request)
        reject_sse_c(request.headers)
        head, view = (
            (await self._head(src_bucket, src_key, full=True))
            if self.policy.encrypts(src_key)
            else await self._plain_head(src_bucket, src_key)
        )
        conditions = {
            name[len("x-amz-copy-source-") :]: value
            for name, value in request.headers.items()
            if name.lower().startswith("x-amz-copy-source-if-")
        }
        try:
            check_conditions({k.lower(): v for k, v in conditions.items()}, view.etag, head["LastModified"])
        except S3Error as err:
            if err.status != 304:
                raise
            # A copy has no "not modified": S3 answers every failed copy-source condition with 412.
            raise S3Error("PreconditionFailed") from None
        if request.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
            params = object_params(request.headers)
        else:
            params = self._copied_params(head)
            if request.headers.get("x-amz-storage-class"):
                params["StorageClass"] = request.headers["x-amz-storage-class"]
        plaintext = await self._plaintext_stream(src_bucket, src_key, head, view)
        if self.policy.encrypts(key):
            etag = await self._put_encrypted(bucket, key, plaintext, view.size, params)
        else:
            reply = await self.upstream.send_stream(
                "put_object", plaintext, view.size, Bucket=bucket, Key=key, **params
            )
            etag = reply.get("ETag", "")
        done = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        return Reply.xml(xml.copy_object_result(quote_etag(etag), done["LastModified"]))

    async def _copy_manifest(self, request: Request, src_bucket: str, src_key: str) -> Reply:
        """A manifest's seal names its key, so a copy is a read of the source as Medusa wrote it
        (verified) and a PUT of that to the destination (sealed for it); the copy-source
        conditions apply to the source as a GET's own would."""
        conditions = {
            name[len("x-amz-copy-source-") :].lower(): value
            for name, value in request.headers.items()
            if name.lower().startswith("x-amz-copy-source-if-")
        }
        read = Request("GetObject", src_bucket, src_key, {}, conditions, scope=request.scope)
        try:
            source = await self.get_object(read)
        except S3Error as err:
            if err.status != 304:
                raise
            raise S3Error("PreconditionFailed") from None  # a copy has no "not modified"
        headers = {k: v for k, v in request.headers.items() if not k.lower().startswith("x-amz-copy-source")}
        if request.headers.get("x-amz-metadata-directive", "COPY").upper() != "REPLACE":
            headers.update(
                {
                    k: v
                    for k, v in source.headers.items()
                    if k.lower() == "content-type" or k.lower().startswith("x-amz-meta-")
                }
            )
        written = await self.put_object(
            Request("PutObject", request.bucket, request.key, {}, headers, _ReplyBody(source), scope=request.scope)
        )
        done = await self.upstream.call("head_object", Bucket=request.bucket or "", Key=request.key or "")
        return Reply.xml(xml.copy_object_result(written.headers["ETag"], done["LastModified"]))

    async def _plain_head(self, bucket: str, key: str) -> tuple[dict[str, Any], View]:
        reply = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        return reply, View("plaintext", int(reply["ContentLength"]), reply.get("ETag", "").strip('"'))

    @staticmethod
    def _copied_params(head: Mapping[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name in (
            "ContentType",
            "CacheControl",
            "ContentDisposition",
            "ContentEncoding",
            "ContentLanguage",
            "Expires",
            "StorageClass",
        ):
            if head.get(name):
                params[name] = head[name]
        metadata = {
            k: v
            for k, v in head.get("Metadata", {}).items()
            if not ("x-amz-meta-" + k.lower()).startswith(INTERNAL_META_PREFIX)
        }
        if metadata:
            params["Metadata"] = metadata
        return params

    async def _plaintext_stream(
        self, bucket: str, key: str, head: Mapping[str, Any], view: View
    ) -> AsyncIterator[Chunk]:
        _, pieces = await self.upstream.get_stream(Bucket=bucket, Key=key, **if_match(str(head.get("ETag", ""))))
        if view.kind == "plaintext":
            return pieces
        return self._decrypting(bucket, key, head, pieces, self._whole_decryptor(key, view))


class _ReplyBody:
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


def build_encrypted_service(config: Config, upstream: Upstream, metrics: Metrics) -> PassthroughService:
    if not config.encryption.enabled:
        return PassthroughService(upstream)
    keyring = load_key_ring(config.encryption.key_files)
    return EncryptedService(config, upstream, metrics, keyring, StateStore(config.cache.path))
