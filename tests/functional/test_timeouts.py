"""Every wait has a bound: the real proxy in front of an upstream that stops answering, and clients
that stop sending or reading.

``StallServer`` sits between the proxy and moto: requests a rule matches are never answered (in
one of several ways), the others are forwarded. The timeouts are short (READ, DEADLINE below), and
every failure must come back as an S3 error within its bound, free its concurrency slot, and leave
no half-used upstream connection open (``StallServer.released``). The client side uses raw sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support.servers import REGION, ProxyProcess, S3Server

# One real upstream is enough: what is tested is what the proxy does when it gets no answer.
pytestmark = pytest.mark.parametrize("upstream", ["moto"], indirect=True)

READ = 1.0  # upstream.read_timeout
DEADLINE = 2.0  # upstream.request_timeout (and long_request_timeout)
MARGIN = 1.5  # scheduling, process start-up of a shared machine
KEY = "node1/data/ks/tbl/nb-1-big-Data.db"  # an encrypted key

CLIENT_CONFIG: dict[str, Any] = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "retries": {"total_max_attempts": 1, "mode": "standard"},  # the client sees the proxy's answer, no retry
    "read_timeout": 30,
}


# ------------------------------------------------------------------------------------------
# an upstream that stops answering
# ------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """Requests matching ``method`` and substrings of the path and query get ``mode``."""

    mode: str  # hole, deaf, head, trickle (see StallServer)
    method: str | None = None
    path: str | None = None
    query: str | None = None

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.path is None or self.path in path)
            and (self.query is None or self.query in query)
        )


def _closing(head: bytes) -> bytes:
    """A message head with ``Connection: close`` instead of any Connection header."""
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


class StallServer:
    """A loopback HTTP/1.1 server in front of a real S3 server, one request per connection.

    A request no rule matches is forwarded (the answer gets ``Connection: close``). The first
    matching rule's mode decides what happens instead:

      hole     read the request and whatever follows, never answer
      deaf     answer ``100 Continue`` if asked, read ``at`` bytes of the body, then read nothing
               for ``deaf_for`` seconds (the sender's buffers fill), never answer
      head     forward, send the answer's head and ``at`` bytes of its body, then nothing more
      trickle  send a status line and headers one byte every ``every`` seconds, never ending them

    ``stalled`` counts the connections a rule took; ``released`` those the client has closed
    since (a deaf connection is only looked at again after ``deaf_for``).
    """

    def __init__(
        self, target_url: str, *, at: int = 256 << 10, deaf_for: float = READ + 1.5, every: float = 0.3
    ) -> None:
        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 80)
        self.rules: list[Rule] = []
        self.at, self.deaf_for, self.every = at, deaf_for, every
        self.stalled = self.released = self.forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, mode: str, **match: str) -> StallServer:
        self.rules = [*self.rules, Rule(mode, **match)]
        return self

    def clear(self) -> None:
        self.rules = []

    def __enter__(self) -> StallServer:
        self._thread.start()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)  # a deaf server fills up soon
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = self._run(asyncio.start_server(self._serve, sock=sock, limit=64 << 10))
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def wait_released(self, timeout: float = 10.0) -> None:
        """Every stalled connection was closed by the proxy (none is kept half-used in a pool)."""
        deadline = time.monotonic() + timeout
        while self.released < self.stalled:
            assert time.monotonic() < deadline, f"{self.stalled - self.released} stalled connection(s) still open"
            time.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            first = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = first.split(" ", 2)
            path, _, query = target.partition("?")
            rule = next((r for r in self.rules if r.matches(method, path, query)), None)
            if rule is None:
                self.forwarded += 1
                await self._forward(head, reader, writer, None)
                return
            self.stalled += 1
            try:
                await self._stall(rule.mode, head, reader, writer)
            finally:
                self.released += 1
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Read and drop everything until the client closes."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(64 << 10):
                pass

    async def _stall(self, mode: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if mode == "hole":
            await self._hold(reader)
        elif mode == "deaf":
            if b"\r\nexpect: 100-continue" in head.lower():
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            with contextlib.suppress(asyncio.IncompleteReadError):
                await reader.readexactly(self.at)
            writer.transport.pause_reading()
            await asyncio.sleep(self.deaf_for)
            writer.transport.resume_reading()
            await self._hold(reader)
        elif mode == "head":
            await self._forward(head, reader, writer, self.at)
        elif mode == "trickle":
            hold = asyncio.ensure_future(self._hold(reader))
            try:
                for byte in b"HTTP/1.1 200 OK\r\nx-trickle: " + b"a" * 10_000:
                    if hold.done():
                        break
                    writer.write(bytes([byte]))
                    await asyncio.wait([hold], timeout=self.every)
                await hold
            finally:
                hold.cancel()
        else:
            raise AssertionError(mode)

    async def _forward(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, then_stall_at: int | None
    ) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target, limit=64 << 10)

        async def upload() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(64 << 10):
                    up_w.write(data)
                    await up_w.drain()

        up_w.write(_closing(head))
        pump = asyncio.ensure_future(upload())
        try:
            answer = await up_r.readuntil(b"\r\n\r\n")
            while answer.startswith(b"HTTP/1.1 1"):  # werkzeug says 100 Continue twice
                writer.write(answer)
                answer = await up_r.readuntil(b"\r\n\r\n")
            writer.write(_closing(answer))
            budget = then_stall_at
            while budget is None or budget > 0:
                data = await up_r.read(64 << 10 if budget is None else min(budget, 64 << 10))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                if budget is not None:
                    budget -= len(data)
        finally:
            up_w.transport.abort()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if then_stall_at is not None:
            await self._hold(reader)


@pytest.fixture
def stall(upstream: S3Server) -> Iterator[StallServer]:
    with StallServer(upstream.endpoint_url) as server:
        yield server


def stalled_proxy(make_proxy: Callable[..., ProxyProcess], endpoint: str, **overrides: Any) -> ProxyProcess:
    """A proxy with short upstream timeouts in front of ``endpoint``."""
    return make_proxy(
        upstream={
            "endpoint_url": endpoint,
            "connect_timeout": 1.0,
            "read_timeout": READ,
            "request_timeout": DEADLINE,
            "long_request_timeout": DEADLINE,
        },
        **overrides,
    )


def client(proxy: ProxyProcess) -> Any:
    return proxy.client(**CLIENT_CONFIG)


def metrics(proxy: ProxyProcess) -> dict[str, float]:
    """The proxy's series, by name with labels (``timeouts_total{kind="upstream_read"}``)."""
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("medusa_crypt_proxy_"):
            name, _, value = line.rpartition(" ")
            values[name.removeprefix("medusa_crypt_proxy_")] = float(value)
    return values


def timeouts(proxy: ProxyProcess, kind: str) -> float:
    return metrics(proxy)[f'timeouts_total{{kind="{kind}"}}']


def upstream_timeouts(proxy: ProxyProcess) -> float:
    return sum(timeouts(proxy, kind) for kind in ("upstream_connect", "upstream_read", "upstream_deadline"))


def fails_within(bound: float, call: Callable[[], Any]) -> tuple[BaseException, float]:
    """Run ``call``, which must fail, within ``bound`` seconds; its exception and duration."""
    started = time.monotonic()
    with pytest.raises(Exception) as info:  # ClientError, or a cut connection
        call()
    took = time.monotonic() - started
    assert took < bound, f"took {took:.1f}s (bound {bound}s): {info.value!r}"
    return info.value, took


def service_unavailable(exc: BaseException) -> None:
    assert isinstance(exc, ClientError), repr(exc)
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503, exc.response
    if exc.operation_name != "HeadObject":  # a HEAD answer has no body, so no code
        assert exc.response["Error"]["Code"] == "ServiceUnavailable", exc.response


# ------------------------------------------------------------------------------------------
# every operation kind against a silent upstream
# ------------------------------------------------------------------------------------------

BIG = 8 << 20  # streamed upstream (over 1 MiB), and a multipart part (over 5 MiB)


def _put(c: Any, bucket: str, key: str, size: int) -> None:
    c.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))


def _upload(c: Any, bucket: str) -> str:
    return str(c.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"])


def _part(c: Any, bucket: str, upload_id: str) -> str:
    return str(
        c.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1, Body=os.urandom(6 << 20))["ETag"]
    )


def _nothing(c: Any, bucket: str) -> dict[str, Any]:
    return {}


@dataclass
class Case:
    rule: Rule  # set once setup is done
    action: Callable[[Any, str, dict[str, Any]], Any]  # (client, bucket, what setup made)
    setup: Callable[[Any, str], dict[str, Any]] = _nothing
    cold: bool = False  # the object is written by another proxy: this one has no view of it


def _with_object(c: Any, bucket: str) -> dict[str, Any]:
    _put(c, bucket, KEY, 300_000)  # a few records
    return {}


def _with_upload(c: Any, bucket: str) -> dict[str, Any]:
    return {"upload_id": _upload(c, bucket)}


def _with_part(c: Any, bucket: str) -> dict[str, Any]:
    upload_id = _upload(c, bucket)
    return {"upload_id": upload_id, "etag": _part(c, bucket, upload_id)}


def _complete(c: Any, bucket: str, made: dict[str, Any]) -> Any:
    return c.complete_multipart_upload(
        Bucket=bucket,
        Key=KEY,
        UploadId=made["upload_id"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": made["etag"]}]},
    )


CASES = {
    # the fast HEAD (read timeout), then botocore would not be asked
    "head": Case(Rule("hole", method="HEAD"), lambda c, b, m: c.head_object(Bucket=b, Key=KEY)),
    # HEAD answered, the data GET (record reader) never is
    "get": Case(
        Rule("hole", method="GET", path=KEY),
        lambda c, b, m: c.get_object(Bucket=b, Key=KEY)["Body"].read(),
        _with_object,
    ),
    "ranged_get": Case(
        Rule("hole", method="GET", path=KEY),
        lambda c, b, m: c.get_object(Bucket=b, Key=KEY, Range="bytes=70000-70999")["Body"].read(),
        _with_object,
    ),
    # HEAD answered, the trailer read (a ranged GET of a view not cached) never is
    "head_trailer": Case(
        Rule("hole", method="GET", path=KEY), lambda c, b, m: c.head_object(Bucket=b, Key=KEY), cold=True
    ),
    "list": Case(Rule("hole", method="GET", query="list-type"), lambda c, b, m: c.list_objects_v2(Bucket=b)),
    # botocore only: its read timeouts and retries, all within request_timeout
    "list_uploads": Case(
        Rule("hole", method="GET", query="uploads"), lambda c, b, m: c.list_multipart_uploads(Bucket=b)
    ),
    "small_put": Case(Rule("hole", method="PUT"), lambda c, b, m: _put(c, b, KEY, 1000)),
    # streamed: the upstream never says 100 Continue; or says it, then stops reading
    "large_put": Case(Rule("hole", method="PUT"), lambda c, b, m: _put(c, b, KEY, BIG)),
    "large_put_deaf": Case(Rule("deaf", method="PUT"), lambda c, b, m: _put(c, b, KEY, BIG)),
    "create_upload": Case(Rule("hole", method="POST", query="uploads"), lambda c, b, m: _upload(c, b)),
    "upload_part": Case(
        Rule("deaf", method="PUT", query="partNumber"), lambda c, b, m: _part(c, b, m["upload_id"]), _with_upload
    ),
    # Complete: the trailer part goes through, CompleteMultipartUpload (long_request_timeout) does not
    "complete": Case(Rule("hole", method="POST", query="uploadId"), _complete, _with_part),
    "trailer_part": Case(Rule("hole", method="PUT", query="partNumber"), _complete, _with_part),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_every_operation_fails_in_time_when_the_upstream_stops_answering(
    make_proxy: Callable[..., ProxyProcess], stall: StallServer, bucket: str, case: str
) -> None:
    spec = CASES[case]
    proxy = stalled_proxy(make_proxy, stall.url)
    c = client(proxy)
    if spec.cold:
        _put(client(make_proxy()), bucket, KEY, 300_000)  # same key file, a cache of its own
    made = spec.setup(c, bucket)
    before = upstream_timeouts(proxy)
    stall.rules = [spec.rule]
    error, _ = fails_within(DEADLINE + MARGIN, lambda: spec.action(c, bucket, made))
    # A client still sending a large body may see the connection cut rather than the 503.
    if isinstance(error, ClientError) or not case.startswith(("large_put", "upload_part")):
        service_unavailable(error)
    assert stall.stalled >= 1
    stall.wait_released()
    assert upstream_timeouts(proxy) > before
    assert metrics(proxy)["requests_in_flight"] == 0


def test_a_body_that_stops_midway_cuts_the_answer(
    make_proxy: Callable[..., ProxyProcess], stall: StallServer, bucket: str
) -> None:
    # The upstream sends its head and part of the body, then nothing: the client already has a
    # 200, so the only honest signal left is a short read, within read_timeout.
    proxy = stalled_proxy(make_proxy, stall.url)
    c = client(proxy)
    _put(c, bucket, KEY, 3 << 20)
    stall.add("head", method="GET", path=KEY)
    before = timeouts(proxy, "upstream_read")
    fails_within(READ + MARGIN, lambda: c.get_object(Bucket=bucket, Key=KEY)["Body"].read())
    stall.wait_released()
    assert timeouts(proxy, "upstream_read") == before + 1
    stall.clear()
    assert len(c.get_object(Bucket=bucket, Key=KEY)["Body"].read()) == 3 << 20  # the pool is sound


def test_a_trickling_upstream_is_cut_by_the_deadline(
    make_proxy: Callable[..., ProxyProcess], stall: StallServer, bucket: str
) -> None:
    # One byte every 0.3 s never trips a 1 s read timeout: request_timeout ends it.
    proxy = stalled_proxy(make_proxy, stall.url)
    stall.add("trickle", method="GET", query="list-type")
    error, took = fails_within(DEADLINE + MARGIN, lambda: client(proxy).list_objects_v2(Bucket=bucket))
    service_unavailable(error)
    assert took >= DEADLINE - 0.1
    assert timeouts(proxy, "upstream_deadline") == 1
    stall.wait_released()


def test_an_upstream_that_does_not_accept_is_a_connect_timeout(
    make_proxy: Callable[..., ProxyProcess], bucket: str
) -> None:
    # A listening socket whose accept queue is full drops SYNs: connecting never finishes.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        host, port = listener.getsockname()
        proxy = stalled_proxy(make_proxy, f"http://{host}:{port}")
        error, _ = fails_within(DEADLINE + MARGIN, lambda: client(proxy).head_object(Bucket=bucket, Key=KEY))
        service_unavailable(error)
        assert timeouts(proxy, "upstream_connect") >= 1


def test_stalled_requests_do_not_hold_the_concurrency_slots(
    make_proxy: Callable[..., ProxyProcess], stall: StallServer, bucket: str
) -> None:
    proxy = stalled_proxy(make_proxy, stall.url, limits={"max_concurrent_requests": 4})
    c = client(proxy)
    stall.add("hole", path="/stalled-")
    keys = [f"node1/data/stalled-{i}.db" for i in range(8)]

    def head(key: str) -> int:
        try:
            c.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
        return 200

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(head, keys))
    assert time.monotonic() - started < DEADLINE + MARGIN
    assert statuses == [503] * 8  # 503 ServiceUnavailable after the timeout, or 503 SlowDown at once
    stall.wait_released()
    # The proxy still serves: every slot came back.
    c.put_object(Bucket=bucket, Key="node1/data/ok.db", Body=b"fine")
    assert c.get_object(Bucket=bucket, Key="node1/data/ok.db")["Body"].read() == b"fine"
    values = metrics(proxy)
    assert values["requests_in_flight"] == 0
    assert values['timeouts_total{kind="upstream_read"}'] >= 1


# ------------------------------------------------------------------------------------------
# the client side
# ------------------------------------------------------------------------------------------


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the peer closes ``sock`` (reading and dropping what comes); fails past ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionError):
        while sock.recv(65536):
            pass
    return time.monotonic() - started


def signed_head(proxy: ProxyProcess, method: str, path: str, headers: dict[str, str]) -> bytes:
    """A SigV4-signed request head (the body is not signed: UNSIGNED-PAYLOAD)."""
    headers = {"x-amz-content-sha256": "UNSIGNED-PAYLOAD", **headers}
    request = AWSRequest(method, proxy.endpoint_url + path, headers=headers)
    S3SigV4Auth(Credentials(proxy.access_key, proxy.secret_key), "s3", REGION).add_auth(request)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {proxy.host}:{proxy.port}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_idle_connections_are_closed(make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy(limits={"keepalive_timeout": 1.0, "header_timeout": 5.0})
    with socket.create_connection((proxy.host, proxy.port)) as sock:  # never sends a byte
        took = closed_after(sock, 1.0 + MARGIN)
    assert 0.8 < took < 1.0 + MARGIN
    with socket.create_connection((proxy.host, proxy.port)) as sock:  # idle after one request
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_after(sock, 1.0 + MARGIN) < 1.0 + MARGIN
    assert timeouts(proxy, "client_idle") == 2


def test_a_request_head_that_never_ends_is_closed(make_proxy: Callable[..., ProxyProcess]) -> None:
    # Trickling header lines (slowloris) does not extend header_timeout, and it is shorter than
    # the keep-alive timeout that would otherwise close the connection.
    proxy = make_proxy(limits={"keepalive_timeout": 6.0, "header_timeout": 1.0})
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):
            while time.monotonic() - started < 1.0 + MARGIN:
                sock.sendall(b"X-Slow: yes\r\n")
                time.sleep(0.2)
        took = closed_after(sock, 1.0 + MARGIN)
        assert time.monotonic() - started < 1.0 + MARGIN + 0.5
        assert took < 1.0 + MARGIN
    # The next request on a kept-alive connection gets its own header_timeout.
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.8)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        closed_after(sock, 1.0 + MARGIN)
        assert 0.8 < time.monotonic() - started < 1.0 + MARGIN
    assert timeouts(proxy, "client_header") == 2


@pytest.mark.parametrize("length", [1000, BIG], ids=["small", "streamed"])
def test_a_put_whose_body_stalls_is_a_request_timeout(
    make_proxy: Callable[..., ProxyProcess], bucket: str, raw_client: Any, length: int
) -> None:
    proxy = make_proxy(limits={"body_timeout": 1.0})
    path = f"/{bucket}/{KEY}"
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(signed_head(proxy, "PUT", path, {"Content-Length": str(length)}))
        sent = min(length // 2, 2 << 20)
        sock.sendall(os.urandom(sent))  # then nothing
        started = time.monotonic()
        sock.settimeout(1.0 + MARGIN)
        answer = sock.recv(65536)
        assert time.monotonic() - started < 1.0 + MARGIN
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"<Code>RequestTimeout</Code>" in answer
    assert b"not read from or written to within the timeout period" in answer
    with pytest.raises(ClientError):
        raw_client.head_object(Bucket=bucket, Key=KEY)
    assert raw_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert timeouts(proxy, "client_body") == 1
    assert metrics(proxy)["requests_in_flight"] == 0


def test_a_bad_chunk_in_a_body_being_read_is_answered_at_once(
    make_proxy: Callable[..., ProxyProcess], bucket: str
) -> None:
    # aiohttp's C parser (the default) queues the error instead of failing the body being read;
    # the proxy hands it over, so the answer does not wait for body_timeout.
    proxy = make_proxy(limits={"body_timeout": 30.0})
    head = signed_head(proxy, "POST", f"/{bucket}?delete=", {"Transfer-Encoding": "chunked"})
    with socket.create_connection((proxy.host, proxy.port)) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the handler is reading the body when the bad chunk arrives
        sock.sendall(b"5\r\n<Dele\r\nzz-not-a-size\r\n\r\n")
        started = time.monotonic()
        sock.settimeout(5)
        answer = sock.recv(65536)
        assert time.monotonic() - started < 2
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert b"<Code>IncompleteBody</Code>" in answer
        assert closed_after(sock, 5) < 5  # the rest of the bytes cannot be parsed: closed
    assert proxy.running


def test_a_client_that_stops_reading_its_answer_is_cut(make_proxy: Callable[..., ProxyProcess], bucket: str) -> None:
    proxy = make_proxy(limits={"body_timeout": 1.0})
    size = 32 << 20
    client(proxy).put_object(Bucket=bucket, Key=KEY, Body=os.urandom(size))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        sock.connect((proxy.host, proxy.port))
        sock.sendall(signed_head(proxy, "GET", f"/{bucket}/{KEY}", {}))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(1.0 + MARGIN)  # read nothing more
        got = 0
        sock.settimeout(5)
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(1 << 20):
                got += len(data)
    assert got < size
    values = metrics(proxy)
    assert values['timeouts_total{kind="client_send"}'] == 1
    assert values["requests_in_flight"] == 0
