"""The service the front end calls: each request goes to the code for the kind of its key.

``proxy.policy`` names the kind of a key (a Medusa manifest, plaintext, or encrypted); it is
decided here, once per request, and the request handed to ``ManifestObjects``,
``PassthroughService`` or ``EncryptedObjects`` (``MultipartObjects`` for uploads into keys stored
encrypted). Bucket operations and listings pass through, with the plaintext view of the listed
objects plugged in (``adjust_listing``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.cache import StateStore
from proxy.config import Config
from proxy.format.keys import KeyRing
from proxy.keyfiles import load_key_ring
from proxy.metrics import Metrics
from proxy.objects.encrypted import (
    EncryptedObjects,
    ReplyBody,
    copy_source_condition_headers,
    copy_source_conditions,
)
from proxy.objects.manifests import ManifestObjects
from proxy.objects.multipart import MultipartObjects
from proxy.objects.passthrough import PassthroughService, dispatch
from proxy.objects.views import Views
from proxy.policy import Kind
from proxy.s3 import xml
from proxy.s3.api import Handler, Reply, Request, parse_copy_source
from proxy.upstream import Upstream
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
        }

    async def handle(self, request: Request) -> Reply:
        return await dispatch(self.handlers, request)

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
            token = upstream_versions.reading(None if entry.get("IsLatest") else entry.get("VersionId"))
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
        _, src_key = parse_copy_source(request.headers["x-amz-copy-source"])
        kinds = {self.policy.kind(request.key or ""), self.policy.kind(src_key)}
        if Kind.MANIFEST in kinds:
            return await self._copy_by_reading(request)
        if kinds == {Kind.PLAINTEXT}:
            return await self.plain.copy_object(request)
        return await self.encrypted.copy_object(request)

    async def _copy_by_reading(self, request: Request) -> Reply:
        """A copy from or to a manifest, whose seal names its key: a read of the source as Medusa
        wrote it (verified) and a PUT of that to the destination (sealed for it); the copy-source
        conditions apply to the source as a GET's own would."""
        src_bucket, src_key = parse_copy_source(request.headers["x-amz-copy-source"])
        read = Request(
            "GetObject", src_bucket, src_key, {}, copy_source_condition_headers(request), scope=request.scope
        )
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
        return Reply.xml(xml.copy_object_result(written.headers["ETag"], done.last_modified))

    # --- multipart -------------------------------------------------------------------------

    def _by_upload_kind(self, encrypted: Handler, plain: Handler) -> Handler:
        """A multipart operation: ``encrypted`` for keys stored encrypted (every kind but
        plaintext), else ``plain``."""

        async def step(request: Request) -> Reply:
            if self.views.stores_encrypted(request.key or ""):
                return await encrypted(request)
            return await plain(request)

        return step


_UPLOAD_STEPS = {
    "CreateMultipartUpload": "create_multipart_upload",
    "UploadPart": "upload_part",
    "UploadPartCopy": "upload_part_copy",
    "CompleteMultipartUpload": "complete_multipart_upload",
    "AbortMultipartUpload": "abort_multipart_upload",
    "ListParts": "list_parts",
}


def build_service(config: Config, upstream: Upstream, metrics: Metrics) -> PassthroughService | ObjectService:
    """The service for ``config``: passthrough when encryption is off."""
    if not config.encryption.enabled:
        return PassthroughService(upstream, metrics=metrics)
    keyring = load_key_ring(config.encryption.key_files)
    return ObjectService(config, upstream, metrics, keyring, StateStore(config.cache.path))
