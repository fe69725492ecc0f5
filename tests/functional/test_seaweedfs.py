"""SeaweedFS's differences from S3, each shown on the store itself and then through the proxy.

Each test first shows what SeaweedFS 4.48 does (so a newer version that behaves like S3 makes it
fail and the note in docs/OPERATIONS.md can go), then that a client of the proxy never sees it.
The generic suites (objects, protocol, durability, integrity) run on SeaweedFS as well
(``all_upstreams``); these are the cases they do not reach.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.functional.test_objects import DATA_KEY, MIB, payload, raw_bytes
from tests.functional.test_protocol import _chunk_signed_put, assert_nothing_stored, sign
from tests.support.servers import ProxyProcess, S3Server, SeaweedFSServer

pytestmark = pytest.mark.parametrize("upstream", ["seaweedfs"], indirect=True)

PLAIN_KEY = "node1/backup1/meta/schema.cql"  # stored as it is (the default plaintext patterns)
PART = 5 * MIB


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# ------------------------------------------------------------------------------------------
# a re-uploaded part: both copies kept, Complete takes whichever ETag it is given
# ------------------------------------------------------------------------------------------


def test_store_keeps_a_stale_part_and_completes_with_it(raw_client: Any, bucket: str) -> None:
    up = raw_client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    old = raw_client.upload_part(Bucket=bucket, Key="k", UploadId=up, PartNumber=1, Body=b"A" * PART)["ETag"]
    raw_client.upload_part(Bucket=bucket, Key="k", UploadId=up, PartNumber=1, Body=b"B" * PART)
    last = raw_client.upload_part(Bucket=bucket, Key="k", UploadId=up, PartNumber=2, Body=b"C")["ETag"]
    listed = raw_client.list_parts(Bucket=bucket, Key="k", UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 1, 2]  # S3 lists part 1 once: the new copy
    raw_client.complete_multipart_upload(
        Bucket=bucket,
        Key="k",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": old}, {"PartNumber": 2, "ETag": last}]},
    )  # S3: InvalidPart
    assert raw_bytes(raw_client, bucket, "k")[:1] == b"A"


def test_a_reuploaded_part_through_the_proxy_reads_back_as_the_last_upload(
    proxy_client: Any, raw_client: Any, bucket: str
) -> None:
    """The proxy completes with the upstream ETags of the parts it last stored: never stale ciphertext."""
    first, second, tail = payload(PART, 1), payload(PART, 2), payload(1000, 3)
    up = proxy_client.create_multipart_upload(Bucket=bucket, Key=DATA_KEY)["UploadId"]
    stale = proxy_client.upload_part(Bucket=bucket, Key=DATA_KEY, UploadId=up, PartNumber=1, Body=first)["ETag"]
    fresh = proxy_client.upload_part(Bucket=bucket, Key=DATA_KEY, UploadId=up, PartNumber=1, Body=second)["ETag"]
    end = proxy_client.upload_part(Bucket=bucket, Key=DATA_KEY, UploadId=up, PartNumber=2, Body=tail)["ETag"]
    raw_upload = raw_client.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["UploadId"]
    raw_parts = raw_client.list_parts(Bucket=bucket, Key=DATA_KEY, UploadId=raw_upload)["Parts"]
    assert [p["PartNumber"] for p in raw_parts] == [1, 1]  # both ciphertexts of part 1 are there
    with pytest.raises(ClientError) as refused:  # the client's stale ETag: refused as S3 would
        proxy_client.complete_multipart_upload(
            Bucket=bucket,
            Key=DATA_KEY,
            UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": stale}, {"PartNumber": 2, "ETag": end}]},
        )
    assert _code(refused) == "InvalidPart"
    done = proxy_client.complete_multipart_upload(
        Bucket=bucket,
        Key=DATA_KEY,
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": fresh}, {"PartNumber": 2, "ETag": end}]},
    )
    md5s = hashlib.md5(second).digest() + hashlib.md5(tail).digest()
    assert done["ETag"].strip('"') == f"{hashlib.md5(md5s).hexdigest()}-2"
    assert proxy_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == second + tail
    assert raw_client.head_object(Bucket=bucket, Key=DATA_KEY)["ContentLength"] > len(second + tail)


# ------------------------------------------------------------------------------------------
# unquoted and composite ETags of copies
# ------------------------------------------------------------------------------------------


def _raw_copy_etag(server: S3Server, bucket: str, key: str, source: str) -> str:
    """The ETag element of a raw CopyObject answer, exactly as the store wrote it."""
    client = server.client()
    seen: list[bytes] = []
    client.meta.events.register(
        "after-call.s3.CopyObject", lambda http_response, **_: seen.append(http_response.content)
    )
    client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": source})
    element = ET.fromstring(seen[0]).find("{*}ETag")
    assert element is not None
    return element.text or ""


def test_copies_answer_quoted_etags(
    upstream: S3Server, proxy: ProxyProcess, proxy_client: Any, raw_client: Any, bucket: str
) -> None:
    raw_client.put_object(Bucket=bucket, Key="src", Body=b"hello")
    assert _raw_copy_etag(upstream, bucket, "dst", "src") == hashlib.md5(b"hello").hexdigest()  # S3: quoted
    proxy_client.put_object(Bucket=bucket, Key=PLAIN_KEY, Body=b"CREATE TABLE t;")
    proxy_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"sstable bytes")
    for source, target, body in (
        (PLAIN_KEY, PLAIN_KEY + ".copy", b"CREATE TABLE t;"),
        (DATA_KEY, DATA_KEY + "2", b"sstable bytes"),
    ):
        reply = _raw_copy_etag(proxy, bucket, target, source)
        assert reply == f'"{hashlib.md5(body).hexdigest()}"', (source, reply)
        assert proxy_client.get_object(Bucket=bucket, Key=target)["Body"].read() == body


def test_upload_part_copy_of_a_multipart_source(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    """UploadPartCopy between plaintext keys forwards the store's part ETag (composite for a
    multipart source) quoted, and the upload it belongs to completes with it; into an encrypted
    key the proxy reads the source and encrypts it as the part, so the store's ETag plays no part."""
    source = PLAIN_KEY
    first, second = payload(PART, 4), payload(2000, 5)
    up = raw_client.create_multipart_upload(Bucket=bucket, Key=source)["UploadId"]
    etags = [
        raw_client.upload_part(Bucket=bucket, Key=source, UploadId=up, PartNumber=n, Body=body)["ETag"]
        for n, body in ((1, first), (2, second))
    ]
    raw_client.complete_multipart_upload(
        Bucket=bucket,
        Key=source,
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    for target, server_side in (("node1/backup1/meta/tokenmap.json", True), (DATA_KEY, False)):
        up = proxy_client.create_multipart_upload(Bucket=bucket, Key=target)["UploadId"]
        copied = proxy_client.upload_part_copy(
            Bucket=bucket, Key=target, UploadId=up, PartNumber=1, CopySource={"Bucket": bucket, "Key": source}
        )["CopyPartResult"]["ETag"]
        assert copied.startswith('"') and copied.endswith('"'), copied
        # The store's composite part ETag, or the MD5 of the plaintext part the proxy encrypted.
        assert (copied.strip('"') != hashlib.md5(first + second).hexdigest()) is server_side
        proxy_client.complete_multipart_upload(
            Bucket=bucket, Key=target, UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": copied}]}
        )
        assert proxy_client.get_object(Bucket=bucket, Key=target)["Body"].read() == first + second
    assert first[:4096] not in raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()


# ------------------------------------------------------------------------------------------
# Content-Encoding: aws-chunked kept by the store
# ------------------------------------------------------------------------------------------


def test_a_stored_aws_chunked_encoding_never_reaches_clients(
    upstream: S3Server, proxy: ProxyProcess, raw_client: Any, bucket: str
) -> None:
    data = payload(100_000, 6)
    reply = _chunk_signed_put(upstream, bucket, PLAIN_KEY, data, 64 * 1024)  # type: ignore[arg-type]
    assert reply.status == 200, reply.body
    assert raw_client.head_object(Bucket=bucket, Key=PLAIN_KEY).get("ContentEncoding") == "aws-chunked"  # S3: none
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    for key in (PLAIN_KEY, DATA_KEY):
        if key == DATA_KEY:  # written through the proxy: nothing of the framing is stored
            assert _chunk_signed_put(proxy, bucket, key, data, 64 * 1024).status == 200
            assert "ContentEncoding" not in raw_client.head_object(Bucket=bucket, Key=key)
        head = client.head_object(Bucket=bucket, Key=key)
        got = client.get_object(Bucket=bucket, Key=key)
        assert "ContentEncoding" not in head and "ContentEncoding" not in got, key
        assert got["Body"].read() == data
    client.copy_object(Bucket=bucket, Key=DATA_KEY + ".copy", CopySource={"Bucket": bucket, "Key": PLAIN_KEY})
    assert "ContentEncoding" not in raw_client.head_object(Bucket=bucket, Key=DATA_KEY + ".copy")


# ------------------------------------------------------------------------------------------
# a request cut off after its head; a non-empty bucket deleted
# ------------------------------------------------------------------------------------------


def _head_only_put(server: Any, bucket: str, key: str, length: int) -> bytes:
    """Send a signed PUT's head declaring ``length`` bytes, then no body: shut the sending side."""
    headers = sign(
        server, "PUT", f"/{bucket}/{key}", headers={"Content-Length": str(length)}, payload_value="UNSIGNED-PAYLOAD"
    )
    head = f"PUT /{bucket}/{key} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        time.sleep(0.2)
        sock.shutdown(socket.SHUT_WR)
        try:
            return sock.recv(200)
        except OSError:
            return b""


def test_a_put_cut_off_after_its_head_stores_nothing(
    upstream: S3Server, proxy: ProxyProcess, raw_client: Any, bucket: str
) -> None:
    answer = _head_only_put(upstream, bucket, "cut", 6 * MIB)
    assert answer.startswith(b"HTTP/1.1 200"), answer  # S3: 400 IncompleteBody, nothing stored
    assert raw_client.head_object(Bucket=bucket, Key="cut")["ContentLength"] == 0
    raw_client.delete_object(Bucket=bucket, Key="cut")
    for key in (DATA_KEY, PLAIN_KEY):
        _head_only_put(proxy, bucket, key, 6 * MIB)
        time.sleep(0.3)
        assert_nothing_stored(raw_client, bucket)


def test_delete_bucket_not_empty_through_the_proxy(proxy: ProxyProcess, upstream: S3Server) -> None:
    """With ``-s3.allowDeleteBucketNotEmpty=false`` (the fixture's, and the per-store note's): S3's
    answer. SeaweedFS's default deletes the bucket and everything in it."""
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    name = f"t-notempty-{time.time_ns() % 10**9}"
    client.create_bucket(Bucket=name)
    try:
        client.put_object(Bucket=name, Key=DATA_KEY, Body=b"x")
        with pytest.raises(ClientError) as refused:
            client.delete_bucket(Bucket=name)
        assert _code(refused) == "BucketNotEmpty"
        assert client.get_object(Bucket=name, Key=DATA_KEY)["Body"].read() == b"x"
    finally:
        upstream.delete_bucket(name)


# ------------------------------------------------------------------------------------------
# the harness: loopback only, explicit ports, stopped by its PID
# ------------------------------------------------------------------------------------------


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets ``pid`` listens on (from /proc, IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found


def test_weed_listens_on_loopback_ports_it_was_given_and_stops(upstream: S3Server, tmp_path: Path) -> None:
    """A second weed beside the session's (as xdist workers run them): its own ports, all given."""
    server = SeaweedFSServer(tmp_path / "weed").start()
    try:
        assert upstream.process is not None and upstream.process.proc is not None
        assert not _listening(upstream.process.proc.pid) & _listening(server.process.proc.pid)  # type: ignore[union-attr]
        assert server.process is not None and server.process.proc is not None
        pid = server.process.proc.pid
        command = server.process.log_text().splitlines()[0]
        given = {int(arg.split("=")[1]) for arg in command.split() if ".port" in arg and arg.split("=")[1] != "0"}
        sockets = _listening(pid)
        assert {address for address, _ in sockets} == {"0100007F"}, sockets  # 127.0.0.1 only
        assert {port for _, port in sockets} <= given and server.port in given
    finally:
        server.stop()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
