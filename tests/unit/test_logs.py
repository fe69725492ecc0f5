"""Unit tests for proxy.logs: JSON lines parse, extra fields come through, secrets do not."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from proxy.logs import REDACTED, log_request, redact, setup_logging

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
FERNET_KEY = "q4xY0pLKtMX8pmBqaZ2cUPrS8a4Z1Vqb9EJ6h0D7Ck8="
SIG = "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
    f"SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature={SIG}"
)
TOKEN = "FQoGZXIvYXdzEBYaDH8example+session/token=="


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("json", "debug", stream=buf)
    yield buf
    root.handlers[:] = old_handlers
    root.setLevel(old_level)


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in buf.getvalue().splitlines() if x.strip()]


def test_json_line_fields(capture: io.StringIO) -> None:
    log = logging.getLogger("medusa_crypt_proxy.test")
    log.info("started on %s", "127.0.0.1:8333", extra={"port": 8333})
    log_request(
        log,
        request_id="0123ABCD",
        operation="GetObject",
        bucket="b",
        key="n1/data/ks/t/x.db",
        status=206,
        bytes_in=0,
        bytes_out=1024,
        duration_ms=3.2,
        upstream_status=206,
        name="not-a-record-attr",
    )
    a, b = lines(capture)
    assert a["msg"] == "started on 127.0.0.1:8333" and a["level"] == "info"
    assert a["logger"] == "medusa_crypt_proxy.test" and a["port"] == 8333
    assert str(a["ts"]).endswith("Z")
    assert b["msg"] == "request"
    for k, v in {
        "request_id": "0123ABCD",
        "operation": "GetObject",
        "bucket": "b",
        "key": "n1/data/ks/t/x.db",
        "status": 206,
        "bytes_in": 0,
        "bytes_out": 1024,
        "duration_ms": 3.2,
        "upstream_status": 206,
        "name_": "not-a-record-attr",
    }.items():
        assert b[k] == v


def test_secrets_never_written(capture: io.StringIO) -> None:
    log = logging.getLogger("medusa_crypt_proxy.test")
    log.warning("bad request Authorization: %s", AUTH)
    log.info("headers", extra={"headers": {"Authorization": AUTH, "Host": "x"}})
    log.info("url https://h/b/k?X-Amz-Credential=AKIA%%2F&X-Amz-Signature=%s&X-Amz-Security-Token=%s", SIG, TOKEN)
    log.info("chunk chunk-signature=%s;", SIG)
    log.info("loaded key %s and secret %s", FERNET_KEY, SECRET_KEY)
    log.info(
        "config", extra={"secret_access_key": "short", "client_secret": "abc", "upstream": {"secret_key": SECRET_KEY}}
    )
    log.info("cfg aws_secret_access_key=%s password: hunter2", SECRET_KEY)
    log.info("body", extra={"body": b"PLAINTEXT BYTES"})
    try:
        raise ValueError(f"could not load {FERNET_KEY}")
    except ValueError:
        log.exception("failure")
    out = capture.getvalue()
    for secret in (SIG, SECRET_KEY, FERNET_KEY, TOKEN, "hunter2", "PLAINTEXT BYTES", 'abc"'):
        assert secret not in out, secret
    assert REDACTED in out
    lines(capture)  # still valid JSON lines


def test_redact_keeps_ordinary_values() -> None:
    for benign in (
        "d41d8cd98f00b204e9800998ecf8427e",  # MD5 ETag
        "d41d8cd98f00b204e9800998ecf8427e-12",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # payload sha256
        "node1/data/ks1/tbl-0123456789abcdef0123456789abcdef/nb-1-big-Data.db",
        "index/backup_index/bk1/manifest_node1.json",
        "AKIAIOSFODNN7EXAMPLE",  # access key ids are not secret
        "GET /bucket/key?uploadId=abc&partNumber=3",
    ):
        assert redact(benign) == benign


def test_text_format_and_bad_args() -> None:
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level
    try:
        buf = io.StringIO()
        setup_logging("text", "INFO", stream=buf)
        setup_logging("text", "INFO", stream=buf)  # idempotent: one handler
        log = logging.getLogger("t")
        log.debug("hidden")
        log_request(log, operation="HeadObject", status=200, key=FERNET_KEY)
        out = buf.getvalue()
        assert out.count("\n") == 1 and "hidden" not in out
        assert "operation=HeadObject" in out and FERNET_KEY not in out
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
    with pytest.raises(ValueError):
        setup_logging("xml", "INFO")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        setup_logging("json", "LOUD")
