"""The direct HTTP stack: the fast paths' requests to the bucket, without botocore or aiohttp.

One small HTTP/1.1 client on a pool of kept-alive connections, for the requests the proxy makes
most: HEAD, GET (a data GET, a trailer, a LIST page) and PUT of a small body held in memory.
Only what those need is here: a response with a Content-Length (after a HEAD, no body at all),
or, for a body read whole, a chunked one (``rclone serve s3`` sends its LIST pages so). Anything
else (a body streamed in pieces that is chunked, an unframed body, a head that is not HTTP/1.x, a
dropped connection before the head) returns None, and the caller asks botocore, which maps
errors and retries.

Data GETs are read from the socket straight into the buffers the decryptor takes: aiohttp hands
a body over in the pieces the socket gave (64-256 KiB each, a new ``bytes`` per read), and
reading one 1 MiB record joined them (the event loop copied every byte once more, and the record
framer again). Here an :class:`asyncio.BufferedProtocol` receives the body directly into a
record-sized buffer that is reused.

Every wait is bounded: connecting by ``connect_timeout``; the response head, and the body, by
``read_timeout`` of silence (no byte at all, however long the whole takes: the caller bounds the
whole call). A wait that runs out raises :class:`RawTimeout` and closes the connection. A
connection goes back to the pool only when its whole response was read and its request sent; an
error answer (non-2xx) is drained when its body came with the head, else its connection is closed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from yarl import URL

MAX_HEAD = 64 << 10  # a response head larger than this is not S3's
_MAX_CHUNK_LINE = 4 << 10  # a chunk-size line (with extensions) or a trailer line
_SCRATCH = 64 << 10

Body = bytes | bytearray | memoryview


class BodyError(Exception):
    """The body ended or failed before Content-Length bytes arrived."""


class _TooLarge(BodyError):
    """A chunked body grew past the limit it was read with."""


class RawTimeout(TimeoutError):
    """A wait on the upstream ran out; ``kind`` is ``upstream_connect`` or ``upstream_read``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]  # lowercase names, repeated headers joined with ", "
    length: int  # body bytes that follow (none after a HEAD, whose Content-Length is the object's)
    keep_alive: bool  # the connection may carry another request after this body
    chunked: bool = False  # the body is chunked (``length`` is 0): only ``fetch`` reads it


def parse_head(raw: bytes, bodiless: bool = False) -> Head | None:
    """Status and headers of a response head (without the blank line); None if it is not one
    this client can read (not HTTP/1.x; with a body, neither a Content-Length nor HTTP/1.1's
    chunked coding alone). ``bodiless``: the answer to a HEAD, which has no body whatever its
    headers say."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_text = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not status_text.isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if bodiless:
        return Head(int(status_text), headers, 0, keep_alive)
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.lower() != "chunked" or version != "HTTP/1.1" or "content-length" in headers:
            return None
        return Head(int(status_text), headers, 0, keep_alive, chunked=True)
    length = headers.get("content-length", "")
    if not length.isdigit():
        return None
    return Head(int(status_text), headers, int(length), keep_alive)


class _Dechunker:
    """A chunked body (RFC 9112, 7.1) decoded as it arrives into one bytearray; trailers dropped."""

    def __init__(self, limit: int | None) -> None:
        self.body = bytearray()
        self.done = False
        self.extra = False  # bytes came after the body: the connection cannot be trusted again
        self._limit = limit
        self._pending = bytearray()  # received, not decoded yet
        self._left = 0  # data bytes of the current chunk still to come
        self._state = "size"  # size, data, data-end, trailer

    def feed(self, data: Body) -> bool:
        """Take received bytes; whether the body is complete. BodyError on bad framing,
        _TooLarge past the limit."""
        if self.done:
            self.extra = self.extra or bool(data)
            return True
        pending = self._pending
        pending += data
        pos = 0
        while not self.done:
            if self._state == "data":
                take = min(self._left, len(pending) - pos)
                self.body += memoryview(pending)[pos : pos + take]
                pos += take
                self._left -= take
                if self._left:
                    break
                self._state = "data-end"
            elif self._state == "data-end":
                if len(pending) - pos < 2:
                    break
                if pending[pos : pos + 2] != b"\r\n":
                    raise BodyError("bad chunked body: no CRLF after a chunk")
                pos += 2
                self._state = "size"
            else:
                end = pending.find(b"\r\n", pos)
                if end < 0:
                    if len(pending) - pos > _MAX_CHUNK_LINE:
                        raise BodyError("bad chunked body: a line too long")
                    break
                self._line(bytes(pending[pos:end]))
                pos = end + 2
        del pending[:pos]
        self.extra = self.done and bool(pending)
        return self.done

    def _line(self, line: bytes) -> None:
        """A chunk-size line, or a trailer line (the empty one ends the body)."""
        if self._state == "trailer":
            self.done = not line
            return
        size = line.partition(b";")[0].strip()
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise BodyError(f"bad chunked body: chunk size {size[:20]!r}")
        self._left = int(size, 16)
        if self._limit is not None and len(self.body) + self._left > self._limit:
            raise _TooLarge(f"chunked body larger than {self._limit} bytes")
        self._state = "data" if self._left else "trailer"


class _Connection(asyncio.BufferedProtocol):
    """One kept-alive connection: a request, then its body read into the caller's buffers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress = 0.0  # loop time of the last sign of life: bytes received, or taken to send
        self._timer: asyncio.TimerHandle | None = None
        self._scratch = bytearray(_SCRATCH)
        self._head = bytearray()
        self._head_waiter: asyncio.Future[Head | None] | None = None
        self._bodiless = False
        self._leftover = memoryview(b"")  # body bytes that came with the head
        self._target: memoryview | None = None
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._dechunker: _Dechunker | None = None
        self.remaining = 0  # body bytes still on the wire
        self._chunked = False  # a chunked body not read to its end is on the wire
        self._keep_alive = False
        self.closed = False

    # --- protocol callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is None:
            return memoryview(self._scratch)
        view = self._target[self._filled :]
        return view[: self.remaining] if len(view) > self.remaining else view

    def buffer_updated(self, nbytes: int) -> None:
        self._progress = self._loop.time() if self._loop is not None else 0.0
        if self._dechunker is not None:
            self._chunk_received(self._dechunker, nbytes)
            return
        if self._target is None:
            self._head += self._scratch[:nbytes]
            self._head_received()
            return
        self._filled += nbytes
        self.remaining -= nbytes
        if self._filled == len(self._target) or self.remaining == 0:
            self._pause()
            _resolve(self._waiter, None)

    def resume_writing(self) -> None:
        # The kernel took what was waiting to be sent: the upstream is reading the request.
        self._progress = self._loop.time() if self._loop is not None else 0.0

    def eof_received(self) -> bool:
        return False  # close: S3 never half-closes a response it still owes

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = BodyError(f"upstream connection lost: {exc}" if exc else "upstream closed the connection")
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(None)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def _head_received(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self.close()
                _resolve(self._head_waiter, None)
            return
        head = parse_head(bytes(self._head[:end]), self._bodiless)
        self._leftover = memoryview(bytes(self._head[end + 4 :]))
        self._head = bytearray()
        if head is None or (len(self._leftover) > head.length and not head.chunked):
            self.close()
            _resolve(self._head_waiter, None)
            return
        self.remaining = 0 if head.chunked else head.length - len(self._leftover)
        self._chunked = head.chunked
        self._keep_alive = head.keep_alive
        self._pause()
        _resolve(self._head_waiter, head)

    def _chunk_received(self, dechunker: _Dechunker, nbytes: int) -> None:
        try:
            done = dechunker.feed(memoryview(self._scratch)[:nbytes])
        except BodyError as exc:
            self.close()
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)
            return
        if done:
            self._pause()
            _resolve(self._waiter, None)

    def _pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    # --- what the pool calls -----------------------------------------------------------------

    async def request(self, raw: bytes, body: Body, bodiless: bool, timeout: float) -> Head | None:
        """Send a request head and ``body``; the response head, or None when there is none this
        client can read. RawTimeout (and the connection closed) after ``timeout`` of silence."""
        if self.closed or self.transport is None:
            return None
        self._bodiless = bodiless
        self._head_waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        if body:
            self.transport.write(body)
        if self.transport.is_reading() is False:
            self.transport.resume_reading()
        try:
            await self._within(waiter, timeout, "no answer from the upstream")
        finally:
            self._head_waiter = None
        return waiter.result()

    async def readinto(self, buf: bytearray, timeout: float) -> int:
        """Fill ``buf`` with the next body bytes; fewer only at the end of the body.

        RawTimeout (and the connection closed) once no byte has come for ``timeout`` seconds."""
        target = memoryview(buf)
        taken = min(len(self._leftover), len(target))
        if taken:
            target[:taken] = self._leftover[:taken]
            self._leftover = self._leftover[taken:]
        if taken == len(target) or self.remaining == 0:
            return taken
        if self.closed or self.transport is None:
            raise BodyError("upstream connection lost")
        self._target, self._filled = target, taken
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.resume_reading()
        try:
            await self._within(waiter, timeout, "no body byte from the upstream")
        finally:
            self._target, self._waiter = None, None
        return self._filled

    async def read_chunked(self, limit: int | None, timeout: float) -> bytearray:
        """The whole chunked body; BodyError if it is malformed or cut, _TooLarge past ``limit``,
        RawTimeout (and the connection closed) once no byte has come for ``timeout`` seconds."""
        dechunker = _Dechunker(limit)
        leftover, self._leftover = self._leftover, memoryview(b"")
        try:
            done = dechunker.feed(leftover)
        except BodyError:
            self.close()
            raise
        if not done:
            if self.closed or self.transport is None:
                raise BodyError("upstream connection lost")
            self._dechunker = dechunker
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            self.transport.resume_reading()
            try:
                await self._within(waiter, timeout, "no body byte from the upstream")
            finally:
                self._dechunker, self._waiter = None, None
        self._chunked = False
        if dechunker.extra:
            self._keep_alive = False
        return dechunker.body

    async def _within(self, waiter: asyncio.Future[Any], timeout: float, what: str) -> None:
        """Wait for ``waiter`` until the upstream has been silent for ``timeout`` seconds.

        One timer per wait, moved on only when it fires early: received bytes just note the time."""
        loop = asyncio.get_running_loop()
        self._progress = loop.time()
        self._timer = loop.call_at(self._progress + timeout, self._check_progress, waiter, timeout, what)
        try:
            await waiter
        except BaseException:
            self.close()  # cancelled or timed out midway: the connection is in an unknown state
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _check_progress(self, waiter: asyncio.Future[Any], timeout: float, what: str) -> None:
        self._timer = None
        if waiter.done() or self._loop is None:
            return
        due = self._progress + timeout
        if self._loop.time() < due:  # bytes moved meanwhile: look again when the newest is that old
            self._timer = self._loop.call_at(due, self._check_progress, waiter, timeout, what)
            return
        waiter.set_exception(RawTimeout("upstream_read", f"{what} for {timeout:g}s"))
        self.close()

    def skip_buffered_body(self) -> None:
        """Drop the body if all of it came with the head (a small error document), so the
        connection can carry another request; a body still on the wire stays (and the
        connection is closed when it is released)."""
        if self.remaining == 0:
            self._leftover = memoryview(b"")

    @property
    def has_more(self) -> bool:
        return bool(self.remaining or self._leftover)

    @property
    def finished(self) -> bool:
        """Nothing of this exchange is left on the wire either way: the connection is reusable."""
        return (
            self.remaining == 0
            and not self._chunked
            and not self._leftover
            and not self.closed
            and self._keep_alive
            and self.transport is not None
            and self.transport.get_write_buffer_size() == 0
        )

    def close(self) -> None:
        """Close now: a request body still unsent is dropped, not flushed to an upstream that may
        never read it (``Transport.close`` would hold the socket open until it did)."""
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


class ConnectionPool:
    """Requests on a pool of kept-alive connections to one endpoint.

    The pool keeps at most ``max_idle`` connections idle (the upstream's ``max_pool_connections``,
    the budget botocore's pools have too). It does not bound the connections in use: each
    request holds one for its own duration only, on behalf of a client request, and the server
    bounds those (``limits.max_concurrent_requests``; a listing resolves its misses 64 at a time
    within one). A queue here would only move the wait from the client's request to ours, and a
    count could not see a body the caller stops reading without closing it.
    """

    def __init__(
        self, endpoint: URL, *, verify_tls: bool, connect_timeout: float, read_timeout: float, max_idle: int
    ) -> None:
        self.endpoint = endpoint
        self._ssl: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            self._ssl = ssl.create_default_context()
            if not verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        host = endpoint.raw_host or ""
        self._host = host if endpoint.is_default_port() else f"{host}:{endpoint.port}"
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    # --- requests ----------------------------------------------------------------------------

    async def head(self, target: str, headers: Mapping[str, str]) -> Head | None:
        """HEAD ``target`` (encoded path and query): the answer's head whatever its status (it
        has no body to read, so its connection is reused at once), else None."""
        exchanged = await self._exchange("HEAD", target, headers, b"", bodiless=True)
        if exchanged is None:
            return None
        head, conn = exchanged
        self.release(conn)
        return head

    async def open(
        self, target: str, headers: Mapping[str, str], *, method: str = "GET", body: Body = b""
    ) -> tuple[Head, _Connection] | None:
        """A request whose 2xx answer's body the caller reads (``pieces``, ``read_body``): its
        head and connection. Any other status returns None (the error body drained if it came
        with the head, else the connection closed); so does an answer this client cannot read."""
        return await self._open(method, target, headers, body, chunked=False)

    async def _open(
        self, method: str, target: str, headers: Mapping[str, str], body: Body, *, chunked: bool
    ) -> tuple[Head, _Connection] | None:
        exchanged = await self._exchange(method, target, headers, body, bodiless=False)
        if exchanged is None:
            return None
        head, conn = exchanged
        if not 200 <= head.status < 300:
            conn.skip_buffered_body()  # the error document: botocore will fetch and map it
            self.release(conn)
            return None
        if head.chunked and not chunked:
            conn.close()
            return None
        return exchanged

    async def fetch(
        self,
        target: str,
        headers: Mapping[str, str],
        *,
        method: str = "GET",
        body: Body = b"",
        limit: int | None = None,
    ) -> tuple[Head, bytearray] | None:
        """A request and its 2xx answer read whole (a LIST page, a trailer, a PUT's answer),
        with a Content-Length or chunked; None as ``open``, and for a body over ``limit`` bytes
        (its connection closed)."""
        opened = await self._open(method, target, headers, body, chunked=True)
        if opened is None:
            return None
        head, conn = opened
        if not head.chunked:
            if limit is not None and head.length > limit:
                conn.close()
                return None
            return head, await self.read_body(conn, head.length)
        try:
            data = await conn.read_chunked(limit, self.read_timeout)
        except _TooLarge:
            return None
        finally:
            self.release(conn)
        return head, data

    def _request_head(self, method: str, target: str, headers: Mapping[str, str], body: Body) -> bytes | None:
        """The request's head; None if it cannot be sent as given (a line break in a header would
        split it, a character outside latin-1 cannot be written)."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host}", *(f"{k}: {v}" for k, v in headers.items())]
        if body or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(lines)
        if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
            return None
        try:
            return (text + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            return None

    async def _exchange(
        self, method: str, target: str, headers: Mapping[str, str], body: Body, *, bodiless: bool
    ) -> tuple[Head, _Connection] | None:
        """Send one request; the answer's head (any status) and its connection, else None.

        A kept-alive connection the server has meanwhile closed is replaced once (the request
        was not answered: HEAD, GET and PUT can be sent again)."""
        raw = self._request_head(method, target, headers, body)
        if raw is None:
            return None
        for attempt in range(2):
            conn = self._idle_connection() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                head = await conn.request(raw, body, bodiless, self.read_timeout)
            except BaseException:
                conn.close()
                raise
            if head is None:
                conn.close()
                if reused:
                    continue
                return None
            return head, conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection, self.endpoint.host or "", self.endpoint.port or 0, ssl=self._ssl
                )
        except TimeoutError:
            raise RawTimeout(
                "upstream_connect", f"no connection to the upstream within {self._connect_timeout:g}s"
            ) from None
        return conn

    # --- bodies ------------------------------------------------------------------------------

    async def pieces(self, conn: _Connection, piece_size: int) -> AsyncIterator[memoryview]:
        """The body in ``piece_size`` pieces, all read into one buffer: a piece is valid until the
        next is asked for. (The kernel's socket buffer keeps the upstream sending meanwhile.)"""
        buffer = bytearray(piece_size)
        try:
            while conn.has_more:
                n = await conn.readinto(buffer, self.read_timeout)
                if n == 0:
                    break
                yield memoryview(buffer)[:n]
        finally:
            self.release(conn)

    async def read_body(self, conn: _Connection, length: int) -> bytearray:
        """The whole body of an opened response (a small one: a trailer, a whole small object)."""
        body = bytearray(length)
        try:
            got = await conn.readinto(body, self.read_timeout) if length else 0
        finally:
            self.release(conn)
        if got != length:
            raise BodyError(f"body ended after {got} of {length} bytes")
        return body

    # --- the pool ----------------------------------------------------------------------------

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: _Connection) -> None:
        """Back to the pool if nothing of its exchange is left on the wire, else closed."""
        if conn.finished and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
