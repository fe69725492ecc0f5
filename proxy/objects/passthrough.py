"""The S3 operations forwarded to the bucket unchanged: buckets, listings, plaintext keys.

``PassthroughService`` is the whole service when encryption is off; with encryption on,
``proxy.objects.service`` hands it the requests for plaintext keys and the bucket operations,
and plugs the plaintext view of listings in through ``Listing``. It never sees HTTP
connections (``proxy.s3.frontend`` does) nor the object format (``proxy.format``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from proxy.conditions import delete_conditions_hold
from proxy.metrics import Metrics
from proxy.s3 import xml
from proxy.s3.api import Body, Handler, Reply, Request, close_pieces, parse_copy_source
from proxy.s3.checksums import BodyChecksums
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    INTERNAL_META_PREFIX,
    body_limit,
    bucket_params,
    conditional_params,
    int_param,
    object_params,
    parse_http_date,
    quote_etag,
    reject_sse_c,
    response_override_params,
    storage_params,
)
from proxy.s3.routing import SUBRESOURCE_OPERATIONS
from proxy.upstream import ObjectHead, Opened, Upstream, reply_headers, subresources, versions, write_headers

MAX_XML_BODY = 4 << 20


def visible_headers(reply: ObjectHead | Opened) -> dict[str, str]:
    """Upstream reply headers for a client, without the proxy's own metadata hints."""
    return {k: v for k, v in reply_headers(reply).items() if not k.startswith(INTERNAL_META_PREFIX)}


class Listing(Protocol):
    """What a listing shows of stored objects, and what a delete makes the proxy forget."""

    async def adjust_listing(self, bucket: str, contents: list[dict[str, Any]]) -> None: ...

    async def forget(self, bucket: str, keys: list[str]) -> None: ...

    async def adjust_versions(self, bucket: str, versions: list[dict[str, Any]]) -> None: ...

    async def adjust_attributes(self, bucket: str, key: str, attributes: dict[str, Any]) -> None: ...


class StoredAsIs:
    """The ``Listing`` of a bucket without encryption: stored sizes and ETags are the client's."""

    async def adjust_listing(self, bucket: str, contents: list[dict[str, Any]]) -> None:
        return None

    async def adjust_versions(self, bucket: str, versions: list[dict[str, Any]]) -> None:
        return None

    async def adjust_attributes(self, bucket: str, key: str, attributes: dict[str, Any]) -> None:
        return None

    async def forget(self, bucket: str, keys: list[str]) -> None:
        return None


class PassthroughService:
    """Forwards every operation to the upstream bucket unchanged."""

    def __init__(self, upstream: Upstream, listing: Listing | None = None, metrics: Metrics | None = None) -> None:
        self.upstream = upstream
        self.listing: Listing = listing or StoredAsIs()
        self.metrics = metrics
        # Uploads started through this process and not finished: multipart_uploads_in_flight counts
        # them, and only them (an upload another process started is not taken off the gauge).
        self._uploads: set[str] = set()
        self.handlers: dict[str, Handler] = {
            "ListBuckets": self.list_buckets,
            "HeadBucket": self.head_bucket,
            "CreateBucket": self.create_bucket,
            "DeleteBucket": self.delete_bucket,
            "GetBucketLocation": self.get_bucket_location,
            "ListObjectsV2": self.list_objects_v2,
            "ListObjects": self.list_objects_v1,
            "HeadObject": self.head_object,
            "GetObject": self.get_object,
            "PutObject": self.put_object,
            "CopyObject": self.copy_object,
            "DeleteObject": self.delete_object,
            "DeleteObjects": self.delete_objects,
            "CreateMultipartUpload": self.create_multipart_upload,
            "UploadPart": self.upload_part,
            "UploadPartCopy": self.upload_part_copy,
            "CompleteMultipartUpload": self.complete_multipart_upload,
            "AbortMultipartUpload": self.abort_multipart_upload,
            "ListParts": self.list_parts,
            "ListMultipartUploads": self.list_multipart_uploads,
            **{operation: self.subresource for operation in SUBRESOURCE_OPERATIONS - OBJECT_VIEWS},
            "ListObjectVersions": self.list_object_versions,
            "GetObjectAttributes": self.get_object_attributes,
        }

    async def handle(self, request: Request) -> Reply:
        return await missing_named(self.upstream, request, dispatch(self.handlers, request))

    # The same lifecycle as ObjectService's: nothing to open or close.
    key_ids: list[str] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # --- buckets -------------------------------------------------------------------------

    async def list_buckets(self, request: Request) -> Reply:
        reply = await self.upstream.call("list_buckets")
        if request.scope is not None:
            scope = request.scope
            reply = {
                **reply,
                "Buckets": [b for b in reply.get("Buckets") or () if scope.allows_bucket(b.get("Name", ""))],
            }
        return Reply.xml(xml.list_buckets(reply))

    async def head_bucket(self, request: Request) -> Reply:
        reply = await self.upstream.call("head_bucket", Bucket=request.bucket)
        region = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        return Reply(200, {"x-amz-bucket-region": region or self.upstream.cfg.region})

    async def create_bucket(self, request: Request) -> Reply:
        """CreateBucket as the client asked it: its ACL, grant, ownership and object-lock headers
        and its ``CreateBucketConfiguration``. Without one, a bucket in the upstream's region
        (``upstream.region``): the client signs for the proxy, not for the bucket's region, and
        the proxy reaches buckets of that region only."""
        payload = await request_body(request).read_all(xml.MAX_CREATE_BUCKET_BODY)
        try:
            configuration = xml.parse_create_bucket(payload)
        except xml.MalformedXMLError as exc:
            raise S3Error("MalformedXML", str(exc), 400) from None
        region = self.upstream.cfg.region
        if not configuration and region and region != "us-east-1":
            configuration = {"LocationConstraint": region}
        params = bucket_params(request.headers)
        if configuration:
            params["CreateBucketConfiguration"] = configuration
        reply = await self.upstream.call("create_bucket", Bucket=request.bucket, **params)
        return Reply(200, {"Location": reply.get("Location") or f"/{request.bucket}"})

    async def delete_bucket(self, request: Request) -> Reply:
        """DeleteBucket; the upstream's BucketNotEmpty or NoSuchBucket reach the client as they are."""
        await self.upstream.call("delete_bucket", Bucket=request.bucket)
        return Reply(204)

    async def get_bucket_location(self, request: Request) -> Reply:
        reply = await self.upstream.call("get_bucket_location", Bucket=request.bucket)
        return Reply.xml(xml.location(reply.get("LocationConstraint") or "us-east-1"))

    # --- listings ------------------------------------------------------------------------

    @staticmethod
    def _encoding(query: Mapping[str, str]) -> str | None:
        """The client's encoding-type; botocore decodes upstream keys itself, so it is not forwarded."""
        encoding = query.get("encoding-type")
        if encoding not in (None, "", "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request", 400)
        return encoding or None

    async def list_objects_v2(self, request: Request) -> Reply:
        encoding = self._encoding(request.query)
        reply = await self._list(request, v2=True)
        await self.listing.adjust_listing(request.bucket or "", reply.get("Contents", []))
        return Reply.xml(xml.list_objects_v2(reply, encoding))

    async def list_objects_v1(self, request: Request) -> Reply:
        encoding = self._encoding(request.query)
        reply = await self._list(request, v2=False)
        await self.listing.adjust_listing(request.bucket or "", reply.get("Contents", []))
        return Reply.xml(xml.list_objects_v1(reply, encoding))

    async def _list(self, request: Request, v2: bool) -> dict[str, Any]:
        """One upstream listing page with the client's parameters."""
        q = request.query
        names = _LIST_V2_PARAMS if v2 else _LIST_V1_PARAMS
        wanted = [(name, q[name]) for name in names if q.get(name)]
        max_keys = int_param(q, "max-keys", 1000, 0, 1000)
        fetch_owner = v2 and q.get("fetch-owner") == "true"
        query = [*wanted, ("max-keys", str(max_keys))]
        if fetch_owner:
            query.append(("fetch-owner", "true"))
        page = await self.upstream.list_page(request.bucket or "", query, v2)
        # The Prefix is the client's own, as S3 answers it: upstreams differ on whether theirs is
        # URL-encoded under encoding-type=url (moto's is not), so decoding it could change it.
        page["Prefix"] = q.get("prefix", "")
        page.pop("EncodingType", None)
        return page

    # --- sub-resources: configuration without object data -------------------------------

    async def subresource(self, request: Request) -> Reply:
        """A bucket's or object's configuration (versioning, policy, tagging, ACL, object lock...):
        no object data, so it goes to the bucket as it is and its answer (or error) comes back."""
        result = await self._subresource_call(request)
        status, headers, body = subresources.reply_of(request.operation, result)
        return Reply(status, headers, body)

    async def _subresource_call(self, request: Request) -> dict[str, Any]:
        payload = await request.body.read_all(MAX_XML_BODY) if request.body is not None else b""
        params = subresources.request_params(
            request.operation, request.bucket or "", request.key, request.query, request.headers, payload
        )
        return await self.upstream.call(subresources.botocore_name(request.operation), **params)

    async def list_object_versions(self, request: Request) -> Reply:
        """ListObjectVersions with each version's plaintext size and ETag (``Listing.adjust_versions``).
        botocore decodes the keys it gets (it asks for ``encoding-type=url`` itself); the client's
        own ``encoding-type`` decides how they are written back."""
        encoding = self._encoding(request.query)
        query = {name: value for name, value in request.query.items() if name != "encoding-type"}
        result = await self._subresource_call(
            Request(request.operation, request.bucket, None, query, request.headers, None, request.scope)
        )
        await self.listing.adjust_versions(request.bucket or "", result.get("Versions", []))
        if encoding == "url":
            subresources.url_encode_listing(result)
        status, headers, body = subresources.reply_of(request.operation, result)
        return Reply(status, headers, body)

    async def get_object_attributes(self, request: Request) -> Reply:
        """GetObjectAttributes with the plaintext size and ETag (``Listing.adjust_attributes``)."""
        result = await self._subresource_call(request)
        await self.listing.adjust_attributes(request.bucket or "", request.key or "", result)
        status, headers, body = subresources.reply_of(request.operation, result)
        return Reply(status, headers, body)

    # --- objects -------------------------------------------------------------------------

    async def head_object(self, request: Request) -> Reply:
        head = await self.upstream.head(request.bucket or "", request.key or "", conditional_params(request.headers))
        headers = visible_headers(head)
        headers["Content-Length"] = str(head.size)
        return Reply(200, headers, b"", head.size)

    async def get_object(self, request: Request) -> Reply:
        params = conditional_params(request.headers)
        params.update(response_override_params(request.query))
        spec = request.headers.get("range") or None
        if request.query.get("partNumber"):
            params["PartNumber"] = int_param(request.query, "partNumber", None, 1, 10000)
        opened, pieces = await self.upstream.open(request.bucket or "", request.key or "", spec, "", **params)
        headers = visible_headers(opened)
        status = 200
        if opened.content_range:
            headers["Content-Range"] = opened.content_range
            status = 206
        return Reply(status, headers, pieces, opened.length)

    async def put_object(self, request: Request) -> Reply:
        reject_sse_c(request.headers)
        body = request_body(request)
        bucket, key, length = request.bucket or "", request.key or "", _length(body)
        params = object_params(request.headers)
        params.update(await write_conditions(request.headers, self.current_etags(bucket, key)))
        limit = body_limit(params, SMALL_BODY)
        if length <= limit:  # whole: verified before it is sent, and retryable
            written = await self.upstream.put(bucket, key, await body.read_all(limit), params)
        else:
            written = await self.upstream.put(bucket, key, body, params, length)
        return Reply(
            200, {"ETag": quote_etag(written.etag), **write_headers(written.headers), **verified_checksum(body)}
        )

    async def copy_object(self, request: Request) -> Reply:
        reject_sse_c(request.headers)
        source = parse_copy_source(request.headers["x-amz-copy-source"])
        params = self._copy_params(request)
        copied = await self.upstream.copy(request.bucket or "", request.key or "", source, params)
        reply = Reply.xml(xml.copy_object_result(copied.etag, copied.last_modified))
        reply.headers.update(write_headers(copied.headers))
        if source.version:  # the version copied, as S3 names it (moto leaves it out of UploadPartCopy's)
            reply.headers.setdefault("x-amz-copy-source-version-id", source.version)
        return reply

    @staticmethod
    def _copy_params(request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {}
        directive = request.headers.get("x-amz-metadata-directive")
        if directive:
            params["MetadataDirective"] = directive
        if directive == "REPLACE":
            params.update(object_params(request.headers))
        else:
            params.update(storage_params(request.headers))
            if request.headers.get("x-amz-storage-class"):
                params["StorageClass"] = request.headers["x-amz-storage-class"]
        for name, param in (
            ("x-amz-copy-source-if-match", "CopySourceIfMatch"),
            ("x-amz-copy-source-if-none-match", "CopySourceIfNoneMatch"),
        ):
            if request.headers.get(name):
                params[param] = request.headers[name]
        return params

    async def delete_object(self, request: Request) -> Reply:
        bucket, key, version = request.bucket or "", request.key or "", request.query.get("versionId")
        refusal, guard = await self._delete_checked(bucket, key, version, delete_condition(request.headers))
        if refusal is not None:
            raise refusal
        params = delete_params(request.headers)
        if guard:
            params["IfMatch"] = guard
        headers = await self.upstream.delete(bucket, key, version, params)
        await self.listing.forget(bucket, [key])
        return Reply(204, headers)

    async def _delete_checked(
        self, bucket: str, key: str, version: str | None, condition: xml.DeleteCondition
    ) -> tuple[S3Error | None, str]:
        """A conditional delete checked as S3 checks it, on the object as the client sees it (the
        plaintext ETag and size of an encrypted one): the refusal, or None and the bucket's ETag
        of the version found, which the delete then names (a write landing in between is refused
        by a bucket that checks it; one that does not, rclone, has only this check).

        Nothing there deletes nothing, without an error; a delete marker there holds for ``*``
        only (S3's answers in ceph/s3-tests' conditional-delete tests)."""
        if not condition:
            return None, ""
        with versions.read_as(version, bucket, key):
            try:
                head = await self.upstream.head(bucket, key)
            except S3Error as err:
                if err.status != 404:
                    return err, ""
                if err.headers.get("x-amz-delete-marker") != "true":
                    return None, ""
                only_any = condition.etag is not None and condition.etag.strip() == "*"
                if only_any and condition.last_modified is None and condition.size is None:
                    return None, ""
                return S3Error("PreconditionFailed"), ""
            entry: dict[str, Any] = {
                "Key": key,
                "ETag": head.etag,
                "Size": head.size,
                "LastModified": head.last_modified,
            }
            await self.listing.adjust_listing(bucket, [entry])
        holds = delete_conditions_hold(
            condition.etag,
            condition.last_modified,
            condition.size,
            found_etag=str(entry["ETag"]),
            found_modified=head.last_modified,
            found_size=int(entry["Size"]),
        )
        if not holds:
            return S3Error("PreconditionFailed"), ""
        return None, head.etag if head.etag.strip('"') else ""

    async def delete_objects(self, request: Request) -> Reply:
        payload = await request_body(request).read_all(MAX_XML_BODY)
        try:
            objects, quiet = xml.parse_delete(payload)
        except xml.MalformedXMLError as exc:
            raise S3Error("MalformedXML", str(exc), 400) from None
        if request.scope is not None:  # one key out of scope refuses the request: nothing is deleted
            for obj in objects:
                request.scope.check_key(request.bucket or "", obj.key)
        bucket = request.bucket or ""
        checks = asyncio.Semaphore(_DELETE_CHECKS)

        async def checked(obj: xml.ObjectIdentifier) -> tuple[S3Error | None, str]:
            async with checks:
                return await self._delete_checked(bucket, obj.key, obj.version_id, obj.condition)

        verdicts = await asyncio.gather(*(checked(obj) for obj in objects))
        entries: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for obj, (refusal, guard) in zip(objects, verdicts, strict=True):
            entry: dict[str, Any] = {"Key": obj.key}
            if obj.version_id:
                entry["VersionId"] = obj.version_id
            if refusal is not None:
                refused.append({**entry, "Code": refusal.code, "Message": refusal.message})
                continue
            if guard:
                entry["ETag"] = guard
            entries.append(entry)
        reply: dict[str, Any] = {}
        if entries:
            reply = await self.upstream.call(
                "delete_objects",
                Bucket=request.bucket,
                Delete={"Objects": entries, "Quiet": quiet},
                **delete_params(request.headers),
            )
        await self.listing.forget(bucket, [deleted["Key"] for deleted in reply.get("Deleted", [])])
        return Reply.xml(xml.delete_result(reply.get("Deleted", []), [*refused, *reply.get("Errors", [])], quiet))

    # --- multipart -----------------------------------------------------------------------

    async def create_multipart_upload(self, request: Request) -> Reply:
        reject_sse_c(request.headers)
        bucket, key = request.bucket or "", request.key or ""
        created = await self.upstream.create_upload(bucket, key, object_params(request.headers))
        if self.metrics is not None:
            self._uploads.add(created.upload_id)
            self.metrics.multipart_started()
        reply = Reply.xml(xml.initiate_multipart(bucket, key, created.upload_id))
        reply.headers.update(write_headers(created.headers))
        return reply

    async def upload_part(self, request: Request) -> Reply:
        body = request_body(request)
        step = (request.bucket or "", request.key or "", request.query["uploadId"], part_number(request.query))
        if _length(body) <= SMALL_BODY:
            written = await self.upstream.upload_part(*step, await body.read_all(SMALL_BODY))
        else:
            written = await self.upstream.upload_part(*step, body, _length(body))
        return Reply(
            200, {"ETag": quote_etag(written.etag), **write_headers(written.headers), **verified_checksum(body)}
        )

    async def upload_part_copy(self, request: Request) -> Reply:
        source = parse_copy_source(request.headers["x-amz-copy-source"])
        params: dict[str, Any] = {}
        if request.headers.get("x-amz-copy-source-range"):
            params["CopySourceRange"] = request.headers["x-amz-copy-source-range"]
        copied = await self.upstream.copy_part(
            request.bucket or "",
            request.key or "",
            request.query["uploadId"],
            part_number(request.query),
            source,
            params,
        )
        reply = Reply.xml(xml.copy_part_result(copied.etag, copied.last_modified))
        reply.headers.update(write_headers(copied.headers))
        if source.version:  # the version copied, as S3 names it (moto leaves it out of UploadPartCopy's)
            reply.headers.setdefault("x-amz-copy-source-version-id", source.version)
        return reply

    async def complete_multipart_upload(self, request: Request) -> Reply:
        parts = await completed_parts(request)
        bucket, key = request.bucket or "", request.key or ""
        listed = [(p.part_number, quote_etag(p.etag)) for p in parts]
        conditions = await write_conditions(request.headers, self.current_etags(bucket, key))
        done = await self.upstream.complete_upload(bucket, key, request.query["uploadId"], listed, conditions)
        self._finished(request.query["uploadId"])
        reply = Reply.xml(xml.complete_multipart(done.location, bucket, key, done.etag))
        reply.headers.update(write_headers(done.headers))
        return reply

    async def abort_multipart_upload(self, request: Request) -> Reply:
        upload_id = request.query["uploadId"]
        try:
            await self.upstream.abort_upload(request.bucket or "", request.key or "", upload_id)
        except S3Error as err:
            if err.code == "NoSuchUpload":  # gone upstream: it will never finish either
                self._finished(upload_id)
            raise
        self._finished(upload_id)
        return Reply(204)

    def current_etags(self, bucket: str, key: str) -> CurrentEtags:
        """``write_conditions``' look at a plaintext key: its ETag is the stored one."""

        async def current() -> tuple[str, str] | None:
            try:
                head = await self.upstream.head(bucket, key)
            except S3Error as err:
                if err.status == 404:
                    return None
                raise
            return head.etag, head.etag

        return current

    def _finished(self, upload_id: str) -> None:
        if upload_id in self._uploads:
            self._uploads.discard(upload_id)
            if self.metrics is not None:
                self.metrics.multipart_finished()

    async def list_parts(self, request: Request) -> Reply:
        params: dict[str, Any] = {"Bucket": request.bucket, "Key": request.key, "UploadId": request.query["uploadId"]}
        max_parts = int_param(request.query, "max-parts", None, 0, 1000)
        if max_parts is not None:
            params["MaxParts"] = max_parts
        marker = int_param(request.query, "part-number-marker", None, 0, 10000)
        if marker is not None:
            params["PartNumberMarker"] = marker
        reply = await self.upstream.call("list_parts", **params)
        return Reply.xml(xml.list_parts(reply))

    async def list_multipart_uploads(self, request: Request) -> Reply:
        q = request.query
        encoding = self._encoding(q)
        params: dict[str, Any] = {"Bucket": request.bucket}
        for name, param in (
            ("prefix", "Prefix"),
            ("delimiter", "Delimiter"),
            ("key-marker", "KeyMarker"),
            ("upload-id-marker", "UploadIdMarker"),
        ):
            if q.get(name):
                params[param] = q[name]
        max_uploads = int_param(q, "max-uploads", None, 0, 1000)
        if max_uploads is not None:
            params["MaxUploads"] = max_uploads
        reply = await self.upstream.call("list_multipart_uploads", **params)
        return Reply.xml(xml.list_multipart_uploads(reply, encoding))

    # --- helpers -------------------------------------------------------------------------


SMALL_BODY = 1 << 20
#: Sub-resources that describe objects: the service shows them with the plaintext view.
OBJECT_VIEWS = frozenset({"ListObjectVersions", "GetObjectAttributes"})

#: The ETag a client sees of the object now at a key and the bucket's ETag of it; None: no object.
CurrentEtags = Callable[[], Awaitable[tuple[str, str] | None]]


async def write_conditions(headers: Mapping[str, str], current: CurrentEtags) -> dict[str, Any]:
    """A conditional write's ``If-Match`` / ``If-None-Match: *`` (PutObject, Complete) checked
    as S3 checks them, and botocore's IfMatch / IfNoneMatch for the bucket's final write.

    The check here is on the client's view (the plaintext ETag of an encrypted object); the
    bucket then gets the condition on the stored version found, so a write landing in between
    is refused by a bucket that supports conditional writes (AWS, moto). One that ignores them
    (rclone) has only this check: a race of two writers between it and the write is lost.
    """
    if_match, if_none_match = headers.get("if-match"), headers.get("if-none-match")
    if if_match is None and if_none_match is None:
        return {}
    if if_none_match is not None and if_none_match.strip() != "*":
        raise S3Error("NotImplemented", "A header you provided implies functionality that is not implemented", 501)
    found = await current()
    params: dict[str, Any] = {}
    if if_none_match is not None:
        if found is not None:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
        params["IfNoneMatch"] = "*"
    if if_match is not None:
        if found is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404)
        wanted = {quote_etag(etag) for etag in if_match.split(",") if etag.strip()}
        if quote_etag("*") not in wanted and quote_etag(found[0]) not in wanted:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
        if found[1].strip('"'):
            params["IfMatch"] = found[1]
    return params


def _length(body: Body) -> int:
    """A forwarded body's length; S3 needs it up front."""
    if body.length is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    return body.length


#: The S3 query parameters of a listing page that are forwarded (by version).
_LIST_V2_PARAMS = ("prefix", "delimiter", "continuation-token", "start-after")
_LIST_V1_PARAMS = ("prefix", "delimiter", "marker")


def delete_params(headers: Mapping[str, str]) -> dict[str, Any]:
    """What a delete says of object lock and MFA: a governance-mode retention is bypassed only when
    the client asks (and its upstream credentials may), never silently."""
    params: dict[str, Any] = {}
    if headers.get("x-amz-bypass-governance-retention", "").strip().lower() == "true":
        params["BypassGovernanceRetention"] = True
    if headers.get("x-amz-mfa"):
        params["MFA"] = headers["x-amz-mfa"]
    return params


#: Conditional deletes of one DeleteObjects checked at once (a HEAD each, a trailer read on a miss).
_DELETE_CHECKS = 16


def delete_condition(headers: Mapping[str, str]) -> xml.DeleteCondition:
    """DeleteObject's conditions: ``If-Match``, ``x-amz-if-match-last-modified-time``, ``x-amz-if-match-size``."""
    modified = headers.get("x-amz-if-match-last-modified-time")
    size = headers.get("x-amz-if-match-size")
    if size is not None and not (size.strip().isascii() and size.strip().isdigit()):
        raise S3Error("InvalidArgument", f"invalid x-amz-if-match-size {size!r}", 400)
    return xml.DeleteCondition(
        headers.get("if-match"),
        parse_http_date(modified) if modified is not None else None,
        int(size) if size is not None else None,
    )


def part_number(query: Mapping[str, str]) -> int:
    number = int_param(query, "partNumber", None, 1, 10000)
    if number is None:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000", 400)
    return number


async def dispatch(handlers: Mapping[str, Handler], request: Request) -> Reply:
    """``request`` to the handler of its operation; 501 for an operation the proxy does not serve."""
    handler = handlers.get(request.operation)
    if handler is None:
        raise S3Error("NotImplemented", f"{request.operation} is not supported by this proxy", 501)
    reject_sse_c(request.headers)
    version = request.query.get("versionId") if request.operation in VERSIONED_READS else None
    if not version:
        return await handler(request)
    # every upstream read of this request's object reads that version
    token = versions.reading(version, request.bucket or "", request.key or "")
    try:
        reply = await handler(request)
    except BaseException:
        versions.done(token)
        raise
    if isinstance(reply.body, bytes):
        versions.done(token)
    else:
        reply.body = _then_done(reply.body, token)
    return reply


async def missing_named(upstream: Upstream, request: Request, answer: Awaitable[Reply]) -> Reply:
    """``answer``, with a NoSuchKey said as S3 says it: NoSuchBucket for a bucket gone,
    NoSuchVersion for a version that is not there.

    The proxy learns of a missing object from a HEAD (an encrypted GET or copy starts with one),
    whose 404 has no body to tell a missing key from a missing bucket or version; only on that
    path, a HeadBucket of the request's bucket (and a copy's source bucket) tells them apart, and
    a read of a given version (GetObject's ``versionId``, a copy source's ``?versionId=``) is of a
    missing version. A client's own HEAD has no body either: nothing to tell, nothing asked."""
    try:
        return await answer
    except S3Error as err:
        if err.code != "NoSuchKey" or request.operation == "HeadObject" or not request.bucket:
            raise
        if err.headers.get("x-amz-delete-marker") == "true":  # a bucket with versions of it
            raise
        buckets = [request.bucket]
        version = request.query.get("versionId") if request.operation == "GetObject" else None
        if request.headers.get("x-amz-copy-source"):
            source = parse_copy_source(request.headers["x-amz-copy-source"])
            buckets.append(source.bucket)
            version = source.version
        for bucket in dict.fromkeys(buckets):
            if await _bucket_gone(upstream, bucket):
                raise S3Error.no_such_bucket(bucket) from None
        if version:
            raise S3Error("NoSuchVersion", "The specified version does not exist.", 404) from None
        raise


async def _bucket_gone(upstream: Upstream, bucket: str) -> bool:
    try:
        await upstream.call("head_bucket", Bucket=bucket)
    except S3Error as err:
        return err.status == 404
    return False


#: Reads that name a version with ``versionId`` (``proxy.upstream.versions``).
VERSIONED_READS = frozenset({"GetObject", "HeadObject", "GetObjectAttributes"})


async def _then_done(pieces: AsyncIterator[Any], token: Any) -> AsyncIterator[Any]:
    """``pieces`` (read as the version of the request), then the version read is undone."""
    try:
        async for piece in pieces:
            yield piece
    finally:
        await close_pieces(pieces)
        versions.done(token)


def verified_checksum(body: Body) -> dict[str, str]:
    """The ``x-amz-checksum-*`` of a write's answer: the client's own, which the proxy verified
    over the bytes it received (plaintext). Never the bucket's: that one is of what is stored
    (ciphertext, for an encrypted key). Call once the body was read whole."""
    checksums = getattr(body, "checksums", None)
    if not isinstance(checksums, BodyChecksums) or checksums.algorithm is None:
        return {}
    value = checksums.checksum_b64()
    return {checksums.algorithm.header: value} if value else {}


def request_body(request: Request) -> Body:
    if request.body is None:
        raise S3Error("IncompleteBody", "this request needs a body", 400)
    return request.body


async def completed_parts(request: Request) -> list[xml.CompletedPart]:
    """The parts a CompleteMultipartUpload lists, checked as S3 checks them."""
    payload = await request_body(request).read_all(MAX_XML_BODY)
    try:
        parts = xml.parse_complete_multipart(payload)
    except xml.MalformedXMLError as exc:
        raise S3Error("MalformedXML", str(exc), 400) from None
    if not parts:
        raise S3Error("MalformedXML", "CompleteMultipartUpload lists no parts", 400)
    if not xml.is_ascending(parts):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.", 400)
    return parts
