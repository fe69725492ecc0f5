"""``kill -9`` of the proxy at chosen moments of a write or a read, then a restart on the same cache.

Each test streams a signed request slowly (raw sockets, so the test decides when each byte goes),
kills the proxy process with SIGKILL at a precise point, and checks, straight against the upstream
(moto or rclone), that the bucket holds every object whole and verifiable or not at all, what is
left of multipart uploads, and that the client's retry through the restarted proxy succeeds.

Points reached inside Complete (the trailer part stored but Complete not sent; Complete done
upstream but its answer not back) are held open by ``tests.support.faults.FaultInjector`` between the
proxy and the upstream, which stalls exactly that upstream answer while the proxy is killed.

Abandoned uploads (the client never comes back after a crash) are found and aborted by the
``abort-stale-uploads`` command and by the proxy's own sweep of its state at start.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from proxy.format.keys import KeyRing
from proxy.format.trailer import Trailer
from proxy.keyfiles import load_key_ring
from proxy.tools.files import decrypt_file
from tests.functional.test_durability import metric
from tests.functional.test_objects import MIB, payload
from tests.functional.test_protocol import raw_uploads, sign
from tests.support.faults import FaultInjector
from tests.support.servers import REPO_ROOT, ProxyProcess, _clean_env, proxy_config

KEY = "node1/data/ks1/t-1/nb-1-big-Data.db"
CLIENT = {"retries": {"max_attempts": 1, "mode": "standard"}, "read_timeout": 60}


# ------------------------------------------------------------------------------------------
# Helpers shared with test_disconnect.py
# ------------------------------------------------------------------------------------------


def kill9(proxy: ProxyProcess) -> None:
    """SIGKILL the proxy process (no drain, no cleanup) and wait for it to be gone."""
    assert proxy.process is not None and proxy.running
    proxy.process.stop(timeout=10, sig=signal.SIGKILL)
    proxy.process = None


class SlowRequest:
    """A signed request (real payload SHA-256) whose body the test sends piece by piece."""

    def __init__(
        self, proxy: ProxyProcess, method: str, target: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.body = body
        self.sent = 0
        signed = sign(
            proxy,
            method,
            target,
            headers={"Content-Length": str(len(body)), **(headers or {})},
            payload_value=hashlib.sha256(body).hexdigest(),
        )
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n"
        self.sock = socket.create_connection((proxy.host, proxy.port), timeout=30)
        self.sock.sendall(head.encode("latin-1"))

    def send(self, upto: int) -> None:
        """Send the body up to byte ``upto``."""
        self.sock.sendall(self.body[self.sent : upto])
        self.sent = upto

    def outcome(self) -> str:
        """What the client gets now: the status line, or how the connection ended."""
        try:
            self.sock.sendall(self.body[self.sent :])
            data = self.sock.recv(4096)
        except ConnectionResetError:
            return "connection reset"
        except BrokenPipeError:
            return "broken pipe"
        except TimeoutError:
            return "no answer"
        finally:
            self.sock.close()
        return data.split(b"\r\n", 1)[0].decode() if data else "connection closed"

    def close(self, reset: bool = False) -> None:
        if reset:  # RST, as a crashed client host or a killed process with unread data
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()


def target(bucket: str, key: str, query: str = "") -> str:
    return f"/{bucket}/{quote(key)}" + (f"?{query}" if query else "")


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_encrypting(proxy: ProxyProcess, before: float, at_least: int) -> None:
    """Until the proxy has encrypted (and so streamed upstream) ``at_least`` more bytes."""
    wait_for(lambda: metric(proxy, "bytes_encrypted_total") - before >= at_least, what="encryption to start")


def raw_object(raw_client: Any, bucket: str, key: str) -> bytes | None:
    try:
        data: bytes = raw_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return data


def raw_parts(raw_client: Any, bucket: str, key: str, upload_id: str) -> list[tuple[int, int]]:
    parts = raw_client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts", [])
    return [(p["PartNumber"], p["Size"]) for p in parts]


def keyring(tmp_path: Path) -> KeyRing:
    return load_key_ring([tmp_path / "keys" / "test.key"])


def assert_verifies(
    raw_client: Any, bucket: str, key: str, expected: bytes, tmp_path: Path, etag: str | None = None
) -> None:
    """The stored object is whole: its trailer verifies, names ``key`` and gives the plaintext's
    size and ETag, and the offline decryptor (no daemon) gives back ``expected``."""
    stored = raw_object(raw_client, bucket, key)
    assert stored is not None, f"{key} is not stored"
    trailer = Trailer.from_tail(stored[-4096:])
    trailer.verify(keyring(tmp_path))
    trailer.check_object_key(key)
    assert trailer.object_stored_size == len(stored)
    assert trailer.plaintext_size == len(expected)
    assert trailer.etag == (etag or hashlib.md5(expected).hexdigest())
    path = tmp_path / "stored.bin"
    path.write_bytes(stored)
    decrypt_file(keyring(tmp_path), path, tmp_path / "plain.bin", key)
    assert (tmp_path / "plain.bin").read_bytes() == expected


def s3_etag(*parts: bytes) -> str:
    """S3's ETag of a multipart upload of these parts."""
    digests = b"".join(hashlib.md5(part).digest() for part in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


def put_parts(client: Any, bucket: str, key: str, upload_id: str, parts: dict[int, bytes]) -> list[dict[str, Any]]:
    done = []
    for number, data in parts.items():
        reply = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        done.append({"PartNumber": number, "ETag": reply["ETag"]})
    return done


def start_over(client: Any, bucket: str, upload_id: str, part: bytes, number: int = 2) -> str:
    """rclone: the retried part is refused; abort (as s3transfer does) and start a new upload.

    The refusal reaches the client as 501 NotImplemented, or as a dropped connection while
    ``proxy.upstream.StreamingBody`` turns the upstream's early answer into a cancellation."""
    with pytest.raises((ClientError, BotoCoreError)) as err:
        client.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=number, Body=part)
    if isinstance(err.value, ClientError):
        assert err.value.response["Error"]["Code"] == "NotImplemented"
    client.abort_multipart_upload(Bucket=bucket, Key=KEY, UploadId=upload_id)
    new_id: str = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    return new_id


# ------------------------------------------------------------------------------------------
# Single PUT, UploadPart, GET
# ------------------------------------------------------------------------------------------


def test_kill_during_put(make_proxy: Any, raw_client: Any, bucket: str, tmp_path: Path) -> None:
    """Killed while streaming a PUT upstream: the client gets no answer, the bucket keeps the
    previous version whole (the upstream never got Content-Length bytes), the retry succeeds."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    old, new = payload(2 * MIB + 5, 1), payload(8 * MIB + 7, 2)
    client.put_object(Bucket=bucket, Key=KEY, Body=old)
    stored_old = raw_object(raw_client, bucket, KEY)

    before = metric(proxy, "bytes_encrypted_total")
    request = SlowRequest(proxy, "PUT", target(bucket, KEY), new)
    request.send(4 * MIB)
    wait_encrypting(proxy, before, 3 * MIB)
    kill9(proxy)
    assert request.outcome() in ("connection reset", "broken pipe", "connection closed")

    assert raw_object(raw_client, bucket, KEY) == stored_old  # the previous version, untouched
    assert raw_uploads(raw_client, bucket) == []
    proxy.start()
    client = proxy.client(**CLIENT)
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == old
    assert client.put_object(Bucket=bucket, Key=KEY, Body=new)["ETag"].strip('"') == hashlib.md5(new).hexdigest()
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == new
    assert_verifies(raw_client, bucket, KEY, new, tmp_path)


@pytest.mark.parametrize("size", [8 * MIB + 3, 3 * MIB + 1], ids=["streamed", "held"])
def test_kill_during_upload_part(
    make_proxy: Any, raw_client: Any, upstream: Any, bucket: str, tmp_path: Path, size: int
) -> None:
    """Killed while an UploadPart streams (or, under 5 MiB, while the proxy gathers the part it
    keeps for Complete): no partial part upstream, the parts before it stay; the retried part and
    Complete succeed."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    first, second = payload(5 * MIB, 1), payload(size, 2)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    parts = put_parts(client, bucket, KEY, upload_id, {1: first})
    stored_first = raw_parts(raw_client, bucket, KEY, upload_id)

    before = metric(proxy, "bytes_encrypted_total")
    request = SlowRequest(proxy, "PUT", target(bucket, KEY, f"partNumber=2&uploadId={quote(upload_id)}"), second)
    request.send(size // 2)
    wait_encrypting(proxy, before, MIB)
    kill9(proxy)
    assert request.outcome() in ("connection reset", "broken pipe", "connection closed")

    assert raw_object(raw_client, bucket, KEY) is None
    assert raw_uploads(raw_client, bucket) == [(KEY, upload_id)]
    assert raw_parts(raw_client, bucket, KEY, upload_id) == stored_first  # part 1 only, no partial part 2
    proxy.start()
    client = proxy.client(**CLIENT)
    assert [p["PartNumber"] for p in client.list_parts(Bucket=bucket, Key=KEY, UploadId=upload_id)["Parts"]] == [1]
    if upstream.name == "rclone" and size >= 5 * MIB:
        # rclone serve s3 keeps the cut part's number "already streamed" (ListParts does not show it)
        # and refuses it for good: 501 NotImplemented. s3transfer then aborts and starts over.
        upload_id = start_over(client, bucket, upload_id, second)
        parts = put_parts(client, bucket, KEY, upload_id, {1: first})
    parts += put_parts(client, bucket, KEY, upload_id, {2: second})
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    etag = s3_etag(first, second)
    assert done["ETag"].strip('"') == etag
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == first + second
    assert raw_uploads(raw_client, bucket) == []
    assert_verifies(raw_client, bucket, KEY, first + second, tmp_path, etag)


def test_kill_between_parts_and_complete(make_proxy: Any, raw_client: Any, bucket: str, tmp_path: Path) -> None:
    """Killed after the last part was acknowledged: the part state (SQLite, WAL) survived; the
    bucket has the upload in progress and no object; Complete after the restart succeeds."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    first, last = payload(5 * MIB, 1), payload(2 * MIB + 9, 2)
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    parts = put_parts(client, bucket, KEY, upload_id, {1: first, 2: last})
    kill9(proxy)

    assert raw_object(raw_client, bucket, KEY) is None
    assert raw_uploads(raw_client, bucket) == [(KEY, upload_id)]
    assert [n for n, _ in raw_parts(raw_client, bucket, KEY, upload_id)] == [1]  # part 2 waits in the state
    proxy.start()
    client = proxy.client(**CLIENT)
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    etag = s3_etag(first, last)
    assert done["ETag"].strip('"') == etag
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == first + last
    assert raw_uploads(raw_client, bucket) == []
    assert_verifies(raw_client, bucket, KEY, first + last, tmp_path, etag)


def test_kill_during_get(make_proxy: Any, raw_client: Any, bucket: str) -> None:
    """Killed while a GET streams: the client gets a short body (never wrong bytes), the bucket is
    unchanged, the retried GET gives the exact bytes."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    data = payload(24 * MIB + 11, 3)
    client.put_object(Bucket=bucket, Key=KEY, Body=data)
    stored = raw_object(raw_client, bucket, KEY)

    signed = sign(proxy, "GET", target(bucket, KEY))
    sock = socket.create_connection((proxy.host, proxy.port), timeout=30)
    sock.sendall(
        (
            f"GET {target(bucket, KEY)} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n"
        ).encode()
    )
    received = b""
    while len(received) < 2 * MIB:
        received += sock.recv(1 << 20)
    kill9(proxy)
    with sock:
        sock.settimeout(10)
        try:
            while piece := sock.recv(1 << 20):
                received += piece
        except ConnectionResetError:
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(data)}".encode() in head
    assert len(body) < len(data) and data.startswith(body)  # short, and what came is right

    assert raw_object(raw_client, bucket, KEY) == stored
    proxy.start()
    assert proxy.client(**CLIENT).get_object(Bucket=bucket, Key=KEY)["Body"].read() == data


# ------------------------------------------------------------------------------------------
# Inside Complete
# ------------------------------------------------------------------------------------------


@pytest.fixture
def injected(upstream: Any, tmp_path: Path) -> Iterator[tuple[ProxyProcess, FaultInjector]]:
    """A proxy whose upstream requests go through a FaultInjector (make_proxy's ``upstream``
    override would clash with its own argument of that name)."""
    with FaultInjector(upstream.endpoint_url) as injector:
        workdir = tmp_path / "injected"
        workdir.mkdir()
        config = proxy_config(upstream, tmp_path, cache={"path": str(workdir / "cache.sqlite")})
        config["upstream"] = {**config["upstream"], "endpoint_url": injector.url}
        proxy = ProxyProcess(config, workdir)
        try:
            yield proxy, injector
        finally:
            proxy.stop()


def _complete_in_thread(client: Any, bucket: str, upload_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["reply"] = client.complete_multipart_upload(
                Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except (ClientError, BotoCoreError) as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


@pytest.mark.parametrize("stage", ["trailer-part", "complete"])
def test_kill_during_complete(
    injected: tuple[ProxyProcess, FaultInjector], raw_client: Any, bucket: str, tmp_path: Path, stage: str
) -> None:
    """Killed inside Complete, at the two points where the upstream has done something:

    trailer-part: the last part (held, under 5 MiB) went up with the trailer, Complete was not
        sent. The bucket: no object, the upload with all its parts. The retried Complete sends
        the same bytes again (identical: the trailer is deterministic) and completes.
    complete: the upstream completed the upload, the answer never reached the client. The bucket:
        the object, whole and verifiable; no upload. The retried Complete finds the object this
        very upload wrote (same trailer) and answers as the first would have.
    """
    proxy, injector = injected
    client = proxy.client(**CLIENT)
    if stage == "trailer-part":
        data = {1: payload(5 * MIB, 1), 2: payload(MIB + 5, 2)}  # part 2 held: sent with the trailer as part 2
        injector.add("stall", method="PUT", query="partNumber=2", seconds=60)
    else:
        data = {1: payload(5 * MIB, 1), 2: payload(5 * MIB, 2)}  # the trailer goes up as part 3
        injector.add("stall", method="POST", query="uploadId=", seconds=60)
    plaintext = b"".join(data.values())
    etag = s3_etag(*data.values())
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    parts = put_parts(client, bucket, KEY, upload_id, data)

    outcome = _complete_in_thread(client, bucket, upload_id, parts)
    wait_for(lambda: bool(injector.faulted("stall")), what="the stalled upstream request")
    time.sleep(1.0)  # the upstream has answered (the injector holds the answer)
    kill9(proxy)
    outcome["thread"].join(30)
    assert "error" in outcome, outcome  # the client saw its connection drop, no answer

    if stage == "trailer-part":
        assert raw_object(raw_client, bucket, KEY) is None
        assert raw_uploads(raw_client, bucket) == [(KEY, upload_id)]
        assert [n for n, _ in raw_parts(raw_client, bucket, KEY, upload_id)] == [1, 2]
    else:
        assert raw_uploads(raw_client, bucket) == []
        assert_verifies(raw_client, bucket, KEY, plaintext, tmp_path, etag)

    injector.clear()
    proxy.start()
    client = proxy.client(**CLIENT)
    done = client.complete_multipart_upload(
        Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    assert done["ETag"].strip('"') == etag
    assert client.head_object(Bucket=bucket, Key=KEY)["ETag"].strip('"') == etag
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == plaintext
    assert raw_uploads(raw_client, bucket) == []
    assert_verifies(raw_client, bucket, KEY, plaintext, tmp_path, etag)
    if stage == "complete":
        assert "an earlier Complete already stored it" in proxy.log_text()


def test_kill_racing_complete(make_proxy: Any, raw_client: Any, bucket: str, tmp_path: Path) -> None:
    """Killed at once after a Complete was sent, wherever the proxy then is: the object is either
    absent (the upload still there) or whole, and the retried Complete succeeds either way."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    data = {1: payload(5 * MIB, 1), 2: payload(5 * MIB, 2), 3: payload(3 * MIB, 3)}
    plaintext = b"".join(data.values())
    etag = s3_etag(*data.values())
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    parts = put_parts(client, bucket, KEY, upload_id, data)
    body = (
        "<CompleteMultipartUpload>"
        + "".join(f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{p['ETag']}</ETag></Part>" for p in parts)
        + "</CompleteMultipartUpload>"
    ).encode()
    request = SlowRequest(proxy, "POST", target(bucket, KEY, f"uploadId={quote(upload_id)}"), body)
    request.send(len(body))
    time.sleep(0.05)
    kill9(proxy)
    seen = request.outcome()
    # The upstream may still be completing what it was sent (rclone then lists neither the object
    # nor the upload for a moment): wait until it shows one or the other.
    wait_for(
        lambda: raw_object(raw_client, bucket, KEY) is not None or bool(raw_uploads(raw_client, bucket)),
        what="the upstream to settle",
    )
    stored = raw_object(raw_client, bucket, KEY)
    if stored is None:
        assert raw_uploads(raw_client, bucket) == [(KEY, upload_id)]
    else:
        assert raw_uploads(raw_client, bucket) == []
        assert_verifies(raw_client, bucket, KEY, plaintext, tmp_path, etag)
    print(f"\nclient saw {seen!r}; bucket: {'object stored' if stored else 'upload in progress'}")

    proxy.start()
    client = proxy.client(**CLIENT)
    try:
        done = client.complete_multipart_upload(
            Bucket=bucket, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        assert done["ETag"].strip('"') == etag
    except ClientError as err:
        # Completed upstream before the kill: the upload is gone, as S3 itself answers for a
        # completed upload, and the object is whole (checked above and below).
        assert stored is not None and err.response["Error"]["Code"] == "NoSuchUpload"
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == plaintext
    assert_verifies(raw_client, bucket, KEY, plaintext, tmp_path, etag)


# ------------------------------------------------------------------------------------------
# Abandoned uploads
# ------------------------------------------------------------------------------------------


def run_cli(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args, "--config", str(proxy.config_path)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=REPO_ROOT,
        timeout=120,
    )


def local_uploads(proxy: ProxyProcess) -> set[str]:
    with sqlite3.connect(proxy.config["cache"]["path"]) as db:
        return {row[0] for row in db.execute("SELECT upload_id FROM uploads")}


def test_abort_stale_uploads_command(make_proxy: Any, raw_client: Any, upstream: Any, bucket: str) -> None:
    """An upload abandoned by a crash (its client never came back) is found and aborted by
    ``abort-stale-uploads``; young uploads (a part just uploaded, or started through the proxy
    moments ago) are left alone, and nothing is aborted without the threshold's say-so."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    abandoned_key = "node1/data/ks1/t-1/nb-2-big-Data.db"
    abandoned = client.create_multipart_upload(Bucket=bucket, Key=abandoned_key)["UploadId"]
    put_parts(client, bucket, abandoned_key, abandoned, {1: payload(5 * MIB, 1)})
    kill9(proxy)
    proxy.start()
    client = proxy.client(**CLIENT)
    # Young: one with a part uploaded just now (straight to the bucket, another tool), one started
    # through the proxy moments ago with no part yet.
    other_key = "node2/data/ks1/t-1/nb-1-big-Data.db"
    other = raw_client.create_multipart_upload(Bucket=bucket, Key=other_key)["UploadId"]
    raw_client.upload_part(Bucket=bucket, Key=other_key, UploadId=other, PartNumber=1, Body=b"x" * 100)
    fresh_key = "node3/data/ks1/t-1/nb-1-big-Data.db"
    fresh = client.create_multipart_upload(Bucket=bucket, Key=fresh_key)["UploadId"]
    everything = sorted([(abandoned_key, abandoned), (other_key, other), (fresh_key, fresh)])
    assert sorted(raw_uploads(raw_client, bucket)) == everything

    kept = run_cli(proxy, "abort-stale-uploads", "--bucket", bucket)  # default: idle for 24h
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.count("keep ") == 3 and "0 upload(s) aborted" in kept.stdout, kept.stdout
    dry = run_cli(proxy, "abort-stale-uploads", "--bucket", bucket, "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would abort ") == 3, dry.stdout
    refused = run_cli(proxy, "abort-stale-uploads", "--bucket", bucket, "--older-than", "0s")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert sorted(raw_uploads(raw_client, bucket)) == everything  # nothing aborted so far

    done = run_cli(
        proxy, "abort-stale-uploads", "--bucket", bucket, "--older-than", "0s", "--force", "--prefix", "node1/"
    )
    assert done.returncode == 0, done.stderr
    assert f"aborted {abandoned_key} {abandoned}" in done.stdout, done.stdout
    assert sorted(raw_uploads(raw_client, bucket)) == sorted([(other_key, other), (fresh_key, fresh)])
    assert local_uploads(proxy) == {fresh}  # the aborted upload's state was dropped from the cache
    with pytest.raises(ClientError) as err:
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=abandoned_key,
            UploadId=abandoned,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]},
        )
    assert err.value.response["Error"]["Code"] == "NoSuchUpload"
    # The young ones still work.
    data = payload(MIB, 4)
    parts = put_parts(client, bucket, fresh_key, fresh, {1: data})
    client.complete_multipart_upload(Bucket=bucket, Key=fresh_key, UploadId=fresh, MultipartUpload={"Parts": parts})
    assert client.get_object(Bucket=bucket, Key=fresh_key)["Body"].read() == data
    raw_client.abort_multipart_upload(Bucket=bucket, Key=other_key, UploadId=other)


def test_proxy_sweeps_its_idle_uploads_at_start(make_proxy: Any, raw_client: Any, bucket: str) -> None:
    """The proxy aborts, at start, the uploads of its own state untouched for 24 hours (here made
    to look so by backdating the state), and keeps the others."""
    proxy = make_proxy()
    client = proxy.client(**CLIENT)
    idle_key, busy_key = KEY, "node1/data/ks1/t-1/nb-2-big-Data.db"
    idle = client.create_multipart_upload(Bucket=bucket, Key=idle_key)["UploadId"]
    put_parts(client, bucket, idle_key, idle, {1: payload(5 * MIB, 1)})
    busy = client.create_multipart_upload(Bucket=bucket, Key=busy_key)["UploadId"]
    kill9(proxy)
    with sqlite3.connect(proxy.config["cache"]["path"]) as db:
        db.execute("UPDATE uploads SET touched = touched - 25 * 3600 WHERE upload_id=?", (idle,))
    proxy.start()
    wait_for(lambda: raw_uploads(raw_client, bucket) == [(busy_key, busy)], what="the idle upload's abort")
    wait_for(lambda: local_uploads(proxy) == {busy}, what="the idle upload's state to go")
    assert "aborted stale upload" in proxy.log_text()
    client = proxy.client(**CLIENT)
    parts = put_parts(client, bucket, busy_key, busy, {1: b"still going"})
    client.complete_multipart_upload(Bucket=bucket, Key=busy_key, UploadId=busy, MultipartUpload={"Parts": parts})
    assert client.get_object(Bucket=bucket, Key=busy_key)["Body"].read() == b"still going"
