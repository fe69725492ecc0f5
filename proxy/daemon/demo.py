"""``medusa-crypt-proxy demo``: the proxy in front of an embedded local S3 server (moto).

For a first look only: the S3 server keeps objects in memory and the key is throwaway.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

DEMO_BUCKET = "medusa-backups"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(port: int, workdir: str | None) -> int:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print(
            "medusa-crypt-proxy: the demo needs the embedded S3 server: pip install 'medusa-crypt-proxy[demo]'",
            file=sys.stderr,
        )
        return 2
    from proxy.config import parse_config
    from proxy.daemon.server import run, serve
    from proxy.keyfiles import generate_key_file
    from proxy.logs import setup_logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    work = Path(workdir or tempfile.mkdtemp(prefix="medusa-crypt-proxy-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    s3_port = _free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="demo", aws_secret_access_key="demo"
    ).create_bucket(Bucket=DEMO_BUCKET)
    key_file = work / "demo.key"
    if not key_file.exists():
        generate_key_file(str(key_file))
    access_key, secret = "medusa", secrets.token_urlsafe(24)
    credentials = work / "medusa-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret}\n")
    credentials.chmod(0o600)
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "port": port},
            "clients": [{"access_key_id": access_key, "secret_access_key": secret}],
            "upstream": {
                "endpoint_url": endpoint,
                "region": "us-east-1",
                "addressing_style": "path",
                "access_key_id": "demo",
                "secret_access_key": "demo",
            },
            "encryption": {"key_files": [str(key_file)]},
            "cache": {"path": str(work / "cache.sqlite")},
            "logging": {"format": "text"},
        }
    )
    banner = f"""\
Demo: an in-memory S3 server on {endpoint} with bucket '{DEMO_BUCKET}', the proxy on
http://127.0.0.1:{port}. Files in {work}. Point Medusa at the proxy with:

[storage]
storage_provider = s3_compatible
bucket_name = {DEMO_BUCKET}
host = 127.0.0.1
port = {port}
secure = False
region = us-east-1
key_file = {credentials}

or try: AWS_SHARED_CREDENTIALS_FILE={credentials} aws --endpoint-url http://127.0.0.1:{port} s3 ls s3://{DEMO_BUCKET}
Stop with Ctrl-C.
"""
    setup_logging("text", "INFO")
    try:
        run(serve(config, on_ready=lambda: print(banner, flush=True)))
    finally:
        s3.stop()
        if workdir is None:  # a temporary directory of its own: gone with the demo
            shutil.rmtree(work, ignore_errors=True)
    return 0
