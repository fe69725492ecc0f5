"""The command line as an operator uses it: config checks, keys, offline tools, the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from proxy import __version__
from tests.functional.test_objects import MARKER, MIB, payload, raw_bytes
from tests.support.servers import free_port


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    assert cli("--version").stdout.strip() == f"medusa-crypt-proxy {__version__}"


def test_keygen(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    done = cli("keygen", str(path))
    assert done.returncode == 0
    assert re.fullmatch(r"[0-9a-f]{16}", done.stdout.strip())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = cli("keygen", str(path))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_check_config_ok_and_env_override(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    cli("keygen", str(key))
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    path = write_config(
        tmp_path,
        f"""
clients: [{{access_key_id: medusa, secret_access_key_file: {secret}}}]
upstream: {{endpoint_url: "http://127.0.0.1:9"}}
encryption: {{key_files: [{key}]}}
""",
    )
    done = cli("check-config", "--config", str(path), env={"MCP_LISTEN__PORT": "9999"})
    assert done.returncode == 0, done.stderr
    assert "listening on 127.0.0.1:9999" in done.stdout
    assert "s3cr3t" not in done.stdout + done.stderr


def test_check_config_reports_every_problem_on_one_line_each(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
listen: {port: 99999}
clients: []
upstream: {addressing_style: sideways}
encryption: {key_files: []}
surprise: 1
""",
    )
    done = cli("check-config", "--config", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith("medusa-crypt-proxy: config error: ") for line in lines)
    assert "Traceback" not in done.stderr
    assert any("listen.port" in line for line in lines)
    assert any("encryption" in line and "key file" in line for line in lines)
    assert "medusa-crypt-proxy: config error: surprise: unknown field" in lines


def test_check_config_not_yaml(tmp_path: Path) -> None:
    done = cli("check-config", "--config", str(write_config(tmp_path, "a: [b\n")))
    assert done.returncode == 2 and "not valid YAML" in done.stderr and "Traceback" not in done.stderr
    missing = cli("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "No such file" in missing.stderr


def test_offline_tools_match_the_proxy(proxy: Any, raw_client: Any, bucket: str, tmp_path: Path) -> None:
    """An object downloaded from the bucket by any means decrypts without the daemon, and back."""
    key = "node1/data/ks/t/nb-1-big-Data.db"
    data = payload(2 * MIB + 3, 5)
    proxy.client().put_object(Bucket=bucket, Key=key, Body=data)
    stored = tmp_path / "stored.bin"
    stored.write_bytes(raw_bytes(raw_client, bucket, key))
    key_file = proxy.config["encryption"]["key_files"][0]

    info = cli("inspect", str(stored))
    assert info.returncode == 0
    fields = json.loads(info.stdout)
    assert fields["plaintext_size"] == len(data) and key in json.dumps(fields)

    out = tmp_path / "plain.bin"
    assert cli("decrypt", "--key-file", key_file, "--object-key", key, str(stored), str(out)).returncode == 0
    assert out.read_bytes() == data
    wrong = cli("decrypt", "--key-file", key_file, "--object-key", "other/key", str(stored), str(tmp_path / "x"))
    assert wrong.returncode == 1 and not (tmp_path / "x").exists()

    again = tmp_path / "again.bin"
    assert cli("encrypt", "--key-file", key_file, "--object-key", key, str(out), str(again)).returncode == 0
    assert MARKER not in again.read_bytes()
    raw_client.put_object(Bucket=bucket, Key=key, Body=again.read_bytes())
    assert proxy.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_demo_serves_a_working_proxy(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", str(port), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = ""
        deadline = time.monotonic() + 60
        while "Stop with Ctrl-C" not in banner and time.monotonic() < deadline:
            banner += process.stdout.readline()
        assert "storage_provider = s3_compatible" in banner and f"port = {port}" in banner
        credentials = (tmp_path / "medusa-credentials").read_text()
        access = re.search(r"aws_access_key_id = (\S+)", credentials)
        secret = re.search(r"aws_secret_access_key = (\S+)", credentials)
        assert access and secret
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=access.group(1),
            aws_secret_access_key=secret.group(1),
        )
        for _ in range(100):
            try:
                client.put_object(Bucket="medusa-backups", Key="n/data/x", Body=b"hello")
                break
            except Exception:  # the proxy may still be starting
                time.sleep(0.2)
        assert client.get_object(Bucket="medusa-backups", Key="n/data/x")["Body"].read() == b"hello"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("the demo did not stop on SIGINT")
    assert process.returncode == 0


def test_serve_refuses_to_start_on_a_bad_key_or_cache(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = write_config(
        tmp_path,
        f"""
clients: [{{access_key_id: a, secret_access_key: b}}]
upstream: {{endpoint_url: "http://127.0.0.1:9"}}
encryption: {{key_files: [{key}, {tmp_path / "missing.key"}]}}
cache: {{path: {blocker / "sub" / "cache.sqlite"}}}
""",
    )
    done = cli("serve", "--config", str(path), timeout=30)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert any("not a Fernet key" in line for line in lines)
    assert any(line.startswith("medusa-crypt-proxy: cache: cannot create") for line in lines)


def one_line_error(done: subprocess.CompletedProcess[str], command: str) -> str:
    """The command failed with one readable line on stderr (warnings aside), no traceback."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"medusa-crypt-proxy {command}: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_operator_mistakes_are_one_line(tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "k.key"
    assert "No such file or directory" in one_line_error(cli("keygen", str(missing_dir)), "keygen")
    key = tmp_path / "k.key"
    cli("keygen", str(key))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    data = tmp_path / "object.bin"
    data.write_bytes(payload(5000, 3))
    line = one_line_error(cli("decrypt", "--key-file", str(garbage), str(data), str(tmp_path / "out")), "decrypt")
    assert "not a Fernet key" in line and "not a key" not in line  # the file's content is never echoed
    line = one_line_error(
        cli("decrypt", "--key-file", str(key), str(tmp_path / "nothing"), str(tmp_path / "o")), "decrypt"
    )
    assert "nothing" in line
    assert cli("decrypt", "--key-file", str(key), str(data), str(tmp_path / "out2")).returncode != 0


def test_demo_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    """One line, no banner promising a proxy that is not there, nothing left open."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = cli("demo", "--port", str(taken.getsockname()[1]), "--workdir", str(tmp_path / "demo"))
    assert "address already in use" in one_line_error(done, "demo")
    assert "Point Medusa at the proxy" not in done.stdout


def test_tls_selfsigned_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert cli("tls-selfsigned", "--out", str(out)).returncode == 0
    before = (out / "tls.key").read_bytes()
    line = one_line_error(cli("tls-selfsigned", "--out", str(out)), "tls-selfsigned")
    assert "exists" in line
    assert (out / "tls.key").read_bytes() == before


def test_verify_bucket_failures_are_one_line(upstream: Any, tmp_path: Path) -> None:
    """No credentials, an unreachable upstream, a bucket that does not exist: one line each."""
    config = write_config(
        tmp_path,
        f"upstream: {{endpoint_url: '{upstream.endpoint_url}', region: us-east-1, max_attempts: 1}}\n",
    )
    creds = {"AWS_ACCESS_KEY_ID": upstream.access_key, "AWS_SECRET_ACCESS_KEY": upstream.secret_key}
    line = one_line_error(
        cli("verify-bucket", "--config", str(config), "--bucket", "no-such-bucket-here", env=creds), "verify-bucket"
    )
    assert "no-such-bucket-here" in line or "NoSuchBucket" in line, line
    (tmp_path / "dead").mkdir()
    dead = write_config(
        tmp_path / "dead", "upstream: {endpoint_url: 'http://127.0.0.1:9', region: us-east-1, max_attempts: 1}\n"
    )
    assert "Could not connect" in one_line_error(
        cli("verify-bucket", "--config", str(dead), "--bucket", "b", env=creds), "verify-bucket"
    )
    no_creds = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | no_creds
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "verify-bucket", "--config", str(config), "--bucket", "b"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "credentials" in one_line_error(done, "verify-bucket")


def test_check_config_tells_everything_at_once(tmp_path: Path) -> None:
    """Schema problems, every unreadable key file and the variable a bad value came from, in one
    run; a loose key file is warned about once."""
    path = write_config(
        tmp_path,
        """
clients: [{access_key_id: medusa, secret_access_key: s}]
upstream: {endpoint_url: 'http://127.0.0.1:9', bogus: 1}
encryption: {key_files: [/nonexistent/a.key, /nonexistent/b.key]}
""",
    )
    done = cli("check-config", "--config", str(path), env={"MCP_LISTEN__PORT": "99999"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert any("listen.port" in line and "(set by MCP_LISTEN__PORT)" in line for line in lines), lines
    assert any("upstream.bogus: unknown field" in line for line in lines), lines
    assert sum("/nonexistent/" in line for line in lines) == 2, lines
    key = tmp_path / "loose.key"
    cli("keygen", str(key))
    key.chmod(0o644)
    good = write_config(
        tmp_path,
        f"""
clients: [{{access_key_id: medusa, secret_access_key: s}}]
upstream: {{endpoint_url: 'http://127.0.0.1:9'}}
encryption: {{key_files: ['{key}', /nonexistent/c.key, /nonexistent/d.key]}}
cache: {{path: '{tmp_path / "cache.sqlite"}'}}
""",
    )
    done = cli("check-config", "--config", str(good))
    assert done.returncode == 2
    assert sum("/nonexistent/" in line for line in done.stderr.splitlines()) == 2, done.stderr
    only_loose = write_config(tmp_path, good.read_text().replace(", /nonexistent/c.key, /nonexistent/d.key", ""))
    done = cli("check-config", "--config", str(only_loose))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("chmod 600") == 1, done.stderr


def test_offline_tools_use_standard_streams(tmp_path: Path) -> None:
    """``-`` reads standard input and writes standard output; a damaged object gives no byte on
    standard output (it is written only once verified) and fails, as does ``inspect`` of it."""
    key = tmp_path / "k.key"
    cli("keygen", str(key))
    data = payload(300_000, 4)

    def run(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "proxy", *args], input=stdin, capture_output=True, timeout=60)

    stored = run("encrypt", "--key-file", str(key), "--object-key", "a/b", "-", "-", stdin=data)
    assert stored.returncode == 0 and MARKER not in stored.stdout and len(stored.stdout) > len(data)
    back = run("decrypt", "--key-file", str(key), "--object-key", "a/b", "-", "-", stdin=stored.stdout)
    assert back.returncode == 0 and back.stdout == data
    damaged = bytearray(stored.stdout)
    damaged[len(damaged) // 2] ^= 1
    bad = run("decrypt", "--key-file", str(key), "-", "-", stdin=bytes(damaged))
    assert bad.returncode == 1 and bad.stdout == b"" and b"Traceback" not in bad.stderr
    trailer_damaged = bytearray(stored.stdout)
    trailer_damaged[-100] ^= 1
    (tmp_path / "t.bin").write_bytes(trailer_damaged)
    assert cli("inspect", str(tmp_path / "t.bin")).returncode == 1


def test_check_config_can_reach_the_upstream(upstream: Any, bucket: str, tmp_path: Path) -> None:
    """--check-upstream answers for the credentials and each bucket a client is limited to."""
    key = tmp_path / "k.key"
    cli("keygen", str(key))

    def config(buckets: list[str], credentials: str) -> Path:
        return write_config(
            tmp_path,
            f"""
clients: [{{access_key_id: medusa, secret_access_key: s, buckets: {json.dumps(buckets)}}}]
upstream: {{endpoint_url: '{upstream.endpoint_url}', addressing_style: path, {credentials}}}
encryption: {{key_files: ['{key}']}}
cache: {{path: '{tmp_path / "cache.sqlite"}'}}
""",
        )

    good = f"access_key_id: {upstream.access_key}, secret_access_key: {upstream.secret_key}"
    done = cli("check-config", "--config", str(config([bucket], good)), "--check-upstream")
    assert done.returncode == 0, done.stderr
    assert f"bucket {bucket} reachable" in done.stdout
    done = cli("check-config", "--config", str(config([bucket, "no-such-bucket-x"], good)), "--check-upstream")
    assert done.returncode == 2
    problems = [line for line in done.stderr.splitlines() if line.startswith("medusa-crypt-proxy: upstream:")]
    assert len(problems) == 1 and "no-such-bucket-x" in problems[0], done.stderr
    assert "Traceback" not in done.stderr
