"""Writing an object again through the proxy's own service, in a given plaintext part layout.

What ``rotate``'s re-encryption and ``migrate``'s encryption share: the plaintext ETag of an
object (what Medusa recorded) is the MD5 of its bytes, or for a multipart upload the MD5 of its
parts' MD5s and ``-<parts>``, so a new object keeps it only when it is written in the same parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from proxy.objects.service import ObjectService
from proxy.s3.api import Body, Reply, Request
from proxy.s3.errors import S3Error
from proxy.s3.headers import INTERNAL_META_PREFIX
from proxy.upstream import ObjectHead

#: ``(part number, plaintext bytes)`` of an object written in parts; None: one PutObject.
Parts = Sequence[tuple[int, int]] | None
#: A body for ``size`` plaintext bytes from ``offset`` (None, None: the whole object).
Source = Callable[[int | None, int | None], Awaitable[Body]]


class BytesBody:
    """A request body held in memory (proxy.s3.api.Body)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length: int | None = len(data)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.data:
            yield self.data

    async def read_all(self, limit: int) -> bytes:
        return self.data


def client_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The content type and user metadata of a reply or head, as a client would send them again
    (the proxy's own metadata left out: the service writes its own)."""
    return {
        k: v
        for k, v in headers.items()
        if k.lower() == "content-type"
        or (k.lower().startswith("x-amz-meta-") and not k.lower().startswith(INTERNAL_META_PREFIX))
    }


def same_version(now: ObjectHead, then: ObjectHead) -> bool:
    """Still the version planned (by ETag and size; an upstream without ETags: by size and date)."""
    if now.size != then.size:
        return False
    if now.etag.strip('"') or then.etag.strip('"'):
        return now.etag.strip('"') == then.etag.strip('"')
    return now.last_modified == then.last_modified


class LayoutETag:
    """The S3 ETag of bytes fed in order, cut into ``parts`` (None: one PutObject's MD5). Pure."""

    def __init__(self, parts: Parts) -> None:
        self._sizes = [size for _, size in parts] if parts is not None else None
        self._whole = hashlib.md5(usedforsecurity=False)
        self._part = hashlib.md5(usedforsecurity=False)
        self._digests: list[bytes] = []
        self._left = self._sizes[0] if self._sizes else 0
        self.fed = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.fed += len(data)
        if self._sizes is None:
            self._whole.update(data)
            return
        view = memoryview(data)
        while view:
            while self._left == 0 and len(self._digests) < len(self._sizes) - 1:
                self._next_part()
            take = view[: self._left] if len(self._digests) < len(self._sizes) - 1 else view
            self._part.update(take)
            self._left -= len(take)
            view = view[len(take) :]

    def _next_part(self) -> None:
        self._digests.append(self._part.digest())
        self._part = hashlib.md5(usedforsecurity=False)
        assert self._sizes is not None
        self._left = self._sizes[len(self._digests)]

    def hexdigest(self) -> str:
        """The ETag of what was fed so far (parts not reached count as empty); feeding may go on."""
        if self._sizes is None:
            return self._whole.hexdigest()
        digests = [*self._digests, self._part.digest()]
        digests += [hashlib.md5(b"", usedforsecurity=False).digest()] * (len(self._sizes) - len(digests))
        joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return f"{joined}-{len(self._sizes)}"


async def write_in_parts(
    service: ObjectService,
    bucket: str,
    key: str,
    headers: dict[str, str],
    parts: Parts,
    source: Source,
    before_commit: Callable[[], Awaitable[None]],
) -> str:
    """Write ``key`` through ``service``: one PutObject (``parts`` None), or a multipart upload of
    ``parts``, each body from ``source``. ``before_commit`` runs just before the write becomes
    visible (it raises to stop it; an upload is then aborted). Returns the plaintext ETag the
    service answered, unquoted."""
    if parts is None:
        body = await source(None, None)
        await before_commit()
        reply = await service.handle(Request("PutObject", bucket, key, {}, headers, body))
        return reply.headers.get("ETag", "").strip('"')
    created = await service.handle(Request("CreateMultipartUpload", bucket, key, {"uploads": ""}, headers))
    found = re.search(rb"<UploadId>([^<]+)</UploadId>", created.body if isinstance(created.body, bytes) else b"")
    if found is None:
        raise S3Error("InternalError", "CreateMultipartUpload gave no upload id", 500)
    upload_id = found.group(1).decode()
    try:
        listed, offset = [], 0
        for number, size in parts:
            part: Any = await source(offset, size) if size else BytesBody(b"")
            offset += size
            query = {"uploadId": upload_id, "partNumber": str(number)}
            done = await service.handle(Request("UploadPart", bucket, key, query, {}, part))
            listed.append((number, done.headers["ETag"]))
        await before_commit()
        xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in listed)
        body = BytesBody(f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode())
        reply = await service.handle(Request("CompleteMultipartUpload", bucket, key, {"uploadId": upload_id}, {}, body))
    except BaseException:
        with contextlib.suppress(S3Error):
            await service.handle(Request("AbortMultipartUpload", bucket, key, {"uploadId": upload_id}, {}))
        raise
    etag = re.search(rb"<ETag>([^<]+)</ETag>", reply.body if isinstance(reply.body, bytes) else b"")
    return etag.group(1).decode().replace("&quot;", '"').strip('"') if etag else ""


async def etag_of_reply(reply: Reply, parts: Parts) -> tuple[str, int]:
    """The S3 ETag (in ``parts``) and length of a reply's body, read to its end."""
    etag = LayoutETag(parts)
    if isinstance(reply.body, bytes):
        etag.feed(reply.body)
    else:
        async for piece in reply.body:
            etag.feed(piece)
    return etag.hexdigest(), etag.fed
