"""An in-memory bucket with the interface ``proxy.objects`` uses of ``proxy.upstream.Upstream``.

For unit tests of the upper layers in process: the code under test is the real service, only the
bucket is replaced. It answers as S3 does where the objects code depends on it (ETags of stored
bytes, If-Match, suffix and open ranges, multipart ETags, NoSuchKey / NoSuchUpload,
PreconditionFailed, InvalidRange); it has no direct paths.
``stored`` holds the bytes as the bucket keeps them, for tests to look at or tamper with.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from proxy.s3.errors import S3Error
from proxy.upstream.results import Copied, Created, ObjectHead, Opened, Written


@dataclass
class StoredObject:
    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "binary/octet-stream"
    last_modified: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    etag: str = ""

    def __post_init__(self) -> None:
        if not self.etag:
            self.etag = f'"{hashlib.md5(self.data, usedforsecurity=False).hexdigest()}"'

    def head(self) -> dict[str, Any]:
        headers = {
            "etag": self.etag,
            "content-length": str(len(self.data)),
            "content-type": self.content_type,
            "last-modified": self.last_modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            **{f"x-amz-meta-{k}": v for k, v in self.metadata.items()},
        }
        return {
            "ETag": self.etag,
            "ContentLength": len(self.data),
            "ContentType": self.content_type,
            "LastModified": self.last_modified,
            "Metadata": dict(self.metadata),
            "ResponseMetadata": {"HTTPStatusCode": 200, "HTTPHeaders": headers},
        }


def _range(spec: str, size: int) -> tuple[int, int]:
    first_text, _, last_text = spec.removeprefix("bytes=").partition("-")
    if not first_text:
        return max(0, size - int(last_text)), size - 1
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size:
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    return first, last


class FakeUpstream:
    """One bucket namespace per name; every call is recorded in ``calls`` (operation names)."""

    def __init__(self, *buckets: str) -> None:
        self.stored: dict[tuple[str, str], StoredObject] = {}
        self.buckets = set(buckets or ("bucket",))
        self.uploads: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.bucket_params: dict[str, dict[str, Any]] = {}  # what each CreateBucket asked for
        self.cfg = SimpleNamespace(region="us-east-1", request_timeout=300.0)
        self._ids = itertools.count(1)

    # --- what the proxy's Upstream offers --------------------------------------------------

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def has_credentials(self) -> bool:
        return True

    async def head(self, bucket: str, key: str, conditions: Mapping[str, Any] | None = None) -> ObjectHead:
        return ObjectHead.from_botocore(await self.call("head_object", Bucket=bucket, Key=key, **(conditions or {})))

    async def read_range(self, bucket: str, key: str, spec: str | None, etag: str, limit: int | None = None) -> bytes:
        reply = await self.call("get_object", **self._get_params(bucket, key, spec, etag, {}))
        if limit is not None and len(reply["Body"]) > limit:
            raise S3Error("InternalError", f"{key!r} is larger than {limit} bytes", 500)
        return bytes(reply["Body"])

    async def open(
        self, bucket: str, key: str, spec: str | None, etag: str, piece_size: int | None = None, **params: Any
    ) -> tuple[Opened, AsyncIterator[bytes]]:
        reply = await self.call("get_object", **self._get_params(bucket, key, spec, etag, params))
        body = reply.pop("Body")

        async def pieces() -> AsyncIterator[bytes]:
            for at in range(0, len(body), 1 << 16):
                yield body[at : at + (1 << 16)]

        return Opened.from_botocore(reply), pieces()

    @staticmethod
    def _get_params(bucket: str, key: str, spec: str | None, etag: str, params: dict[str, Any]) -> dict[str, Any]:
        params.update(Bucket=bucket, Key=key)
        if etag.strip('"'):
            params["IfMatch"] = etag
        if spec is not None:
            params["Range"] = spec
        return params

    async def put(
        self,
        bucket: str,
        key: str,
        body: bytes | bytearray | AsyncIterable[Any],
        params: dict[str, Any],
        length: int = 0,
    ) -> Written:
        data = await self._whole(body, length)
        return Written.from_botocore(await self.call("put_object", Bucket=bucket, Key=key, Body=data, **params))

    async def list_page(self, bucket: str, query: list[tuple[str, str]], v2: bool) -> dict[str, Any]:
        names = {"prefix": "Prefix", "delimiter": "Delimiter", "continuation-token": "ContinuationToken"}
        params: dict[str, Any] = {names[n]: v for n, v in query if n in names}
        if dict(query).get("max-keys"):
            params["MaxKeys"] = int(dict(query)["max-keys"])
        return await self.call("list_objects_v2", Bucket=bucket, **params)

    async def create_upload(self, bucket: str, key: str, params: dict[str, Any]) -> Created:
        reply = await self.call("create_multipart_upload", Bucket=bucket, Key=key, **params)
        return Created(str(reply["UploadId"]), {})

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | bytearray | AsyncIterable[Any],
        length: int = 0,
    ) -> Written:
        data = await self._whole(body, length)
        reply = await self.call("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return Written.from_botocore(reply)

    async def complete_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        conditions: Mapping[str, Any] | None = None,
    ) -> Written:
        listed = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]}
        reply = await self.call(
            "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=listed
        )
        return Written.from_botocore(reply)

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)

    async def copy(self, bucket: str, key: str, source: tuple[str, str], params: dict[str, Any]) -> Copied:
        result = await self.call("copy_object", Bucket=bucket, Key=key, CopySource=source, **params)
        return Copied.from_botocore(result)

    async def copy_part(
        self, bucket: str, key: str, upload_id: str, number: int, source: tuple[str, str], params: dict[str, Any]
    ) -> Copied:
        result = await self.call("upload_part_copy", Bucket=bucket, Key=key, UploadId=upload_id, CopySource=source)
        return Copied.from_botocore(result)

    async def delete(
        self, bucket: str, key: str, version_id: str | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, str]:
        await self.call("delete_object", Bucket=bucket, Key=key)
        return {}

    @staticmethod
    async def _whole(body: bytes | bytearray | AsyncIterable[Any], length: int) -> bytes:
        if isinstance(body, bytes | bytearray):
            return bytes(body)
        data = b"".join([bytes(piece) async for piece in body])
        if len(data) != length:
            raise S3Error("IncompleteBody", f"sent {len(data)} of {length} bytes", 400)
        return data

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        self.calls.append(operation)
        bucket = params.get("Bucket")
        if bucket is not None and bucket not in self.buckets and operation != "create_bucket":
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", 404)
        method = getattr(self, "_" + operation, None)
        if method is None:
            raise S3Error("NotImplemented", f"the fake upstream has no {operation}", 501)
        result: dict[str, Any] = method(**params)
        return result

    # --- the S3 operations -----------------------------------------------------------------

    def _object(self, Bucket: str, Key: str, IfMatch: str | None = None) -> StoredObject:
        obj = self.stored.get((Bucket, Key))
        if obj is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404)
        if IfMatch is not None and IfMatch != obj.etag:
            raise S3Error("PreconditionFailed", "At least one of the preconditions you specified did not hold", 412)
        return obj

    def _head_object(self, Bucket: str, Key: str, IfMatch: str | None = None) -> dict[str, Any]:
        return self._object(Bucket, Key, IfMatch).head()

    def _get_object(
        self, Bucket: str, Key: str, IfMatch: str | None = None, Range: str | None = None
    ) -> dict[str, Any]:
        obj = self._object(Bucket, Key, IfMatch)
        reply = obj.head()
        data = obj.data
        if Range is not None:
            first, last = _range(Range, len(data))
            data = data[first : last + 1]
            reply["ContentRange"] = f"bytes {first}-{last}/{len(obj.data)}"
        reply["ContentLength"] = len(data)
        reply["Body"] = data
        return reply

    def _put_object(
        self, Bucket: str, Key: str, Body: bytes, Metadata: dict[str, str] | None = None, **params: Any
    ) -> dict[str, Any]:
        obj = StoredObject(bytes(Body), dict(Metadata or {}), params.get("ContentType", "binary/octet-stream"))
        self.stored[(Bucket, Key)] = obj
        return {"ETag": obj.etag}

    def _create_bucket(self, Bucket: str, **params: Any) -> dict[str, Any]:
        if Bucket in self.buckets:
            raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded", 409)
        self.buckets.add(Bucket)
        self.bucket_params[Bucket] = params
        return {"Location": f"/{Bucket}"}

    def _delete_bucket(self, Bucket: str) -> dict[str, Any]:
        if any(b == Bucket for b, _ in self.stored):
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty", 409)
        self.buckets.discard(Bucket)
        return {}

    def _delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self.stored.pop((Bucket, Key), None)
        return {}

    def _list_objects_v2(
        self,
        Bucket: str,
        Prefix: str = "",
        Delimiter: str = "",
        MaxKeys: int = 1000,
        ContinuationToken: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        keys = sorted(
            k for b, k in self.stored if b == Bucket and k.startswith(Prefix) and k > (ContinuationToken or "")
        )
        contents, prefixes = [], []
        for key in keys:
            rest = key[len(Prefix) :]
            if Delimiter and Delimiter in rest:
                common = Prefix + rest.split(Delimiter, 1)[0] + Delimiter
                if common not in prefixes:
                    prefixes.append(common)
                continue
            obj = self.stored[(Bucket, key)]
            contents.append({"Key": key, "Size": len(obj.data), "ETag": obj.etag, "LastModified": obj.last_modified})
        truncated = len(contents) > MaxKeys
        contents = contents[:MaxKeys]
        page: dict[str, Any] = {
            "Name": Bucket,
            "Prefix": Prefix,
            "MaxKeys": MaxKeys,
            "KeyCount": len(contents),
            "IsTruncated": truncated,
            "Contents": contents,
            "CommonPrefixes": [{"Prefix": p} for p in prefixes],
        }
        if truncated:
            page["NextContinuationToken"] = contents[-1]["Key"]
        return page

    def _create_multipart_upload(
        self, Bucket: str, Key: str, Metadata: dict[str, str] | None = None, **params: Any
    ) -> dict[str, Any]:
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = {"bucket": Bucket, "key": Key, "metadata": dict(Metadata or {}), "parts": {}}
        return {"UploadId": upload_id, "Bucket": Bucket, "Key": Key}

    def _upload(self, UploadId: str, Bucket: str, Key: str) -> dict[str, Any]:
        upload = self.uploads.get(UploadId)
        if upload is None or (upload["bucket"], upload["key"]) != (Bucket, Key):
            raise S3Error("NoSuchUpload", "The specified upload does not exist.", 404)
        return upload

    def _upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict[str, Any]:
        upload = self._upload(UploadId, Bucket, Key)
        etag = f'"{hashlib.md5(Body, usedforsecurity=False).hexdigest()}"'
        upload["parts"][PartNumber] = (bytes(Body), etag)
        return {"ETag": etag}

    def _complete_multipart_upload(
        self, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict[str, Any]
    ) -> dict[str, Any]:
        upload = self._upload(UploadId, Bucket, Key)
        data, digests = b"", b""
        for listed in MultipartUpload["Parts"]:
            body, etag = upload["parts"].get(listed["PartNumber"], (None, None))
            if body is None or etag != listed["ETag"]:
                raise S3Error("InvalidPart", "One or more of the specified parts could not be found.", 400)
            data += body
            digests += bytes.fromhex(etag.strip('"'))
        etag = f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(MultipartUpload["Parts"])}"'
        self.stored[(Bucket, Key)] = StoredObject(data, upload["metadata"], etag=etag)
        del self.uploads[UploadId]
        return {"ETag": etag, "Location": f"/{Bucket}/{Key}", "Bucket": Bucket, "Key": Key}

    def _abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        self._upload(UploadId, Bucket, Key)
        del self.uploads[UploadId]
        return {}

    def _list_parts(self, Bucket: str, Key: str, UploadId: str, **_: Any) -> dict[str, Any]:
        upload = self._upload(UploadId, Bucket, Key)
        parts = [
            {"PartNumber": n, "Size": len(body), "ETag": etag, "LastModified": datetime.now(UTC)}
            for n, (body, etag) in sorted(upload["parts"].items())
        ]
        return {"Bucket": Bucket, "Key": Key, "UploadId": UploadId, "Parts": parts, "IsTruncated": False}


class BytesBody:
    """A request body already verified (what the front end hands a service), in 1 MiB pieces."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length: int | None = len(data)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for at in range(0, len(self.data), 1 << 20):
            yield self.data[at : at + (1 << 20)]

    async def read_all(self, limit: int) -> bytes:
        return self.data
