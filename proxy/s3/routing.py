"""Which S3 operation a request is: addressing style, sub-resources, method. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.s3.errors import S3Error

# Bucket sub-resources we recognise only to refuse them clearly.
_UNSUPPORTED_SUBRESOURCES = frozenset(
    {
        "acl", "analytics", "accelerate", "cors", "encryption", "intelligent-tiering",
        "inventory", "lifecycle", "logging", "metrics", "notification", "object-lock",
        "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "replication",
        "requestPayment", "retention", "legal-hold", "restore", "select", "tagging",
        "torrent", "versioning", "versions", "website", "attributes", "session",
    }
)


@dataclass(frozen=True)
class Route:
    operation: str
    bucket: str | None
    key: str | None


def split_host(host: str) -> str:
    """The host name without the port (IPv6 literals keep their brackets)."""
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def bucket_and_key(
    raw_path: str, host: str, virtual_suffixes: Iterable[str]
) -> tuple[str | None, str | None]:
    """Path-style ``/bucket/key`` or virtual-host ``bucket.suffix`` + ``/key``."""
    path = unquote(raw_path.split("?", 1)[0])
    hostname = split_host(host).lower()
    for suffix in virtual_suffixes:
        suffix = suffix.lower()
        if hostname.endswith("." + suffix) and len(hostname) > len(suffix) + 1:
            bucket = hostname[: -len(suffix) - 1]
            key = path[1:] if path.startswith("/") else path
            return bucket, (key or None)
    trimmed = path[1:] if path.startswith("/") else path
    if not trimmed:
        return None, None
    bucket, _, key = trimmed.partition("/")
    return bucket, (key or None)


def route(method: str, bucket: str | None, key: str | None, query: Mapping[str, str],
          headers: Mapping[str, str]) -> Route:
    """Name the S3 operation, or raise NotImplemented / MethodNotAllowed."""
    for name in query:
        if name in _UNSUPPORTED_SUBRESOURCES:
            raise S3Error("NotImplemented", f"the {name} sub-resource is not supported by this proxy", 501)
    if bucket is None:
        if method in ("GET", "HEAD"):
            return Route("ListBuckets", None, None)
        raise S3Error("MethodNotAllowed", "only ListBuckets is allowed on the service", 405)
    if key is None:
        return Route(_bucket_operation(method, query), bucket, None)
    return Route(_object_operation(method, query, headers), bucket, key)


def _bucket_operation(method: str, query: Mapping[str, str]) -> str:
    if method == "GET":
        if "location" in query:
            return "GetBucketLocation"
        if "uploads" in query:
            return "ListMultipartUploads"
        if query.get("list-type") == "2":
            return "ListObjectsV2"
        return "ListObjects"
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if method == "PUT" and not query:
        return "CreateBucket"
    if method == "DELETE" and not query:
        return "DeleteBucket"
    raise S3Error("NotImplemented", f"{method} on a bucket with these parameters is not supported", 501)


def _object_operation(method: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    copy = "x-amz-copy-source" in headers
    if method == "GET":
        return "ListParts" if "uploadId" in query else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT":
        if "uploadId" in query or "partNumber" in query:
            if "uploadId" not in query or "partNumber" not in query:
                raise S3Error("InvalidRequest", "UploadPart needs both partNumber and uploadId", 400)
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    raise S3Error("NotImplemented", f"{method} on an object with these parameters is not supported", 501)
