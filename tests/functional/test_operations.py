"""Operations, end to end against the proxy process: overload, TLS, SIGTERM drain, readiness,
SIGHUP reload, metrics and logs.

Everything runs against moto (the proxy's behaviour here does not depend on the upstream
server; the object tests cover both servers).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from proxy.keyfiles import load_key_file
from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support.servers import (
    REGION,
    ManagedProcess,
    MotoServer,
    ProxyProcess,
    S3Server,
    generate_fernet_key_file,
    http_status,
)

P = "medusa_crypt_proxy_"
MiB = 1 << 20
NO_RETRY = {"total_max_attempts": 1, "mode": "standard"}


@pytest.fixture(scope="module")
def upstream(moto_server: MotoServer) -> S3Server:
    """This module runs against moto only (overrides the two-server parametrisation)."""
    return moto_server


# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(proxy: ProxyProcess) -> tuple[str, Samples]:
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, out


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == P + name and want <= set(ls))


def label_values(samples: Samples, name: str, label: str) -> list[str]:
    return [dict(ls)[label] for (n, ls) in samples if n == P + name]


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def json_lines(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """Every line the proxy wrote, parsed (the first line is the harness's ``$ command``)."""
    records = []
    for line in proxy.log_text().splitlines():
        if not line.strip() or line.startswith("$ "):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


class SlowPut:
    """A SigV4-signed PUT whose body is sent a piece at a time over http.client."""

    def __init__(self, proxy: ProxyProcess, bucket: str, key: str, body: bytes) -> None:
        self.body = body
        self.sent = 0
        request = AWSRequest(
            method="PUT",
            url=f"{proxy.endpoint_url}/{bucket}/{key}",
            data=body,
            headers={"Content-Length": str(len(body))},
        )
        S3SigV4Auth(Credentials(proxy.access_key, proxy.secret_key), "s3", REGION).add_auth(request)
        self.conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
        self.conn.putrequest("PUT", f"/{bucket}/{key}", skip_accept_encoding=True)
        for name, value in request.headers.items():
            self.conn.putheader(name, value)
        self.conn.endheaders()

    def send(self, n: int) -> None:
        self.conn.send(self.body[self.sent : self.sent + n])
        self.sent += n

    def finish(self) -> tuple[int, bytes]:
        self.conn.send(self.body[self.sent :])
        self.sent = len(self.body)
        response = self.conn.getresponse()
        data = response.read()
        self.conn.close()
        return response.status, data


class TLSProxyProcess(ProxyProcess):
    """The proxy with ``tls:`` configured: https endpoint, health checked over TLS."""

    @property
    def endpoint_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _healthy(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(self.endpoint_url + "/healthz", timeout=1, context=ctx) as r:
                return int(r.status) == 200
        except OSError:
            return False


def tls_client(proxy: ProxyProcess, verify: bool | str, **config: Any) -> Any:
    config.setdefault("s3", {"addressing_style": "path"})
    config.setdefault("retries", NO_RETRY)
    return boto3.client(
        "s3",
        endpoint_url=proxy.endpoint_url,
        region_name=REGION,
        aws_access_key_id=proxy.access_key,
        aws_secret_access_key=proxy.secret_key,
        verify=verify,
        config=Config(**config),
    )


def record_headers(client: Any) -> list[tuple[str, dict[str, str]]]:
    """(operation, request headers) of every request ``client`` sends from now on."""
    seen: list[tuple[str, dict[str, str]]] = []

    def before_send(request: Any, **kwargs: Any) -> None:
        op = kwargs.get("event_name", "").rsplit(".", 1)[-1]
        seen.append(
            (op, {k.lower(): (v.decode() if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()})
        )

    client.meta.events.register("before-send.s3", before_send)
    return seen


def key_id(path: Path) -> str:
    return load_key_file(path).key_id_hex


# ------------------------------------------------------------------------------------
# overload
# ------------------------------------------------------------------------------------


def test_overload_answers_slowdown_and_recovers(make_proxy: Callable[..., ProxyProcess], bucket: str) -> None:
    proxy = make_proxy(limits={"max_concurrent_requests": 2})
    body = os.urandom(200_000)
    slow = [SlowPut(proxy, bucket, f"node1/data/slow{i}", body) for i in range(2)]
    for put in slow:
        put.send(4096)
    wait_for(lambda: metric(scrape(proxy)[1], "requests_in_flight") == 2, what="2 requests in flight")

    client = proxy.client(retries=NO_RETRY, **MEDUSA_CLIENT_CONFIG)
    with pytest.raises(ClientError) as exc:
        client.list_objects_v2(Bucket=bucket)
    error = exc.value.response
    assert error["Error"]["Code"] == "SlowDown"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert error["ResponseMetadata"]["RequestId"]
    # A PUT refused with its body unread: the proxy answers at once and closes the connection.
    third = SlowPut(proxy, bucket, "node1/data/refused", body)
    third.send(4096)
    response = third.conn.getresponse()
    assert response.status == 503
    assert b"<Code>SlowDown</Code>" in response.read()
    third.conn.close()

    # Health endpoints are not limited.
    assert http_status(proxy.endpoint_url + "/readyz") == 200

    # The slow requests finish normally, and the proxy serves again.
    for put in slow:
        status, reply = put.finish()
        assert status == 200, reply
    assert client.get_object(Bucket=bucket, Key="node1/data/slow0")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == ["node1/data/slow0", "node1/data/slow1"]

    _, samples = scrape(proxy)
    assert metric(samples, "s3_requests_total", operation="ListObjectsV2", status="503") == 1
    assert metric(samples, "s3_requests_total", operation="PutObject", status="503") == 1
    assert metric(samples, "s3_requests_total", operation="PutObject", status="200") == 2
    assert metric(samples, "requests_in_flight") == 0
    assert metric(samples, "requests_rejected_total", reason="overload") == 2
    assert metric(samples, "requests_rejected_total", reason="draining") == 0


# ------------------------------------------------------------------------------------
# TLS
# ------------------------------------------------------------------------------------


@pytest.fixture
def tls_proxy(make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> tuple[ProxyProcess, Path]:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "tls-selfsigned", "--out", str(tmp_path / "tls")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    printed = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    cert, key = Path(printed["certificate"]), Path(printed["private key"])
    assert cert.is_file() and key.is_file()
    assert (key.stat().st_mode & 0o077) == 0
    proxy = make_proxy(start=False, tls={"cert_file": str(cert), "key_file": str(key)})
    proxy.__class__ = TLSProxyProcess  # same process handling, https endpoint
    proxy.start()
    return proxy, cert


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_with_medusa_settings_and_boto_defaults(
    tls_proxy: tuple[ProxyProcess, Path], bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    proxy, cert = tls_proxy
    assert proxy.endpoint_url.startswith("https://")
    assert http_status(f"http://{proxy.host}:{proxy.port}/healthz") is None  # no plaintext listener

    # Medusa: secure = True, ssl_verify = False, when_required checksums.
    medusa = tls_client(proxy, False, **MEDUSA_CLIENT_CONFIG)
    data = os.urandom(70_000)
    medusa.put_object(Bucket=bucket, Key="node1/data/medusa.db", Body=data)
    assert medusa.get_object(Bucket=bucket, Key="node1/data/medusa.db")["Body"].read() == data

    # A client verifying against the generated certificate, with boto's default settings:
    # over https botocore sends aws-chunked bodies with a CRC trailer and no payload hash.
    verifying = tls_client(proxy, str(cert))
    sent = record_headers(verifying)
    small = b"small object over tls " * 1000
    verifying.put_object(Bucket=bucket, Key="node1/data/small.db", Body=small)
    big = os.urandom(12 * MiB + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(big)
    verifying.upload_file(
        str(source),
        bucket,
        "node1/data/big.db",
        Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB),
    )
    streamed = {
        op for op, headers in sent if headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    }
    assert {"PutObject", "UploadPart"} <= streamed, sent

    assert verifying.get_object(Bucket=bucket, Key="node1/data/small.db")["Body"].read() == small
    assert medusa.get_object(Bucket=bucket, Key="node1/data/big.db")["Body"].read() == big
    ranged = verifying.get_object(Bucket=bucket, Key="node1/data/big.db", Range="bytes=5242870-5242889")
    assert ranged["Body"].read() == big[5242870:5242890]
    # What the bucket holds is not the plaintext.
    stored = raw_client.get_object(Bucket=bucket, Key="node1/data/big.db")["Body"].read()
    assert big[:4096] not in stored and len(stored) > len(big)

    # The listener really is TLS with this certificate: a client trusting only the system CAs
    # refuses it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strict = tls_client(proxy, True)
        with pytest.raises(BotoCoreError, match=r"(?i)ssl|certificate"):
            strict.list_objects_v2(Bucket=bucket)


# ------------------------------------------------------------------------------------
# lifecycle: SIGTERM drain, readiness
# ------------------------------------------------------------------------------------


def test_sigterm_lets_the_in_flight_part_finish_and_exits_zero(
    make_proxy: Callable[..., ProxyProcess], bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    drain_timeout = 20.0
    proxy = make_proxy(limits={"drain_timeout": drain_timeout}, logging={"format": "json"})
    assert proxy.process is not None and proxy.process.proc is not None
    proc = proxy.process.proc
    part = 5 * MiB
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(30 * MiB))
    client = proxy.client(retries=NO_RETRY, **MEDUSA_CLIENT_CONFIG)

    progress = [0]
    in_second_part = threading.Event()

    def callback(n: int) -> None:
        progress[0] += n
        if progress[0] > part + 256 * 1024:
            in_second_part.set()
        time.sleep(0.003)  # about 2 s per 5 MiB part: the part is in flight for a while

    failure: list[BaseException] = []

    def upload() -> None:
        try:
            client.upload_file(
                str(source),
                bucket,
                "node1/data/big-Data.db",
                Callback=callback,
                Config=TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=1),
            )
        except BaseException as exc:
            failure.append(exc)

    late = proxy.client(retries=NO_RETRY, **MEDUSA_CLIENT_CONFIG)
    worker = threading.Thread(target=upload)
    worker.start()
    try:
        assert in_second_part.wait(60), "the upload did not reach its second part"
        signalled_at = time.monotonic()
        at_signal = progress[0]
        proc.send_signal(signal.SIGTERM)
        assert part < at_signal < 2 * part, at_signal

        # New requests are refused while the part is still being sent.
        wait_for(lambda: '"event":"draining"' in proxy.log_text(), what="the draining line")
        with pytest.raises((ClientError, BotoCoreError)) as refused:
            late.list_objects_v2(Bucket=bucket)
        if isinstance(refused.value, ClientError):
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert progress[0] < 2 * part, "the in-flight part was done before the refusal was checked"

        code = proc.wait(timeout=drain_timeout + 5)
        elapsed = time.monotonic() - signalled_at
    finally:
        worker.join(60)
    assert code == 0
    assert elapsed < drain_timeout
    # The whole upload could not finish (its later parts met a stopped proxy) ...
    assert failure, "the upload finished although the proxy stopped"
    # ... but the part in flight when SIGTERM came was sent in full and answered 200.
    assert progress[0] >= 2 * part
    records = json_lines(proxy)
    events = [r.get("event") for r in records]
    assert events.index("draining") < events.index("stopped")
    after = records[events.index("draining") :]
    assert [r["status"] for r in after if r.get("operation") == "UploadPart"][:1] == [200]
    uploads = raw_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert len(uploads) == 1
    parts = raw_client.list_parts(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
    assert [p["PartNumber"] for p in parts["Parts"]] == [1, 2]


def test_readiness_follows_the_upstream(make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    own = MotoServer(tmp_path / "own-moto")
    own.start()
    try:
        proxy = make_proxy(start=False)
        proxy.config["upstream"] = {**proxy.config["upstream"], "endpoint_url": own.endpoint_url}
        proxy.start()
        ready, healthy = proxy.endpoint_url + "/readyz", proxy.endpoint_url + "/healthz"
        # No probe has asked yet: the scrape runs the check itself.
        assert metric(scrape(proxy)[1], "ready") == 1
        assert http_status(ready) == 200

        assert own.process is not None
        own.process.stop()
        wait_for(lambda: http_status(ready, timeout=10) == 503, what="/readyz 503 with the upstream down")
        assert http_status(healthy) == 200  # alive, only not ready
        assert metric(scrape(proxy)[1], "ready") == 0
        assert "readiness:" in proxy.log_text()

        # The upstream comes back on the same address: ready again, without a restart.
        own.process = ManagedProcess(f"moto:{own.port}", own.workdir / "moto-again.log")
        own.process.spawn(own._command(own.port), env=own._env(), cwd=own.workdir)
        own.process.wait_until(own._ready)
        wait_for(lambda: http_status(ready, timeout=10) == 200, what="/readyz 200 again")
        assert metric(scrape(proxy)[1], "ready") == 1
    finally:
        own.stop()


def test_no_upstream_credentials_is_said_at_start(make_proxy: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    """Without credentials the proxy still starts (the chain may find some later: a role), but
    says so at once, and /readyz names the cause rather than a 503 the bucket never sent."""
    nowhere = str(tmp_path / "none")
    env = {"AWS_SHARED_CREDENTIALS_FILE": nowhere, "AWS_CONFIG_FILE": nowhere, "AWS_EC2_METADATA_DISABLED": "true"}
    proxy = make_proxy(start=False, env=env)
    proxy.config["upstream"] = {
        k: v for k, v in proxy.config["upstream"].items() if k not in ("access_key_id", "secret_access_key")
    }
    proxy.start()
    assert "no upstream credentials" in proxy.log_text()
    assert http_status(proxy.endpoint_url + "/readyz", timeout=10) == 503
    wait_for(lambda: "Unable to locate credentials" in proxy.log_text(), what="the readiness line naming the cause")


# ------------------------------------------------------------------------------------
# SIGHUP
# ------------------------------------------------------------------------------------


def test_sighup_reloads_keys_and_clients_without_dropping_connections(
    make_proxy: Callable[..., ProxyProcess], bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    proxy = make_proxy(logging={"format": "json"})
    assert proxy.process is not None and proxy.process.proc is not None
    pid = proxy.process.proc.pid
    old_key = Path(proxy.config["encryption"]["key_files"][0])
    old_id = key_id(old_key)
    assert label_values(scrape(proxy)[1], "build_info", "key_ids") == [old_id]

    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    client.put_object(Bucket=bucket, Key="node1/data/old.db", Body=b"written with the old key")
    across = SlowPut(proxy, bucket, "node1/data/across.db", b"a" * 100_000)
    across.send(1000)
    keep_alive = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    keep_alive.request("GET", "/healthz")
    assert keep_alive.getresponse().read() == b"ok\n"

    new_key = generate_fernet_key_file(tmp_path / "keys" / "new.key")
    new_id = key_id(new_key)
    proxy.config["encryption"] = {"key_files": [str(new_key), str(old_key)]}
    proxy.config["clients"] = [{"access_key_id": "medusa2", "secret_access_key": "the-second-secret"}]
    proxy.write_config()
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: f"keys reloaded: primary {new_id}" in proxy.log_text(), what="the reload line")

    # Nothing was dropped: the request in flight and the idle keep-alive connection carry on.
    status, reply = across.finish()
    assert status == 200, reply
    keep_alive.request("GET", "/healthz")
    assert keep_alive.getresponse().read() == b"ok\n"
    keep_alive.close()
    assert proxy.running and proxy.process.proc.pid == pid

    # The old credential is gone, the new one works; new objects use the new key, old ones
    # stay readable.
    with pytest.raises(ClientError) as exc:
        client.list_objects_v2(Bucket=bucket)
    assert exc.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    second = proxy.client(access_key_id="medusa2", secret_access_key="the-second-secret", **MEDUSA_CLIENT_CONFIG)
    second.put_object(Bucket=bucket, Key="node1/data/new.db", Body=b"written with the new key")
    head = raw_client.head_object(Bucket=bucket, Key="node1/data/new.db")
    assert {k.lower(): v for k, v in head["Metadata"].items()}["mcp-key-id"] == new_id
    head = raw_client.head_object(Bucket=bucket, Key="node1/data/old.db")
    assert {k.lower(): v for k, v in head["Metadata"].items()}["mcp-key-id"] == old_id
    assert second.get_object(Bucket=bucket, Key="node1/data/old.db")["Body"].read() == b"written with the old key"
    assert second.get_object(Bucket=bucket, Key="node1/data/new.db")["Body"].read() == b"written with the new key"
    assert second.get_object(Bucket=bucket, Key="node1/data/across.db")["Body"].read() == b"a" * 100_000
    assert label_values(scrape(proxy)[1], "build_info", "key_ids") == [f"{new_id},{old_id}"]

    # A broken key file, then a broken config: each is one error line, and nothing changes.
    for broken in ("key", "yaml"):
        if broken == "key":
            proxy.config["encryption"] = {"key_files": [str(tmp_path / "keys" / "missing.key")]}
            proxy.write_config()
        else:
            proxy.config_path.write_text("clients: [unclosed\n")
        failed_before = proxy.log_text().count("reload failed")
        os.kill(pid, signal.SIGHUP)
        wait_for(
            lambda n=failed_before + 1: proxy.log_text().count("reload failed") == n,
            what=f"the failed reload line ({broken})",
        )
        second.put_object(Bucket=bucket, Key=f"node1/data/after-{broken}.db", Body=b"still fine")
        head = raw_client.head_object(Bucket=bucket, Key=f"node1/data/after-{broken}.db")
        assert {k.lower(): v for k, v in head["Metadata"].items()}["mcp-key-id"] == new_id
        assert label_values(scrape(proxy)[1], "build_info", "key_ids") == [f"{new_id},{old_id}"]
    failures = [r for r in json_lines(proxy) if r.get("event") == "reload_failed"]
    assert len(failures) == 2 and all(r["level"] == "error" for r in failures)
    assert "missing.key" in failures[0]["msg"] and "YAML" in failures[1]["msg"]
    assert proxy.stop() == 0


# ------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------


def test_metrics_move_after_real_requests(make_proxy: Callable[..., ProxyProcess], bucket: str, tmp_path: Path) -> None:
    proxy = make_proxy()
    other = make_proxy()  # same key, its own cache: objects it writes are cache misses here
    _, before = scrape(proxy)

    def delta(after: Samples, name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    body = os.urandom(300_000)
    client.put_object(Bucket=bucket, Key="node1/data/a.db", Body=body)
    client.put_object(Bucket=bucket, Key="node1/bk1/meta/tokenmap.json", Body=b"{}")
    assert client.head_object(Bucket=bucket, Key="node1/data/a.db")["ContentLength"] == len(body)
    assert client.get_object(Bucket=bucket, Key="node1/data/a.db")["Body"].read() == body
    other.client(**MEDUSA_CLIENT_CONFIG).put_object(Bucket=bucket, Key="node1/data/b.db", Body=b"b" * 1000)
    assert client.get_object(Bucket=bucket, Key="node1/data/b.db")["Body"].read() == b"b" * 1000
    listed = client.list_objects_v2(Bucket=bucket, Prefix="node1/")
    assert {o["Key"]: o["Size"] for o in listed["Contents"]}["node1/data/a.db"] == len(body)
    with pytest.raises(ClientError):
        client.get_object(Bucket=bucket, Key="node1/data/missing.db")
    upload = client.create_multipart_upload(Bucket=bucket, Key="node1/data/mp.db")
    _, during = scrape(proxy)
    client.abort_multipart_upload(Bucket=bucket, Key="node1/data/mp.db", UploadId=upload["UploadId"])
    # cache_entries is counted at scrape time, at most once a second.
    text, after = wait_for(
        lambda: (s := scrape(proxy))[1].get((P + "cache_entries", ())) == 2 and s, timeout=5, what="cache_entries == 2"
    )

    assert delta(after, "s3_requests_total", operation="PutObject", status="200") == 2
    assert delta(after, "s3_requests_total", operation="GetObject", status="200") == 2
    assert delta(after, "s3_requests_total", operation="GetObject", status="404") == 1
    assert delta(after, "s3_requests_total", operation="HeadObject", status="200") == 1
    assert delta(after, "s3_requests_total", operation="ListObjectsV2", status="200") == 1
    assert delta(after, "s3_requests_total", operation="CreateMultipartUpload", status="200") == 1
    assert delta(after, "s3_requests_total", operation="AbortMultipartUpload", status="204") == 1
    assert delta(after, "s3_request_duration_seconds_count", operation="GetObject") == 3
    assert delta(after, "s3_request_duration_seconds_sum", operation="GetObject") > 0
    assert delta(after, "client_bytes_received_total") >= len(body) + 2
    assert delta(after, "client_bytes_sent_total") >= len(body) + 1000
    assert delta(after, "bytes_encrypted_total") == len(body)  # meta/ is stored as it is
    assert delta(after, "bytes_decrypted_total") == len(body) + 1000
    assert delta(after, "cache_lookups_total", result="hit") >= 2  # a.db: written here
    assert delta(after, "cache_lookups_total", result="miss") >= 1  # b.db: written by the other
    assert metric(during, "multipart_uploads_in_flight") == 1
    assert metric(after, "multipart_uploads_in_flight") == 0
    assert metric(after, "requests_in_flight") == 0
    assert delta(after, "upstream_requests_total", operation="PutObject", outcome="ok") == 2
    assert delta(after, "upstream_requests_total", operation="GetObject", outcome="ok") >= 2
    assert delta(after, "upstream_requests_total", operation="HeadObject", outcome="error") >= 1
    assert delta(after, "upstream_errors_total", code="NoSuchKey") >= 1
    assert delta(after, "upstream_bytes_sent_total") > len(body)  # ciphertext is larger
    assert delta(after, "upstream_bytes_received_total") > len(body)
    assert delta(after, "integrity_failures_total") == 0

    key_file = Path(proxy.config["encryption"]["key_files"][0])
    assert [dict(ls) for (n, ls) in after if n == P + "build_info"] == [
        {"version": __version__, "key_ids": key_id(key_file)}
    ]
    assert key_file.read_text().strip() not in text
    # A private registry: no generic python_* or process_* series, the process's own under the prefix.
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith(P) for line in series), [line for line in series if not line.startswith(P)]
    assert any(line.startswith(P + "process_resident_memory_bytes ") for line in series)


# ------------------------------------------------------------------------------------
# logs
# ------------------------------------------------------------------------------------


def test_json_logs_parse_and_hold_no_secret(make_proxy: Callable[..., ProxyProcess], bucket: str) -> None:
    proxy = make_proxy(logging={"format": "json", "level": "DEBUG"})
    marker = "BODY-MARKER-5f1e0c7a9b3d"
    body = (marker + "\n").encode() * 2000
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    sent = record_headers(client)
    request_ids: list[str] = []

    def call(method: str, **params: Any) -> Any:
        reply = getattr(client, method)(**params)
        request_ids.append(reply["ResponseMetadata"]["RequestId"])
        return reply

    call("put_object", Bucket=bucket, Key="node1/data/marker.db", Body=body)
    call("put_object", Bucket=bucket, Key="node1/meta/marker.json", Body=body)
    assert call("get_object", Bucket=bucket, Key="node1/data/marker.db")["Body"].read() == body
    call("head_object", Bucket=bucket, Key="node1/meta/marker.json")
    call("list_objects_v2", Bucket=bucket)
    upload = call("create_multipart_upload", Bucket=bucket, Key="node1/data/mp.db")
    part = call(
        "upload_part", Bucket=bucket, Key="node1/data/mp.db", UploadId=upload["UploadId"], PartNumber=1, Body=body
    )
    call(
        "complete_multipart_upload",
        Bucket=bucket,
        Key="node1/data/mp.db",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )

    wrong_secret = "Wr0ngSecretWr0ngSecretWr0ngSecretWr0ng12"
    bad = proxy.client(secret_access_key=wrong_secret, **MEDUSA_CLIENT_CONFIG)
    bad_sent = record_headers(bad)
    with pytest.raises(ClientError) as exc:
        bad.get_object(Bucket=bucket, Key="node1/data/marker.db")
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    request_ids.append(exc.value.response["ResponseMetadata"]["RequestId"])

    presigner = proxy.client(signature_version="s3v4", **MEDUSA_CLIENT_CONFIG)
    url = presigner.generate_presigned_url(
        "get_object", ExpiresIn=300, Params={"Bucket": bucket, "Key": "node1/data/marker.db"}
    )
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == body
        request_ids.append(resp.headers["x-amz-request-id"])
    presigned_signature = re.search(r"X-Amz-Signature=([0-9a-f]{64})", url)
    assert presigned_signature is not None
    # boto3's default presigned URL in us-east-1 is SigV2: refused, and its signature not logged.
    url_v2 = client.generate_presigned_url(
        "get_object", ExpiresIn=300, Params={"Bucket": bucket, "Key": "node1/data/marker.db"}
    )
    v2_signature = re.search(r"[?&]Signature=([^&]+)", url_v2)
    assert v2_signature is not None
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url_v2, timeout=10)
    assert refused.value.code == 403
    request_ids.append(refused.value.headers["x-amz-request-id"])
    proxy.stop()  # the log of the whole run, shutdown included

    records = json_lines(proxy)
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
    access = [r for r in records if r["msg"] == "request"]
    assert access
    for record in access:
        assert {"request_id", "operation", "status", "method", "duration_ms"} <= set(record), record
    logged_ids = {r["request_id"] for r in access}
    assert all(request_ids) and set(request_ids) <= logged_ids
    failed = [r for r in access if r.get("error") == "SignatureDoesNotMatch"]
    assert len(failed) == 1 and failed[0]["status"] == 403
    assert {"ready", "draining", "stopped"} <= {r.get("event") for r in records}

    signatures = [
        m.group(1)
        for _, headers in sent + bad_sent
        if (m := re.search(r"Signature=([0-9a-f]{64})", headers.get("authorization", "")))
    ]
    assert len(signatures) == 9  # the eight calls above and the refused one
    log = proxy.log_text()
    forbidden = {
        "client secret": proxy.secret_key,
        "wrong secret": wrong_secret,
        "upstream secret": str(proxy.config["upstream"]["secret_access_key"]),
        "fernet key": Path(proxy.config["encryption"]["key_files"][0]).read_text().strip(),
        "presigned signature": presigned_signature.group(1),
        "SigV2 presigned signature": urllib.parse.unquote(v2_signature.group(1)),
        "body marker": marker,
        "AWS4-HMAC-SHA256 Credential": "AWS4-HMAC-SHA256 Credential",
        **{f"signature {i}": s for i, s in enumerate(signatures)},
    }
    leaked = [what for what, secret in forbidden.items() if secret in log]
    assert not leaked, leaked


@pytest.fixture(autouse=True)
def _no_stray_aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """boto3 clients here take their credentials from arguments only."""
    for name in ("AWS_PROFILE", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    yield
