"""What the client gets when the bucket fails: botocore's errors and the timeouts as S3 errors.

One mapping for every path to the bucket, botocore's and the direct one (``proxy.upstream.http``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp
from botocore.exceptions import ClientError, ConnectTimeoutError, ParamValidationError, ReadTimeoutError

from proxy.s3.errors import S3Error
from proxy.upstream.http import RawTimeout

if TYPE_CHECKING:
    from proxy.metrics import TimeoutKind

# upstream_errors_total codes of the timeouts (botocore's exception names where it has one).
TIMEOUT_CODES = {
    "upstream_connect": "ConnectTimeoutError",
    "upstream_read": "ReadTimeoutError",
    "upstream_deadline": "DeadlineExceeded",
}

_HEAD_STATUS_CODES = {
    "404": "NoSuchKey",
    "403": "AccessDenied",
    "412": "PreconditionFailed",
    "304": "NotModified",
    "400": "InvalidRequest",
    "416": "InvalidRange",
    "405": "MethodNotAllowed",
    "500": "InternalError",
    "501": "NotImplemented",
    "503": "ServiceUnavailable",
}


def client_error_to_s3(exc: ClientError) -> S3Error:
    """Carry an upstream S3 error back to the client with the same code and status."""
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 500)
    code = str(err.get("Code") or "InternalError")
    if code.isdigit():  # a HEAD answer has no body: botocore names the error by its status
        code = _HEAD_STATUS_CODES.get(code) or ("InternalError" if status >= 500 else "InvalidRequest")
    message = str(err.get("Message") or f"upstream answered {status}")
    error = S3Error(code, message, status)
    headers = meta.get("HTTPHeaders", {})
    if status == 304:  # names the version the client has
        error.headers = {name: headers[key] for name, key in _NOT_MODIFIED_HEADERS if key in headers}
    elif status in (404, 405):
        error.headers = delete_marker_headers(headers)
    return error


_NOT_MODIFIED_HEADERS = (("ETag", "etag"), ("Last-Modified", "last-modified"))


def delete_marker_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """What a 404 (or 405) of a delete marker says of it, as S3 sends it on: ``x-amz-delete-marker``
    and the marker's ``x-amz-version-id`` (a conditional delete tells a deleted object from none)."""
    if str(headers.get("x-amz-delete-marker", "")).lower() != "true":
        return {}
    found = {"x-amz-delete-marker": "true"}
    if headers.get("x-amz-version-id"):
        found["x-amz-version-id"] = str(headers["x-amz-version-id"])
    return found


def param_error_to_s3(exc: ParamValidationError) -> S3Error:
    """botocore refused the request before sending it (a header value it cannot send, such as
    non-ASCII metadata): the client's request is at fault, not the bucket's reach."""
    return S3Error("InvalidArgument", str(exc).replace("\n", " "), 400)


def timeout_kind(exc: BaseException) -> TimeoutKind | None:
    """Which timeout ``exc`` is (botocore's, aiohttp's under it, the direct HTTP stack's), or None."""
    if isinstance(exc, RawTimeout):
        return "upstream_connect" if exc.kind == "upstream_connect" else "upstream_read"
    if isinstance(exc, ConnectTimeoutError | aiohttp.ConnectionTimeoutError):
        return "upstream_connect"
    if isinstance(exc, ReadTimeoutError | TimeoutError):  # aiohttp's ServerTimeoutError is one
        return "upstream_read"
    return None
