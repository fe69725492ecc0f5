"""Clients that go away mid-request: a PUT, an UploadPart or a GET whose client closes (or resets)
its connection half way.

The proxy runs in front of ``tests.support.faults.FaultInjector`` (forwarding only) in front of moto or
rclone, so the tests can see the proxy's upstream connections. Each test checks that nothing
becomes visible in the bucket (the previous version stays, no partial part), that the upstream
request is cut (the proxy stops sending or reading: its byte counters stop well short of the
whole, the upstream connection it used is closed), that the request leaves the in-flight
gauge, and, over repeated rounds, that file descriptors and RSS stay flat.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.functional.test_crash import SlowRequest, raw_object, raw_parts, target, wait_for
from tests.functional.test_durability import metric
from tests.functional.test_faults import process_resources, proxy_through
from tests.functional.test_objects import MIB, payload
from tests.functional.test_protocol import raw_uploads, sign
from tests.support.faults import FaultInjector
from tests.support.servers import ProxyProcess, S3Server

KEY = "node1/data/ks1/t-1/nb-1-big-Data.db"


@pytest.fixture
def injector(upstream: S3Server) -> Iterator[FaultInjector]:
    with FaultInjector(upstream.endpoint_url) as inj:
        yield inj


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyProcess], injector: FaultInjector) -> ProxyProcess:
    return proxy_through(make_proxy, injector)


def client_of(proxy: ProxyProcess) -> Any:
    return proxy.client(**MEDUSA_CLIENT_CONFIG)


def settled(proxy: ProxyProcess, injector: FaultInjector, connections: int) -> None:
    """Until the proxy serves nothing and has closed every upstream connection beyond ``connections``
    (those that were open, idle in its pool, before the request)."""
    wait_for(lambda: metric(proxy, "requests_in_flight") == 0, what="the request to leave the in-flight gauge")
    wait_for(lambda: injector.open_connections <= connections, what="the upstream connection to be closed")


def encrypted(proxy: ProxyProcess) -> float:
    """Plaintext bytes encrypted so far: what the proxy has taken of a body and sent on upstream."""
    return metric(proxy, "bytes_encrypted_total")


@pytest.mark.all_upstreams  # SeaweedFS: a request cut short must store nothing
@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_client_gone_mid_put(
    proxy: ProxyProcess, injector: FaultInjector, raw_client: Any, bucket: str, reset: bool
) -> None:
    """The previous version stays whole; the upstream PUT is cut before its Content-Length."""
    client = client_of(proxy)
    old, new = payload(2 * MIB + 5, 1), payload(16 * MIB + 7, 2)
    client.put_object(Bucket=bucket, Key=KEY, Body=old)
    stored_old = raw_object(raw_client, bucket, KEY)
    idle = injector.open_connections
    before = encrypted(proxy)
    request = SlowRequest(proxy, "PUT", target(bucket, KEY), new)
    request.send(6 * MIB)
    wait_for(lambda: encrypted(proxy) - before >= 4 * MIB, what="the upstream PUT to start")
    request.close(reset=reset)
    settled(proxy, injector, idle)
    assert encrypted(proxy) - before < 8 * MIB  # stopped where the client did
    assert raw_object(raw_client, bucket, KEY) == stored_old
    assert raw_uploads(raw_client, bucket) == []
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == old
    assert client.put_object(Bucket=bucket, Key=KEY, Body=new)["ETag"].strip('"') == hashlib.md5(new).hexdigest()


@pytest.mark.all_upstreams  # SeaweedFS: a request cut short must store nothing
def test_client_gone_mid_upload_part(
    proxy: ProxyProcess, injector: FaultInjector, raw_client: Any, upstream: S3Server, bucket: str
) -> None:
    """No partial part appears; the parts before it stay; the upload can still be completed."""
    client = client_of(proxy)
    first, second = payload(5 * MIB, 1), payload(12 * MIB + 3, 2)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    one = client.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1, Body=first)
    stored_first = raw_parts(raw_client, bucket, KEY, upload_id)
    idle = injector.open_connections
    before = encrypted(proxy)
    request = SlowRequest(proxy, "PUT", target(bucket, KEY, f"partNumber=2&uploadId={quote(upload_id)}"), second)
    request.send(6 * MIB)
    wait_for(lambda: encrypted(proxy) - before >= 4 * MIB, what="the upstream UploadPart to start")
    request.close(reset=True)
    settled(proxy, injector, idle)
    assert encrypted(proxy) - before < 8 * MIB
    assert raw_object(raw_client, bucket, KEY) is None
    assert raw_parts(raw_client, bucket, KEY, upload_id) == stored_first
    assert [p["PartNumber"] for p in client.list_parts(Bucket=bucket, Key=KEY, UploadId=upload_id)["Parts"]] == [1]
    if upstream.name == "rclone":
        # rclone keeps a cut part's number "being written" and refuses it (NotImplemented): s3transfer
        # would abort and start over, which is what happens here, through the proxy.
        client.abort_multipart_upload(Bucket=bucket, Key=KEY, UploadId=upload_id)
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
        one = client.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1, Body=first)
    two = client.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=2, Body=second)
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=KEY,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": one["ETag"]}, {"PartNumber": 2, "ETag": two["ETag"]}]},
    )
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == first + second
    assert raw_uploads(raw_client, bucket) == []


def start_get(proxy: ProxyProcess, bucket: str, key: str, upto: int) -> socket.socket:
    """A GET whose client reads ``upto`` bytes of the answer, then stops reading."""
    signed = sign(proxy, "GET", target(bucket, key))
    sock = socket.create_connection((proxy.host, proxy.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(
        (
            f"GET {target(bucket, key)} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n"
        ).encode()
    )
    received = 0
    while received < upto:
        received += len(sock.recv(1 << 20))
    return sock


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_client_gone_mid_get(proxy: ProxyProcess, injector: FaultInjector, bucket: str, reset: bool) -> None:
    """The proxy stops reading the stored object (its upstream connection closes) and the next GET
    gives the exact bytes."""
    client = client_of(proxy)
    data = payload(64 * MIB + 11, 3)
    client.put_object(Bucket=bucket, Key=KEY, Body=data)
    client.head_object(Bucket=bucket, Key=KEY)  # the view cached: the GET below reads only the body
    idle = injector.open_connections
    before = metric(proxy, "upstream_bytes_received_total")
    sock = start_get(proxy, bucket, KEY, 2 * MIB)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    settled(proxy, injector, idle)
    assert metric(proxy, "upstream_bytes_received_total") - before < 32 * MIB  # it did not read on
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data


def test_clients_gone_leak_nothing(proxy: ProxyProcess, injector: FaultInjector, bucket: str) -> None:
    """Rounds of PUTs and GETs abandoned half way: file descriptors and RSS end where they were."""
    assert proxy.process is not None and proxy.process.proc is not None
    pid = proxy.process.proc.pid
    client = client_of(proxy)
    data = payload(24 * MIB, 4)
    client.put_object(Bucket=bucket, Key=KEY, Body=data)

    def round_of_abandoned(n: int) -> dict[str, int]:
        idle = injector.open_connections
        for i in range(n):
            put = SlowRequest(proxy, "PUT", target(bucket, f"node1/data/ks1/t-1/gone-{i}-Data.db"), data)
            put.send(8 * MIB)
            get = start_get(proxy, bucket, KEY, MIB)
            put.close(reset=i % 2 == 0)
            get.close()
        settled(proxy, injector, idle + 2)
        time.sleep(1)  # the allocator's idle trim
        return process_resources(pid)

    first = round_of_abandoned(4)  # pools, caches and thread arenas warm
    later = [round_of_abandoned(4) for _ in range(3)]
    print(f"\nafter the first round {first}; after each later one {later}")
    for after in later:
        assert after["fds"] <= first["fds"] + 4, (first, later)
        assert after.get("CLOSE_WAIT", 0) == 0, (first, later)
    assert later[-1]["rss_kib"] <= first["rss_kib"] + 48 * 1024, (first, later)
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data
