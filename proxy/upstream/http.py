"""Object GETs read from the socket straight into the buffers the decryptor takes.

aiohttp hands a response body over in the pieces the socket gave (64-256 KiB each, a new
``bytes`` per read), and reading one 1 MiB record joins them: on a GET the event loop copied
every byte once more, and the record framer copied it again. Here an
:class:`asyncio.BufferedProtocol` receives the body directly into a record-sized buffer that is
reused, on kept-alive connections. Only what this needs of HTTP/1.1 is here: a GET, a response
with a Content-Length. Anything else (an error status, a chunked body, a dropped connection
before the head) returns None, and the caller asks botocore, which maps errors and retries.

Every wait is bounded: connecting by ``connect_timeout``, the response head by ``read_timeout``,
and the body by ``read_timeout`` of silence (no byte at all, however long the whole body takes).
A wait that runs out raises :class:`RawTimeout` and closes the connection: a connection is put
back in the pool only after its whole response was read.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from yarl import URL

MAX_HEAD = 64 << 10  # a response head larger than this is not S3's
_SCRATCH = 64 << 10


class BodyError(Exception):
    """The body ended or failed before Content-Length bytes arrived."""


class RawTimeout(TimeoutError):
    """A wait on the upstream ran out; ``kind`` is ``upstream_connect`` or ``upstream_read``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]  # lowercase names, repeated headers joined with ", "
    length: int
    keep_alive: bool  # the connection may carry another request after this body


def parse_head(raw: bytes) -> Head | None:
    """Status and headers of a response head (without the blank line); None if it is not one
    this reader can stream (no Content-Length, a transfer coding, not HTTP/1.x)."""
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
    length = headers.get("content-length", "")
    if "transfer-encoding" in headers or not length.isdigit():
        return None
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return Head(int(status_text), headers, int(length), keep_alive)


class _Connection(asyncio.BufferedProtocol):
    """One kept-alive connection: a request, then its body read into the caller's buffers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress = 0.0  # loop time of the last body bytes received
        self._timer: asyncio.TimerHandle | None = None
        self._scratch = bytearray(_SCRATCH)
        self._head = bytearray()
        self._head_waiter: asyncio.Future[Head | None] | None = None
        self._leftover = memoryview(b"")  # body bytes that came with the head
        self._target: memoryview | None = None
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self.remaining = 0  # body bytes still on the wire
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
        if self._target is None:
            self._head += self._scratch[:nbytes]
            self._head_received()
            return
        self._filled += nbytes
        self.remaining -= nbytes
        self._progress = self._loop.time() if self._loop is not None else 0.0
        if self._filled == len(self._target) or self.remaining == 0:
            self._pause()
            _resolve(self._waiter, None)

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
            return
        head = parse_head(bytes(self._head[:end]))
        self._leftover = memoryview(bytes(self._head[end + 4 :]))
        self._head = bytearray()
        if head is None or len(self._leftover) > head.length:
            self.close()
            _resolve(self._head_waiter, None)
            return
        self.remaining = head.length - len(self._leftover)
        self._keep_alive = head.keep_alive
        self._pause()
        _resolve(self._head_waiter, head)

    def _pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    # --- what the reader calls ---------------------------------------------------------------

    async def request(self, raw: bytes) -> Head | None:
        """Send a request head; its response head, or None when there is none to stream."""
        assert self.transport is not None
        self._head_waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        if self.transport.is_reading() is False:
            self.transport.resume_reading()
        return await self._head_waiter

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
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._progress = loop.time()
        self.transport.resume_reading()
        # One timer per call, moved on only when it fires early: received bytes just note the time.
        self._timer = loop.call_at(self._progress + timeout, self._check_progress, waiter, timeout)
        try:
            await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._target, self._waiter = None, None
        return self._filled

    def _check_progress(self, waiter: asyncio.Future[None], timeout: float) -> None:
        self._timer = None
        if waiter.done() or self._loop is None:
            return
        due = self._progress + timeout
        if self._loop.time() < due:  # bytes came meanwhile: look again when the newest is that old
            self._timer = self._loop.call_at(due, self._check_progress, waiter, timeout)
            return
        waiter.set_exception(RawTimeout("upstream_read", f"no body byte from the upstream for {timeout:g}s"))
        self.close()

    @property
    def has_more(self) -> bool:
        return bool(self.remaining or self._leftover)

    @property
    def finished(self) -> bool:
        return self.remaining == 0 and not self._leftover and not self.closed and self._keep_alive

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


def _resolve(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)


class RecordReader:
    """GETs on a small pool of kept-alive connections to one endpoint."""

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
        self._connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

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

    async def open(self, target: str, headers: Mapping[str, str]) -> tuple[Head, _Connection] | None:
        """GET ``target`` (encoded path and query); the 2xx head and its connection, else None.

        A kept-alive connection the server has meanwhile closed is replaced once.
        """
        host = self.endpoint.raw_host or ""
        if not self.endpoint.is_default_port():
            host = f"{host}:{self.endpoint.port}"
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in range(2):
            conn = self._idle_connection() if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            try:
                async with asyncio.timeout(self.read_timeout):
                    head = await conn.request(raw)
            except TimeoutError:
                conn.close()
                raise RawTimeout(
                    "upstream_read", f"no answer from the upstream within {self.read_timeout:g}s"
                ) from None
            except BaseException:
                conn.close()
                raise
            if head is None:
                conn.close()
                if reused:
                    continue
                return None
            if not 200 <= head.status < 300:
                conn.close()  # the body is an error document: botocore will fetch and map it
                return None
            return head, conn
        return None

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

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: _Connection) -> None:
        if conn.finished and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
