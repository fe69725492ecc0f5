"""proxy.upstream.http against a loopback server that answers with exactly the bytes each test writes.

The real upstreams (moto, rclone) are covered through the proxy in test_objects; these are the
faults they do not produce on demand: short bodies, chunked bodies, dropped keep-alives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from yarl import URL

from proxy.upstream.http import BodyError, RecordReader, parse_head

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


Serve = Callable[[Handler], Awaitable[tuple[RawServer, RecordReader]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []
    readers: list[RecordReader] = []

    async def start(handler: Handler) -> tuple[RawServer, RecordReader]:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        reader = RecordReader(
            URL(f"http://127.0.0.1:{port}"), verify_tls=True, connect_timeout=5, read_timeout=5, max_idle=4
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


async def read_all(reader: RecordReader, piece: int, target: str = "/b/k") -> tuple[list[int], bytes] | None:
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
