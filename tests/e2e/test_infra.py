"""The test infrastructure itself, against the raw upstream servers (no proxy in the middle).

If these fail, every proxy test is suspect: the servers, the clients, the tool venvs and the
Medusa driver must be right before the proxy is put between them.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.medusa_helpers import (
    MiB,
    keys_containing,
    list_keys,
    make_snapshot,
    medusa_storage,
    run_medusa,
    s3_etag,
    small_layout,
)
from tests.support.servers import (
    MotoServer,
    ProxyProcess,
    RcloneS3Server,
    S3Server,
    http_status,
    make_client,
)

MEDUSA_CONFIG = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}


# ------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------


def test_servers_run_on_distinct_loopback_ports(moto_server: MotoServer, rclone_server: RcloneS3Server) -> None:
    assert moto_server.port != rclone_server.port
    for server in (moto_server, rclone_server):
        assert server.endpoint_url.startswith("http://127.0.0.1:")
        assert http_status(server.endpoint_url + "/") is not None


@pytest.mark.parametrize("client_settings", ["medusa", "boto-default"])
def test_upstream_put_get_head_list_delete(upstream: S3Server, bucket: str, client_settings: str) -> None:
    c = upstream.client(**(MEDUSA_CONFIG if client_settings == "medusa" else {}))
    bodies = {f"dir/k{i}": f"body {i} ".encode() * (i + 1) for i in range(5)}
    bodies["empty"] = b""
    for key, body in bodies.items():
        c.put_object(Bucket=bucket, Key=key, Body=body)
    for key, body in bodies.items():
        got = c.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body
        head = c.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(body)
        assert head["ETag"].strip('"') == hashlib.md5(body).hexdigest()

    # string-prefix (not directory) semantics and continuation-token paging
    pages = list(
        c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dir/k", PaginationConfig={"PageSize": 2})
    )
    assert len(pages) == 3
    listed = [o for p in pages for o in p.get("Contents", [])]
    assert [o["Key"] for o in listed] == sorted(k for k in bodies if k.startswith("dir/"))
    for o in listed:
        assert o["Size"] == len(bodies[o["Key"]])
        assert o["ETag"].strip('"') == hashlib.md5(bodies[o["Key"]]).hexdigest()
        assert "StorageClass" in o and "LastModified" in o

    # ranges, open-ended and suffix (Medusa's settings: rclone's ranged replies carry the
    # whole object's CRC32, which boto's defaults reject, see the test below)
    c = upstream.client(**MEDUSA_CONFIG)
    r = c.get_object(Bucket=bucket, Key="dir/k4", Range="bytes=2-9")
    assert r["Body"].read() == bodies["dir/k4"][2:10]
    assert r["ContentRange"] == f"bytes 2-9/{len(bodies['dir/k4'])}"
    assert c.get_object(Bucket=bucket, Key="dir/k4", Range="bytes=5-")["Body"].read() == bodies["dir/k4"][5:]
    assert c.get_object(Bucket=bucket, Key="dir/k4", Range="bytes=-3")["Body"].read() == bodies["dir/k4"][-3:]

    resp = c.delete_object(Bucket=bucket, Key="dir/k0")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket=bucket, Key="dir/k0")
    assert e.value.response["Error"]["Code"] == "404"
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket=bucket, Key="dir/k0")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_upstream_multipart(upstream: S3Server, bucket: str) -> None:
    c = upstream.client(**MEDUSA_CONFIG)
    parts_data = [b"a" * (5 * MiB), b"b" * (5 * MiB), b"tail" * 10]
    mpu = c.create_multipart_upload(Bucket=bucket, Key="big")
    parts = []
    for n in (3, 1, 2):  # out of order, as s3transfer's threads do
        r = c.upload_part(Bucket=bucket, Key="big", UploadId=mpu["UploadId"], PartNumber=n, Body=parts_data[n - 1])
        assert r["ETag"].strip('"') == hashlib.md5(parts_data[n - 1]).hexdigest()
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    parts.sort(key=lambda p: p["PartNumber"])
    c.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts})
    whole = b"".join(parts_data)
    head = c.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(whole)
    assert c.get_object(Bucket=bucket, Key="big")["Body"].read() == whole
    etag = head["ETag"].strip('"')
    if upstream.name == "moto":
        assert etag == s3_etag(whole)  # md5 of the part md5s, "-3"
    else:  # rclone: the MD5 of the whole object (DESIGN.md section 7)
        assert etag == hashlib.md5(whole).hexdigest()

    # abort leaves nothing behind
    mpu2 = c.create_multipart_upload(Bucket=bucket, Key="aborted")
    c.upload_part(Bucket=bucket, Key="aborted", UploadId=mpu2["UploadId"], PartNumber=1, Body=b"x" * 100)
    resp = c.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=mpu2["UploadId"])
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert list_keys(c, bucket) == ["big"]


def test_upstream_small_non_last_part(upstream: S3Server, bucket: str) -> None:
    """The documented difference: moto refuses a non-last part under 5 MiB, rclone accepts."""
    c = upstream.client(**MEDUSA_CONFIG)
    mpu = c.create_multipart_upload(Bucket=bucket, Key="small-parts")
    parts = []
    for n, body in ((1, b"x" * 1024), (2, b"y" * 10)):
        r = c.upload_part(Bucket=bucket, Key="small-parts", UploadId=mpu["UploadId"], PartNumber=n, Body=body)
        parts.append({"ETag": r["ETag"], "PartNumber": n})

    def complete() -> Any:
        return c.complete_multipart_upload(
            Bucket=bucket, Key="small-parts", UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts}
        )

    if upstream.name == "moto":
        with pytest.raises(ClientError) as e:
            complete()
        assert e.value.response["Error"]["Code"] == "EntityTooSmall"
    else:
        complete()
        body = c.get_object(Bucket=bucket, Key="small-parts")["Body"].read()
        assert body == b"x" * 1024 + b"y" * 10


def test_rclone_checks_signatures(rclone_server: RcloneS3Server) -> None:
    """rclone verifies SigV4 with --auth-key (moto's server mode accepts any credentials)."""
    bucket = rclone_server.create_bucket()
    c = make_client(rclone_server.endpoint_url, rclone_server.access_key, "wrong-secret")
    with pytest.raises(ClientError) as e:
        c.list_objects_v2(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    rclone_server.delete_bucket(bucket)


def test_rclone_ranged_get_carries_whole_object_crc32(rclone_server: RcloneS3Server) -> None:
    """Measured: rclone answers a ranged GET with x-amz-checksum-crc32 of the WHOLE object.

    boto's default response_checksum_validation then fails with FlexibleChecksumError, so
    tests of ranges through the proxy must not take such a reply as the proxy's fault, and
    the proxy must never pass an upstream checksum through.
    """
    import base64
    import zlib

    from botocore.exceptions import FlexibleChecksumError

    bucket = rclone_server.create_bucket()
    body = bytes(range(256)) * 40
    rclone_server.client().put_object(Bucket=bucket, Key="k", Body=body)
    c = rclone_server.client()  # boto defaults: x-amz-checksum-mode: ENABLED
    r = c.get_object(Bucket=bucket, Key="k", Range="bytes=10-19")
    crc = r["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc32")
    assert crc == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    with pytest.raises(FlexibleChecksumError):
        r["Body"].read()
    rclone_server.delete_bucket(bucket)


def test_server_start_stop_releases_port(tmp_path: Path) -> None:
    for server in (MotoServer(tmp_path / "m"), RcloneS3Server(tmp_path / "r")):
        server.start()
        port = server.port
        proc = server.process
        assert proc is not None and proc.running
        server.stop()
        assert not proc.running
        assert proc.proc is not None and proc.proc.returncode is not None
        with socket.socket() as s:  # nothing listens any more
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_failed_start_reports_the_log(tmp_path: Path) -> None:
    proxy = ProxyProcess({"clients": []}, tmp_path, start=False)
    with pytest.raises(RuntimeError) as e:
        proxy.start(timeout=20)
    assert "exited with code" in str(e.value)
    assert str(proxy.log_path) in str(e.value)
    assert "clients" in proxy.log_text()  # the proxy's own complaint is in the log


# ------------------------------------------------------------------------------------
# tool venvs
# ------------------------------------------------------------------------------------


def test_medusa_venv_is_separate(medusa_python: str, tmp_path: Path) -> None:
    import botocore

    result = run_medusa("version", {}, tmp_dir=tmp_path)
    assert result["medusa"] == "0.31.0"
    assert result["botocore"] == "1.40.41"  # Medusa's pin
    assert botocore.__version__ != result["botocore"]  # the product's venv is not dragged down
    assert Path(medusa_python).parent != Path(sys.executable).parent
    out = subprocess.run([medusa_python, "-c", "import proxy"], capture_output=True, text=True, cwd="/")
    assert out.returncode != 0  # the product is not installed there


def test_aws_cli_runs(aws_cli: str, moto_server: MotoServer, tmp_path: Path) -> None:
    bucket = moto_server.create_bucket()
    src = tmp_path / "f.bin"
    src.write_bytes(b"0123456789" * 1000)
    env = {
        "AWS_ACCESS_KEY_ID": moto_server.access_key,
        "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    version = subprocess.run([aws_cli, "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and "aws-cli/1." in (version.stdout + version.stderr)
    cp = subprocess.run(
        [aws_cli, "--endpoint-url", moto_server.endpoint_url, "s3", "cp", str(src), f"s3://{bucket}/f.bin"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    got = moto_server.client().get_object(Bucket=bucket, Key="f.bin")["Body"].read()
    assert got == src.read_bytes()


# ------------------------------------------------------------------------------------
# the Medusa driver, straight to moto
# ------------------------------------------------------------------------------------


@pytest.fixture
def moto_bucket(moto_server: MotoServer) -> Any:
    name = moto_server.create_bucket()
    yield name
    moto_server.delete_bucket(name)


def _storage(server: S3Server, bucket: str, **kw: Any) -> dict[str, Any]:
    return medusa_storage(server.endpoint_url, bucket, server.access_key, server.secret_key, **kw)


def test_medusa_full_backup_verify_list_download_direct(
    moto_server: MotoServer, tmp_path: Path, moto_bucket: str
) -> None:
    bucket = moto_bucket
    raw = moto_server.client()
    snap = make_snapshot(tmp_path / "data")
    storage = _storage(moto_server, bucket)

    r = run_medusa(
        "backup",
        {"storage": storage, "backup_name": "full-a", "mode": "full", "snapshot_dir": str(snap.root)},
        tmp_dir=tmp_path / "t",
    )
    assert (r["uploaded"], r["reuploaded"], r["kept"]) == (17, 0, 0)
    assert r["uploaded_files"] == sorted(snap.files)
    entries = {o["path"]: o for t in r["manifest"] for o in t["objects"]}
    assert len(entries) == 17
    for rel, (size, md5) in snap.digests().items():
        entry = entries[f"node1.test/full-a/data/{rel}"]
        assert entry["size"] == size
        # moto's ETags are S3's: md5, or md5-of-part-md5s-N from the threshold on
        assert entry["MD5"] == s3_etag(snap.path(rel))
        if size < 5 * MiB:
            assert entry["MD5"] == md5
    keys = list_keys(raw, bucket)
    for suffix in ("meta/schema.cql", "meta/tokenmap.json", "meta/manifest.json", "meta/server_version.json"):
        assert f"node1.test/full-a/{suffix}" in keys
    assert any(k.startswith("index/backup_index/full-a/started_node1.test_") for k in keys)
    assert any(k.startswith("index/backup_index/full-a/finished_node1.test_") for k in keys)
    assert "index/latest_backup/node1.test/backup_name.txt" in keys

    # Without a proxy the marker is in every non-empty data object: the leak check can fire.
    hits = keys_containing(raw, bucket, snap.marker, prefix="node1.test/full-a/data/")
    assert sorted(hits) == sorted(f"node1.test/full-a/data/{rel}" for rel, size in snap.files.items() if size > 0)

    for md5_checks in (False, True):
        v = run_medusa(
            "verify",
            {"storage": storage, "backup_name": "full-a", "enable_md5_checks": md5_checks},
            tmp_dir=tmp_path / "t",
        )
        assert v["ok"] and "Manifest validated: OK" in v["output"]

    lst = run_medusa("list", {"storage": storage}, tmp_dir=tmp_path / "t")
    assert [b["name"] for b in lst["backups"]] == ["full-a"]
    assert lst["backups"][0]["num_objects"] == 17
    assert lst["backups"][0]["size"] == sum(snap.files.values())
    assert lst["latest"] == "full-a"

    d = run_medusa(
        "download",
        {"storage": storage, "backup_name": "full-a", "destination": str(tmp_path / "restore")},
        tmp_dir=tmp_path / "t",
    )
    assert snap.compare_download(d["destination"]) == []
    assert {"manifest.json", "schema.cql", "tokenmap.json"} <= set(d["files"])
    manifest = json.loads(Path(d["destination"], "manifest.json").read_text())
    assert manifest == r["manifest"]

    # verify can fail: a stored object of the wrong size is reported
    bad = "node1.test/full-a/data/" + next(rel for rel, s in snap.files.items() if 0 < s < MiB)
    raw.put_object(Bucket=bucket, Key=bad, Body=b"changed")
    v = run_medusa("verify", {"storage": storage, "backup_name": "full-a"}, tmp_dir=tmp_path / "t", check=False)
    assert not v["ok"]
    assert any(bad.split("/data/", 1)[1] in line for line in v["errors"]), v["output"]


def test_medusa_differential_counts_direct(moto_server: MotoServer, tmp_path: Path, moto_bucket: str) -> None:
    """The driver reports Medusa's decisions; they match the measured reference counts."""
    bucket = moto_bucket
    snap = make_snapshot(tmp_path / "data")
    exact_multiples = sorted(rel for rel, s in snap.files.items() if s >= 5 * MiB and s % (5 * MiB) == 0)
    assert len(exact_multiples) == 2

    def backup(name: str, md5: bool) -> dict[str, Any]:
        return run_medusa(
            "backup",
            {
                "storage": _storage(moto_server, bucket),
                "backup_name": name,
                "mode": "differential",
                "snapshot_dir": str(snap.root),
                "enable_md5_checks": md5,
            },
            tmp_dir=tmp_path / "t",
        )

    first = backup("diff1", False)
    assert (first["uploaded"], first["reuploaded"], first["kept"]) == (17, 0, 0)
    assert first["node_backup"]["differential"] is True
    again = backup("diff2", False)
    assert (again["uploaded"], again["reuploaded"], again["kept"]) == (0, 0, 17)
    md5 = backup("diff3", True)
    # Medusa's md5_multipart quirk: exact multiples of the part size are re-uploaded.
    assert md5["reuploaded_files"] == exact_multiples
    assert (md5["uploaded"], md5["kept"]) == (0, 15)

    small = sorted(rel for rel, s in snap.files.items() if len(snap.marker) < s < MiB)
    snap.add("ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-9-big-Data.db", 777)
    snap.grow(small[0], 10)
    snap.change_same_size(small[1])
    snap.delete(small[2])
    off = backup("diff4", False)
    assert off["uploaded_files"] == ["ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-9-big-Data.db"]
    assert off["reuploaded_files"] == [small[0]]  # same-size change not seen without md5
    assert small[1] in off["kept_files"]
    v = run_medusa(
        "verify",
        {"storage": _storage(moto_server, bucket), "backup_name": "diff4", "enable_md5_checks": True},
        tmp_dir=tmp_path / "t",
    )
    assert v["ok"], v["output"]
    # Differential backups share {fqdn}/data/; a re-upload overwrites the object an older
    # backup's manifest describes, so verify of that older backup now fails on it (real
    # SSTables are immutable, so Medusa never meets this with Cassandra).
    v = run_medusa(
        "verify",
        {"storage": _storage(moto_server, bucket), "backup_name": "diff1"},
        tmp_dir=tmp_path / "t",
        check=False,
    )
    assert not v["ok"]
    assert [line for line in v["errors"] if "Blob different" in line] == [
        f"  - [node1.test/data/{small[0]}] Blob different"
    ]


def test_medusa_delete_and_purge_direct(moto_server: MotoServer, tmp_path: Path, moto_bucket: str) -> None:
    bucket = moto_bucket
    raw = moto_server.client()
    snap = make_snapshot(tmp_path / "data", small_layout())
    storage = _storage(moto_server, bucket)
    for name in ("alpha", "bravo", "charlie"):
        run_medusa(
            "backup",
            {"storage": storage, "backup_name": name, "mode": "differential", "snapshot_dir": str(snap.root)},
            tmp_dir=tmp_path / "t",
        )
    # a data file only "alpha" and "bravo" reference becomes an orphan once both are gone
    snap.delete("ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Index.db")
    run_medusa(
        "backup",
        {"storage": storage, "backup_name": "delta", "mode": "differential", "snapshot_dir": str(snap.root)},
        tmp_dir=tmp_path / "t",
    )

    d = run_medusa("delete", {"storage": storage, "backup_name": "alpha"}, tmp_dir=tmp_path / "t")
    assert d["deleted"] == ["alpha"]
    keys = list_keys(raw, bucket)
    assert not [k for k in keys if "/alpha/" in k or k.startswith("index/backup_index/alpha/")]
    lst = run_medusa("list", {"storage": storage}, tmp_dir=tmp_path / "t")
    assert [b["name"] for b in lst["backups"]] == ["bravo", "charlie", "delta"]

    p = run_medusa("purge", {"storage": storage, "max_backup_count": 1}, tmp_dir=tmp_path / "t")
    assert p["backups_purged"] == 2
    lst = run_medusa("list", {"storage": storage}, tmp_dir=tmp_path / "t")
    assert [b["name"] for b in lst["backups"]] == ["delta"]
    keys = list_keys(raw, bucket)
    assert not [k for k in keys if k.split("/")[1:2] in (["bravo"], ["charlie"])]
    data_keys = sorted(k.split("/data/", 1)[1] for k in keys if k.startswith("node1.test/data/"))
    assert data_keys == sorted(snap.files)  # the orphan is gone, the rest stays
    run_medusa("verify", {"storage": storage, "backup_name": "delta"}, tmp_dir=tmp_path / "t")


# ------------------------------------------------------------------------------------
# the proxy process wrapper
# ------------------------------------------------------------------------------------


def test_proxy_process_start_restart_stop(make_proxy: Any, upstream: S3Server, bucket: str) -> None:
    proxy = make_proxy()
    assert http_status(proxy.endpoint_url + "/healthz") == 200
    c = proxy.client(**MEDUSA_CONFIG)
    c.put_object(Bucket=bucket, Key="p/x", Body=b"through the proxy")
    assert c.get_object(Bucket=bucket, Key="p/x")["Body"].read() == b"through the proxy"
    assert "p/x" in list_keys(upstream.client(), bucket)
    port = proxy.port
    proxy.restart()
    assert proxy.port == port and proxy.starts == 2
    assert proxy.client(**MEDUSA_CONFIG).get_object(Bucket=bucket, Key="p/x")["Body"].read() == b"through the proxy"
    code = proxy.stop()
    assert code == 0, proxy.log_text()[-3000:]
    assert http_status(proxy.endpoint_url + "/healthz") is None
    assert proxy.log_text()


def test_medusa_driver_fails_fast_without_medusa_retries(tmp_path: Path) -> None:
    """Medusa's tenacity retries (minutes) are off by default; botocore's remain (seconds)."""
    import time

    from tests.support.servers import free_port

    storage = medusa_storage(f"http://127.0.0.1:{free_port()}", "nobucket", "ak", "sk")
    started = time.monotonic()
    r = run_medusa("list", {"storage": storage, "log_level": "DEBUG"}, check=False, tmp_dir=tmp_path, timeout=120)
    assert time.monotonic() - started < 60
    assert not r["ok"] and r["returncode"] == 1
    assert "EndpointConnectionError" in r["error"]
    assert "disabled tenacity retries on" in r["stderr"]
