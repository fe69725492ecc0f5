"""The real bucket, behind one small interface. Knows nothing of encryption.

aiobotocore does every operation; the requests made most (HEAD, data GETs, trailer reads, LIST
pages, small PUTs) also have a fast path signed here (``proxy.s3.signer``) that falls back to the
botocore call on any answer it does not expect, so errors are mapped and retried in one place.
Every fast path goes through one hand-written HTTP client, ``proxy.upstream.http`` (one pool of
kept-alive connections), and its failures through one mapping (``Upstream._direct``).

Every call is bounded (docs/OPERATIONS.md, "Timeouts"): by ``connect_timeout`` and ``read_timeout``
(silence) on every path, and, when it has no streamed body, by ``request_timeout`` as a whole
(fast path, fallback and botocore's retries together), since a server that trickles bytes never
trips a read timeout. A call that times out fails with 503 ServiceUnavailable; a fast path that
times out does not fall back (the upstream is silent, not strange: asking again would only hold
the client for longer; the client retries). A connection that timed out is closed, never pooled.

One job per module: this one is ``Upstream`` (the calls, their bounds and metrics);
``http`` is the direct HTTP stack of the fast paths, ``errors`` maps every failure to an S3
error, ``streaming`` holds the streamed request body and its silence timer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiobotocore.session
import aiohttp
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError, ReadTimeoutError
from yarl import URL

from proxy.config import Upstream as UpstreamConfig
from proxy.s3 import xml
from proxy.s3.errors import S3Error
from proxy.s3.headers import LOCK_PARAMS, STORAGE_HEADERS, without_aws_chunked
from proxy.s3.signer import Credentials, SignedRequest, object_path, sign_request
from proxy.upstream.errors import (
    TIMEOUT_CODES,
    client_error_to_s3,
    delete_marker_headers,
    param_error_to_s3,
    timeout_kind,
)
from proxy.upstream.http import BodyError, ConnectionPool, RawTimeout
from proxy.upstream.results import Copied, Created, ObjectHead, Opened, Written
from proxy.upstream.streaming import Silence, StreamingBody, first_piece_ahead
from proxy.upstream.versions import current as current_version
from proxy.upstream.versions import versioned

__all__ = [
    "FORWARDED_HEADERS",
    "LONG_OPERATIONS",
    "WRITE_REPLY_HEADERS",
    "Copied",
    "Created",
    "ObjectHead",
    "Opened",
    "Silence",
    "StreamingBody",
    "Upstream",
    "Written",
    "client_error_to_s3",
    "operation_name",
    "reply_headers",
    "timeout_kind",
    "write_headers",
]

if TYPE_CHECKING:
    from proxy.metrics import Metrics, TimeoutKind

T = TypeVar("T")

# Upstream reply headers a client may see. Everything else (request ids, upstream checksums of
# the stored bytes, hop-by-hop headers) stays here: a client must never get a checksum of bytes
# it did not receive.
FORWARDED_HEADERS = (
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "cache-control",
    "expires",
    "last-modified",
    "etag",
    "accept-ranges",
    "x-amz-storage-class",
    "x-amz-version-id",
    "x-amz-delete-marker",
    *sorted(STORAGE_HEADERS),  # the bucket's encryption at rest and the object's lock
    "x-amz-tagging-count",
    "x-amz-expiration",
    "x-amz-restore",
    "x-amz-mp-parts-count",
)

# The headers of a write's answer (PutObject, CopyObject, the multipart steps) a client gets:
# the bucket's own encryption at rest and the version it stored. Not its checksums, which are
# of the stored bytes (ciphertext, for an encrypted object).
WRITE_REPLY_HEADERS = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
    "x-amz-version-id",
    "x-amz-copy-source-version-id",
    "x-amz-expiration",
)


def write_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an upstream write's answer that its client gets (``WRITE_REPLY_HEADERS``)."""
    return {name: headers[name] for name in WRITE_REPLY_HEADERS if name in headers}


# A PUT's answer has no body on S3: anything larger than this is not an answer the fast path expects.
_PUT_ANSWER = 64 << 10
# S3 may work on these for minutes (it sends whitespace meanwhile): long_request_timeout bounds them.
LONG_OPERATIONS = frozenset({"complete_multipart_upload", "copy_object", "upload_part_copy"})
_OPERATION_NAMES: dict[str, str] = {}


def operation_name(method: str) -> str:
    """botocore's snake_case method name as the S3 operation name (``list_objects_v2`` ->
    ``ListObjectsV2``), memoised: it is on every upstream call."""
    name = _OPERATION_NAMES.get(method)
    if name is None:
        name = _OPERATION_NAMES[method] = "".join(part[:1].upper() + part[1:] for part in method.split("_"))
    return name


def _retries(response: Any) -> int:
    try:
        return int(response["ResponseMetadata"].get("RetryAttempts") or 0)
    except (KeyError, TypeError, AttributeError, ValueError):
        return 0


def _without_expect_header(params: dict[str, Any], **_: Any) -> None:
    """botocore handler: send the body without waiting for 100 Continue."""
    params["headers"].pop("Expect", None)


class Upstream:
    """One aiobotocore S3 client with its own credentials, pool, timeouts and retries.

    One connection budget, ``max_pool_connections``: botocore's pool (and the streaming
    client's) hold at most that many connections, and the direct HTTP stack keeps at most that
    many idle; its connections in use follow the client requests being served (see
    ``ConnectionPool``), and botocore's pools bound every fallback.

    With ``metrics``, every call is counted (``upstream_requests_total`` by operation and
    outcome, ``upstream_errors_total`` by error code, retries botocore made) and body bytes
    are added to ``upstream_bytes_sent_total`` / ``upstream_bytes_received_total``.
    """

    def __init__(self, cfg: UpstreamConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._endpoint: URL | None = None
        self._http: ConnectionPool | None = None  # the fast paths' direct HTTP stack
        self._streaming_client: Any = None

    def _boto_config(self, retries: dict[str, Any]) -> BotoConfig:
        return BotoConfig(
            region_name=self.cfg.region,
            connect_timeout=self.cfg.connect_timeout,
            read_timeout=self.cfg.read_timeout,
            max_pool_connections=self.cfg.max_pool_connections,
            retries={**retries, "mode": "standard"},
            # The proxy authenticates its own bytes with the Fernet format; payload signing
            # would hash every byte again (22% of PUT throughput, measured).
            s3={"addressing_style": self.cfg.addressing_style, "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            tcp_keepalive=True,
        )

    async def start(self) -> None:
        session = aiobotocore.session.get_session()
        if self.cfg.profile:
            session.set_config_variable("profile", self.cfg.profile)
        kwargs: dict[str, Any] = {
            "endpoint_url": self.cfg.endpoint_url,
            "region_name": self.cfg.region,
            "verify": self.cfg.verify_tls,
        }
        if self.cfg.access_key_id:
            kwargs.update(
                aws_access_key_id=self.cfg.access_key_id,
                aws_secret_access_key=self.cfg.secret_access_key,
                aws_session_token=self.cfg.session_token,
            )
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", config=self._boto_config({"max_attempts": self.cfg.max_attempts}), **kwargs)
        )
        # aiohttp stops its read timeout at a 100 Continue, so an upstream that says it and then
        # nothing would hold a call until request_timeout; this client's bodies are small anyway.
        self._client.meta.events.register_last("before-call.s3", _without_expect_header)
        # Streamed bodies cannot be replayed, so their requests are not retried here: the client
        # (s3transfer, Medusa) retries the whole request. (botocore's max_attempts counts retries:
        # 1 would make it try to rewind the body and fail with UnseekableStreamError.)
        self._streaming_client = await self._stack.enter_async_context(
            session.create_client("s3", config=self._boto_config({"total_max_attempts": 1}), **kwargs)
        )

        endpoint = URL(self.cfg.endpoint_url or "")
        if endpoint.is_absolute() and endpoint.path in ("", "/") and self.cfg.addressing_style != "virtual":
            self._endpoint = endpoint
            self._http = ConnectionPool(
                endpoint,
                verify_tls=self.cfg.verify_tls,
                connect_timeout=self.cfg.connect_timeout,
                read_timeout=self.cfg.read_timeout,
                max_idle=self.cfg.max_pool_connections,
            )
            self._stack.callback(self._http.close)

    async def close(self) -> None:
        await self._stack.aclose()

    def has_credentials(self) -> bool:
        """Whether the credential chain (or the config) gave the client any credentials."""
        return self.client._request_signer._credentials is not None

    async def _signed(
        self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str]
    ) -> SignedRequest | None:
        """A request signed with the client's (refreshable) credentials; None without them."""
        credentials = self.client._request_signer._credentials
        if self._http is None or self._endpoint is None or credentials is None:
            return None
        frozen = await credentials.get_frozen_credentials()
        return sign_request(
            method,
            self._endpoint,
            path,
            query,
            headers,
            Credentials(frozen.access_key, frozen.secret_key, frozen.token),
            self.cfg.region,
        )

    # --- bounds --------------------------------------------------------------------------

    def deadline_of(self, operation: str) -> float:
        """The whole-call bound of ``operation`` (calls without a streamed body)."""
        return self.cfg.long_request_timeout if operation in LONG_OPERATIONS else self.cfg.request_timeout

    def _timed_out(self, operation: str, kind: TimeoutKind, deadline: float = 0.0, sent: int = 0) -> S3Error:
        """Count a timeout of ``operation`` and the S3 error the client gets for it."""
        if self.metrics is not None:
            self.metrics.timeout(kind)
        self._failed(operation, TIMEOUT_CODES[kind], sent=sent)
        if kind == "upstream_connect":
            message = f"The upstream bucket could not be reached within {self.cfg.connect_timeout:g}s."
        elif kind == "upstream_read":
            message = f"The upstream bucket did not answer in time (nothing for {self.cfg.read_timeout:g}s)."
        else:
            message = f"The upstream bucket did not finish the request within {deadline:g}s."
        return S3Error("ServiceUnavailable", message + " Please retry.", 503)

    async def _bounded(self, operation: str, work: Awaitable[T], deadline: float | None = None) -> T:
        """``work`` within the whole-call bound of ``operation``; a timeout that escapes ``work``
        unmapped is mapped here, so none reaches the client as an internal error."""
        limit = self.deadline_of(operation) if deadline is None else deadline
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                return await work
        except TimeoutError as exc:
            if timer.expired():
                raise self._timed_out(operation, "upstream_deadline", limit) from None
            raise self._timed_out(operation, timeout_kind(exc) or "upstream_read") from None

    # --- fast paths ----------------------------------------------------------------------

    async def _direct(self, operation: str, work: Awaitable[T], sent: int = 0) -> T | None:
        """``work`` on the direct HTTP stack (``proxy.upstream.http``), its failures mapped here
        for every fast path: a timeout is the 503 S3Error (no fallback); a connection that failed
        or a body cut short is None, and the caller asks botocore."""
        try:
            return await work
        except RawTimeout as exc:
            raise self._timed_out(operation, timeout_kind(exc) or "upstream_read", sent=sent) from None
        except (OSError, BodyError):
            return None

    async def direct_range(
        self, bucket: str, key: str, spec: str | None, etag: str, limit: int | None = None
    ) -> bytes | None:
        """A small (ranged) GET without botocore's per-request machinery, on the direct
        connections (the cheapest request the proxy makes: a cold listing makes one per
        object). Any answer but 200/206 returns None, and the caller asks botocore, which maps
        errors and retries properly; a timeout is a 503 S3Error.
        """
        if self._http is None:
            return None
        return await self._bounded("get_object", self._fast_range(bucket, key, spec, etag, limit))

    async def _fast_range(self, bucket: str, key: str, spec: str | None, etag: str, limit: int | None) -> bytes | None:
        request = await self._signed_get(bucket, key, spec, etag)
        if request is None or self._http is None:
            return None
        fetched = await self._direct(
            "get_object", self._http.fetch(request.url.raw_path_qs, request.headers, limit=limit)
        )
        if fetched is None:
            return None
        data = bytes(fetched[1])
        self._ok("get_object", None, received=len(data))
        return data

    async def direct_list(self, bucket: str, query: list[tuple[str, str]], v2: bool) -> dict[str, Any] | None:
        """ListObjects(V2) parsed here (botocore spends ~0.1 s of CPU on a page of 1,000 keys).

        ``query`` holds the S3 query parameters; keys are asked URL-encoded and come back decoded,
        in the shape botocore gives. Anything but a 200 with a parseable page returns None, and
        the caller asks botocore; a timeout is a 503 S3Error.
        """
        if self._http is None:
            return None
        operation = "list_objects_v2" if v2 else "list_objects"
        return await self._bounded(operation, self._fast_list(bucket, query, v2, operation))

    async def _fast_list(
        self, bucket: str, query: list[tuple[str, str]], v2: bool, operation: str
    ) -> dict[str, Any] | None:
        query = [*query, ("encoding-type", "url")]
        if v2:
            query.append(("list-type", "2"))
        request = await self._signed("GET", object_path(bucket), query, {})
        if request is None or self._http is None:
            return None
        # A page larger than the parser takes would be refused anyway: it is not read.
        fetched = await self._direct(
            operation, self._http.fetch(request.url.raw_path_qs, request.headers, limit=xml.MAX_LIST_PAGE)
        )
        if fetched is None or fetched[0].status != 200:
            return None
        try:
            page = xml.parse_list_objects(bytes(fetched[1]))
        except ValueError:
            return None
        self._ok(operation, None)
        return page

    async def direct_put(
        self, bucket: str, key: str, body: bytes | bytearray, params: dict[str, Any]
    ) -> Written | None:
        """PutObject of a small body held in memory, without botocore (about 1.5 ms of CPU per
        PUT). Only user metadata and Content-Type are carried; with any other parameter, or on
        any answer but 200, it returns None and the caller asks botocore (a PUT can be repeated);
        a timeout is a 503 S3Error."""
        if not set(params) <= {"Metadata", "ContentType"} or self._http is None:
            return None
        return await self._bounded("put_object", self._fast_put(bucket, key, body, params))

    async def _fast_put(self, bucket: str, key: str, body: bytes | bytearray, params: dict[str, Any]) -> Written | None:
        headers = {f"x-amz-meta-{name.lower()}": value for name, value in params.get("Metadata", {}).items()}
        if "ContentType" in params:
            headers["content-type"] = params["ContentType"]
        if not all(value.isascii() and value.isprintable() for value in headers.values()):
            return None
        request = await self._signed("PUT", object_path(bucket, key), [], headers)
        if request is None or self._http is None:
            return None
        fetched = await self._direct(
            "put_object",
            self._http.fetch(request.url.raw_path_qs, request.headers, method="PUT", body=body, limit=_PUT_ANSWER),
            sent=len(body),
        )
        if fetched is None or fetched[0].status != 200:
            return None
        self._ok("put_object", None, sent=len(body))
        return Written(fetched[0].headers.get("etag", ""), fetched[0].headers)

    async def direct_head(self, bucket: str, key: str) -> ObjectHead | None:
        """HeadObject without botocore (about 1.5 ms of CPU less per HEAD, and one is made before
        every GET of an encrypted object). 404 is NoSuchKey; any other non-200 returns None, and
        the caller asks botocore; a timeout is a 503 S3Error."""
        if self._http is None:
            return None
        return await self._bounded("head_object", self._fast_head(bucket, key))

    async def _fast_head(self, bucket: str, key: str) -> ObjectHead | None:
        request = await self._signed("HEAD", object_path(bucket, key), [], {})
        if request is None or self._http is None:
            return None
        head = await self._direct("head_object", self._http.head(request.url.raw_path_qs, request.headers))
        if head is None:
            return None
        if head.status == 404:
            self._failed("head_object", "NoSuchKey")
            missing = S3Error("NoSuchKey", "Not Found", 404)
            missing.headers = delete_marker_headers(head.headers)
            raise missing
        headers = head.headers
        length, modified = headers.get("content-length", ""), headers.get("last-modified")
        if head.status != 200 or not length.isdigit() or not modified:
            return None
        try:
            last_modified = parsedate_to_datetime(modified)
        except (TypeError, ValueError):
            return None
        self._ok("head_object", None)
        return ObjectHead(headers.get("etag", ""), int(length), last_modified, headers)

    # --- object operations: the direct path where it serves, else botocore ---------------
    # (The ``direct_*`` methods are the direct paths alone, for these and for tests: nothing
    # outside this package chooses between the paths; tests/project/test_layers.py checks it.)

    async def read_range(self, bucket: str, key: str, spec: str | None, etag: str, limit: int | None = None) -> bytes:
        """A small read of one stored version, whole (``spec`` None) or a Range; ``etag`` (as
        the bucket gave it) guards against an overwrite, an empty one guards nothing. An answer
        longer than the range asked for (or than ``limit``) is refused, never read whole."""
        guard = etag if etag.strip('"') else ""
        limit = _span(spec) or limit
        if current_version(bucket, key) is None:  # the fast path reads the current object only
            data = await self.direct_range(bucket, key, spec, guard, limit)
            if data is not None:
                return data
        return await self.read(limit=limit, **_get_params(bucket, key, spec, guard, {}))

    async def open(
        self, bucket: str, key: str, spec: str | None, etag: str, piece_size: int | None = None, **params: Any
    ) -> tuple[Opened, AsyncIterator[Any]]:
        """GetObject of one stored version (``etag`` as the bucket gave it; empty: whichever is
        there) as a stream of pieces. With ``piece_size`` and no other parameter it is read in
        place, a ``piece_size`` buffer at a time (each piece valid until the next is asked for),
        else botocore streams it (``params`` are botocore's: conditions, response overrides,
        PartNumber)."""
        guard = etag if etag.strip('"') else ""
        if piece_size is not None and not params and current_version(bucket, key) is None:
            opened = await self.direct_records(bucket, key, spec, guard, piece_size)
            if opened is not None:
                return opened
        return await self._stream(**_get_params(bucket, key, spec, guard, params))

    async def put(
        self,
        bucket: str,
        key: str,
        body: bytes | bytearray | AsyncIterable[Any],
        params: dict[str, Any],
        length: int = 0,
    ) -> Written:
        """PutObject (``params`` are botocore's: Metadata, ContentType...) of a body held in memory
        (repeatable: retried), or streamed, ``length`` bytes (not repeatable: see ``_send_stream``).
        A write with an object lock needs a checksum (S3 refuses it without): botocore computes
        one of a body in memory; a streamed one is refused, never stored without its lock."""
        if LOCK_PARAMS & set(params) and not any(name.startswith("Checksum") for name in params):
            if not isinstance(body, bytes | bytearray):
                raise S3Error(
                    "NotImplemented",
                    "PutObject with object lock is supported through the proxy up to 8 MiB; "
                    "upload larger objects in parts (multipart upload)",
                    501,
                )
            params = {**params, "ChecksumAlgorithm": "CRC32"}
        if not isinstance(body, bytes | bytearray):
            return await self._send_stream("put_object", body, length, Bucket=bucket, Key=key, **params)
        written = await self.direct_put(bucket, key, body, params)
        if written is not None:
            return written
        return Written.from_botocore(await self.call("put_object", Bucket=bucket, Key=key, Body=body, **params))

    # --- multipart steps, copies, deletes: botocore -----------------------------------------

    async def create_upload(self, bucket: str, key: str, params: dict[str, Any]) -> Created:
        """CreateMultipartUpload; its upload id and reply headers."""
        reply = await self.call("create_multipart_upload", Bucket=bucket, Key=key, **params)
        return Created(str(reply["UploadId"]), reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}))

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | bytearray | AsyncIterable[Any],
        length: int = 0,
    ) -> Written:
        """UploadPart of a body in memory (retried) or streamed (``length`` bytes)."""
        params = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number}
        if isinstance(body, bytes | bytearray):
            return Written.from_botocore(await self.call("upload_part", Body=body, **params))
        return await self._send_stream("upload_part", body, length, **params)

    async def complete_upload(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        conditions: Mapping[str, Any] | None = None,
    ) -> Written:
        """CompleteMultipartUpload of ``parts`` (number, ETag as the bucket gave it); ``conditions``
        are botocore's IfMatch / IfNoneMatch."""
        listed = [{"PartNumber": number, "ETag": etag} for number, etag in parts]
        reply = await self.call(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
            **(conditions or {}),
        )
        return Written.from_botocore(reply)

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)

    async def copy(self, bucket: str, key: str, source: tuple[str, str, str | None], params: dict[str, Any]) -> Copied:
        """CopyObject of ``source`` (bucket, key, version or None) stored as it is, server side."""
        reply = await self.call("copy_object", Bucket=bucket, Key=key, CopySource=_copy_source(source), **params)
        return Copied.from_botocore(reply.get("CopyObjectResult", {}), reply)

    async def copy_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        source: tuple[str, str, str | None],
        params: dict[str, Any],
    ) -> Copied:
        """UploadPartCopy of (a CopySourceRange of) ``source`` (bucket, key, version or None), server side."""
        reply = await self.call(
            "upload_part_copy",
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource=_copy_source(source),
            **params,
        )
        return Copied.from_botocore(reply.get("CopyPartResult", {}), reply)

    async def delete(
        self, bucket: str, key: str, version_id: str | None = None, params: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """DeleteObject (of one version with ``version_id``; ``params`` botocore's, such as
        BypassGovernanceRetention); the reply's version headers."""
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {}), **(params or {})}
        reply = await self.call("delete_object", **params)
        headers = {}
        if reply.get("VersionId"):
            headers["x-amz-version-id"] = str(reply["VersionId"])
        if reply.get("DeleteMarker"):
            headers["x-amz-delete-marker"] = "true"
        return headers

    async def list_page(self, bucket: str, query: list[tuple[str, str]], v2: bool) -> dict[str, Any]:
        """One ListObjects(V2) page in botocore's shape; ``query`` holds the S3 query parameters
        (prefix, delimiter, marker or continuation-token and start-after, max-keys, fetch-owner)."""
        page = await self.direct_list(bucket, query, v2)
        if page is not None:
            return page
        params: dict[str, Any] = {"Bucket": bucket}
        for name, value in query:
            if name == "max-keys":
                params["MaxKeys"] = int(value)
            elif name == "fetch-owner":
                params["FetchOwner"] = value == "true"
            else:
                params[_LIST_PARAMS[name]] = value
        return await self.call("list_objects_v2" if v2 else "list_objects", **params)

    async def list_all(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every stored object under ``prefix`` in botocore's shape, page after page (for the
        offline tools, which walk a whole bucket)."""
        contents: list[dict[str, Any]] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = await self.call("list_objects_v2", **params)
            contents.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return contents
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def head(self, bucket: str, key: str, conditions: Mapping[str, Any] | None = None) -> ObjectHead:
        """HeadObject: the direct path, else botocore (which maps and retries), within one
        deadline. ``conditions`` (botocore's IfMatch...) go to botocore."""
        return await self._bounded("head_object", self._head(bucket, key, conditions or {}))

    async def _head(self, bucket: str, key: str, conditions: Mapping[str, Any]) -> ObjectHead:
        direct = None if conditions or current_version(bucket, key) is not None else await self._fast_head(bucket, key)
        if direct is not None:
            return direct
        params = versioned({"Bucket": bucket, "Key": key, **conditions})
        return ObjectHead.from_botocore(await self._call("head_object", **params))

    async def direct_records(
        self, bucket: str, key: str, spec: str | None, etag: str, piece_size: int
    ) -> tuple[Opened, AsyncIterator[memoryview]] | None:
        """GetObject read in place into one reused ``piece_size`` buffer (see
        ``proxy.upstream.http``): each piece is valid only until the next one is asked for. None
        when the fast path cannot serve it; the caller then uses ``_stream``. The answer's head
        is bounded by ``request_timeout``, the body by ``read_timeout`` of silence."""
        if self._http is None:
            return None
        opened = await self._bounded("get_object", self._open_records(bucket, key, spec, etag))
        if opened is None:
            return None
        head, conn = opened
        self._ok("get_object", None)
        answer = Opened(head.length, head.headers.get("etag", ""), head.headers, head.headers.get("content-range", ""))
        return answer, self._counted(self._http.pieces(conn, piece_size))

    async def _open_records(self, bucket: str, key: str, spec: str | None, etag: str) -> Any:
        request = await self._signed_get(bucket, key, spec, etag)
        if request is None or self._http is None:
            return None
        return await self._direct("get_object", self._http.open(request.url.raw_path_qs, request.headers))

    async def _signed_get(self, bucket: str, key: str, spec: str | None, etag: str) -> SignedRequest | None:
        """A GetObject of ``spec`` (a Range, or None for all) of the version whose ETag is ``etag``."""
        headers = {"range": spec} if spec is not None else {}
        if etag.strip('"'):
            headers["if-match"] = etag
        return await self._signed("GET", object_path(bucket, key), [], headers)

    async def _counted(self, pieces: AsyncIterator[memoryview]) -> AsyncIterator[memoryview]:
        received = 0
        try:
            async for piece in pieces:
                received += len(piece)
                yield piece
        except RawTimeout as exc:
            raise self._timed_out("get_object", timeout_kind(exc) or "upstream_read") from None
        finally:
            if self.metrics is not None and received:
                self.metrics.add_upstream_bytes(received=received)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("Upstream.start() was not called")
        return self._client

    def _ok(self, operation: str, reply: Any, sent: int = 0, received: int = 0) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        name = operation_name(operation)
        retries = _retries(reply)
        for _ in range(retries):
            metrics.observe_upstream(name, "retry")
        metrics.observe_upstream(name, "ok")
        if sent or received:
            metrics.add_upstream_bytes(sent=sent, received=received)

    def _failed(self, operation: str, code: str, response: Any = None, sent: int = 0) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        name = operation_name(operation)
        for _ in range(_retries(response)):
            metrics.observe_upstream(name, "retry")
        metrics.observe_upstream(name, "error", code)
        if sent:
            metrics.add_upstream_bytes(sent=sent)

    def _aborted(self, sent: int) -> None:
        """The client's body failed (disconnect, bad chunk signature): not the bucket's fault,
        so not an upstream error; only the bytes already sent are counted."""
        if self.metrics is not None and sent:
            self.metrics.add_upstream_bytes(sent=sent)

    def _unreachable(self, operation: str, exc: BotoCoreError, sent: int = 0) -> S3Error:
        """botocore gave up on the connection (after its retries): 503, timeouts counted as such;
        a request botocore refused to send (ParamValidationError) is the client's 400."""
        if isinstance(exc, ParamValidationError):
            return param_error_to_s3(exc)
        kind = timeout_kind(exc)
        if kind is not None:
            return self._timed_out(operation, kind, sent=sent)
        self._failed(operation, type(exc).__name__, sent=sent)
        return S3Error("ServiceUnavailable", f"upstream unreachable: {exc}", 503)

    # --- botocore ------------------------------------------------------------------------

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call one S3 operation by its botocore snake_case name; errors become S3Error. The
        whole call, botocore's retries included, is bounded by ``deadline_of(operation)``."""
        return await self._bounded(operation, self._call(operation, **params))

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        body = params.get("Body")
        sent = len(body) if isinstance(body, bytes | bytearray | memoryview) else 0
        try:
            result: dict[str, Any] = await getattr(self.client, operation)(**params)
        except ClientError as exc:
            err = client_error_to_s3(exc)
            self._failed(operation, err.code, exc.response, sent)
            raise err from None
        except BotoCoreError as exc:
            raise self._unreachable(operation, exc) from None
        # A GetObject body is read by the caller; count what the bucket is sending.
        received = int(result.get("ContentLength") or 0) if operation == "get_object" else 0
        self._ok(operation, result, sent, received)
        return result

    async def _send_stream(
        self, operation: str, body: AsyncIterable[bytes | bytearray], length: int, **params: Any
    ) -> Written:
        """PutObject/UploadPart with a streamed body of known length.

        If ``body`` raises, the upstream request is cut short, so the upstream never stores a
        partial object, and the body's own exception is re-raised. There is no bound on the
        whole transfer; the upstream keeping it waiting ``read_timeout`` in one go (to connect,
        to say 100 Continue, to take a piece of the body, to answer) fails it with 503. Nothing
        is sent before the body's first piece is there (``first_piece_ahead``).
        """
        body = await first_piece_ahead(body)
        silence = Silence(self.cfg.read_timeout)
        stream = StreamingBody(body, silence)
        try:
            result: dict[str, Any] = await getattr(self._streaming_client, operation)(
                Body=stream, ContentLength=length, **params
            )
        except asyncio.CancelledError:
            if silence.fired and silence.task is not None and silence.task.uncancel() == 0:
                if stream.error is not None:
                    self._aborted(stream.sent)
                    raise stream.error from None
                raise self._timed_out(operation, "upstream_read", sent=stream.sent) from None
            raise
        except ClientError as exc:
            if stream.error is not None:
                self._aborted(stream.sent)
                raise stream.error from None
            err = client_error_to_s3(exc)
            self._failed(operation, err.code, exc.response, stream.sent)
            raise err from None
        except (BotoCoreError, OSError) as exc:
            if stream.error is not None:
                self._aborted(stream.sent)
                raise stream.error from None
            if isinstance(exc, BotoCoreError):
                raise self._unreachable(operation, exc, stream.sent) from None
            self._failed(operation, type(exc).__name__, sent=stream.sent)
            raise S3Error("ServiceUnavailable", f"upstream request failed: {exc}", 503) from None
        finally:
            silence.close()
        self._ok(operation, result, sent=stream.sent)
        return Written.from_botocore(result)

    async def read(self, *, limit: int | None = None, **params: Any) -> bytes:
        """GetObject of something small (a trailer, a manifest), whole; S3Error past ``limit``.
        Bounded by ``request_timeout`` as a whole, the body included."""
        return await self._bounded("get_object", self._read(limit, **params))

    async def _read(self, limit: int | None, **params: Any) -> bytes:
        reply = await self._call("get_object", **params)
        body = reply["Body"]
        try:
            if limit is not None and int(reply.get("ContentLength", 0)) > limit:
                raise S3Error("InternalError", f"{params.get('Key')!r} is larger than {limit} bytes", 500)
            data: bytes = await body.read()
        except BotoCoreError as exc:  # the body broke off or stalled (after the answer's head)
            raise self._unreachable("get_object", exc) from None
        except aiohttp.ClientError as exc:
            self._failed("get_object", type(exc).__name__)
            raise S3Error("ServiceUnavailable", f"upstream connection failed: {exc}", 503) from None
        finally:
            body.close()
        return data

    async def _stream(self, **params: Any) -> tuple[Opened, AsyncIterator[bytes]]:
        """GetObject; returns the reply and an iterator over the body in large pieces. The
        answer's head is bounded by ``request_timeout``, the body by ``read_timeout`` of silence
        (botocore's, per socket read)."""
        reply = await self._bounded("get_object", self._get(**params))
        body = reply.pop("Body")
        metrics = self.metrics

        async def pieces() -> AsyncIterator[bytes]:
            received = 0
            try:
                async for piece in body.iter_chunks(256 << 10):  # read(n) lets aiohttp buffer 2n
                    received += len(piece)
                    yield piece
            except ReadTimeoutError:
                raise self._timed_out("get_object", "upstream_read") from None
            finally:
                body.close()
                if metrics is not None and received:
                    metrics.add_upstream_bytes(received=received)

        return Opened.from_botocore(reply), pieces()

    async def _get(self, **params: Any) -> dict[str, Any]:
        """GetObject counted like ``call`` except for its body bytes (counted as they arrive)."""
        try:
            result: dict[str, Any] = await self.client.get_object(**params)
        except ClientError as exc:
            err = client_error_to_s3(exc)
            self._failed("get_object", err.code, exc.response)
            raise err from None
        except BotoCoreError as exc:
            raise self._unreachable("get_object", exc) from None
        self._ok("get_object", result)
        return result


def _get_params(bucket: str, key: str, spec: str | None, guard: str, params: dict[str, Any]) -> dict[str, Any]:
    """botocore's GetObject parameters of a read of ``spec`` (None: all) guarded by ``guard``."""
    params.update(Bucket=bucket, Key=key)
    versioned(params)
    if guard:
        params["IfMatch"] = guard
    if spec is not None:
        params["Range"] = spec
    return params


def _copy_source(source: tuple[str, str, str | None]) -> dict[str, str]:
    """botocore's CopySource of (bucket, key, version); a version of None: the current object."""
    bucket, key, version = source
    return {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}


def _span(spec: str | None) -> int | None:
    """How many bytes a Range of ``bytes=first-last`` or ``bytes=-suffix`` asks for (else None)."""
    first, _, last = (spec or "").removeprefix("bytes=").partition("-")
    if not last.isdigit() or not (first.isdigit() or not first):
        return None
    return int(last) if not first else max(int(last) - int(first) + 1, 0)


_LIST_PARAMS = {
    "prefix": "Prefix",
    "delimiter": "Delimiter",
    "marker": "Marker",
    "continuation-token": "ContinuationToken",
    "start-after": "StartAfter",
}


def reply_headers(reply: ObjectHead | Opened) -> dict[str, str]:
    """The upstream reply headers that may be forwarded to a client, user metadata included.

    A stored ``Content-Encoding: aws-chunked`` (SeaweedFS keeps it) is a request's framing: it
    never reaches a client (nor a copy, which takes its source's headers from here).
    """
    headers = {name: value for name, value in reply.headers.items() if name in FORWARDED_HEADERS}
    if "content-encoding" in headers:
        encoding = without_aws_chunked(headers["content-encoding"])
        if encoding:
            headers["content-encoding"] = encoding
        else:
            del headers["content-encoding"]
    for name, value in reply.headers.items():
        if name.startswith("x-amz-meta-"):
            headers[name] = value
    return headers
