"""Faults between the proxy and the bucket: resets, S3 5xx answers, stalls, cut bodies.

The proxy's ``upstream.endpoint_url`` points at a ``tests.support.faults.FaultInjector`` in front of moto or
``rclone serve s3`` (the ``upstream`` fixture), with short timeouts (2 s).  Clients are boto3 with
Medusa's settings.  What must hold:

- one fault on any call (HEAD, GET, ranged GET, LIST, PUT small and 6 MiB, every multipart step) is
  retried, by the proxy or by the client, and the bytes read back are the bytes written;
- a body cut short never reaches the client as wrong bytes (a retried success or a short read), and
  the metrics show it;
- faults that persist give the client a clean S3 error (5xx, XML, no traceback in the proxy's log),
  and nothing partial or corrupt is stored: every object in the bucket reads back whole, or is absent;
- faults leak no file descriptors, connections or memory in the proxy.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from proxy.format.constants import CHUNK_SIZE, RECORD_OVERHEAD
from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.functional.test_durability import metric
from tests.functional.test_objects import payload
from tests.support.faults import FaultInjector
from tests.support.servers import ProxyProcess, S3Server

MIB = 1 << 20
DATA = "node1/data/ks1/t1-0a1b/"  # encrypted keys
TIMEOUTS = {"read_timeout": 2, "connect_timeout": 2}


@pytest.fixture
def injector(upstream: S3Server) -> Iterator[FaultInjector]:
    with FaultInjector(upstream.endpoint_url) as inj:
        yield inj


def proxy_through(make_proxy: Callable[..., ProxyProcess], injector: FaultInjector, **upstream: Any) -> ProxyProcess:
    """A proxy whose upstream is the injector, with short timeouts."""
    return make_proxy(upstream={"endpoint_url": injector.url, **TIMEOUTS, **upstream})


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyProcess], injector: FaultInjector) -> ProxyProcess:
    return proxy_through(make_proxy, injector)


def client_of(proxy: ProxyProcess, attempts: int = 3) -> Any:
    return proxy.client(
        **MEDUSA_CLIENT_CONFIG,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        read_timeout=20,
        connect_timeout=5,
    )


def read(client: Any, bucket: str, key: str, **kw: Any) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()
    return data


def assert_clean_log(proxy: ProxyProcess) -> None:
    log = proxy.log_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def assert_whole_or_absent(proxy: ProxyProcess, raw: Any, bucket: str, written: dict[str, list[bytes]]) -> None:
    """Every object in the bucket is one of the versions written to its key and reads back whole
    through the proxy (with no faults left); no multipart upload is left half done with data of ours."""
    client = client_of(proxy)
    listed = [
        o["Key"]
        for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for key in listed:
        assert key in written, f"unexpected object {key}"
        data = read(client, bucket, key)
        assert data in written[key], f"{key}: {len(data)} bytes read back, none of the versions written"
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(data)


# ------------------------------------------------------------------------------------
# the injector itself, against a local echo server
# ------------------------------------------------------------------------------------


@pytest.fixture
def echo_url() -> Iterator[str]:
    """An aiohttp server that streams every request body back as it reads it (Content-Length in,
    Content-Length out; chunked in, chunked out), in a thread of its own."""
    import asyncio

    async def echo(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Method": request.method})
        if request.content_length is not None:
            response.content_length = request.content_length
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        async for piece in request.content.iter_chunked(64 << 10):
            await response.write(piece)
        await response.write_eof()
        return response

    loop = asyncio.new_event_loop()
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {head!r}")
        head += byte
    return head


def test_injector_streams_bodies_and_keeps_connections(echo_url: str) -> None:
    with FaultInjector(echo_url) as inj:
        body = payload(24 * MIB, 1)
        with socket.create_connection((inj.host, inj.port)) as sock:
            # Expect: 100-continue, a Content-Length body, streamed: half of the echo comes back
            # before the second half is sent, so nothing between holds the whole body.
            sock.sendall(
                f"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            assert read_head(sock).startswith(b"HTTP/1.1 100")
            sock.sendall(body[: len(body) // 2])
            head = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(body)}".encode() in head
            echoed = b""
            while len(echoed) < MIB:
                echoed += sock.recv(1 << 16)
            sock.sendall(body[len(body) // 2 :])
            while len(echoed) < len(body):
                echoed += sock.recv(1 << 20)
            assert echoed == body
        # chunked both ways, several requests on one kept-alive connection
        conn = http.client.HTTPConnection(inj.host, inj.port, timeout=10)
        for i in range(3):
            pieces = [payload(n, i) for n in (1, 70000, 5 * MIB + 3)]
            conn.request("POST", f"/c{i}?x=1", body=iter(pieces), encode_chunked=True)
            reply = conn.getresponse()
            assert reply.getheader("Transfer-Encoding") == "chunked"
            assert reply.read() == b"".join(pieces)
        conn.close()
        assert inj.connections == 2
        assert [(e.method, e.path, e.query, e.action, e.status) for e in inj.events] == [
            ("PUT", "/a", "", "forward", 200),
            *[("POST", f"/c{i}", "x=1", "forward", 200) for i in range(3)],
        ]


def test_injector_faults(echo_url: str) -> None:
    with FaultInjector(echo_url) as inj:
        conn = http.client.HTTPConnection(inj.host, inj.port, timeout=10)
        inj.add("error503", method="PUT", path="/slow")
        conn.request("PUT", "/slow", body=b"abc")
        reply = conn.getresponse()
        assert reply.status == 503 and b"<Code>SlowDown</Code>" in reply.read()
        conn.request("PUT", "/slow", body=b"abc")  # the same connection, fault spent
        assert conn.getresponse().read() == b"abc"

        inj.add("reset_before", path="/r", nth=2)
        conn.request("GET", "/r")
        conn.getresponse().read()
        conn.request("GET", "/r")
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            conn.getresponse()
        conn.close()

        inj.add("truncate", path="/t", at=1000)
        conn.request("PUT", "/t", body=b"x" * 5000)
        with pytest.raises(http.client.IncompleteRead) as cut:
            conn.getresponse().read()
        assert len(cut.value.partial) == 1000
        conn.close()

        inj.add("stall_body", path="/s", seconds=0.5, at=10)
        started = time.monotonic()
        conn.request("PUT", "/s", body=b"y" * 100)
        assert conn.getresponse().read() == b"y" * 100
        assert time.monotonic() - started >= 0.5

        inj.chaos(0.5, ["error500"], seed=3)
        statuses = []
        for _ in range(40):
            conn.request("GET", "/z")
            reply = conn.getresponse()
            reply.read()
            statuses.append(reply.status)
        assert 10 < statuses.count(500) < 30 and statuses.count(200) == 40 - statuses.count(500)
        assert [e.action for e in inj.faulted()][:5] == [
            "error503",
            "reset_before",
            "truncate",
            "stall_body",
            "error500",
        ]
        conn.close()


# ------------------------------------------------------------------------------------
# one fault per call
# ------------------------------------------------------------------------------------


class Steps:
    """Calls made one by one, each with faults on the upstream requests it makes; what went wrong is
    collected (not raised), so that one test reports every call that does not survive its fault."""

    def __init__(
        self, injector: FaultInjector, client: Any, bucket: str, fault: dict[str, Any], within: float | None = None
    ) -> None:
        self.injector, self.client, self.bucket, self.fault, self.within = injector, client, bucket, fault, within
        self.problems: list[str] = []
        self.written: dict[str, bytes] = {}

    def run(self, name: str, call: Callable[[], Any], *targets: dict[str, Any]) -> Any:
        faults = [self.injector.add(**self.fault, **target) for target in targets]
        started = time.monotonic()
        try:
            result = call()
        except (ClientError, BotoCoreError, AssertionError) as exc:
            self.problems.append(f"{name}: {type(exc).__name__}: {exc}")
            return None
        finally:
            elapsed = time.monotonic() - started
            self.injector.clear()
        for fault in faults:
            if fault.fired != 1:
                self.problems.append(
                    f"{name}: the fault on {fault.method} {fault.path or ''}?{fault.query or ''} "
                    f"fired {fault.fired} times"
                )
        if self.within is not None and elapsed > self.within * len(faults):
            self.problems.append(
                f"{name}: took {elapsed:.1f}s for {len(faults)} request(s) stalled {self.fault['seconds']}s each"
            )
        return result

    def put(self, name: str, key: str, data: bytes) -> None:
        self.run(
            name, lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data), {"method": "PUT", "path": key}
        )
        self.written[key] = data

    def check(self, name: str, got: bytes, expected: bytes) -> None:
        assert got == expected, f"{name}: {len(got)} bytes, not the {len(expected)} written"


def exercise(steps: Steps, *, upload_part: bool = True, quick: bool = False) -> None:
    """Every kind of call once, each with a fault on its upstream request(s); ``quick`` leaves out the
    GETs that take the same path as the first."""
    c, bucket = steps.client, steps.bucket
    small, big = DATA + "small-Data.db", DATA + "big-Data.db"
    steps.put("PUT 1000 B", small, payload(1000, 1))
    steps.put("PUT 6 MiB", big, payload(6 * MIB, 2))
    data = steps.written[big]
    steps.run("HEAD", lambda: c.head_object(Bucket=bucket, Key=big), {"method": "HEAD", "path": big})
    steps.run("GET", lambda: steps.check("GET", read(c, bucket, big), data), {"method": "GET", "path": big})
    if not quick:
        steps.run(
            "GET small",
            lambda: steps.check("GET small", read(c, bucket, small), steps.written[small]),
            {"method": "GET", "path": small},
        )
    steps.run(
        "ranged GET",
        lambda: steps.check("ranged GET", read(c, bucket, big, Range="bytes=1000-2100000"), data[1000:2100001]),
        {"method": "GET", "path": big},
    )
    steps.run("LIST", lambda: c.list_objects_v2(Bucket=bucket, Prefix=DATA), {"method": "GET", "query": "list-type=2"})
    key = DATA + "multi-Data.db"
    created = steps.run(
        "CreateMultipartUpload",
        lambda: c.create_multipart_upload(Bucket=bucket, Key=key),
        {"method": "POST", "query": "uploads"},
    )
    if created is None:
        return
    upload = {"Bucket": bucket, "Key": key, "UploadId": created["UploadId"]}
    first, last = payload(5 * MIB, 3), payload(MIB + 7, 4)
    if upload_part:
        one = steps.run(
            "UploadPart 5 MiB",
            lambda: c.upload_part(**upload, PartNumber=1, Body=first),
            {"method": "PUT", "query": "partNumber=1"},
        )
    else:
        one = c.upload_part(**upload, PartNumber=1, Body=first)
    two = c.upload_part(**upload, PartNumber=2, Body=last)  # held back by the proxy: no upstream request
    steps.run("ListParts", lambda: c.list_parts(**upload), {"method": "GET", "query": "uploadId="})
    if one is None:
        return
    parts = {"Parts": [{"PartNumber": 1, "ETag": one["ETag"]}, {"PartNumber": 2, "ETag": two["ETag"]}]}
    # Complete makes two upstream requests: the held part with the trailer, then Complete itself.
    steps.run(
        "CompleteMultipartUpload",
        lambda: c.complete_multipart_upload(**upload, MultipartUpload=parts),
        {"method": "PUT", "query": "partNumber=2"},
        {"method": "POST", "query": "uploadId="},
    )
    steps.written[key] = first + last


def check_written(
    proxy: ProxyProcess, raw: Any, bucket: str, written: dict[str, bytes], *, orphan_uploads: int = 0
) -> None:
    """What was written reads back whole, and nothing else is in the bucket (but ``orphan_uploads``
    multipart uploads the upstream created and whose answer was lost, as S3 itself would keep)."""
    client = client_of(proxy)
    for key, data in written.items():
        assert read(client, bucket, key) == data, key
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(data)
    listed = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert listed == sorted(written)
    assert len(raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == orphan_uploads


LOST_ANSWER = (
    "rclone refuses to replace a part it already has with other bytes (NotImplemented), and the "
    "proxy's retry of a part is other bytes (fresh IVs): see test_retried_part_after_a_lost_answer"
)


@pytest.mark.all_upstreams  # retries on SeaweedFS: a retried part's earlier copy stays there
@pytest.mark.parametrize("kind", ["reset_before", "reset_after", "error503", "error500"])
def test_one_fault_per_call_is_retried(
    kind: str, proxy: ProxyProcess, injector: FaultInjector, upstream: S3Server, bucket: str, raw_client: Any
) -> None:
    steps = Steps(injector, client_of(proxy), bucket, {"kind": kind})
    # reset_after: rclone kept the part, and refuses its retry; that is tested on its own below.
    exercise(steps, upload_part=not (kind == "reset_after" and upstream.name == "rclone"))
    assert steps.problems == []
    check_written(proxy, raw_client, bucket, steps.written, orphan_uploads=int(kind == "reset_after"))
    assert_clean_log(proxy)


@pytest.mark.all_upstreams  # SeaweedFS keeps a retried part's earlier copy too
@pytest.mark.parametrize("kind", ["reset_after", "stall"])
def test_retried_part_after_a_lost_answer(
    kind: str,
    proxy: ProxyProcess,
    injector: FaultInjector,
    upstream: S3Server,
    bucket: str,
    raw_client: Any,
    request: pytest.FixtureRequest,
) -> None:
    """The upstream stored part 1 but its answer never reached the proxy (reset, or too late): the
    client's retry of the part must succeed, as it does against S3 itself."""
    if upstream.name == "rclone":
        request.applymarker(pytest.mark.xfail(reason=LOST_ANSWER, raises=ClientError, strict=True))
    c, key = client_of(proxy), DATA + "lost-Data.db"
    upload = {"Bucket": bucket, "Key": key, "UploadId": c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]}
    first, last = payload(5 * MIB, 5), payload(100, 6)
    injector.add(kind, method="PUT", query="partNumber=1", seconds=4)
    one = c.upload_part(**upload, PartNumber=1, Body=first)
    two = c.upload_part(**upload, PartNumber=2, Body=last)
    c.complete_multipart_upload(
        **upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": one["ETag"]}, {"PartNumber": 2, "ETag": two["ETag"]}]},
    )
    assert [e.action for e in injector.events if "partNumber=1" in e.query] == [kind, "forward"]
    check_written(proxy, raw_client, bucket, {key: first + last})


@pytest.mark.all_upstreams  # how SeaweedFS answers a Complete of an upload it completed
def test_complete_whose_answer_was_lost(
    proxy: ProxyProcess, injector: FaultInjector, bucket: str, raw_client: Any
) -> None:
    """The upstream completed the upload but the proxy never saw the answer: its retry finds the upload
    gone (rclone: NoSuchUpload; moto answers it again), and the proxy must recognise its own object."""
    c, key = client_of(proxy), DATA + "done-Data.db"
    upload = {"Bucket": bucket, "Key": key, "UploadId": c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]}
    data = payload(5 * MIB + 5, 7)
    one = c.upload_part(**upload, PartNumber=1, Body=data[: 5 * MIB])
    two = c.upload_part(**upload, PartNumber=2, Body=data[5 * MIB :])
    injector.add("reset_after", method="POST", query="uploadId=")
    done = c.complete_multipart_upload(
        **upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": one["ETag"]}, {"PartNumber": 2, "ETag": two["ETag"]}]},
    )
    assert [e.action for e in injector.events if e.method == "POST"][-2:] == ["reset_after", "forward"]
    head = c.head_object(Bucket=bucket, Key=key)
    assert done["ETag"] == head["ETag"]
    check_written(proxy, raw_client, bucket, {key: data})
    assert_clean_log(proxy)


def test_stalls_are_cut_by_timeouts(
    proxy: ProxyProcess, injector: FaultInjector, upstream: S3Server, bucket: str, raw_client: Any
) -> None:
    """An upstream that stops answering for 10 s: with read_timeout 2 s, every call gives up on it and
    retries long before that."""
    steps = Steps(injector, client_of(proxy), bucket, {"kind": "stall", "seconds": 10}, within=5)
    exercise(steps, upload_part=upstream.name != "rclone", quick=True)  # rclone: see LOST_ANSWER
    assert steps.problems == []
    check_written(proxy, raw_client, bucket, steps.written, orphan_uploads=1)
    assert_clean_log(proxy)


def test_slow_upstream_still_works(proxy: ProxyProcess, injector: FaultInjector, bucket: str) -> None:
    """Every piece of every body delayed (about 1 s per 6 MiB) but within the timeouts: nothing fails."""
    c, key, data = client_of(proxy, attempts=1), DATA + "slow-Data.db", payload(6 * MIB, 8)
    injector.add("delay", seconds=0.01, times=None)
    c.put_object(Bucket=bucket, Key=key, Body=data)
    assert read(c, bucket, key) == data
    assert read(c, bucket, key, Range="bytes=5-3000000") == data[5:3000001]
    assert all(e.action == "delay" for e in injector.events)
    assert_clean_log(proxy)


# ------------------------------------------------------------------------------------
# bodies cut short
# ------------------------------------------------------------------------------------


def upstream_errors(proxy: ProxyProcess) -> float:
    return sum(
        metric(proxy, "upstream_errors_total", code=code)
        for code in ("IncompleteBody", "ReadTimeoutError", "DeadlineExceeded")
    )


@pytest.mark.parametrize("where", ["half", "record-boundary", "range", "stall"])
def test_cut_get_body_never_gives_wrong_bytes(
    where: str, proxy: ProxyProcess, injector: FaultInjector, bucket: str
) -> None:
    c, key, data = client_of(proxy), DATA + "cut-Data.db", payload(3 * MIB + 11, 9)
    c.put_object(Bucket=bucket, Key=key, Body=data)
    kind, at = {
        "half": ("truncate", None),
        "record-boundary": ("truncate", CHUNK_SIZE + RECORD_OVERHEAD),
        "range": ("truncate", 1000),
        "stall": ("stall_body", CHUNK_SIZE),
    }[where]
    rng = {"Range": "bytes=100-2500000"} if where == "range" else {}
    expected = data[100:2500001] if rng else data
    before = (upstream_errors(proxy), metric(proxy, "integrity_failures_total"))
    injector.add(kind, method="GET", path=key, at=at, seconds=6)
    started = time.monotonic()
    try:
        got = read(c, bucket, key, **rng)
    except (ClientError, BotoCoreError):
        got = None
    assert time.monotonic() - started < 5.5
    assert got is None or got == expected  # never other bytes
    assert injector.faulted() and injector.faulted()[0].status in (200, 206)
    after = (upstream_errors(proxy), metric(proxy, "integrity_failures_total"))
    assert after != before, "a body cut short upstream moves no metric"
    # s3transfer retries a short read: the download succeeds whole
    injector.add(kind, method="GET", path=key, at=at, seconds=6)
    out = io.BytesIO()
    c.download_fileobj(bucket, key, out)
    assert out.getvalue() == data
    assert_clean_log(proxy)


def test_cut_trailer_read_on_a_cold_cache(
    make_proxy: Callable[..., ProxyProcess], injector: FaultInjector, bucket: str
) -> None:
    """A fresh proxy reads the trailer first (a suffix range): cut once, it is read again; cut always,
    the client gets a clean 5xx and never a wrong size."""
    key, data = DATA + "cold-Data.db", payload(2 * MIB, 10)
    client_of(proxy_through(make_proxy, injector)).put_object(Bucket=bucket, Key=key, Body=data)
    cold = proxy_through(make_proxy, injector)
    c = client_of(cold, attempts=1)
    injector.add("truncate", method="GET", path=key, at=100)
    assert c.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)
    assert injector.faulted("truncate")
    fresh = proxy_through(make_proxy, injector)
    injector.add("truncate", method="GET", path=key, at=100, times=None)
    with pytest.raises(ClientError) as err:
        client_of(fresh, attempts=1).head_object(Bucket=bucket, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    with pytest.raises(ClientError) as err:
        read(client_of(fresh, attempts=1), bucket, key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    assert err.value.response["Error"]["Code"] in ("ServiceUnavailable", "InternalError")
    injector.clear()
    assert read(client_of(fresh), bucket, key) == data
    for p in (cold, fresh):
        assert_clean_log(p)


# ------------------------------------------------------------------------------------
# faults that persist
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["reset_before", "reset_after", "error503", "stall"])
def test_persistent_faults_give_clean_errors(
    kind: str, make_proxy: Callable[..., ProxyProcess], injector: FaultInjector, bucket: str, raw_client: Any
) -> None:
    """Every upstream request fails (the client tries once, the proxy twice, its least: the same
    errors, sooner). (``upstream.max_attempts`` is botocore's: retries, not attempts.)"""
    proxy = proxy_through(make_proxy, injector, max_attempts=1)
    c = client_of(proxy, attempts=1)
    old, old_data = DATA + "old-Data.db", payload(2 * MIB, 11)
    c.put_object(Bucket=bucket, Key=old, Body=old_data)
    written: dict[str, list[bytes]] = {old: [old_data]}
    injector.add(kind, times=None, seconds=4)
    failures: list[tuple[str, int, str]] = []

    def attempt(name: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except ClientError as exc:
            failures.append((name, exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]))
            return None
        failures.append((name, 200, ""))
        return result

    for name, key, size in (("PUT small", "small", 1000), ("PUT 6 MiB", "big", 6 * MIB)):
        data = payload(size, size)
        written[DATA + key] = [data]
        if kind != "stall" or size > MIB:  # (a stalled call costs seconds: fewer of them)
            attempt(name, lambda key=key, data=data: c.put_object(Bucket=bucket, Key=DATA + key, Body=data))
    attempt("GET", lambda: read(c, bucket, old))
    if kind != "stall":
        attempt("HEAD", lambda: c.head_object(Bucket=bucket, Key=old))
        attempt("LIST", lambda: c.list_objects_v2(Bucket=bucket))
        attempt("CreateMultipartUpload", lambda: c.create_multipart_upload(Bucket=bucket, Key=DATA + "multi"))
    for name, status, code in failures:
        assert status >= 500 and code, (name, status, code)
        if name not in ("HEAD", "GET"):  # a HEAD answer has no body; GET: see test_5xx_on_head_...
            assert not code.isdigit(), f"{name}: the error answered has no S3 error code"
    injector.clear()
    assert_whole_or_absent(proxy, raw_client, bucket, written)
    assert_clean_log(proxy)


def test_5xx_on_head_gives_an_s3_error_code(proxy: ProxyProcess, injector: FaultInjector, bucket: str) -> None:
    """A GET starts with an upstream HEAD; when that fails with 503 the client must get an S3 code
    (SlowDown, ServiceUnavailable), not ``<Code>503</Code>``."""
    c, key = client_of(proxy, attempts=1), DATA + "h-Data.db"
    c.put_object(Bucket=bucket, Key=key, Body=b"x" * 100)
    injector.add("error503", method="HEAD", times=None)
    with pytest.raises(ClientError) as err:
        read(c, bucket, key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert not err.value.response["Error"]["Code"].isdigit(), err.value.response["Error"]


def test_persistent_cut_bodies(proxy: ProxyProcess, injector: FaultInjector, bucket: str, raw_client: Any) -> None:
    """Every upstream answer cut in its middle: GETs fail (a 5xx, or a short read once the headers
    went), never with other bytes; writes (whose answers are short XML or empty) still work."""
    c = client_of(proxy, attempts=1)
    key, data = DATA + "t-Data.db", payload(3 * MIB, 12)
    c.put_object(Bucket=bucket, Key=key, Body=data)
    injector.add("truncate", times=None)
    for rng in ({}, {"Range": "bytes=10-20"}, {"Range": "bytes=2000000-"}):
        with pytest.raises((ClientError, BotoCoreError)):
            read(c, bucket, key, **rng)
    with pytest.raises(ClientError) as err:
        c.list_objects_v2(Bucket=bucket)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500
    injector.clear()
    assert_whole_or_absent(proxy, raw_client, bucket, {key: [data]})
    assert_clean_log(proxy)


# ------------------------------------------------------------------------------------
# leaks
# ------------------------------------------------------------------------------------

TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def process_resources(pid: int) -> dict[str, int]:
    """Open fds, RSS (KiB) and TCP sockets by state of one process, from /proc."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    fds = 0
    for fd in fd_dir.iterdir():
        fds += 1
        try:
            target = (fd_dir / fd.name).readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = {"fds": fds}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                state = TCP_STATES.get(fields[3], fields[3])
                found[state] = found.get(state, 0) + 1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            found["rss_kib"] = int(line.split()[1])
    return found


def test_faults_leak_nothing(proxy: ProxyProcess, injector: FaultInjector, bucket: str) -> None:
    assert proxy.process is not None and proxy.process.proc is not None
    pid = proxy.process.proc.pid
    c = client_of(proxy, attempts=4)
    keys = [f"{DATA}leak-{i}-Data.db" for i in range(4)]
    blobs = {key: payload(6 * MIB if i % 2 else 200_000, i) for i, key in enumerate(keys)}

    def burst() -> None:
        def one(key: str) -> None:
            try:
                c.put_object(Bucket=bucket, Key=key, Body=blobs[key])
                assert c.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(blobs[key])
                out = io.BytesIO()
                c.download_fileobj(bucket, key, out)
                assert out.getvalue() == blobs[key]
                got = read(c, bucket, key, Range="bytes=7-70000")
                assert got == blobs[key][7:70001]
                c.list_objects_v2(Bucket=bucket, Prefix=DATA)
            except (ClientError, BotoCoreError):
                pass  # a call may fail under faults; what matters is what it leaves behind

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, keys))

    def settled() -> dict[str, int]:
        time.sleep(2.5)  # timeouts (2 s) have fired, aborted transfers are closed
        return process_resources(pid)

    burst()  # pools and caches warm, no faults
    before = settled()
    rounds = []
    for seed in range(3):
        injector.chaos(0.3, ["reset_before", "reset_after", "error503", "truncate", "stall_body"], seed=seed, seconds=3)
        burst()
        injector.clear()
        rounds.append(settled())
    faulted = injector.faulted()
    assert len(faulted) > 20, "the bursts met too few faults to tell anything"
    print(
        f"\nbefore faults {before}; after each faulted burst {rounds}; {len(faulted)} faults; "
        f"injector saw {injector.connections} connections, {injector.open_connections} open"
    )
    for after in rounds:
        assert after["fds"] <= before["fds"] + 16, (before, rounds)
        assert after.get("CLOSE_WAIT", 0) <= 2, (before, rounds)  # connections the peer closed, still held
    assert rounds[-1]["fds"] <= rounds[0]["fds"] + 8, rounds  # not growing burst after burst
    assert rounds[-1]["rss_kib"] <= rounds[0]["rss_kib"] + 60 * 1024, rounds
    assert_clean_log(proxy)


def test_stall_after_100_continue_is_cut(proxy: ProxyProcess, injector: FaultInjector, bucket: str) -> None:
    """The part Complete sends with the trailer (a bytes body, so botocore adds Expect: 100-continue):
    the upstream says 100 Continue, takes the body, then says nothing for 6 s."""
    c = client_of(proxy)
    took = []
    for i in range(3):
        key = f"{DATA}continue-{i}-Data.db"
        upload = {
            "Bucket": bucket,
            "Key": key,
            "UploadId": c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"],
        }
        one = c.upload_part(**upload, PartNumber=1, Body=b"x" * 1000)
        injector.add("stall", method="PUT", query="partNumber=1", seconds=6)
        started = time.monotonic()
        c.complete_multipart_upload(**upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": one["ETag"]}]})
        took.append(round(time.monotonic() - started, 1))
    assert max(took) < 5, f"Complete took {took} s with read_timeout 2 s"
