"""Secrets at rest and in logs: secret files' permissions, the cache's file modes, and no client
bytes in aiohttp's error lines.

The log tests run the real proxy and send it malformed HTTP whose bad part is a recognisable
secret-looking marker: aiohttp's parser errors quote those bytes (its 400 reply to the client
still does, which proves they reached the parser), and the proxy's log must not.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.cache import CachedView, StateStore
from proxy.config import parse_config
from proxy.logs import ClientBytesFilter, describe_exception, safe_traceback, setup_logging
from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.support.servers import CLIENT_ACCESS_KEY, CLIENT_SECRET_KEY, REGION, ProxyProcess

SECRET = "s3cr3t-client-value-0123456789"
MARKER = "MEDUSA-BODY-SECRET-7f3a9c1e"  # no redaction pattern matches it: only the filter hides it


def _secret_file(path: Path, mode: int, value: str = SECRET) -> Path:
    path.write_text(value + "\n")
    os.chmod(path, mode)
    return path


def _config(clients: list[dict[str, Any]], upstream: dict[str, Any] | None = None) -> Any:
    return parse_config({"clients": clients, "upstream": upstream or {}, "encryption": {"enabled": False}}, environ={})


# ------------------------------------------------------------------------------------------
# secret files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_loose_client_secret_file_is_warned_about(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = _secret_file(tmp_path / "client-secret", mode)
    with caplog.at_level(logging.WARNING, logger="proxy.config"):
        config = _config([{"access_key_id": "medusa", "secret_access_key_file": str(path)}])
    assert config.client_secret("medusa") == SECRET
    warnings = [r for r in caplog.records if r.name == "proxy.config"]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert str(path) in line and f"mode {mode:o}" in line and "chmod 600" in line
    assert SECRET not in caplog.text


def test_a_loose_upstream_secret_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = _secret_file(tmp_path / "client-secret", 0o600)
    upstream = _secret_file(tmp_path / "upstream-secret", 0o640)
    with caplog.at_level(logging.WARNING, logger="proxy.config"):
        config = _config(
            [{"access_key_id": "medusa", "secret_access_key_file": str(client)}],
            {"access_key_id": "AKIAEXAMPLE", "secret_access_key_file": str(upstream)},
        )
    assert config.upstream.secret_access_key == SECRET
    warnings = [r.getMessage() for r in caplog.records if r.name == "proxy.config"]
    assert len(warnings) == 1  # the client's file is private: only the upstream's is named
    assert str(upstream) in warnings[0] and "mode 640" in warnings[0] and "upstream" in warnings[0]
    assert SECRET not in caplog.text


def test_private_secret_files_are_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = _secret_file(tmp_path / "client-secret", 0o600)
    upstream = _secret_file(tmp_path / "upstream-secret", 0o400)
    with caplog.at_level(logging.WARNING, logger="proxy.config"):
        _config(
            [{"access_key_id": "medusa", "secret_access_key_file": str(client)}],
            {"access_key_id": "AKIAEXAMPLE", "secret_access_key_file": str(upstream)},
        )
    assert [r for r in caplog.records if r.name == "proxy.config"] == []


def test_the_running_proxy_warns_about_a_loose_secret_file(
    make_proxy: Callable[..., ProxyProcess], tmp_path: Path, bucket: str
) -> None:
    path = _secret_file(tmp_path / "client-secret", 0o644, CLIENT_SECRET_KEY)
    proxy = make_proxy(clients=[{"access_key_id": CLIENT_ACCESS_KEY, "secret_access_key_file": str(path)}])
    proxy.client(**MEDUSA_CLIENT_CONFIG).put_object(Bucket=bucket, Key="k", Body=b"x")
    log = proxy.log_text()
    assert f"secret_access_key file {path} is accessible by group/other (mode 644)" in log
    assert CLIENT_SECRET_KEY not in log


# ------------------------------------------------------------------------------------------
# the cache's files
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(db: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()}


async def test_cache_files_are_created_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "state" / "cache.sqlite"
    with _umask(0o002):  # a umask that would leave them group-writable and world-readable
        store = StateStore(str(db))
        await store.start()
        try:
            await store.put_view("b", "k", "v", CachedView("encrypted", 1, "0" * 32, b"t"))
            assert await store.get_views("b", [("k", "v")])  # written and read: the WAL is in use
            modes = _modes(db)
            assert set(modes) == {"cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm"}
            assert modes == dict.fromkeys(modes, 0o600)
        finally:
            await store.close()
    assert all(mode == 0o600 for mode in _modes(db).values())


async def test_existing_loose_cache_files_are_made_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "cache.sqlite"
    with _umask(0o022):
        old = sqlite3.connect(db)
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE t (x)")
        os.chmod(db, 0o644)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{db}{suffix}", 0o644)
        assert stat.S_IMODE(db.stat().st_mode) == 0o644
        store = StateStore(str(db))
        await store.start()
        try:
            assert _modes(db) == dict.fromkeys(_modes(db), 0o600)
        finally:
            await store.close()
            old.close()


def test_the_running_proxy_keeps_its_cache_owner_only(make_proxy: Callable[..., ProxyProcess], bucket: str) -> None:
    with _umask(0o022):  # inherited by the proxy process
        proxy = make_proxy()
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    client.put_object(Bucket=bucket, Key="node1/data/x.db", Body=b"encrypted")
    client.list_objects_v2(Bucket=bucket)  # the view goes to the cache
    db = Path(proxy.config["cache"]["path"])
    deadline = time.monotonic() + 10
    while not Path(f"{db}-wal").exists():
        assert time.monotonic() < deadline, "no WAL file"
        time.sleep(0.05)
    modes = _modes(db)
    assert "cache.sqlite" in modes and modes == dict.fromkeys(modes, 0o600)


# ------------------------------------------------------------------------------------------
# client bytes in logs: the filter, in process
# ------------------------------------------------------------------------------------------


def _parser_error() -> BadHttpMessage:
    # What aiohttp's C parser raises for a bad chunk-size line.
    return BadHttpMessage(f"Invalid character in chunk size:\n\n  b'{MARKER}'\n    ^")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("json", "DEBUG", stream=buf)
    yield buf
    root.handlers[:] = old_handlers
    root.setLevel(old_level)


def test_aiohttp_exceptions_are_logged_without_their_message(json_log: io.StringIO) -> None:
    try:
        try:
            raise ValueError(f"inner {MARKER}")
        except ValueError as inner:
            raise _parser_error() from inner
    except BadHttpMessage as exc:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
    logging.getLogger("aiohttp.internal").warning("got %r and %s", MARKER.encode(), "x" * 1000)
    text = json_log.getvalue()
    assert MARKER not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["logger"] == "aiohttp.server" and first["level"] == "error"
    assert first["msg"] == (
        "Error handling request from 127.0.0.1: "
        "aiohttp.http_exceptions.BadHttpMessage (400): Invalid character in chunk size"
    )
    assert "Traceback (most recent call last)" in first["exc"]  # the frames are kept
    assert "builtins.ValueError" in first["exc"] and "test_secrets.py" in first["exc"]
    assert second["msg"].startswith(f"got '<{len(MARKER)} bytes>' and xxx")
    assert second["msg"].endswith("characters)") and len(second["msg"]) < 400


def test_other_loggers_are_not_filtered(json_log: io.StringIO) -> None:
    logging.getLogger("proxy.test").warning("kept: %s", "visible-text")
    assert json.loads(json_log.getvalue())["msg"] == "kept: visible-text"


def test_describe_exception_never_uses_the_message() -> None:
    assert (
        describe_exception(_parser_error())
        == "aiohttp.http_exceptions.BadHttpMessage (400): Invalid character in chunk size"
    )
    # A message that is not llhttp's "<reason>:\n\n  b'...'" gives no reason at all.
    assert (
        describe_exception(BadHttpMessage(f"Bad status line {MARKER!r}"))
        == "aiohttp.http_exceptions.BadHttpMessage (400)"
    )
    assert describe_exception(ValueError(MARKER)) == "builtins.ValueError"
    assert MARKER not in safe_traceback(_parser_error())


def test_the_filter_is_installed_once() -> None:
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level
    try:
        setup_logging("text", "INFO", stream=io.StringIO())
        setup_logging("json", "INFO", stream=io.StringIO())
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
    filters = logging.getLogger("aiohttp.server").filters
    assert sum(isinstance(f, ClientBytesFilter) for f in filters) == 1


# ------------------------------------------------------------------------------------------
# client bytes in logs: the real proxy
# ------------------------------------------------------------------------------------------

MALFORMED = [
    # A bad chunk-size line: the client's body bytes.
    ("chunk", f"PUT /b/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{MARKER}\r\nmore\r\n"),
    # A header with a control character: the whole header line.
    ("header", f"GET /b/k HTTP/1.1\r\nHost: x\r\nX-Bad\x01: {MARKER}\r\n\r\n"),
    # Not HTTP at all: the request line (aiohttp logs this one at DEBUG).
    ("method", f"{MARKER} garbage\r\n\r\n"),
    # A NUL in the path: the whole request line.
    ("url", f"GET /{MARKER}\x00 HTTP/1.1\r\nHost: x\r\n\r\n"),
]


def _exchange(proxy: ProxyProcess, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def _wait_for_log(proxy: ProxyProcess, text: str, count: int) -> str:
    deadline = time.monotonic() + 10
    while (log := proxy.log_text()).count(text) < count:
        assert time.monotonic() < deadline, f"{count} x {text!r} not in the log:\n{log[-5000:]}"
        time.sleep(0.05)
    return log


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_malformed_requests_leave_no_client_bytes_in_the_log(make_proxy: Callable[..., ProxyProcess], fmt: str) -> None:
    proxy = make_proxy(logging={"format": fmt, "level": "DEBUG"})
    for name, request in MALFORMED:
        answer = _exchange(proxy, request.encode())
        assert b" 400 Bad Request" in answer, (name, answer)
        assert MARKER.encode() in answer, (name, answer)  # the parser quoted them (to the client)
    log = _wait_for_log(proxy, "Error handling request from 127.0.0.1", len(MALFORMED))
    assert MARKER not in log
    assert "BadHttpMessage (400): Invalid character in chunk size" in log
    assert "InvalidURLError (400)" in log
    assert proxy.running


def _signed_chunked_head(proxy: ProxyProcess, path: str) -> bytes:
    headers = {"Transfer-Encoding": "chunked", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    request = AWSRequest("POST", proxy.endpoint_url + path, headers=headers)
    S3SigV4Auth(Credentials(proxy.access_key, proxy.secret_key), "s3", REGION).add_auth(request)
    lines = [f"POST {path} HTTP/1.1", f"Host: {proxy.host}:{proxy.port}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_bad_chunk_in_a_read_body_is_a_client_error_without_its_bytes(
    make_proxy: Callable[..., ProxyProcess], bucket: str
) -> None:
    # aiohttp's pure-Python parser hands a bad chunk to the request handler reading the body (the
    # C parser stops the connection instead): the proxy answers 400 and logs no bytes.
    proxy = make_proxy(env={"AIOHTTP_NO_EXTENSIONS": "1"})
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(_signed_chunked_head(proxy, f"/{bucket}?delete="))
        time.sleep(0.3)  # the handler is reading the body when the bad chunk arrives
        sock.sendall(f"5\r\n<Dele\r\n{MARKER}\r\n\r\n".encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"<Code>IncompleteBody</Code>" in answer and MARKER.encode() not in answer
    log = _wait_for_log(proxy, "operation=DeleteObjects error=IncompleteBody status=400", 1)
    assert MARKER not in log and "internal error" not in log
    assert proxy.running
