"""Streamed request bodies to the bucket and the silence that bounds them (``Upstream.put``,
``Upstream.upload_part``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any


class Silence:
    """Cancels a task once the upstream has kept it waiting ``timeout`` seconds in one go.

    ``upstream()`` starts the upstream's turn (connecting, 100 Continue, taking a piece of the
    body, answering), ``source()`` the source's (the client's body, the encryptor), whose waits do
    not count. One timer per call, moved on only when it fires early: a turn costs two attribute
    stores. ``fired`` tells the cancellation it caused from any other.
    """

    __slots__ = ("fired", "handle", "loop", "since", "task", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.fired = False
        self.since: float | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.upstream()

    def upstream(self) -> None:
        self.since = now = self.loop.time()
        if self.handle is None:
            self.handle = self.loop.call_at(now + self.timeout, self._check)

    def source(self) -> None:
        self.since = None

    def _check(self) -> None:
        self.handle = None
        if self.since is None:
            return  # the source's turn: the next upstream turn arms the timer again
        due = self.since + self.timeout
        if self.loop.time() < due:
            self.handle = self.loop.call_at(due, self._check)
        elif self.task is not None and not self.task.done():
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        self.since = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def first_piece_ahead(source: AsyncIterable[bytes | bytearray]) -> AsyncIterable[bytes | bytearray]:
    """``source`` with its first piece already taken: the request is sent only once there is one.

    A request whose head went out and whose body then failed before its first byte reaches the
    bucket as a complete exchange when the connection closes: SeaweedFS 4.48 answers 200 to a
    PUT cut off after its head and stores an empty object (a body cut off later is refused,
    499). Waiting for the first piece keeps such a failure (a bad first chunk signature, a
    client gone before sending anything) from reaching the bucket at all; the source's own
    exception is raised here, before any request. The wait is the source's, not the upstream's.
    """
    iterator = aiter(source)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        return _pieces((), iterator)
    return _pieces((first,), iterator)


async def _pieces(
    head: tuple[bytes | bytearray, ...], rest: AsyncIterator[bytes | bytearray]
) -> AsyncIterator[bytes | bytearray]:
    for piece in head:
        yield piece
    del head
    async for piece in rest:
        yield piece


class StreamingBody:
    """A request body botocore accepts (it has ``read``) but aiohttp streams (``__aiter__``).

    botocore's parameter validation wants a file-like object; aiohttp sends any async iterable
    chunk by chunk. An error raised by the source is kept in ``error`` because botocore replaces
    it with UnseekableStreamError when it tries to rewind for a retry. With ``silence``, the time
    aiohttp takes to send each piece (and, after the last, to get the answer) is the upstream's.
    """

    def __init__(self, source: AsyncIterable[bytes | bytearray], silence: Silence | None = None) -> None:
        self._source = source
        self._silence = silence
        self.error: BaseException | None = None
        self.sent = 0

    def read(self, *_: Any) -> bytes:  # pragma: no cover - botocore only checks it exists
        raise RuntimeError("StreamingBody is read asynchronously")

    async def _iterate(self) -> AsyncIterator[memoryview]:
        silence = self._silence
        try:
            if silence is not None:
                silence.source()
            async for piece in self._source:
                self.sent += len(piece)
                if silence is not None:
                    silence.upstream()
                # A memoryview: aiohttp slices each piece to the declared length, which copies
                # a bytearray (1 MiB per record) but not a view.
                yield memoryview(piece)
                del piece
                if silence is not None:
                    silence.source()
            if silence is not None:
                silence.upstream()  # the answer
        except BaseException as exc:
            self.error = exc
            raise

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._iterate()
