"""S3 errors and their XML bodies.

Every failure the front end reports to a client is an :class:`S3Error`: clients (botocore, the AWS
CLI, Medusa) branch on the ``<Code>`` and the HTTP status, so both must be exactly what S3 sends.
Pure stdlib, no I/O.
"""

from __future__ import annotations

from typing import Final
from xml.sax.saxutils import escape

# code -> (HTTP status, S3's default message). Messages are S3's own wording where it is known,
# because some clients and people grep for them.
ERROR_TABLE: Final[dict[str, tuple[int, str]]] = {
    "AccessDenied": (403, "Access Denied"),
    "InvalidAccessKeyId": (
        403,
        "The AWS Access Key Id you provided does not exist in our records.",
    ),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    ),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the current time is too large.",
    ),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": (
        400,
        "Error parsing the X-Amz-Credential parameter.",
    ),
    "XAmzContentSHA256Mismatch": (
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    ),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "InvalidDigest": (400, "The Content-MD5 you specified was invalid."),
    "InvalidRequest": (400, "Invalid Request"),
    "InvalidArgument": (400, "Invalid Argument"),
    "MalformedXML": (
        400,
        "The XML you provided was not well-formed or did not validate against our published schema.",
    ),
    "MalformedTrailerError": (
        400,
        "The request contained trailing data that was not well-formed or did not conform to our published schema.",
    ),
    "IncompleteBody": (
        400,
        "You did not provide the number of bytes specified by the Content-Length HTTP header.",
    ),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "NoSuchBucket": (404, "The specified bucket does not exist"),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (
        404,
        "The specified upload does not exist. The upload ID may be invalid, or the upload "
        "may have been aborted or completed.",
    ),
    "InvalidPart": (
        400,
        "One or more of the specified parts could not be found.  The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag.",
    ),
    "InvalidPartOrder": (
        400,
        "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
    ),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed size"),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size"),
    "InvalidRange": (416, "The requested range is not satisfiable"),
    "PreconditionFailed": (412, "At least one of the pre-conditions you specified did not hold"),
    "NotImplemented": (
        501,
        "A header you provided implies functionality that is not implemented",
    ),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "SlowDown": (503, "Please reduce your request rate."),
    "ServiceUnavailable": (503, "Service is unable to handle request."),
}


class S3Error(Exception):
    """An error answered to the client as S3 would: status code plus XML ``<Error>`` body.

    ``extra`` holds the additional elements S3 adds for some codes (``StringToSign``,
    ``ServerTime``, ``ClientComputedContentSHA256``...), rendered after ``<Message>``.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        status: int | None = None,
        resource: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        default_status, default_message = ERROR_TABLE.get(code, (500, code))
        self.code: str = code
        self.message: str = message if message is not None else default_message
        self.status: int = status if status is not None else default_status
        self.resource: str | None = resource
        self.extra: dict[str, str] = dict(extra) if extra else {}
        # Headers of the answer (a 304 names the version it did not send: ETag, Last-Modified).
        self.headers: dict[str, str] = {}
        super().__init__(f"{self.code}: {self.message}")

    @classmethod
    def of(
        cls,
        code: str,
        message: str | None = None,
        *,
        resource: str | None = None,
        **extra: str,
    ) -> S3Error:
        """Build an error for a code of :data:`ERROR_TABLE`; keyword arguments become extras."""
        if code not in ERROR_TABLE:
            raise ValueError(f"unknown S3 error code {code!r}")
        return cls(code, message, resource=resource, extra=extra)

    def __repr__(self) -> str:
        return f"S3Error({self.code!r}, {self.message!r}, status={self.status})"

    def to_xml(self, request_id: str) -> bytes:
        """The response body, in the element order S3 uses."""
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
            f"<Code>{escape(self.code)}</Code>",
            f"<Message>{escape(self.message)}</Message>",
        ]
        for name, value in self.extra.items():
            parts.append(f"<{name}>{escape(value)}</{name}>")
        if self.resource is not None:
            parts.append(f"<Resource>{escape(self.resource)}</Resource>")
        parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
        parts.append("</Error>")
        # "replace": a canonical request echoed back may hold header bytes that were not UTF-8.
        return "".join(parts).encode("utf-8", "replace")

    # Shorthands for the codes raised from many places.
    @classmethod
    def access_denied(cls, message: str | None = None, **extra: str) -> S3Error:
        return cls.of("AccessDenied", message, **extra)

    @classmethod
    def invalid_request(cls, message: str, **extra: str) -> S3Error:
        return cls.of("InvalidRequest", message, **extra)

    @classmethod
    def invalid_argument(cls, message: str, name: str, value: str) -> S3Error:
        return cls.of("InvalidArgument", message, ArgumentName=name, ArgumentValue=value)

    @classmethod
    def no_such_bucket(cls, bucket: str) -> S3Error:
        return cls.of("NoSuchBucket", BucketName=bucket)

    @classmethod
    def no_such_key(cls, key: str) -> S3Error:
        return cls.of("NoSuchKey", Key=key)

    @classmethod
    def no_such_upload(cls, upload_id: str) -> S3Error:
        return cls.of("NoSuchUpload", UploadId=upload_id)

    @classmethod
    def not_implemented(cls, message: str | None = None) -> S3Error:
        return cls.of("NotImplemented", message)

    @classmethod
    def internal_error(cls) -> S3Error:
        return cls.of("InternalError")
