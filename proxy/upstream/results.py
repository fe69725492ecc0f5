"""What the upstream's operations answer, the same from the direct path and from botocore."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
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
        headers: Mapping[str, str] = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return cls(str(reply.get("ETag", "")), int(reply.get("ContentLength", 0)), reply["LastModified"], headers)
