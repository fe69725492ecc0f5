"""The aiohttp side of the S3 API: addressing, authentication, dispatch, replies and errors."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import ClientError, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from proxy.s3.api import Reply, Request, close_pieces, parse_copy_source
from proxy.s3.body import RequestBody
from proxy.s3.errors import S3Error
from proxy.s3.routing import ClientScope, Route, bucket_and_key, check_scope, route
from proxy.s3.sigv4 import AuthResult, verify_request

log = logging.getLogger("proxy.access")

CredentialLookup = Callable[[str], "str | None"]
# Access key id -> what that client may touch; None (or an empty scope): everything.
ScopeLookup = Callable[[str], "ClientScope | None"]


class Service(Protocol):
    async def handle(self, request: Request) -> Reply: ...


RequestObserver = Callable[[dict[str, Any]], None]

_BODY_OPERATIONS = frozenset({"PutObject", "UploadPart", "CompleteMultipartUpload", "DeleteObjects", "CreateBucket"})


class Frontend:
    """Turns HTTP requests into service calls; the only place that knows aiohttp."""

    def __init__(
        self,
        service: Service,
        credentials: CredentialLookup,
        virtual_suffixes: Iterable[str],
        max_skew_seconds: int = 900,
        observe: RequestObserver | None = None,
        scopes: ScopeLookup | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self.service = service
        self.body_timeout = body_timeout  # no request body byte for this long: RequestTimeout
        self.credentials = credentials
        self.scopes = scopes
        self.virtual_suffixes = tuple(virtual_suffixes)
        self.max_skew_seconds = max_skew_seconds
        self.observe = observe

    async def handle(self, http: web.Request) -> web.StreamResponse:
        request_id = secrets.token_hex(8).upper()
        started = time.monotonic()
        fields: dict[str, Any] = {"request_id": request_id, "method": http.method}
        response: web.StreamResponse
        try:
            response = await self._handle(http, request_id, fields)
        except S3Error as err:
            fields["error"] = err.code
            response = await self.error_response(http, err, request_id)
        except Exception as exc:
            if _broken_framing(exc):
                # aiohttp's parser refused the body (a bad chunk): the client's fault, and the
                # exception quotes the client's bytes, so it is not logged.
                failure = S3Error("IncompleteBody", "The request body is not valid HTTP framing.", 400)
            else:
                log.exception("internal error", extra={"request_id": request_id})
                failure = S3Error("InternalError", "We encountered an internal error. Please try again.", 500)
            fields["error"] = failure.code
            response = await self.error_response(http, failure, request_id)
        fields["status"] = response.status
        fields["duration_ms"] = round((time.monotonic() - started) * 1000, 2)
        if self.observe is not None:
            self.observe(fields)
        return response

    async def expect_continue(self, http: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a bad signature before the client sends its body."""
        if http.headers.get("expect", "").lower() != "100-continue":
            return None
        raw_path, _, raw_query = http.raw_path.partition("?")
        try:
            auth = self._authenticate(http, raw_path, raw_query)
            self._check_scope(http, auth, raw_query)
        except S3Error as err:
            response = await self.error_response(http, err, secrets.token_hex(8).upper())
            response.force_close()
            return response
        await http.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def _authenticate(self, http: web.Request, raw_path: str, raw_query: str) -> AuthResult:
        return verify_request(
            method=http.method,
            raw_path=raw_path,
            query=raw_query,
            headers=http.headers,
            lookup=self.credentials,
            now=datetime.now(UTC),
            max_skew_seconds=self.max_skew_seconds,
        )

    def _scope(self, auth: AuthResult) -> ClientScope | None:
        scope = self.scopes(auth.access_key_id) if self.scopes is not None else None
        return scope if scope is not None and scope.restricted else None

    def _check_scope(self, http: web.Request, auth: AuthResult, raw_query: str) -> None:
        """Before ``100 Continue``: refuse a request outside the client's scope (routing errors
        are left to the handler, which reports them)."""
        scope = self._scope(auth)
        if scope is None:
            return
        bucket, key = bucket_and_key(http.raw_path, http.host, self.virtual_suffixes)
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        try:
            target = route(http.method, bucket, key, query, http.headers)
            source = _copy_source(target, http.headers)
        except S3Error:
            return
        check_scope(target, query, scope, source)

    async def _handle(self, http: web.Request, request_id: str, fields: dict[str, Any]) -> web.StreamResponse:
        bucket, key = bucket_and_key(http.raw_path, http.host, self.virtual_suffixes)
        fields.update(bucket=bucket, key=key)
        raw_path, _, raw_query = http.raw_path.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        target: Route | S3Error
        try:
            target = route(http.method, bucket, key, query, http.headers)
            fields["operation"] = target.operation  # logged even when the signature fails
        except S3Error as exc:
            target = exc  # reported only to an authenticated client
        auth = self._authenticate(http, raw_path, raw_query)
        if isinstance(target, S3Error):
            raise target
        scope = self._scope(auth)
        if scope is not None:
            check_scope(target, query, scope, _copy_source(target, http.headers))
        body = None
        if target.operation in _BODY_OPERATIONS or http.can_read_body:
            body = RequestBody(http.content, http.headers, auth, self.body_timeout)
        request = Request(target.operation, target.bucket, target.key, query, http.headers, body, scope)
        reply = await self.service.handle(request)
        response = await self._reply(http, reply, request_id, fields)
        if body is not None:
            fields["bytes_in"] = body.received
        return response

    async def _reply(
        self, http: web.Request, reply: Reply, request_id: str, fields: dict[str, Any]
    ) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in reply.headers.items():
            headers[name] = value  # case-insensitive: a later override replaces the upstream's
        headers["x-amz-request-id"] = request_id
        headers.setdefault("Server", "medusa-crypt-proxy")
        if isinstance(reply.body, bytes):
            body = b"" if http.method == "HEAD" else reply.body
            whole = web.Response(status=reply.status, headers=headers, body=body)
            if http.method == "HEAD" and reply.length is not None:
                whole.headers["Content-Length"] = str(reply.length)
            fields["bytes_out"] = len(body)
            return whole
        response = web.StreamResponse(status=reply.status, headers=headers)
        if reply.length is not None:
            response.content_length = reply.length
        sent = 0
        try:
            await response.prepare(http)
            async for piece in reply.body:
                await response.write(piece)
                sent += len(piece)
                del piece  # not held while the next one is made
        except Exception as exc:
            # Headers are gone: the only honest signal left is a short read.
            fields["bytes_out"] = sent
            fields["error"] = getattr(exc, "code", type(exc).__name__)
            log.error("aborting a response after %d bytes: %s", sent, exc, extra={"request_id": request_id})
            response.force_close()
            if http.transport is not None:
                http.transport.abort()
            return response
        finally:  # a client gone (cancelled) or an error: the upstream read stops now
            await close_pieces(reply.body)
        fields["bytes_out"] = sent
        await response.write_eof()
        return response

    @staticmethod
    async def error_response(http: web.Request, err: S3Error, request_id: str) -> web.StreamResponse:
        headers = {**err.headers, "x-amz-request-id": request_id, "Server": "medusa-crypt-proxy"}
        if http.method == "HEAD" or err.status == 304:
            return web.Response(status=err.status, headers=headers)
        headers["Content-Type"] = "application/xml"
        response = web.Response(status=err.status, headers=headers, body=err.to_xml(request_id))
        if err.status >= 400 and http.can_read_body and not http.content.at_eof():
            # The client's body was not read; reusing the connection would parse it as a request.
            response.force_close()
        return response


def _copy_source(target: Route, headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The (bucket, key) a copy reads, parsed exactly as the service will parse it."""
    if target.operation not in ("CopyObject", "UploadPartCopy"):
        return None
    source = parse_copy_source(headers.get("x-amz-copy-source", ""))
    return source.bucket, source.key


def _broken_framing(exc: BaseException) -> bool:
    """Whether aiohttp's HTTP parser raised ``exc`` (or what led to it) over the request's bytes."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        if isinstance(current, ClientError):
            return False  # aiohttp's client: the upstream's answer broke off, not the request
        if isinstance(current, HttpProcessingError):
            return True
        seen.append(current)
        current = current.__cause__ or current.__context__
    return False
