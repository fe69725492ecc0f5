"""The real bucket, behind one small interface. Knows nothing of encryption.

aiobotocore does every operation; the requests made most (HEAD, data GETs, trailer reads, LIST
pages, small PUTs) also have a fast path signed here (``proxy.s3.signer``) that falls back to the
botocore call on any answer it does not expect, so errors are mapped and retried in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiobotocore.session
import aiohttp
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from proxy.config import Upstream as UpstreamConfig
from proxy.rawget import BodyError, RecordReader
from proxy.s3 import xml
from proxy.s3.errors import S3Error
from proxy.s3.signer import Credentials, SignedRequest, object_path, sign_request

if TYPE_CHECKING:
    from proxy.metrics import Metrics

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
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-tagging-count",
    "x-amz-expiration",
    "x-amz-restore",
    "x-amz-mp-parts-count",
)

_HEAD_STATUS_CODES = {"404": "NoSuchKey", "403": "AccessDenied", "412": "PreconditionFailed",
                      "304": "NotModified", "400": "InvalidRequest", "416": "InvalidRange"}


class StreamingBody:
    """A request body botocore accepts (it has ``read``) but aiohttp streams (``__aiter__``).

    botocore's parameter validation wants a file-like object; aiohttp sends any async iterable
    chunk by chunk. An error raised by the source is kept in ``error`` because botocore replaces
    it with UnseekableStreamError when it tries to rewind for a retry.
    """

    def __init__(self, source: AsyncIterable[bytes | bytearray]) -> None:
        self._source = source
        self.error: BaseException | None = None
        self.sent = 0

    def read(self, *_: Any) -> bytes:  # pragma: no cover - botocore only checks it exists
        raise RuntimeError("StreamingBody is read asynchronously")

    async def _iterate(self) -> AsyncIterator[memoryview]:
        try:
            async for piece in self._source:
                self.sent += len(piece)
                # A memoryview: aiohttp slices each piece to the declared length, which copies
                # a bytearray (1 MiB per record) but not a view.
                yield memoryview(piece)
                del piece
        except BaseException as exc:
            self.error = exc
            raise

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._iterate()


def client_error_to_s3(exc: ClientError) -> S3Error:
    """Carry an upstream S3 error back to the client with the same code and status."""
    err = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 500)
    code = str(err.get("Code") or "InternalError")
    code = _HEAD_STATUS_CODES.get(code, code)
    message = str(err.get("Message") or f"upstream answered {status}")
    return S3Error(code, message, status)


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


class Upstream:
    """One aiobotocore S3 client with its own credentials, pool, timeouts and retries.

    With ``metrics``, every call is counted (``upstream_requests_total`` by operation and
    outcome, ``upstream_errors_total`` by error code, retries botocore made) and body bytes
    are added to ``upstream_bytes_sent_total`` / ``upstream_bytes_received_total``.
    """

    def __init__(self, cfg: UpstreamConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._fast: aiohttp.ClientSession | None = None
        self._endpoint: URL | None = None
        self._records: RecordReader | None = None
        self._streaming_client: Any = None

    def _boto_config(self, max_attempts: int) -> BotoConfig:
        return BotoConfig(
            region_name=self.cfg.region,
            connect_timeout=self.cfg.connect_timeout,
            read_timeout=self.cfg.read_timeout,
            max_pool_connections=self.cfg.max_pool_connections,
            retries={"max_attempts": max_attempts, "mode": "standard"},
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
            session.create_client("s3", config=self._boto_config(self.cfg.max_attempts), **kwargs)
        )
        # Streamed bodies cannot be replayed, so their requests are not retried here: the client
        # (s3transfer, Medusa) retries the whole request.
        self._streaming_client = await self._stack.enter_async_context(
            session.create_client("s3", config=self._boto_config(1), **kwargs)
        )

        endpoint = URL(self.cfg.endpoint_url or "")
        if endpoint.is_absolute() and endpoint.path in ("", "/") and self.cfg.addressing_style != "virtual":
            self._endpoint = endpoint
            self._records = RecordReader(endpoint, verify_tls=self.cfg.verify_tls,
                                         connect_timeout=self.cfg.connect_timeout,
                                         read_timeout=self.cfg.read_timeout, max_idle=self.cfg.max_pool_connections)
            self._stack.callback(self._records.close)
            self._fast = await self._stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.max_pool_connections, ssl=self.cfg.verify_tls),
                timeout=aiohttp.ClientTimeout(sock_connect=self.cfg.connect_timeout,
                                              sock_read=self.cfg.read_timeout),
                auto_decompress=False,
            ))

    async def close(self) -> None:
        await self._stack.aclose()

    async def _signed(self, method: str, path: str, query: list[tuple[str, str]],
                      headers: dict[str, str]) -> SignedRequest | None:
        """A request signed with the client's (refreshable) credentials; None without them."""
        credentials = self.client._request_signer._credentials
        if self._fast is None or self._endpoint is None or credentials is None:
            return None
        frozen = await credentials.get_frozen_credentials()
        return sign_request(method, self._endpoint, path, query, headers,
                            Credentials(frozen.access_key, frozen.secret_key, frozen.token), self.cfg.region)

    async def fast_range(self, bucket: str, key: str, spec: str | None, etag: str) -> bytes | None:
        """A small (ranged) GET without botocore's per-request machinery, on the record
        reader's connections (the cheapest request the proxy makes: a cold listing makes one per
        object). Any answer but 200/206 returns None, and the caller asks botocore, which maps
        errors and retries properly.
        """
        headers = {"range": spec} if spec is not None else {}
        if etag.strip('"'):
            headers["if-match"] = etag
        request = await self._signed("GET", object_path(bucket, key), [], headers)
        if request is None or self._records is None:
            return None
        try:
            opened = await self._records.open(request.url.raw_path_qs, request.headers)
            if opened is None:
                return None
            data = bytes(await self._records.read_body(opened[1], opened[0].length))
        except (OSError, TimeoutError, BodyError):
            return None
        self._ok("get_object", None, received=len(data))
        return data

    async def fast_list(self, bucket: str, query: list[tuple[str, str]], v2: bool) -> dict[str, Any] | None:
        """ListObjects(V2) parsed here (botocore spends ~0.1 s of CPU on a page of 1,000 keys).

        ``query`` holds the S3 query parameters; keys are asked URL-encoded and come back decoded,
        in the shape botocore gives. Anything but a 200 with a parseable page returns None, and
        the caller asks botocore.
        """
        query = [*query, ("encoding-type", "url")]
        if v2:
            query.append(("list-type", "2"))
        request = await self._signed("GET", object_path(bucket), query, {})
        if request is None or self._fast is None:
            return None
        try:
            async with self._fast.get(request.url, headers=request.headers) as reply:
                if reply.status != 200:
                    return None
                body = await reply.read()
        except (aiohttp.ClientError, TimeoutError):
            return None
        try:
            page = xml.parse_list_objects(body)
        except ValueError:
            return None
        self._ok("list_objects_v2" if v2 else "list_objects", None)
        return page

    async def fast_put(self, bucket: str, key: str, body: bytes, params: dict[str, Any]) -> dict[str, Any] | None:
        """PutObject of a small body held in memory, without botocore (about 1.5 ms of CPU per
        PUT). Only user metadata and Content-Type are carried; with any other parameter, or on
        any answer but 200, it returns None and the caller asks botocore (a PUT can be repeated)."""
        if not set(params) <= {"Metadata", "ContentType"}:
            return None
        headers = {f"x-amz-meta-{name.lower()}": value for name, value in params.get("Metadata", {}).items()}
        if "ContentType" in params:
            headers["content-type"] = params["ContentType"]
        if not all(value.isascii() and value.isprintable() for value in headers.values()):
            return None
        request = await self._signed("PUT", object_path(bucket, key), [], headers)
        if request is None or self._fast is None:
            return None
        try:
            async with self._fast.put(request.url, headers=request.headers, data=body,
                                      skip_auto_headers=("Content-Type",)) as reply:
                if reply.status != 200:
                    return None
                etag = reply.headers.get("ETag", "")
        except (aiohttp.ClientError, TimeoutError):
            return None
        self._ok("put_object", None, sent=len(body))
        return {"ETag": etag}

    async def fast_head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """HeadObject without botocore (about 1.5 ms of CPU less per HEAD, and one is made before
        every GET of an encrypted object): ETag, ContentLength, LastModified, Metadata and the
        headers, in botocore's shape. 404 is NoSuchKey; any other non-200 returns None, and the
        caller asks botocore."""
        request = await self._signed("HEAD", object_path(bucket, key), [], {})
        if request is None or self._fast is None:
            return None
        try:
            async with self._fast.head(request.url, headers=request.headers) as reply:
                status = reply.status
                headers: dict[str, str] = {}
                for name, value in reply.headers.items():
                    lower = name.lower()
                    headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        except (aiohttp.ClientError, TimeoutError):
            return None
        if status == 404:
            self._failed("head_object", "NoSuchKey")
            raise S3Error("NoSuchKey", "Not Found", 404)
        length, modified = headers.get("content-length", ""), headers.get("last-modified")
        if status != 200 or not length.isdigit() or not modified:
            return None
        try:
            last_modified = parsedate_to_datetime(modified)
        except (TypeError, ValueError):
            return None
        self._ok("head_object", None)
        return {"ETag": headers.get("etag", ""), "ContentLength": int(length), "LastModified": last_modified,
                "Metadata": {name[len("x-amz-meta-"):]: value for name, value in headers.items()
                             if name.startswith("x-amz-meta-")},
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}

    async def head(self, bucket: str, key: str) -> dict[str, Any]:
        """HeadObject: the fast path, else botocore (which maps and retries)."""
        return await self.fast_head(bucket, key) or await self.call("head_object", Bucket=bucket, Key=key)

    async def get_records(self, bucket: str, key: str, spec: str | None, etag: str,
                          piece_size: int) -> tuple[dict[str, Any], AsyncIterator[memoryview]] | None:
        """GetObject read in place into one reused ``piece_size`` buffer (see
        ``proxy.rawget``): each piece is valid only until the next one is asked for. None when
        the fast path cannot serve it; the caller then uses ``get_stream``."""
        if self._records is None:
            return None
        headers = {"range": spec} if spec is not None else {}
        if etag.strip('"'):
            headers["if-match"] = etag
        request = await self._signed("GET", object_path(bucket, key), [], headers)
        if request is None:
            return None
        try:
            opened = await self._records.open(request.url.raw_path_qs, request.headers)
        except (OSError, TimeoutError):
            return None
        if opened is None:
            return None
        head, conn = opened
        self._ok("get_object", None)
        reply = {"ContentLength": head.length, "ETag": head.headers.get("etag", ""),
                 "ResponseMetadata": {"HTTPStatusCode": head.status, "HTTPHeaders": head.headers}}
        return reply, self._counted(self._records.pieces(conn, piece_size))

    async def _counted(self, pieces: AsyncIterator[memoryview]) -> AsyncIterator[memoryview]:
        received = 0
        try:
            async for piece in pieces:
                received += len(piece)
                yield piece
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

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Call one S3 operation by its botocore snake_case name; errors become S3Error."""
        body = params.get("Body")
        sent = len(body) if isinstance(body, bytes | bytearray | memoryview) else 0
        try:
            result: dict[str, Any] = await getattr(self.client, operation)(**params)
        except ClientError as exc:
            err = client_error_to_s3(exc)
            self._failed(operation, err.code, exc.response, sent)
            raise err from None
        except BotoCoreError as exc:
            self._failed(operation, type(exc).__name__)
            raise S3Error("ServiceUnavailable", f"upstream unreachable: {exc}", 503) from None
        # A GetObject body is read by the caller; count what the bucket is sending.
        received = int(result.get("ContentLength") or 0) if operation == "get_object" else 0
        self._ok(operation, result, sent, received)
        return result

    async def send_stream(
        self, operation: str, body: AsyncIterable[bytes | bytearray], length: int, **params: Any
    ) -> dict[str, Any]:
        """PutObject/UploadPart with a streamed body of known length.

        If ``body`` raises, the upstream request is cut short, so the upstream never stores a
        partial object, and the body's own exception is re-raised.
        """
        stream = StreamingBody(body)
        try:
            result: dict[str, Any] = await getattr(self._streaming_client, operation)(
                Body=stream, ContentLength=length, **params
            )
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
            self._failed(operation, type(exc).__name__, sent=stream.sent)
            raise S3Error("ServiceUnavailable", f"upstream request failed: {exc}", 503) from None
        self._ok(operation, result, sent=stream.sent)
        return result

    async def read(self, *, limit: int | None = None, **params: Any) -> bytes:
        """GetObject of something small (a trailer, a manifest), whole; S3Error past ``limit``."""
        reply = await self.call("get_object", **params)
        body = reply["Body"]
        try:
            if limit is not None and int(reply.get("ContentLength", 0)) > limit:
                raise S3Error("InternalError", f"{params.get('Key')!r} is larger than {limit} bytes", 500)
            data: bytes = await body.read()
        finally:
            body.close()
        return data

    async def get_stream(self, **params: Any) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        """GetObject; returns the reply and an iterator over the body in large pieces."""
        reply = await self._get(**params)
        body = reply.pop("Body")
        metrics = self.metrics

        async def pieces() -> AsyncIterator[bytes]:
            received = 0
            try:
                async for piece in body.iter_chunks(256 << 10):  # read(n) lets aiohttp buffer 2n
                    received += len(piece)
                    yield piece
            finally:
                body.close()
                if metrics is not None and received:
                    metrics.add_upstream_bytes(received=received)

        return reply, pieces()

    async def _get(self, **params: Any) -> dict[str, Any]:
        """GetObject counted like ``call`` except for its body bytes (counted as they arrive)."""
        try:
            result: dict[str, Any] = await self.client.get_object(**params)
        except ClientError as exc:
            err = client_error_to_s3(exc)
            self._failed("get_object", err.code, exc.response)
            raise err from None
        except BotoCoreError as exc:
            self._failed("get_object", type(exc).__name__)
            raise S3Error("ServiceUnavailable", f"upstream unreachable: {exc}", 503) from None
        self._ok("get_object", result)
        return result


def reply_headers(reply: dict[str, Any]) -> dict[str, str]:
    """The upstream reply headers that may be forwarded to a client, user metadata included."""
    raw: dict[str, str] = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    headers = {name: value for name, value in raw.items() if name in FORWARDED_HEADERS}
    for name, value in raw.items():
        if name.startswith("x-amz-meta-"):
            headers[name] = value
    return headers
