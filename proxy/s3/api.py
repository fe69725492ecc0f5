"""What the front end hands the service and gets back: the request and reply types, pure.

``proxy.s3.frontend`` parses and authenticates an HTTP request into a ``Request``; a service
(``proxy.objects``) answers with a ``Reply`` whose body is bytes or an async
iterator. Nothing here knows HTTP connections or the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol
from urllib.parse import unquote

from proxy.s3.errors import S3Error
from proxy.s3.routing import ClientScope

# Pieces of a streamed body: the codec hands out fresh bytearrays, which are sent without a copy.
Chunk = bytes | bytearray


class Body(Protocol):
    """A verified request body: iterate it once, or read it whole when it is small."""

    length: int | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def read_all(self, limit: int) -> bytes: ...


@dataclass
class Request:
    operation: str
    bucket: str | None
    key: str | None
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Body | None = None
    # The client's scope when it is limited (the front end checked the URL and headers against
    # it); what only the service sees, DeleteObjects' keys and ListBuckets' names, is checked here.
    scope: ClientScope | None = None


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | AsyncIterator[Chunk] = b""
    length: int | None = None

    @classmethod
    def xml(cls, payload: bytes, status: int = 200) -> Reply:
        return cls(status, {"Content-Type": "application/xml"}, payload)


Handler = Callable[[Request], Awaitable[Reply]]


class CopySource(NamedTuple):
    """What a copy reads (``x-amz-copy-source``): a bucket's key, and a given version of it."""

    bucket: str
    key: str
    version: str | None = None


def parse_copy_source(value: str) -> CopySource:
    """``/bucket/key`` or ``bucket/key``, URL-encoded, with an optional ``?versionId=`` (botocore
    writes it unencoded; an empty one is none)."""
    path, _, version = value.partition("?versionId=")
    source = unquote(path).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key", 400)
    return CopySource(bucket, key, unquote(version).strip() or None)


async def close_pieces(pieces: object) -> None:
    """Stop an async iterator of body pieces that will not be read to its end (``aclose``, if it
    has one): the upstream read behind it ends now, not when the iterator is collected."""
    close = getattr(pieces, "aclose", None)
    if close is not None:
        await close()
