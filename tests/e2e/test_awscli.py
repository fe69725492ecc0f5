"""The AWS CLI (awscli v1, botocore defaults: CRC32 checksums, 8 MiB multipart parts) through the
real proxy: ``aws s3 cp`` up and down, ``aws s3 ls``, ``aws s3api head-object``,
``aws s3 rm --recursive``, ``aws s3 mb`` and ``rb``; checked against what the raw upstream bucket
holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.support.servers import ProxyProcess, S3Server

MIB = 1 << 20
MARKER = b"PLAINTEXT-MARKER-awscli"
SIZE = 20_000_000
PREFIX = "node1/backup1"
DATA_KEY = f"{PREFIX}/data/ks1/table-1/nb-1-big-Data.db"
META_KEY = f"{PREFIX}/meta/tokenmap.json"  # plaintext metadata (a manifest.json would be sealed)


def payload(size: int) -> bytes:
    block = (MARKER + hashlib.sha256(b"awscli").digest() * 40)[:1000]
    return (block * (size // len(block) + 1))[:size]


def multipart_etag(data: bytes, part_size: int) -> str:
    digests = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def run_aws(aws_cli: str, proxy: ProxyProcess, home: Path, *args: str) -> str:
    done = aws_process(aws_cli, proxy, home, *args)
    assert done.returncode == 0, f"aws {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def aws_process(aws_cli: str, proxy: ProxyProcess, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "AWS_ACCESS_KEY_ID": proxy.access_key,
        "AWS_SECRET_ACCESS_KEY": proxy.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
    }
    return subprocess.run(
        [aws_cli, "--endpoint-url", proxy.endpoint_url, *args], capture_output=True, text=True, env=env, timeout=120
    )


def raw_keys(raw_client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in raw_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_aws_cli_cp_ls_head_rm(aws_cli: str, proxy: ProxyProcess, raw_client: Any, bucket: str, tmp_path: Path) -> None:
    data = payload(SIZE)
    meta = b'{"files": ["nb-1-big-Data.db"]}'
    src = tmp_path / "Data.db"
    src.write_bytes(data)
    (tmp_path / "tokenmap.json").write_bytes(meta)

    # Up: 20 MB is over the CLI's 8 MB threshold, so a multipart upload with 8 MiB parts.
    run_aws(aws_cli, proxy, tmp_path, "s3", "cp", str(src), f"s3://{bucket}/{DATA_KEY}")
    run_aws(aws_cli, proxy, tmp_path, "s3", "cp", str(tmp_path / "tokenmap.json"), f"s3://{bucket}/{META_KEY}")
    stored = raw_client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read()
    assert len(stored) > SIZE and MARKER not in stored
    assert raw_client.get_object(Bucket=bucket, Key=META_KEY)["Body"].read() == meta

    # ls: plaintext sizes.
    listing = run_aws(aws_cli, proxy, tmp_path, "s3", "ls", "--recursive", f"s3://{bucket}/{PREFIX}/")
    sizes = {line.split(None, 3)[3]: int(line.split(None, 3)[2]) for line in listing.splitlines()}
    assert sizes == {DATA_KEY: SIZE, META_KEY: len(meta)}
    top = run_aws(aws_cli, proxy, tmp_path, "s3", "ls", f"s3://{bucket}/")
    assert top.split() == ["PRE", "node1/"]

    # head-object: plaintext length and S3's multipart ETag over the 8 MiB plaintext parts.
    head = json.loads(run_aws(aws_cli, proxy, tmp_path, "s3api", "head-object", "--bucket", bucket, "--key", DATA_KEY))
    assert head["ContentLength"] == SIZE
    assert head["ETag"].strip('"') == multipart_etag(data, 8 * MIB)
    assert not any(k.startswith("Checksum") for k in head)

    # Down: HEAD + ranged GETs with If-Match and x-amz-checksum-mode, compared byte for byte.
    dst = tmp_path / "down.db"
    run_aws(aws_cli, proxy, tmp_path, "s3", "cp", f"s3://{bucket}/{DATA_KEY}", str(dst))
    assert dst.read_bytes() == data

    # rm --recursive: one DeleteObject per listed key; the raw bucket is empty afterwards.
    removed = run_aws(aws_cli, proxy, tmp_path, "s3", "rm", "--recursive", f"s3://{bucket}/{PREFIX}/")
    assert removed.count("delete:") == 2
    assert raw_keys(raw_client, bucket) == []
    assert run_aws(aws_cli, proxy, tmp_path, "s3", "ls", "--recursive", f"s3://{bucket}/") == ""


def test_aws_cli_mb_rb(aws_cli: str, proxy: ProxyProcess, upstream: S3Server, tmp_path: Path) -> None:
    """``aws s3 mb`` makes the bucket upstream; ``rb`` of a non-empty one fails with S3's
    BucketNotEmpty, ``rb --force`` empties and removes it; ``rb`` of a missing one, NoSuchBucket."""
    name = f"mb-{uuid.uuid4().hex[:16]}"
    raw = upstream.client()
    try:
        assert run_aws(aws_cli, proxy, tmp_path, "s3", "mb", f"s3://{name}").strip() == f"make_bucket: {name}"
        assert name in {b["Name"] for b in raw.list_buckets()["Buckets"]}
        assert name in run_aws(aws_cli, proxy, tmp_path, "s3", "ls").split()

        (tmp_path / "Data.db").write_bytes(payload(100_000))
        run_aws(aws_cli, proxy, tmp_path, "s3", "cp", str(tmp_path / "Data.db"), f"s3://{name}/{DATA_KEY}")
        refused = aws_process(aws_cli, proxy, tmp_path, "s3", "rb", f"s3://{name}")
        assert refused.returncode != 0 and "BucketNotEmpty" in refused.stderr, refused.stderr
        assert raw_keys(raw, name) == [DATA_KEY]

        removed = run_aws(aws_cli, proxy, tmp_path, "s3", "rb", "--force", f"s3://{name}")
        assert f"remove_bucket: {name}" in removed
        assert name not in {b["Name"] for b in raw.list_buckets()["Buckets"]}

        missing = aws_process(aws_cli, proxy, tmp_path, "s3", "rb", f"s3://{name}")
        assert missing.returncode != 0 and "NoSuchBucket" in missing.stderr, missing.stderr
    finally:
        with contextlib.suppress(Exception):
            upstream.delete_bucket(name)
