"""A client's request body as verified plaintext pieces.

Every check (payload SHA-256, aws-chunked signatures and framing, Content-MD5, x-amz-checksum-*)
can only finish at the end of the body, but bodies are streamed upstream. So the last piece is held
back until every check has passed: if one fails, the upstream request stays short of its
Content-Length and the upstream never stores the object.

A client that stops sending its body for ``timeout`` seconds gets S3's ``RequestTimeout`` (400):
only the time spent waiting for the client counts, not the time the consumer (the upstream)
takes to accept what was read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from proxy.s3.checksums import BodyChecksums
from proxy.s3.chunked import AwsChunkedDecoder
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import AuthResult, PayloadMode, verify_payload_sha256

# Hashing (payload SHA-256, Content-MD5, x-amz-checksum-*) of pieces this large runs in a thread
# (hashlib releases the GIL) while the consumer works on the same piece: the event loop only
# moves bytes. Smaller pieces are not worth the hop.
INLINE_HASH = 64 << 10
# Body pieces are read at most this large (the socket reads, ``read_bufsize`` in proxy.daemon.server, are
# as large): up to three pieces of every request are alive at once (the one being hashed and held
# back, the one being encrypted, the reader's buffer), times every part in flight. readany()
# would join whatever the reader buffered, up to its high-water mark and more.
PIECE = 128 << 10
_pool: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(2, thread_name_prefix="hash")
    return _pool


REQUEST_TIMEOUT = (
    "Your socket connection to the server was not read from or written to within the timeout "
    "period. Idle connections will be closed."
)


class ByteSource(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _ReadTimer:
    """Cancels the task waiting in a read once no byte has come for ``timeout`` seconds.

    One timer per body, moved only when it fires early: a read costs two attribute stores, not a
    timer handle (there are 8,000 reads in a GiB). ``fired`` tells the cancellation it caused
    from any other.
    """

    __slots__ = ("fired", "handle", "loop", "since", "task", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.since: float | None = None  # when the pending read began; None: not reading
        self.task: asyncio.Task[object] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.fired = False

    def start(self) -> None:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        self.since = now = loop.time()
        self.task = asyncio.current_task()  # the reader may be another task (aiohttp's body writer)
        if self.handle is None:
            self.handle = loop.call_at(now + self.timeout, self._check)

    def _check(self) -> None:
        self.handle = None
        if self.since is None or self.loop is None:
            return  # not reading now: the next read arms the timer again
        due = self.since + self.timeout
        if self.loop.time() < due:
            self.handle = self.loop.call_at(due, self._check)
            return
        if self.task is not None and not self.task.done():
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        self.since = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class RequestBody:
    """Iterate once over the decoded, verified payload; ``length`` is the decoded length.

    With ``timeout``, a read that gets no byte for that long fails with ``RequestTimeout``.
    """

    def __init__(
        self, source: ByteSource, headers: Mapping[str, str], auth: AuthResult, timeout: float | None = None
    ) -> None:
        self._source = source
        self._timer = _ReadTimer(timeout) if timeout else None
        self._auth = auth
        self._consumed = False
        self._decoder: AwsChunkedDecoder | None = None
        mode = auth.payload_mode
        self._sha256 = hashlib.sha256() if mode == PayloadMode.SHA256 else None
        trailer_names = [t.strip().lower() for t in headers.get("x-amz-trailer", "").split(",") if t.strip()]
        if mode.streaming:
            decoded = headers.get("x-amz-decoded-content-length")
            self.length: int | None = _parse_length(decoded) if decoded is not None else None
            self._decoder = AwsChunkedDecoder(auth, mode, self.length, trailer_names)
        else:
            raw = headers.get("content-length")
            self.length = _parse_length(raw) if raw is not None else None
            if self.length is None and headers.get("transfer-encoding", "").lower() != "chunked":
                self.length = 0
        # MD5 only for Content-MD5: the ETag is computed by the consumer (or the upstream).
        self.checksums = BodyChecksums.from_headers(headers, trailer_names, md5=False)
        self.received = 0

    async def _read(self) -> bytes:
        timer = self._timer
        if timer is None:
            return await self._source.read(PIECE)
        timer.start()
        try:
            return await self._source.read(PIECE)
        except asyncio.CancelledError:
            if timer.fired and timer.task is not None and timer.task.uncancel() == 0:
                timer.close()
                raise S3Error("RequestTimeout", REQUEST_TIMEOUT, 400) from None
            raise
        finally:
            timer.since = None

    async def _decoded(self) -> AsyncIterator[bytes]:
        try:
            while True:
                data = await self._read()
                if not data:
                    break
                if self._decoder is None:
                    yield data
                else:
                    for piece in self._decoder.feed(data):
                        yield bytes(piece)
        finally:
            if self._timer is not None:
                self._timer.close()

    def _hash(self, piece: bytes) -> None:
        # A signed payload (PayloadMode.SHA256) is never aws-chunked: its pieces are the wire bytes.
        if self._sha256 is not None:
            self._sha256.update(piece)
        self.checksums.update(piece)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._consumed:
            raise RuntimeError("a request body can be read only once")
        self._consumed = True
        hashing = self._sha256 is not None or self.checksums.hashing
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None  # the previous piece's hashing, in order
        held: bytes | None = None
        try:
            async for piece in self._decoded():
                if not piece:
                    continue
                self.received += len(piece)
                if self.length is not None and self.received > self.length:
                    raise S3Error("IncompleteBody", "The request body is longer than its declared length", 400)
                if pending is not None:
                    await pending
                    pending = None
                if not hashing or len(piece) < INLINE_HASH:
                    self._hash(piece)
                else:
                    pending = loop.run_in_executor(_hash_pool(), self._hash, piece)
                if held is not None:
                    yield held
                held = piece
            if pending is not None:
                await pending
                pending = None
        finally:
            if pending is not None:  # the consumer stopped early: let the thread finish quietly
                pending.cancel()
        self._finish()
        if held is not None:
            yield held

    def _finish(self) -> None:
        if self.length is not None and self.received != self.length:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header",
                400,
            )
        trailers: dict[str, str] = {}
        if self._decoder is not None:
            trailers = self._decoder.finish()
        if self._sha256 is not None:
            verify_payload_sha256(self._auth.payload_sha256 or "", self._sha256.digest())
        self.checksums.verify(trailers)

    async def read_all(self, limit: int) -> bytes:
        """The whole body, verified; S3's EntityTooLarge past ``limit`` bytes."""
        if self.length is not None and self.length > limit:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
        parts: list[bytes] = []
        size = 0
        async for piece in self:
            size += len(piece)
            if size > limit:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
            parts.append(piece)
        return b"".join(parts)


def _parse_length(value: str) -> int:
    try:
        length = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"invalid length {value!r}", 400) from None
    if length < 0:
        raise S3Error("InvalidArgument", f"invalid length {value!r}", 400)
    return length
