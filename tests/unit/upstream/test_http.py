"""proxy.upstream.http against a loopback server that answers with exactly the bytes each test writes.

The real upstreams (moto, rclone) are covered through the proxy in test_objects and against
botocore in test_upstream_fast; these are the faults they do not produce on demand: short
bodies, chunked bodies, dropped keep-alives, error answers, silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from yarl import URL

from proxy.upstream.http import BodyError, ConnectionPool, RawTimeout, parse_head

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


# The override is deprecated in pytest-asyncio 1.5 in favour of a conftest-wide hook; it is kept
# module-local here on purpose.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the proxy runs uvloop, whose transports differ from asyncio's."""
    import uvloop

    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


class RawServer:
    """Calls ``handler(reader, writer, n)`` for the n-th request head of any connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                await self.handler(reader, writer, len(self.requests))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[..., Awaitable[tuple[RawServer, ConnectionPool]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []
    readers: list[ConnectionPool] = []

    async def start(handler: Handler, read_timeout: float = 5) -> tuple[RawServer, ConnectionPool]:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        reader = ConnectionPool(
            URL(f"http://127.0.0.1:{port}"), verify_tls=True, connect_timeout=5, read_timeout=read_timeout, max_idle=4
        )
        readers.append(reader)
        return raw, reader

    yield start
    for reader in readers:
        reader.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def ok(body: bytes, extra: str = "") -> bytes:
    return f'HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nETag: "abc"\r\n{extra}\r\n'.encode() + body


async def read_all(reader: ConnectionPool, piece: int, target: str = "/b/k") -> tuple[list[int], bytes] | None:
    opened = await reader.open(target, {"x-test": "1"})
    if opened is None:
        return None
    _, conn = opened
    sizes, data = [], bytearray()
    async for view in reader.pieces(conn, piece):
        sizes.append(len(view))
        data += view
    return sizes, bytes(data)


async def test_body_in_pieces_on_one_kept_alive_connection(serve: Serve) -> None:
    body = bytes(range(256)) * 100  # 25,600 bytes

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(body))
        await writer.drain()

    raw, reader = await serve(handler)
    for _ in range(3):
        assert await read_all(reader, 10_000) == ([10_000, 10_000, 5_600], body)
    assert raw.connections == 1
    assert raw.requests[0].startswith(b"GET /b/k HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"x-test: 1\r\n" in raw.requests[0]


async def test_head_and_body_in_one_segment_and_empty_body(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(b"tiny" if n == 1 else b""))
        await writer.drain()

    _, reader = await serve(handler)
    assert await read_all(reader, 1 << 20) == ([4], b"tiny")
    assert await read_all(reader, 1 << 20) == ([], b"")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 5\r\n\r\nerror",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ndata\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
        b"garbage\r\n\r\n",
    ],
    ids=["error-status", "chunked", "no-length", "not-http"],
)
async def test_what_it_cannot_stream_returns_none(answer: bytes, serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer)
        await writer.drain()
        writer.close()

    _, reader = await serve(handler)
    assert await read_all(reader, 1024) is None


async def test_short_body_raises(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 3000)
        await writer.drain()
        writer.close()

    _, reader = await serve(handler)
    with pytest.raises(BodyError):
        await read_all(reader, 1024)
    assert reader._idle == []


async def test_closed_keep_alive_is_replaced(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(b"body"))
        await writer.drain()
        writer.close()  # the server drops every connection after one response

    raw, reader = await serve(handler)
    assert await read_all(reader, 1024) == ([4], b"body")
    await asyncio.sleep(0.05)
    assert await read_all(reader, 1024) == ([4], b"body")
    assert raw.connections == 2


async def test_stopping_early_closes_the_connection(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(b"y" * 50_000))
        await writer.drain()

    raw, reader = await serve(handler)
    opened = await reader.open("/b/k", {})
    assert opened is not None
    pieces = reader.pieces(opened[1], 1000)
    assert len(await anext(pieces)) == 1000
    await pieces.aclose()
    assert reader._idle == []  # half-read: never reused
    assert await read_all(reader, 20_000) == ([20_000, 20_000, 10_000], b"y" * 50_000)
    assert raw.connections == 2


def test_parse_head() -> None:
    head = parse_head(b'HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nX-A: 1\r\nx-a: 2\r\nETag: "e"')
    assert head is not None
    assert (head.status, head.length, head.headers["x-a"], head.headers["etag"]) == (206, 10, "1, 2", '"e"')
    assert head.keep_alive
    assert parse_head(b"HTTP/1.1 200 OK\r\nbroken header line") is None
    for closing in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Close",
        b"HTTP/1.0 200 OK\r\nContent-Length: 1",
    ):
        head = parse_head(closing)
        assert head is not None and not head.keep_alive


async def test_connection_close_is_not_reused(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(b"body", "Connection: close\r\n"))
        await writer.drain()  # and keeps the socket open, as moto's server does

    raw, reader = await serve(handler)
    for _ in range(2):
        assert await read_all(reader, 1024) == ([4], b"body")
    assert raw.connections == 2


async def test_read_body_whole_then_reuse(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(b"trailer-%d" % n) if n < 3 else b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort")
        await writer.drain()
        if n == 3:
            writer.close()

    raw, reader = await serve(handler)
    for n in (1, 2):
        opened = await reader.open("/b/k", {"range": "bytes=-4096"})
        assert opened is not None
        assert await reader.read_body(opened[1], opened[0].length) == b"trailer-%d" % n
    assert raw.connections == 1
    opened = await reader.open("/b/k", {})
    assert opened is not None
    with pytest.raises(BodyError):
        await reader.read_body(opened[1], opened[0].length)
    assert reader._idle == []


# --- HEAD, PUT, whole bodies, error answers, silence -------------------------------------------


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def test_head_reads_no_body_and_reuses_the_connection(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 3:  # a missing key: an error status, still no body
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 250\r\nContent-Type: application/xml\r\n\r\n")
        else:  # the object's length, and (for the second) a transfer coding a HEAD answer may name
            coding = "Transfer-Encoding: chunked\r\n" if n == 2 else ""
            writer.write(f'HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nETag: "e{n}"\r\n{coding}\r\n'.encode())
        await writer.drain()

    raw, pool = await serve(handler)
    for n in (1, 2):
        head = await pool.head("/b/k", {"x-test": "1"})
        assert head is not None
        assert (head.status, head.length, head.headers["content-length"], head.headers["etag"]) == (
            200,
            0,
            "1048576",
            f'"e{n}"',
        )
    missing = await pool.head("/b/absent", {})
    assert missing is not None and missing.status == 404
    assert raw.connections == 1  # three answers, one connection: no body was waited for
    assert len(pool._idle) == 1
    assert raw.requests[0].startswith(b"HEAD /b/k HTTP/1.1\r\n")
    assert b"content-length" not in raw.requests[0].lower()


async def test_put_sends_the_body_exactly_and_reads_the_answer(serve: Serve) -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        received.append(await reader.readexactly(content_length(raw.requests[n - 1])))
        writer.write(b'HTTP/1.1 200 OK\r\nETag: "put-%d"\r\nContent-Length: 0\r\n\r\n' % n)
        await writer.drain()

    raw, pool = await serve(handler)
    bodies = [b"small body", bytes(range(256)) * 12_000, b""]  # 10 B, 3 MB (more than a socket buffer), empty
    for n, body in enumerate(bodies, 1):
        got = await pool.fetch("/b/k", {"x-amz-meta-a": "1"}, method="PUT", body=body)
        assert got is not None
        head, answer = got
        assert (head.status, head.headers["etag"], answer) == (200, f'"put-{n}"', b"")
    assert received == bodies
    assert raw.connections == 1
    assert raw.requests[0].startswith(b"PUT /b/k HTTP/1.1\r\n")
    assert b"Content-Length: 10\r\n" in raw.requests[0] and b"x-amz-meta-a: 1\r\n" in raw.requests[0]
    assert b"Content-Length: 0\r\n" in raw.requests[2]


async def test_an_answer_before_the_whole_body_was_sent_is_not_reused(serve: Serve) -> None:
    """A server that answers a PUT before it read the body: what is still to send would be read
    as the next request's bytes, so the connection is closed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()  # without reading the body
        else:
            writer.write(ok(b"next"))
            await writer.drain()

    raw, pool = await serve(handler)
    got = await pool.fetch("/b/k", {}, method="PUT", body=bytes(32 << 20))  # more than the socket buffers
    assert got is not None and got[0].status == 200
    assert pool._idle == []
    assert await read_all(pool, 1024) == ([4], b"next")
    assert raw.connections == 2


async def test_fetch_reads_a_whole_body_within_its_limit(serve: Serve) -> None:
    page = b"<ListBucketResult>" + b"x" * 200_000 + b"</ListBucketResult>"

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(page))
        await writer.drain()

    raw, pool = await serve(handler)
    got = await pool.fetch("/b?list-type=2", {})
    assert got is not None and got[1] == page
    assert await pool.fetch("/b?list-type=2", {}, limit=len(page) - 1) is None  # larger than asked: closed
    assert pool._idle == []
    got = await pool.fetch("/b?list-type=2", {}, limit=len(page))
    assert got is not None and got[1] == page
    assert raw.connections == 2


async def test_an_error_body_that_came_with_the_head_is_drained_and_the_connection_reused(serve: Serve) -> None:
    error = b"<Error><Code>PreconditionFailed</Code></Error>"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readexactly(content_length(raw.requests[n - 1]))
        if n % 2:
            writer.write(b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error))
        else:
            writer.write(ok(b"after-%d" % n))
        await writer.drain()

    raw, pool = await serve(handler)
    assert await read_all(pool, 1024) is None  # GET
    assert await read_all(pool, 1024) == ([7], b"after-2")  # its own answer, not the error's bytes
    assert await pool.fetch("/b/k", {}, method="PUT", body=b"data") is None
    got = await pool.fetch("/b/k", {}, method="PUT", body=b"data")
    assert got is not None and got[1] == b"after-4"
    assert raw.connections == 1


async def test_an_error_body_still_on_the_wire_closes_the_connection(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 10\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"0123456789")  # too late: nobody reads it
        else:
            writer.write(ok(b"fine"))
        await writer.drain()

    raw, pool = await serve(handler)
    assert await pool.fetch("/b?list-type=2", {}) is None
    assert pool._idle == []  # never pooled with unread bytes
    got = await pool.fetch("/b?list-type=2", {})
    assert got is not None and got[1] == b"fine"
    assert raw.connections == 2


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# chunk extensions, an upper-case size, a zero-padded one, trailers: all of RFC 9112 7.1 a server may send
CHUNKED_BODY = b"4;name=v\r\n<Lis\r\nA\r\ntBucketRes\r\n0007\r\nult/>..\r\n0\r\nX-Trailer: 1\r\n\r\n"
DECODED = b"<ListBucketResult/>.."


async def test_a_chunked_answer_is_read_whole_but_never_streamed(serve: Serve) -> None:
    """``rclone serve s3`` sends a LIST page of more than 4 KiB chunked: ``fetch`` decodes it, in
    whatever pieces it arrives; a body streamed into record buffers (``open``) must have a length."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readexactly(content_length(raw.requests[n - 1]))
        if n == 2:  # a byte at a time
            for byte in CHUNKED + CHUNKED_BODY:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(CHUNKED + CHUNKED_BODY)
            await writer.drain()

    raw, pool = await serve(handler)
    for method in ("GET", "GET", "PUT"):
        got = await pool.fetch("/b?list-type=2", {}, method=method, body=b"x" if method == "PUT" else b"")
        assert got is not None
        assert (got[0].status, got[0].chunked, got[1]) == (200, True, DECODED)
    assert raw.connections == 1  # each body was read to its end: the connection carried them all
    assert await read_all(pool, 1024) is None  # a chunked body cannot be read into records
    assert pool._idle == []


async def test_a_large_chunked_body(serve: Serve) -> None:
    page = bytes(range(256)) * 4000  # 1 MB, in chunks of 10,000 bytes

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(CHUNKED)
        for i in range(0, len(page), 10_000):
            piece = page[i : i + 10_000]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    raw, pool = await serve(handler)
    for _ in range(2):
        got = await pool.fetch("/b?list-type=2", {})
        assert got is not None and got[1] == page
    assert await pool.fetch("/b?list-type=2", {}, limit=len(page) - 1) is None  # past the limit: closed
    assert pool._idle == []
    got = await pool.fetch("/b?list-type=2", {}, limit=len(page))
    assert got is not None and got[1] == page
    assert raw.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"zz\r\ndata\r\n0\r\n\r\n",  # not a size
        b"4\r\ndataXX0\r\n\r\n",  # no CRLF after the data
        b"-4\r\ndata\r\n0\r\n\r\n",
        b"4\r\nda",  # cut short
    ],
    ids=["bad-size", "no-crlf", "negative", "cut"],
)
async def test_a_bad_chunked_body_raises_and_closes(answer: bytes, serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(CHUNKED + answer)
        await writer.drain()
        writer.close()

    _, pool = await serve(handler)
    with pytest.raises(BodyError):
        await pool.fetch("/b?list-type=2", {})
    assert pool._idle == []


async def test_bytes_after_a_chunked_body_end_the_connection(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(CHUNKED + CHUNKED_BODY + (b"HTTP/1.1 200 OK\r\n" if n == 1 else b""))
        await writer.drain()

    raw, pool = await serve(handler)
    for _ in range(2):
        got = await pool.fetch("/b?list-type=2", {})
        assert got is not None and got[1] == DECODED
    assert raw.connections == 2


async def test_silence_in_a_chunked_body_is_a_read_timeout(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(CHUNKED + b"4\r\ndata\r\n")
        await writer.drain()
        await reader.read()

    _, pool = await serve(handler, read_timeout=0.3)
    with pytest.raises(RawTimeout):
        await pool.fetch("/b?list-type=2", {})
    assert pool._idle == []


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nConnection: close",
    ],
    ids=["other-coding", "both-framings", "http-1.0", "unframed"],
)
def test_framings_it_does_not_read(head: bytes) -> None:
    assert parse_head(head) is None
    assert parse_head(head, bodiless=True) is not None  # the answer to a HEAD has no body to frame


async def test_a_header_that_cannot_be_sent_returns_none(serve: Serve) -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(ok(b""))
        await writer.drain()

    raw, pool = await serve(handler)
    for value in ("a\r\nx-injected: 1", "a\nb", "caf\u00e9 \u2615"):
        assert await pool.fetch("/b/k", {"x-amz-meta-v": value}, method="PUT", body=b"x") is None
    assert raw.requests == []


async def test_silence_before_the_head_is_a_read_timeout_and_closes(serve: Serve) -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.read()  # never answers; returns when the client closes
        closed.set()

    _, pool = await serve(handler, read_timeout=0.3)
    for call in (
        pool.head("/b/k", {}),
        pool.open("/b/k", {}),
        pool.fetch("/b/k", {}, method="PUT", body=b"x" * 100_000),
    ):
        closed.clear()
        started = asyncio.get_running_loop().time()
        with pytest.raises(RawTimeout) as timeout:
            await call
        assert timeout.value.kind == "upstream_read"
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        await asyncio.wait_for(closed.wait(), 2)  # the connection was closed, not pooled
    assert pool._idle == []


async def test_a_timed_out_put_is_closed_at_once_with_its_body_unsent(serve: Serve) -> None:
    """An upstream that reads nothing of a PUT: after the read timeout the socket is closed, not
    held open to flush the rest of the body."""
    connections: list[Any] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await asyncio.sleep(3)  # reads nothing meanwhile

    _, pool = await serve(handler, read_timeout=0.3)
    connect = pool._connect

    async def recording() -> Any:
        conn = await connect()
        lost = conn.connection_lost
        conn.connection_lost = lambda exc: (connections.append(conn), lost(exc))
        return conn

    pool._connect = recording  # type: ignore[method-assign]
    with pytest.raises(RawTimeout):
        await pool.fetch("/b/k", {}, method="PUT", body=bytes(32 << 20))
    await asyncio.sleep(0.2)
    assert len(connections) == 1  # the transport let go of the socket


async def test_a_trickling_head_is_not_silence(serve: Serve) -> None:
    """Bytes keep coming, so the read timeout (silence) does not fire: the caller's own bound
    on the whole call does, and the connection is closed."""
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        try:
            for byte in b"HTTP/1.1 200 OK\r\nx-trickle: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            closed.set()

    _, pool = await serve(handler, read_timeout=0.3)
    with pytest.raises(TimeoutError) as timeout:
        async with asyncio.timeout(1.0):
            await pool.head("/b/k", {})
    assert not isinstance(timeout.value, RawTimeout)
    await asyncio.wait_for(closed.wait(), 5)
    assert pool._idle == []


async def test_a_body_that_stops_is_a_read_timeout_and_closes(serve: Serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30_000)
        await writer.drain()
        await reader.read()

    raw, pool = await serve(handler, read_timeout=0.3)
    opened = await pool.open("/b/k", {})
    assert opened is not None
    with pytest.raises(RawTimeout):
        await pool.read_body(opened[1], opened[0].length)
    assert opened[1].closed and pool._idle == []
    with pytest.raises(RawTimeout):
        await read_all(pool, 10_000)
    assert raw.connections == 2


async def test_an_endpoint_that_does_not_accept_is_a_connect_timeout() -> None:
    import socket

    # A listening socket whose accept queue is full drops SYNs: connecting never finishes.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        host, port = listener.getsockname()
        pool = ConnectionPool(
            URL(f"http://{host}:{port}"), verify_tls=True, connect_timeout=0.3, read_timeout=5, max_idle=4
        )
        with pytest.raises(RawTimeout) as timeout:
            await pool.head("/b/k", {})
        assert timeout.value.kind == "upstream_connect"
        pool.close()
