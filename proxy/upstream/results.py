"""What the upstream's operations answer, the same from the direct path and from botocore."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

META_PREFIX = "x-amz-meta-"


@dataclass(frozen=True, slots=True)
class ObjectHead:
    """A stored object's HEAD: its version (ETag, size, Last-Modified) and its reply headers
    (lowercase names, user metadata included), whichever way it was asked."""

    etag: str  # as the bucket gave it (quoted); "" when it gives none
    size: int
    last_modified: datetime
    headers: Mapping[str, str]

    @property
    def metadata(self) -> dict[str, str]:
        """User metadata, names without ``x-amz-meta-``."""
        return {name[len(META_PREFIX) :]: value for name, value in self.headers.items() if name.startswith(META_PREFIX)}

    @classmethod
    def from_botocore(cls, reply: Mapping[str, Any]) -> ObjectHead:
        return cls(
            str(reply.get("ETag", "")), int(reply.get("ContentLength", 0)), reply["LastModified"], _headers_of(reply)
        )


def _headers_of(reply: Mapping[str, Any]) -> Mapping[str, str]:
    headers: Mapping[str, str] = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers


@dataclass(frozen=True, slots=True)
class Written:
    """What a write answers (PutObject, UploadPart, CompleteMultipartUpload): the stored
    ETag as the bucket gave it, its Location (Complete only) and the reply headers."""

    etag: str
    headers: Mapping[str, str]
    location: str = ""

    @classmethod
    def from_botocore(cls, reply: Mapping[str, Any]) -> Written:
        return cls(str(reply.get("ETag", "")), _headers_of(reply), str(reply.get("Location", "")))


@dataclass(frozen=True, slots=True)
class Copied:
    """What a server-side copy answers (CopyObject, UploadPartCopy)."""

    etag: str
    last_modified: datetime
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_botocore(cls, result: Mapping[str, Any], reply: Mapping[str, Any] | None = None) -> Copied:
        # rclone answers a copy of an object onto itself without LastModified, and UploadPartCopy
        # with an empty CopyPartResult (and an empty part; the caller checks what was copied):
        # no date to give, so the time of the answer.
        modified = result.get("LastModified") or datetime.now(UTC)
        return cls(str(result.get("ETag", "")), modified, _headers_of(reply or {}))


@dataclass(frozen=True, slots=True)
class Created:
    """What CreateMultipartUpload answers: the upload id and the reply headers."""

    upload_id: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Opened:
    """A GetObject's answer before its body: the body's length, the version's ETag, the
    Content-Range of a ranged read ("" else) and the reply headers."""

    length: int
    etag: str
    headers: Mapping[str, str]
    content_range: str = ""

    @classmethod
    def from_botocore(cls, reply: Mapping[str, Any]) -> Opened:
        return cls(
            int(reply.get("ContentLength", 0)),
            str(reply.get("ETag", "")),
            _headers_of(reply),
            str(reply.get("ContentRange") or ""),
        )
