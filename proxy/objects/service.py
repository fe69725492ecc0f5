"""The service the front end calls: each request goes to the code for the kind of its key.

``proxy.policy`` names the kind of a key (a Medusa manifest, plaintext, or encrypted); it is
decided here, once per request, and the request handed to ``ManifestObjects``,
``PassthroughService`` or ``EncryptedObjects`` (``MultipartObjects`` for uploads into keys stored
encrypted). Bucket operations and listings pass through, with the plaintext view of the listed
objects plugged in (``adjust_listing``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from proxy.cache import CompletedUpload, StateStore
from proxy.config import Config
from proxy.format.keys import KeyRing
from proxy.keyfiles import load_key_ring
from proxy.metrics import Metrics
from proxy.objects.encrypted import (
    EncryptedObjects,
    ReplyBody,
    copy_source_condition_headers,
    copy_source_conditions,
    source_version,
)
from proxy.objects.manifests import ManifestObjects
from proxy.objects.multipart import MultipartObjects
from proxy.objects.passthrough import PassthroughService, dispatch, missing_named
from proxy.objects.views import Views
from proxy.policy import Kind
from proxy.s3 import xml
from proxy.s3.api import Handler, Reply, Request, close_pieces, parse_copy_source
from proxy.s3.errors import S3Error
from proxy.upstream import Upstream, write_headers
from proxy.upstream import versions as upstream_versions


class ObjectService:
    """Every S3 operation with the encryption policy applied."""

    def __init__(
        self, config: Config, upstream: Upstream, metrics: Metrics, keyring: KeyRing, store: StateStore
    ) -> None:
        self.views = Views(config, upstream, metrics, keyring, store)
        self.policy = self.views.policy
        self.store = store
        self.plain = PassthroughService(upstream, listing=self, metrics=metrics)
        self.encrypted = EncryptedObjects(self.views)
        self.manifests = ManifestObjects(self.views, self.encrypted)
        self.multipart = MultipartObjects(self.views)
        self.handlers: dict[str, Handler] = {
            **self.plain.handlers,
            "HeadObject": self.head_object,
            "GetObject": self.get_object,
            "PutObject": self.put_object,
            "CopyObject": self.copy_object,
            **{
                operation: self._by_upload_kind(getattr(self.multipart, method), getattr(self.plain, method))
                for operation, method in _UPLOAD_STEPS.items()
            },
            "UploadPartCopy": self.upload_part_copy,
            "CompleteMultipartUpload": self.complete_multipart_upload,
        }

    async def handle(self, request: Request) -> Reply:
        return await missing_named(self.views.upstream, request, dispatch(self.handlers, request))

    # --- lifecycle (the daemon's) ----------------------------------------------------------

    @property
    def key_ids(self) -> list[str]:
        return self.views.key_ids

    async def start(self) -> None:
        await self.views.start()
        self.multipart.start()

    async def close(self) -> None:
        await self.multipart.close()
        await self.views.close()

    def reload(self, key_files: list[str] | None = None) -> None:
        self.views.reload(key_files)

    # --- the plaintext view of listings (PassthroughService's Listing) ----------------------

    async def adjust_listing(self, bucket: str, contents: list[dict[str, Any]]) -> None:
        kinds = [self.policy.kind(entry["Key"]) for entry in contents]
        await self.manifests.adjust_listing(
            bucket, [e for e, k in zip(contents, kinds, strict=True) if k is Kind.MANIFEST]
        )
        await self.views.adjust_listing(
            bucket, [e for e, k in zip(contents, kinds, strict=True) if k is Kind.ENCRYPTED]
        )

    async def forget(self, bucket: str, keys: list[str]) -> None:
        await self.views.forget(bucket, keys)

    async def adjust_versions(self, bucket: str, versions: list[dict[str, Any]]) -> None:
        """A ListObjectVersions page with each version's plaintext view: every version is looked
        up as itself (its own trailer, read with its version id), as a listing entry would be. The
        latest version is the current object, read as a listing reads it (guarded by its ETag): an
        unversioned bucket lists every object as version "null", which not every upstream takes
        as a version id on a HEAD (moto)."""

        async def one(entry: dict[str, Any]) -> None:
            token = upstream_versions.reading(
                None if entry.get("IsLatest") else entry.get("VersionId"), bucket, entry.get("Key", "")
            )
            try:
                await self.adjust_listing(bucket, [entry])
            finally:
                upstream_versions.done(token)

        await asyncio.gather(*(one(entry) for entry in versions))

    async def adjust_attributes(self, bucket: str, key: str, attributes: dict[str, Any]) -> None:
        """GetObjectAttributes of a stored-encrypted object as its HEAD shows it: the plaintext ETag
        and size; the checksums and parts describe the stored bytes, so they are left out."""
        if self.policy.kind(key) is Kind.PLAINTEXT:
            return
        head = await self.head_object(Request("HeadObject", bucket, key, {}, {}))
        if "ETag" in attributes:
            attributes["ETag"] = head.headers.get("ETag", "").strip('"')
        if "ObjectSize" in attributes:
            attributes["ObjectSize"] = int(head.headers.get("Content-Length", 0))
        attributes.pop("Checksum", None)
        attributes.pop("ObjectParts", None)

    # --- objects ---------------------------------------------------------------------------

    async def head_object(self, request: Request) -> Reply:
        kind = self.policy.kind(request.key or "")
        if kind is Kind.MANIFEST:
            return await self.manifests.head_object(request)
        if kind is Kind.PLAINTEXT:
            return await self.plain.head_object(request)
        return await self.encrypted.head_object(request)

    async def get_object(self, request: Request) -> Reply:
        kind = self.policy.kind(request.key or "")
        if kind is Kind.MANIFEST:
            served = await self.manifests.get_object(request)
            if served is not None:
                return served  # else: stored as an encrypted object, served as one below
        elif kind is Kind.PLAINTEXT:
            return await self.plain.get_object(request)
        return await self.encrypted.get_object(request)

    async def put_object(self, request: Request) -> Reply:
        kind = self.policy.kind(request.key or "")
        if kind is Kind.MANIFEST:
            return await self.manifests.put_object(request)
        if kind is Kind.PLAINTEXT:
            return await self.plain.put_object(request)
        return await self.encrypted.put_object(request)

    async def copy_object(self, request: Request) -> Reply:
        source = parse_copy_source(request.headers["x-amz-copy-source"])
        same = (source.bucket, source.key) == (request.bucket, request.key) and source.version is None
        if same and not _changes_the_object(request.headers):
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without "
                "changing the object's metadata, storage class, website redirect location or encryption "
                "attributes.",
                400,
            )
        kinds = {self.policy.kind(request.key or ""), self.policy.kind(source.key)}
        if Kind.MANIFEST in kinds:
            return await self._copy_by_reading(request)
        if kinds == {Kind.PLAINTEXT}:
            return await self.plain.copy_object(request)
        return await self.encrypted.copy_object(request)

    async def _copy_by_reading(self, request: Request) -> Reply:
        """A copy from or to a manifest, whose seal names its key: a read of the source as Medusa
        wrote it (verified) and a PUT of that to the destination (sealed for it); the copy-source
        conditions apply to the source as a GET's own would."""
        copied = parse_copy_source(request.headers["x-amz-copy-source"])
        read = Request(
            "GetObject", copied.bucket, copied.key, {}, copy_source_condition_headers(request), scope=request.scope
        )
        with upstream_versions.read_as(copied.version, copied.bucket, copied.key):
            with copy_source_conditions():
                source = await self.get_object(read)
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
                Request("PutObject", request.bucket, request.key, {}, headers, ReplyBody(source), scope=request.scope)
            )
        done = await self.views.upstream.head(request.bucket or "", request.key or "")
        reply = Reply.xml(xml.copy_object_result(written.headers["ETag"], done.last_modified))
        reply.headers.update(source_version(source.headers))
        return reply

    # --- multipart -------------------------------------------------------------------------

    async def complete_multipart_upload(self, request: Request) -> Reply:
        """Complete; its answer is kept a while (``proxy.cache.COMPLETED_SECONDS``) and given
        again to a repeated Complete of the same upload, as S3 does (a client retries one whose
        answer it lost), where the upload is gone (NoSuchUpload) from the state and the bucket."""
        bucket, key, upload_id = request.bucket or "", request.key or "", request.query["uploadId"]
        try:
            if self.views.stores_encrypted(key):
                reply = await self.multipart.complete_multipart_upload(request)
            else:
                reply = await self.plain.complete_multipart_upload(request)
        except S3Error as err:
            if err.code != "NoSuchUpload":
                raise
            done = await self.store.get_completed(upload_id)
            if done is None or (done.bucket, done.key) != (bucket, key):
                raise
            return Reply(200, dict(done.headers), done.body)
        if isinstance(reply.body, bytes):
            await self.store.put_completed(CompletedUpload(upload_id, bucket, key, dict(reply.headers), reply.body))
        return reply

    async def upload_part_copy(self, request: Request) -> Reply:
        """UploadPartCopy. Server side only between plaintext keys; otherwise the bucket would copy
        ciphertext where plaintext belongs (or the reverse), so the source range is read through
        the proxy (decrypted, verified) and uploaded as the part, encrypted for an encrypted key."""
        copied = parse_copy_source(request.headers["x-amz-copy-source"])
        key = request.key or ""
        if not self.views.stores_encrypted(key) and self.policy.kind(copied.key) is Kind.PLAINTEXT:
            return await self.plain.upload_part_copy(request)
        wanted = _copy_source_range(request.headers.get("x-amz-copy-source-range"))
        headers = copy_source_condition_headers(request)
        if wanted is not None:
            headers["range"] = f"bytes={wanted[0]}-{wanted[1]}"
        read = Request("GetObject", copied.bucket, copied.key, {}, headers, scope=request.scope)
        with upstream_versions.read_as(copied.version, copied.bucket, copied.key):
            with copy_source_conditions():
                source = await self.get_object(read)
            try:  # however the part ends (a bad range, no such upload), the source read stops with it
                if wanted is not None and source.length != wanted[1] - wanted[0] + 1:
                    raise S3Error(
                        "InvalidRange",
                        f"The x-amz-copy-source-range is not within the source object ({copied.key!r}).",
                        416,
                    )
                body = ReplyBody(source)
                part = Request("UploadPart", request.bucket, key, request.query, {}, body, scope=request.scope)
                if self.views.stores_encrypted(key):
                    written = await self.multipart.upload_part(part)
                else:
                    written = await self.plain.upload_part(part)
            finally:
                await close_pieces(source.body)
        reply = Reply.xml(xml.copy_part_result(written.headers["ETag"], datetime.now(UTC)))
        reply.headers.update(write_headers(written.headers))  # the bucket's encryption of the part
        reply.headers.update(source_version(source.headers))
        return reply

    def _by_upload_kind(self, encrypted: Handler, plain: Handler) -> Handler:
        """A multipart operation: ``encrypted`` for keys stored encrypted (every kind but
        plaintext), else ``plain``."""

        async def step(request: Request) -> Reply:
            if self.views.stores_encrypted(request.key or ""):
                return await encrypted(request)
            return await plain(request)

        return step


def _changes_the_object(headers: Mapping[str, str]) -> bool:
    """Whether a copy of an object onto itself changes anything (S3 refuses one that does not;
    through the proxy it would be a new encryption of the same plaintext)."""
    if headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
        return True
    return any(
        name.lower() in ("x-amz-storage-class", "x-amz-website-redirect-location")
        or name.lower().startswith("x-amz-server-side-encryption")
        for name in headers
    )


def _copy_source_range(value: str | None) -> tuple[int, int] | None:
    """``x-amz-copy-source-range`` (``bytes=first-last``, both given, as S3 requires) or None."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*bytes=(\d+)-(\d+)\s*", value)
    if match is None or int(match[1]) > int(match[2]):
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last", 400)
    return int(match[1]), int(match[2])


_UPLOAD_STEPS = {
    "CreateMultipartUpload": "create_multipart_upload",
    "UploadPart": "upload_part",
    "AbortMultipartUpload": "abort_multipart_upload",
    "ListParts": "list_parts",
}


def build_service(config: Config, upstream: Upstream, metrics: Metrics) -> PassthroughService | ObjectService:
    """The service for ``config``: passthrough when encryption is off."""
    if not config.encryption.enabled:
        return PassthroughService(upstream, metrics=metrics)
    keyring = load_key_ring(config.encryption.key_files)
    return ObjectService(config, upstream, metrics, keyring, StateStore(config.cache.path))
