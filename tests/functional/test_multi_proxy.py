"""Several proxies, one bucket (a multi-node cluster: one proxy per node, one key, caches of their own).

Every proxy must report the same HEAD/LIST view of every object, whichever proxy wrote it, and an
object overwritten or deleted through one proxy must be seen as such by the others at once: a local
view cache may never answer for a version that is no longer stored. Run against moto, `rclone serve
s3` (MD5 ETags) and `rclone serve s3 --etag-hash ""`, where the proxy can only name a version by its
size and Last-Modified (1 s resolution, the time the write began).

The races between one proxy's HEAD (or LIST) and its trailer read are made deterministic with the
fault injector (tests/support/faults.py) in front of that proxy's upstream: it holds the HEAD's (LIST's)
answer while another proxy overwrites or deletes the object.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support.faults import FaultInjector
from tests.support.servers import ProxyProcess, RcloneS3Server, S3Server, proxy_config

KINDS = ["moto", "rclone", "rclone-noetag"]
DATA = "node{n}/data/ks/tbl-{t}/md-{i}-big-Data.db"
MiB = 1 << 20


@pytest.fixture(scope="module")
def rclone_noetag_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    server = RcloneS3Server(tmp_path_factory.mktemp("rclone-noetag"), extra_args=["--etag-hash", ""])
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=KINDS, ids=KINDS)
def server(request: pytest.FixtureRequest) -> S3Server:
    name = "rclone_noetag" if request.param == "rclone-noetag" else request.param
    found: S3Server = request.getfixturevalue(f"{name}_server")
    return found


@pytest.fixture
def shared_bucket(server: S3Server) -> Iterator[str]:
    name = server.create_bucket()
    yield name
    with contextlib.suppress(Exception):
        server.delete_bucket(name)


class Cluster:
    """Proxies in front of one upstream, sharing the key file, each with a cache of its own."""

    def __init__(self, server: S3Server, bucket: str, tmp_path: Path) -> None:
        self.server = server
        self.bucket = bucket
        self.tmp_path = tmp_path
        self.proxies: list[ProxyProcess] = []
        self.injectors: list[FaultInjector] = []

    def proxy(self, *, faults: bool = False) -> tuple[ProxyProcess, Any, FaultInjector | None]:
        """A started proxy, a client of it (Medusa's settings), and its fault injector if asked."""
        workdir = self.tmp_path / f"proxy{len(self.proxies)}"
        config = proxy_config(self.server, self.tmp_path, cache={"path": str(workdir / "cache.sqlite")})
        injector = None
        if faults:
            injector = FaultInjector(self.server.endpoint_url).start()
            self.injectors.append(injector)
            config["upstream"]["endpoint_url"] = injector.url
        proxy = ProxyProcess(config, workdir, start=False)
        self.proxies.append(proxy)
        proxy.start()
        return proxy, proxy.client(**MEDUSA_CLIENT_CONFIG), injector

    def stop(self, failed: bool) -> None:
        for proxy in self.proxies:
            proxy.stop()
            if failed:
                print(f"\n===== proxy log {proxy.log_path} =====\n{proxy.log_text()[-20000:]}")
        for injector in self.injectors:
            injector.stop()


@pytest.fixture
def cluster(server: S3Server, shared_bucket: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    made = Cluster(server, shared_bucket, tmp_path)
    yield made
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    made.stop(failed)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def view(client: Any, bucket: str, key: str) -> tuple[int, str] | None:
    """(size, ETag) of a HEAD, or None for no object."""
    try:
        reply = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return None
        raise
    return int(reply["ContentLength"]), reply["ETag"].strip('"')


def listing(client: Any, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            out[entry["Key"]] = (int(entry["Size"]), entry["ETag"].strip('"'))
    return out


def body(client: Any, bucket: str, key: str, **kwargs: Any) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()
    return data


def metric(proxy: ProxyProcess, series: str) -> float:
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
    return 0.0


INTEGRITY = "medusa_crypt_proxy_integrity_failures_total"


def integrity_failures(proxy: ProxyProcess) -> float:
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as resp:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in resp.read().decode().splitlines()
            if line.startswith(INTEGRITY + "{")
        )


def assert_seen(client: Any, bucket: str, key: str, data: bytes) -> None:
    """HEAD, LIST, GET and a ranged GET through ``client`` all show ``data``."""
    assert view(client, bucket, key) == (len(data), md5(data))
    assert listing(client, bucket, key)[key] == (len(data), md5(data))
    assert body(client, bucket, key) == data
    if len(data) > 10:
        assert body(client, bucket, key, Range="bytes=3-9") == data[3:10]


def next_second(margin: float = 0.05) -> None:
    """Sleep to just after the start of the next wall-clock second."""
    time.sleep(1 - time.time() % 1 + margin)


# ------------------------------------------------------------------------------------------------
# views agree
# ------------------------------------------------------------------------------------------------


def test_concurrent_writers_give_identical_views(cluster: Cluster) -> None:
    """Three proxies write distinct and overlapping keys at once (single PUTs and multipart); all of
    them, and a fresh proxy with an empty cache, then report the same HEAD and LIST views, and the
    bytes match the view."""
    proxies = [cluster.proxy() for _ in range(3)]
    clients = [c for _, c, _ in proxies]
    bucket = cluster.bucket
    written: dict[str, list[bytes]] = {}
    lock = threading.Lock()

    def writer(n: int) -> None:
        client = clients[n]
        for i in range(6):
            for key in (DATA.format(n=n, t=n, i=i), DATA.format(n="shared", t=0, i=i % 3)):
                size = [0, 1, 4096, 65537, 300_000, 1000][i]
                data = os.urandom(size)
                client.put_object(Bucket=bucket, Key=key, Body=data)
                with lock:
                    written.setdefault(key, []).append(data)
        key = DATA.format(n="shared", t=0, i="mp")
        part = os.urandom(5 * MiB)
        tail = os.urandom(1000 + n)
        up = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        e1 = client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=1, Body=part)["ETag"]
        e2 = client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=2, Body=tail)["ETag"]
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
        )
        with lock:
            written.setdefault(key, []).append(part + tail)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(writer, range(3)))
    _, fresh, _ = cluster.proxy()
    views = [listing(c, bucket) for c in [*clients, fresh]]
    assert set(views[0]) == set(written)
    for other in views[1:]:
        assert other == views[0]
    for key, versions in written.items():
        heads = {view(c, bucket, key) for c in [*clients, fresh]}
        assert heads == {views[0][key]}, key
        data = body(clients[0], bucket, key)
        assert data in versions, key  # one of the versions written, whole
        etag = views[0][key][1]
        assert views[0][key][0] == len(data)
        assert etag == md5(data) or etag.endswith("-2"), key  # the multipart one: md5 of part md5s
        assert all(body(c, bucket, key) == data for c in [*clients[1:], fresh])
    assert all(integrity_failures(p) == 0 for p, _, _ in proxies)


def test_overwrite_through_another_proxy_is_seen(cluster: Cluster) -> None:
    """A caches its view; B overwrites (another size, then the same size, then deletes and writes
    again): A sees each new version at once, by HEAD, LIST, GET and ranged GET."""
    (_, a, _), (_, b, _) = cluster.proxy(), cluster.proxy()
    bucket, key = cluster.bucket, DATA.format(n=1, t=1, i=1)
    first = os.urandom(5000)
    a.put_object(Bucket=bucket, Key=key, Body=first)
    assert_seen(a, bucket, key, first)
    for data in (os.urandom(7000), os.urandom(7000)):
        b.put_object(Bucket=bucket, Key=key, Body=data)
        assert_seen(a, bucket, key, data)
        assert_seen(b, bucket, key, data)
    b.delete_object(Bucket=bucket, Key=key)
    assert view(a, bucket, key) is None
    assert key not in listing(a, bucket, key)
    last = os.urandom(7000)
    b.put_object(Bucket=bucket, Key=key, Body=last)
    assert_seen(a, bucket, key, last)


def test_same_size_overwrite_in_the_same_second(cluster: Cluster) -> None:
    """The hard case for an upstream without ETags: B overwrites A's object with the same size in
    the same second (the same size + Last-Modified "version"). A cached its view of the first
    write; it must not serve it for the second: not on HEAD or LIST (the old ETag), not on GET
    (decrypting the new object with the old trailer fails its chunk MACs: an integrity failure)."""
    (pa, a, _), (_, b, _) = cluster.proxy(), cluster.proxy()
    bucket, raw = cluster.bucket, cluster.server.client()
    same_second = 0
    for attempt in range(4):
        key = DATA.format(n=1, t=1, i=attempt)
        first, second = os.urandom(3000), os.urandom(3000)
        next_second()
        a.put_object(Bucket=bucket, Key=key, Body=first)
        assert view(a, bucket, key) == (3000, md5(first))
        assert body(a, bucket, key) == first
        first_time = raw.head_object(Bucket=bucket, Key=key)["LastModified"]
        b.put_object(Bucket=bucket, Key=key, Body=second)
        same_second += raw.head_object(Bucket=bucket, Key=key)["LastModified"] == first_time
        assert_seen(a, bucket, key, second)
    assert same_second, "the machine was too slow to overwrite within one second"
    assert integrity_failures(pa) == 0


def test_settled_views_are_still_cached(cluster: Cluster) -> None:
    """The cache still works: once a version has settled, A's HEADs are cache hits (no trailer read),
    and a later overwrite through B is a new version, seen at once."""
    (pa, a, _), (_, b, _) = cluster.proxy(), cluster.proxy()
    bucket, key = cluster.bucket, DATA.format(n=2, t=2, i=0)
    data = os.urandom(2000)
    a.put_object(Bucket=bucket, Key=key, Body=data)
    if cluster.server.name == "rclone" and "--etag-hash" in getattr(cluster.server, "extra_args", []):
        time.sleep(7.5)  # proxy.cache.settled: 1 s + SETTLE_SECONDS + size / SETTLE_RATE
    assert view(a, bucket, key) == (2000, md5(data))  # learned now (settled)
    hits = metric(pa, 'medusa_crypt_proxy_cache_lookups_total{result="hit"}')
    for _ in range(3):
        assert view(a, bucket, key) == (2000, md5(data))
    assert metric(pa, 'medusa_crypt_proxy_cache_lookups_total{result="hit"}') >= hits + 3
    new = os.urandom(2000)
    b.put_object(Bucket=bucket, Key=key, Body=new)
    assert_seen(a, bucket, key, new)


# ------------------------------------------------------------------------------------------------
# races made deterministic with the fault injector
# ------------------------------------------------------------------------------------------------


def hold_then(
    injector: FaultInjector,
    kind_match: dict[str, Any],
    action: Callable[[], None],
    request: Callable[[], Any],
    seconds: float = 1.5,
) -> Any:
    """Run ``request`` while the injector holds the first matching answer ``seconds``; ``action``
    runs meanwhile (after the upstream answered, before the proxy gets the answer)."""
    fault = injector.add("stall", seconds=seconds, times=1, **kind_match)
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["value"] = request()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    while fault.fired == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fault.fired == 1, "the request never reached the injector"
    time.sleep(0.2)  # the upstream answered; the injector holds it
    action()
    thread.join(30)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_overwrite_between_head_and_trailer_read(cluster: Cluster) -> None:
    """A's HEAD names version 1; B overwrites (another size) before A reads the trailer. A must answer
    with what is stored (HEAD again), not a 412 (moto: the trailer read is guarded by version 1's
    ETag) nor an integrity failure (no ETags: the trailer describes another size)."""
    (pa, a, injector), (_, b, _) = cluster.proxy(faults=True), cluster.proxy()
    assert injector is not None
    bucket, key = cluster.bucket, DATA.format(n=3, t=3, i=0)
    b.put_object(Bucket=bucket, Key=key, Body=os.urandom(1000))  # written by B: A has no view
    new = os.urandom(3000)
    got = hold_then(
        injector,
        {"method": "HEAD"},
        lambda: b.put_object(Bucket=bucket, Key=key, Body=new),
        lambda: view(a, bucket, key),
    )
    assert got == (3000, md5(new))
    assert body(a, bucket, key) == new
    assert integrity_failures(pa) == 0


@pytest.mark.parametrize("rng", [None, "bytes=-500", "bytes=10-2999"])
def test_overwrite_between_head_and_body_read(cluster: Cluster, rng: str | None) -> None:
    """A knows version 1 (its view cached) and GETs it; B overwrites (another size) between A's HEAD
    and its read of the body. A's GET starts over and answers with version 2, whole: not a 412
    (moto: the read is guarded by version 1's ETag), nor a 416 (the range mapped on version 1 lies
    past version 2's end), nor a cut body or an integrity failure (no ETags: version 2's records
    read with version 1's trailer)."""
    (pa, a, injector), (_, b, _) = cluster.proxy(faults=True), cluster.proxy()
    assert injector is not None
    bucket, key = cluster.bucket, DATA.format(n=4, t=4, i=0)
    a.put_object(Bucket=bucket, Key=key, Body=os.urandom(5000))
    assert view(a, bucket, key) is not None
    new = os.urandom(3000)
    extra = {} if rng is None else {"Range": rng}
    got = hold_then(
        injector,
        {"method": "HEAD"},
        lambda: b.put_object(Bucket=bucket, Key=key, Body=new),
        lambda: body(a, bucket, key, **extra),
    )
    assert got == {None: new, "bytes=-500": new[-500:], "bytes=10-2999": new[10:3000]}[rng]
    assert integrity_failures(pa) == 0


def test_overwrite_between_list_and_trailer_read(cluster: Cluster) -> None:
    """A's LIST page names version 1 of an object A has not cached; B overwrites it before A reads
    its trailer. The listing must not fail (412) nor mark the object damaged."""
    (pa, a, injector), (_, b, _) = cluster.proxy(faults=True), cluster.proxy()
    assert injector is not None
    bucket, key = cluster.bucket, DATA.format(n=4, t=4, i=0)
    b.put_object(Bucket=bucket, Key=key, Body=os.urandom(1000))  # written by B: A has no view
    new = os.urandom(3000)
    got = hold_then(
        injector,
        {"method": "GET", "query": "list-type"},
        lambda: b.put_object(Bucket=bucket, Key=key, Body=new),
        lambda: listing(a, bucket, "node4/"),
    )
    assert got[key] == (3000, md5(new))
    assert integrity_failures(pa) == 0


def test_delete_between_head_and_trailer_read(cluster: Cluster) -> None:
    """A's HEAD finds the object, B deletes it before A reads the trailer: 404, not a 500."""
    (pa, a, injector), (_, b, _) = cluster.proxy(faults=True), cluster.proxy()
    assert injector is not None
    bucket, key = cluster.bucket, DATA.format(n=5, t=5, i=0)
    b.put_object(Bucket=bucket, Key=key, Body=os.urandom(1000))
    got = hold_then(
        injector, {"method": "HEAD"}, lambda: b.delete_object(Bucket=bucket, Key=key), lambda: view(a, bucket, key)
    )
    assert got is None
    assert integrity_failures(pa) == 0


def test_put_succeeds_when_another_proxy_deletes_right_after(cluster: Cluster) -> None:
    """A PUT must not fail because another proxy deleted (or overwrote) the key right after it was
    stored: the proxy used to HEAD the object it had just written on upstreams without ETags, and
    answered that PUT with NoSuchKey or "the upstream stored N bytes, not the M sent"."""
    (_, a, injector), (_, b, _) = cluster.proxy(faults=True), cluster.proxy()
    assert injector is not None
    bucket, key = cluster.bucket, DATA.format(n=6, t=6, i=0)
    a.put_object(Bucket=bucket, Key=key, Body=b"x")
    view(a, bucket, key)  # A has now seen a HEAD (and learned whether HEADs give ETags)
    for action in (
        lambda: b.delete_object(Bucket=bucket, Key=key),
        lambda: b.put_object(Bucket=bucket, Key=key, Body=os.urandom(10)),
    ):
        data = os.urandom(2000)
        reply = hold_then(
            injector, {"method": "PUT"}, action, functools.partial(a.put_object, Bucket=bucket, Key=key, Body=data)
        )
        assert reply["ETag"].strip('"') == md5(data)
