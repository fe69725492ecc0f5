"""Translate client request headers into botocore parameters, and back. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from proxy.s3.errors import S3Error

# What a write asks of the bucket itself, kept on CopyObject whatever its metadata directive: its
# encryption at rest and the object's lock. (Never dropped: a backup kept under object lock must
# get the lock it asked for, and a bucket policy may deny writes without the SSE header.)
STORAGE_HEADERS = frozenset(
    {
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-context",
        "x-amz-server-side-encryption-bucket-key-enabled",
        "x-amz-object-lock-mode",
        "x-amz-object-lock-retain-until-date",
        "x-amz-object-lock-legal-hold",
    }
)

# Object attributes a client sets on PutObject / CreateMultipartUpload / CopyObject.
_OBJECT_PARAMS = {
    "content-type": "ContentType",
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-language": "ContentLanguage",
    "x-amz-storage-class": "StorageClass",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-server-side-encryption-context": "SSEKMSEncryptionContext",
    "x-amz-object-lock-mode": "ObjectLockMode",
    "x-amz-object-lock-legal-hold": "ObjectLockLegalHoldStatus",
    "x-amz-tagging": "Tagging",
    "x-amz-website-redirect-location": "WebsiteRedirectLocation",
}

_CONDITIONAL_PARAMS = {
    "if-match": "IfMatch",
    "if-none-match": "IfNoneMatch",
    "if-modified-since": "IfModifiedSince",
    "if-unmodified-since": "IfUnmodifiedSince",
}

_RESPONSE_OVERRIDES = {
    "response-content-type": "ResponseContentType",
    "response-content-language": "ResponseContentLanguage",
    "response-expires": "ResponseExpires",
    "response-cache-control": "ResponseCacheControl",
    "response-content-disposition": "ResponseContentDisposition",
    "response-content-encoding": "ResponseContentEncoding",
}

# What a client may ask of a new bucket (CreateBucket), as botocore parameters.
_BUCKET_PARAMS = {
    "x-amz-acl": "ACL",
    "x-amz-grant-full-control": "GrantFullControl",
    "x-amz-grant-read": "GrantRead",
    "x-amz-grant-read-acp": "GrantReadACP",
    "x-amz-grant-write": "GrantWrite",
    "x-amz-grant-write-acp": "GrantWriteACP",
    "x-amz-object-ownership": "ObjectOwnership",
}

# The proxy's own metadata hints on stored objects; never shown to clients, never set by them.
INTERNAL_META_PREFIX = "x-amz-meta-mcp-"


_SSE_C_PREFIXES = ("x-amz-server-side-encryption-customer-", "x-amz-copy-source-server-side-encryption-customer-")


def reject_sse_c(headers: Mapping[str, str]) -> None:
    """SSE-C cannot coexist with the proxy's encryption: the bucket would hold the proxy's
    ciphertext under the client's key, and every read through any proxy would need that key. A
    request that names one is refused as S3 refuses a disallowed request (400, said plainly),
    on every operation: a GET with a key must not quietly read an object stored without one."""
    if any(name.lower().startswith(_SSE_C_PREFIXES) for name in headers):
        raise S3Error(
            "InvalidRequest",
            "Server-side encryption with customer-provided keys (SSE-C) is not allowed through the encrypting "
            "proxy: objects are encrypted by the proxy, with its own keys",
            400,
        )


def without_aws_chunked(content_encoding: str) -> str:
    """A Content-Encoding without ``aws-chunked``: that names the request's framing, not the object's.

    S3 drops it when it stores an object; SeaweedFS 4.48 keeps it for a single aws-chunked PUT and
    sends it back on GET and HEAD, where a client would take it for the body's encoding.
    """
    return ",".join(e.strip() for e in content_encoding.split(",") if e.strip() and e.strip().lower() != "aws-chunked")


def object_params(headers: Mapping[str, str]) -> dict[str, Any]:
    """botocore parameters for the attributes a client gave a new object."""
    params: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname in _OBJECT_PARAMS:
            params[_OBJECT_PARAMS[lname]] = value
        elif lname == "content-encoding":
            encodings = without_aws_chunked(value)
            if encodings:
                params["ContentEncoding"] = encodings
        elif lname == "expires":
            params["Expires"] = parse_http_date(value)
        elif lname == "x-amz-object-lock-retain-until-date":
            params["ObjectLockRetainUntilDate"] = parse_http_date(value)
        elif lname == "x-amz-server-side-encryption-bucket-key-enabled":
            params["BucketKeyEnabled"] = _flag(lname, value)
        elif lname.startswith("x-amz-meta-"):
            if lname.startswith(INTERNAL_META_PREFIX):
                raise S3Error("InvalidArgument", f"metadata {lname} is reserved by the proxy", 400)
            metadata[lname[len("x-amz-meta-") :]] = value
    if metadata:
        params["Metadata"] = metadata
    return params


#: botocore's object-lock parameters of a write.
LOCK_PARAMS = frozenset({"ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus"})
#: A write with an object lock needs a checksum of what is stored (S3 refuses it without), so its
#: body is held in memory to checksum it, up to this size (boto3's and the AWS CLI's multipart
#: threshold: larger files go up in parts, which need no checksum of the whole).
LOCKED_BODY_LIMIT = 8 << 20


def body_limit(params: Mapping[str, Any], default: int) -> int:
    """How large a body of a write with ``params`` is sent from memory (``LOCKED_BODY_LIMIT``
    for a locked one)."""
    return max(default, LOCKED_BODY_LIMIT) if LOCK_PARAMS & set(params) else default


def storage_params(headers: Mapping[str, str]) -> dict[str, Any]:
    """botocore parameters for a copy's encryption-at-rest and object-lock headers
    (``STORAGE_HEADERS``), which apply whatever its metadata directive."""
    return object_params({name: value for name, value in headers.items() if name.lower() in STORAGE_HEADERS})


def _flag(name: str, value: str) -> bool:
    flag = value.strip().lower()
    if flag not in ("true", "false"):
        raise S3Error("InvalidArgument", f"{name} must be true or false", 400)
    return flag == "true"


def bucket_params(headers: Mapping[str, str]) -> dict[str, Any]:
    """botocore parameters for the headers of a CreateBucket (ACL, grants, ownership, object lock)."""
    params: dict[str, Any] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname in _BUCKET_PARAMS:
            params[_BUCKET_PARAMS[lname]] = value
        elif lname == "x-amz-bucket-object-lock-enabled":
            params["ObjectLockEnabledForBucket"] = _flag(lname, value)
    return params


def conditional_params(headers: Mapping[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, param in _CONDITIONAL_PARAMS.items():
        value = headers.get(name)
        if value is not None:
            params[param] = parse_http_date(value) if name.endswith("since") else value
    return params


def response_override_params(query: Mapping[str, str]) -> dict[str, Any]:
    return {param: query[name] for name, param in _RESPONSE_OVERRIDES.items() if name in query}


def parse_http_date(value: str) -> datetime:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise S3Error("InvalidArgument", f"not an HTTP date: {value!r}", 400) from None


def quote_etag(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return '"' + etag.strip('"') + '"'


def int_param(
    query: Mapping[str, str], name: str, default: int | None = None, lo: int = 0, hi: int = 2**63
) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} must be an integer", 400) from None
    if not lo <= number <= hi:
        raise S3Error("InvalidArgument", f"{name} must be between {lo} and {hi}", 400)
    return number
