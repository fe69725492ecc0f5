"""Which S3 operation a request is: addressing style, sub-resources, method. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.s3.errors import S3Error

# Sub-resources that carry no object data, forwarded to the bucket as S3 operations
# (proxy.upstream.subresources translates them by botocore's model): sub-resource ->
# (method, on an object?) -> operation. A method the table does not name is MethodNotAllowed.
SUBRESOURCES: dict[str, dict[tuple[str, bool], str]] = {
    "versioning": {("GET", False): "GetBucketVersioning", ("PUT", False): "PutBucketVersioning"},
    "policy": {
        ("GET", False): "GetBucketPolicy",
        ("PUT", False): "PutBucketPolicy",
        ("DELETE", False): "DeleteBucketPolicy",
    },
    "lifecycle": {
        ("GET", False): "GetBucketLifecycleConfiguration",
        ("PUT", False): "PutBucketLifecycleConfiguration",
        ("DELETE", False): "DeleteBucketLifecycle",
    },
    "tagging": {
        ("GET", False): "GetBucketTagging",
        ("PUT", False): "PutBucketTagging",
        ("DELETE", False): "DeleteBucketTagging",
        ("GET", True): "GetObjectTagging",
        ("PUT", True): "PutObjectTagging",
        ("DELETE", True): "DeleteObjectTagging",
    },
    "acl": {
        ("GET", False): "GetBucketAcl",
        ("PUT", False): "PutBucketAcl",
        ("GET", True): "GetObjectAcl",
        ("PUT", True): "PutObjectAcl",
    },
    "ownershipControls": {
        ("GET", False): "GetBucketOwnershipControls",
        ("PUT", False): "PutBucketOwnershipControls",
        ("DELETE", False): "DeleteBucketOwnershipControls",
    },
    "object-lock": {("GET", False): "GetObjectLockConfiguration", ("PUT", False): "PutObjectLockConfiguration"},
    "legal-hold": {("GET", True): "GetObjectLegalHold", ("PUT", True): "PutObjectLegalHold"},
    "retention": {("GET", True): "GetObjectRetention", ("PUT", True): "PutObjectRetention"},
    "encryption": {
        ("GET", False): "GetBucketEncryption",
        ("PUT", False): "PutBucketEncryption",
        ("DELETE", False): "DeleteBucketEncryption",
    },
    "policyStatus": {("GET", False): "GetBucketPolicyStatus"},
    "publicAccessBlock": {
        ("GET", False): "GetPublicAccessBlock",
        ("PUT", False): "PutPublicAccessBlock",
        ("DELETE", False): "DeletePublicAccessBlock",
    },
    # These two list or describe objects: the service gives them the plaintext view.
    "versions": {("GET", False): "ListObjectVersions"},
    "attributes": {("GET", True): "GetObjectAttributes"},
}
#: Every operation of the table above.
SUBRESOURCE_OPERATIONS = frozenset(op for methods in SUBRESOURCES.values() for op in methods.values())

# Bucket sub-resources we recognise only to refuse them clearly.
_UNSUPPORTED_SUBRESOURCES = frozenset(
    {
        "analytics",
        "accelerate",
        "cors",
        "intelligent-tiering",
        "inventory",
        "logging",
        "metrics",
        "notification",
        "replication",
        "requestPayment",
        "restore",
        "select",
        "torrent",
        "website",
        "session",
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


def bucket_and_key(raw_path: str, host: str, virtual_suffixes: Iterable[str]) -> tuple[str | None, str | None]:
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


def route(
    method: str, bucket: str | None, key: str | None, query: Mapping[str, str], headers: Mapping[str, str]
) -> Route:
    """Name the S3 operation, or raise NotImplemented / MethodNotAllowed."""
    for name in query:
        if name in _UNSUPPORTED_SUBRESOURCES:
            raise S3Error("NotImplemented", f"the {name} sub-resource is not supported by this proxy", 501)
    for name in query:
        methods = SUBRESOURCES.get(name)
        if methods is not None and bucket is not None:
            operation = methods.get((method, key is not None))
            if operation is None:
                raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
            return Route(operation, bucket, key)
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


# --- client scopes ---------------------------------------------------------------------------

_OBJECT_SUBRESOURCE_OPERATIONS = frozenset(
    op for methods in SUBRESOURCES.values() for (_, on_object), op in methods.items() if on_object
)
# Operations on a bucket's objects: the key in the URL must be in scope.
_KEY_OPERATIONS = frozenset(
    {
        "GetObject",
        "HeadObject",
        "PutObject",
        "DeleteObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "ListParts",
    }
    # Object sub-resources (tagging, ACL, legal hold, retention, attributes) are about one key.
    | _OBJECT_SUBRESOURCE_OPERATIONS
)
# ... and the copy source (``x-amz-copy-source``) too.
_COPY_OPERATIONS = frozenset({"CopyObject", "UploadPartCopy"})
# Listings: the ``prefix`` parameter must be inside the scope's prefix.
_LIST_OPERATIONS = frozenset({"ListObjects", "ListObjectsV2", "ListMultipartUploads", "ListObjectVersions"})
# The bucket must be in scope; nothing about keys is named (DeleteObjects names its keys in the
# body, checked by the service where the body is parsed: ``ClientScope.check_key``).
_BUCKET_OPERATIONS = frozenset({"HeadBucket", "GetBucketLocation", "DeleteObjects"})
# Whole-bucket changes: the bucket in scope and no prefix restriction; a bucket's configuration
# (its sub-resources: versioning, policy, ACL...) is one, read or written.
_WHOLE_BUCKET_OPERATIONS = frozenset({"CreateBucket", "DeleteBucket"}) | (
    SUBRESOURCE_OPERATIONS - _OBJECT_SUBRESOURCE_OPERATIONS - {"ListObjectVersions"}
)
# Every operation ``route`` can name has a rule above; any other is refused to a scoped client.
SCOPED_OPERATIONS = (
    _KEY_OPERATIONS
    | _COPY_OPERATIONS
    | _LIST_OPERATIONS
    | _BUCKET_OPERATIONS
    | _WHOLE_BUCKET_OPERATIONS
    | {"ListBuckets"}
)


@dataclass(frozen=True)
class ClientScope:
    """What one client may touch: some buckets (empty: every bucket) and keys under a prefix.

    Key checks are on the literal key as the client sent it (URL-decoded), as an IAM resource
    ``arn:aws:s3:::bucket/prefix*`` would be; a key with a ``.`` or ``..`` path segment is refused
    as well, so an upstream that maps keys to file paths cannot resolve one outside the scope.
    """

    buckets: frozenset[str] = frozenset()
    prefix: str = ""

    @property
    def restricted(self) -> bool:
        return bool(self.buckets or self.prefix)

    def allows_bucket(self, bucket: str) -> bool:
        return not self.buckets or bucket in self.buckets

    def allows_key(self, bucket: str, key: str) -> bool:
        return self.allows_bucket(bucket) and key.startswith(self.prefix) and not _dot_segment(key)

    def allows_listing(self, bucket: str, prefix: str) -> bool:
        """A listing of ``bucket`` under ``prefix`` (S3's ``prefix`` parameter, '' when absent)."""
        return self.allows_bucket(bucket) and prefix.startswith(self.prefix) and not _dot_segment(prefix)

    def check_key(self, bucket: str, key: str) -> None:
        """Raise AccessDenied unless the key is in scope."""
        if not self.allows_key(bucket, key):
            raise S3Error.access_denied()


def _dot_segment(key: str) -> bool:
    return any(segment in (".", "..") for segment in key.split("/"))


def check_scope(
    target: Route, query: Mapping[str, str], scope: ClientScope, copy_source: tuple[str, str] | None = None
) -> None:
    """Raise AccessDenied when a routed request reaches outside the client's scope.

    ``copy_source`` is the (bucket, key) a CopyObject or UploadPartCopy reads, parsed as the
    service parses it. ListBuckets is always allowed (the service shows only the buckets in
    scope) and DeleteObjects' keys are checked where its body is parsed; everything else is
    decided here.
    """
    if not scope.restricted or target.operation == "ListBuckets":
        return
    bucket, key = target.bucket or "", target.key or ""
    operation = target.operation
    if operation in _KEY_OPERATIONS:
        allowed = scope.allows_key(bucket, key)
    elif operation in _COPY_OPERATIONS:
        allowed = scope.allows_key(bucket, key) and copy_source is not None and scope.allows_key(*copy_source)
    elif operation in _LIST_OPERATIONS:
        allowed = scope.allows_listing(bucket, query.get("prefix", ""))
    elif operation in _BUCKET_OPERATIONS:
        allowed = scope.allows_bucket(bucket)
    elif operation in _WHOLE_BUCKET_OPERATIONS:
        allowed = scope.allows_bucket(bucket) and not scope.prefix
    else:
        allowed = False  # an operation without a rule is refused, never let through
    if not allowed:
        raise S3Error.access_denied()
