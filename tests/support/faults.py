"""A fault-injecting HTTP/1.1 forwarder between the proxy and a real S3 server (moto, rclone).

``FaultInjector(target_url)`` listens on a free loopback port (``.url``; give it to the proxy as
``upstream.endpoint_url``) and forwards every request to ``target_url`` as it reads it: request and
response bodies (Content-Length, chunked, or up to the close) are streamed piece by piece, never
held whole, both directions at once (so ``Expect: 100-continue`` works: the server's ``100
Continue`` goes back to the client, which then sends its body); connections are kept alive, one
upstream connection per client connection.  The Host header is forwarded unchanged, so SigV4
signatures made for the injector's address still verify upstream.

Faults, per request.  ``add(kind, method=, path=, query=, nth=, times=, seconds=, at=)`` matches a
method, substrings of the path and of the query string; ``nth`` fires on the nth matching request
only, ``times`` is how often the rule fires (None: forever).  ``chaos(rate, kinds, seed=)`` faults
a seeded random share of the requests no rule took.  Kinds:

  reset_before  reset the connection (RST) once the request head is read: nothing reaches upstream
  reset_after   forward, read the whole answer, then reset: the upstream did the work, no answer
  stall         forward, then hold the answer for ``seconds`` before its head is sent
  stall_body    send the head and ``at`` body bytes (default half), hold ``seconds``, then the rest
  error500      answer 500 InternalError (S3 XML) without forwarding
  error503      answer 503 SlowDown (S3 XML) without forwarding
  truncate      send the head and ``at`` body bytes (default half), then close the connection
  delay         sleep ``seconds`` before every body piece forwarded, both directions

``clear()`` removes every rule and the chaos.  ``add`` returns the ``Fault``, whose ``matched`` and
``fired`` count what it saw and did.  It records what it did: ``events`` (one ``Event`` per request,
appended when its head arrives: method, path, query, action "forward" or the fault's kind, the status
the client was sent), ``faulted(kind=None)`` (the events it faulted), ``connections`` (accepted so
far) and ``open_connections``.  It runs its own event loop in a thread; use it as a context manager:

    with FaultInjector(upstream.endpoint_url) as injector:
        injector.add("reset_before", method="PUT", query="partNumber=1")  # the first such request
        injector.chaos(0.1, ["reset_before", "error503"], seed=7)        # 1 in 10 of the others
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

KINDS = frozenset({"reset_before", "reset_after", "stall", "stall_body", "error500", "error503", "truncate", "delay"})
PIECE = 64 << 10
MAX_HEAD = 64 << 10
ERRORS = {
    "error500": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "error503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass
class Fault:
    """One rule; ``matched`` and ``fired`` count what it saw and did."""

    kind: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    nth: int | None = None
    times: int | None = 1
    seconds: float = 0.0
    at: int | None = None
    matched: int = 0
    fired: int = 0

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            (self.method is None or self.method.upper() == method)
            and (self.path is None or self.path in path)
            and (self.query is None or self.query in query)
        )

    def take(self, method: str, path: str, query: str) -> bool:
        if not self.matches(method, path, query):
            return False
        self.matched += 1
        if (self.nth is not None and self.matched != self.nth) or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class Event:
    """One request, recorded when its head arrived."""

    seq: int
    conn: int  # the client connection it came on
    method: str
    path: str
    query: str
    action: str  # "forward" or a fault kind
    status: int | None = None  # the status the client was sent (None: no answer)


def _lines(head: bytes) -> tuple[str, dict[str, str]]:
    """First line and lowercase headers (repeats joined) of a message head."""
    first, *rest = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for line in rest:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return first, headers


def _framing(headers: dict[str, str]) -> int | str | None:
    """A response body's framing: its length, "chunked", or None (up to the close)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked"
    length = headers.get("content-length", "").strip()
    return int(length) if length.isdigit() else None


def _request_framing(headers: dict[str, str]) -> int | str:
    """A request body's framing: without a length or chunked coding it has none."""
    return _framing(headers) or 0


async def _pieces(reader: asyncio.StreamReader, framing: int | str | None) -> AsyncIterator[bytes]:
    """The body's raw bytes (chunk framing included) as they arrive; IncompleteReadError if cut."""
    if isinstance(framing, int):
        remaining = framing
        while remaining:
            piece = await reader.read(min(PIECE, remaining))
            if not piece:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(piece)
            yield piece
    elif framing == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            yield line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:  # trailers, up to the blank line
                while line != b"\r\n":
                    line = await reader.readuntil(b"\r\n")
                    yield line
                return
            async for piece in _pieces(reader, size):
                yield piece
            yield await reader.readexactly(2)
    else:
        while piece := await reader.read(PIECE):
            yield piece


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or rebooted server does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _send_body(
    client_r: asyncio.StreamReader, up_w: asyncio.StreamWriter, framing: int | str, delay: float
) -> None:
    async for piece in _pieces(client_r, framing):
        if delay:
            await asyncio.sleep(delay)
        up_w.write(piece)
        await up_w.drain()


def _abort_on_failure(task: asyncio.Task[None], up_w: asyncio.StreamWriter) -> None:
    """A client body that broke off must not leave us waiting for an answer that never comes."""
    if not task.cancelled() and task.exception() is not None:
        up_w.transport.abort()


def _without_connection_header(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(ln for ln in lines if not ln.lower().startswith(b"connection:"))


class _Link:
    """One client connection and the upstream connection that serves it (opened when needed)."""

    def __init__(
        self, conn: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, target: tuple[str, int]
    ) -> None:
        self.conn, self.client_r, self.client_w, self.target = conn, client_r, client_w, target
        self._up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.close_upstream_after = False

    async def upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._up is None or self._up[0].at_eof():
            self.drop_upstream()
            self._up = await asyncio.open_connection(*self.target, limit=MAX_HEAD)
            self.close_upstream_after = False
        return self._up

    def drop_upstream(self) -> None:
        if self._up is not None:
            self._up[1].transport.abort()
            self._up = None


class FaultInjector:
    """The forwarder (see the module doc): ``url`` in front, ``target_url`` behind."""

    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.host, self.port = "127.0.0.1", 0
        self.events: list[Event] = []
        self.rules: list[Fault] = []
        self.connections = 0
        self.open_connections = 0
        self._chaos: tuple[float, Sequence[str], random.Random, dict[str, object]] | None = None
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- rules ---------------------------------------------------------------------------

    def add(self, kind: str, **match: object) -> Fault:
        """Add a rule (see the module doc); rules are tried in order, the first that fires wins."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind, **match)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(fault)
        return fault

    def chaos(self, rate: float, kinds: Sequence[str], *, seed: int = 0, **options: object) -> None:
        """Fault ``rate`` of the requests no rule took, with a kind drawn from ``kinds`` (seeded);
        ``options`` are the faults' ``seconds``/``at``."""
        if not set(kinds) <= KINDS:
            raise ValueError(f"unknown faults {sorted(set(kinds) - KINDS)}")
        with self._lock:
            self._chaos = (rate, list(kinds), random.Random(seed), options)

    def clear(self) -> None:
        """No more faults: every request is forwarded."""
        with self._lock:
            self.rules.clear()
            self._chaos = None

    def faulted(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.action != "forward" and kind in (None, e.action)]

    def _pick(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.take(method, path, query):
                    return rule
            if self._chaos is not None:
                rate, kinds, rng, options = self._chaos
                if rng.random() < rate:
                    return Fault(rng.choice(list(kinds)), **options)  # type: ignore[arg-type]
        return None

    def _record(self, conn: int, method: str, path: str, query: str, action: str) -> Event:
        with self._lock:
            event = Event(next(self._seq), conn, method, path, query, action)
            self.events.append(event)
        return event

    # --- one client connection -----------------------------------------------------------

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open_connections += 1
        link = _Link(self.connections, client_r, client_w, self.target)
        try:
            while True:
                try:
                    head = await client_r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if not await self._exchange(link, head):
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # stop(): ours to end (asyncio.streams logs a cancelled handler)
            pass
        finally:
            self.open_connections -= 1
            link.drop_upstream()
            client_w.transport.abort()
            self._tasks.discard(task)

    async def _exchange(self, link: _Link, head: bytes) -> bool:
        """One request and its answer; whether the client connection may carry another."""
        line, headers = _lines(head)
        method, target, *_ = [*line.split(" "), "", ""]
        path, _, query = target.partition("?")
        fault = self._pick(method, path, query)
        event = self._record(link.conn, method, path, query, fault.kind if fault is not None else "forward")
        if event.action == "reset_before":
            _reset(link.client_w)
            return False
        if event.action in ERRORS:
            return await self._refuse(link, event, headers)
        return await self._forward(link, head, event, headers, fault)

    async def _refuse(self, link: _Link, event: Event, headers: dict[str, str]) -> bool:
        """Answer an S3 error without forwarding: a server that is down or throttling."""
        status, reason, code, message = ERRORS[event.action]
        framing = _request_framing(headers)
        expect = headers.get("expect", "").lower() == "100-continue"
        if framing != 0 and not expect:  # read the body first, like a server that refuses it after
            async for _ in _pieces(link.client_r, framing):
                pass
        close = framing != 0 and expect  # the body was never sent: the connection cannot carry more
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
            f"</Message><RequestId>FAULT{link.conn}</RequestId></Error>"
        ).encode()
        link.client_w.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: "
            f"{len(body)}\r\nConnection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
            + (b"" if event.method == "HEAD" else body)
        )
        event.status = status
        await link.client_w.drain()
        return not close

    async def _forward(
        self, link: _Link, head: bytes, event: Event, headers: dict[str, str], fault: Fault | None
    ) -> bool:
        """Forward one request (its body streamed by a task of its own) and its answer, with the
        fault applied; whether the client connection may carry another request."""
        kind = fault.kind if fault is not None else "forward"
        seconds, at = (fault.seconds, fault.at) if fault is not None else (0.0, None)
        client_r, client_w = link.client_r, link.client_w
        up_r, up_w = await link.upstream()
        up_w.write(head)
        framing = _request_framing(headers)
        sender: asyncio.Task[None] | None = None
        if framing != 0:
            sender = asyncio.create_task(_send_body(client_r, up_w, framing, seconds if kind == "delay" else 0))
            sender.add_done_callback(lambda task: _abort_on_failure(task, up_w))
        try:
            while True:  # interim answers (100 Continue) go straight back
                reply = await up_r.readuntil(b"\r\n\r\n")
                status_line, reply_headers = _lines(reply)
                status = int(status_line.split(" ")[1])
                if not 100 <= status < 200:
                    break
                client_w.write(reply)
                await client_w.drain()
            answer = 0 if event.method == "HEAD" or status in (204, 304) else _framing(reply_headers)
            if not status_line.startswith("HTTP/1.1") or "close" in reply_headers.get("connection", "").lower():
                link.close_upstream_after = True
            # The client's connection lives on whatever the upstream does with its own (moto closes
            # every one), as S3's do: only an answer that ends at the close ends it.
            keep = answer is not None and "close" not in headers.get("connection", "").lower()
            if keep:
                reply = _without_connection_header(reply)
            if kind == "reset_after":
                async for _ in _pieces(up_r, answer):
                    pass
                _reset(client_w)
                return False
            if kind == "stall":
                await asyncio.sleep(seconds)
            client_w.write(reply)
            event.status = status
            if at is None:
                at = answer // 2 if isinstance(answer, int) else 1024
            sent = 0
            async for piece in _pieces(up_r, answer):
                if kind == "delay":
                    await asyncio.sleep(seconds)
                if kind in ("truncate", "stall_body") and sent <= at < sent + len(piece):
                    client_w.write(piece[: at - sent])
                    await client_w.drain()
                    if kind == "truncate":
                        client_w.close()
                        return False
                    await asyncio.sleep(seconds)
                    piece, sent, kind = piece[at - sent :], at, "forward"
                client_w.write(piece)
                sent += len(piece)
                await client_w.drain()
            if sender is not None:
                await sender
            if link.close_upstream_after:
                link.drop_upstream()
            return keep
        finally:
            if sender is not None and not sender.done():
                sender.cancel()  # the upstream answered before it took the whole body
                link.drop_upstream()
                client_w.transport.abort()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FaultInjector:
        loop = self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, self.host, 0, limit=MAX_HEAD))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fault-injector", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fault injector did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or self._thread is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = self._server = self._thread = None

    def __enter__(self) -> FaultInjector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
