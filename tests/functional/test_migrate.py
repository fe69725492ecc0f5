"""``migrate`` on moto and rclone: unencrypted backups written before the proxy encrypted in
place, their manifests rewritten and sealed, the cutoff narrowed or removed, and nothing
changed in what Medusa sees.

A bucket as Medusa left it without the proxy (single and multipart SSTables, a manifest and its
index copy, a plaintext-by-design file), declared legacy: after ``migrate`` every data object is
an encrypted object of ours with the same plaintext size, ETag and bytes, the manifests are
sealed, no staged copy is left, and the config no longer serves unencrypted objects. An
interrupted run (staged copies before and after the write) is finished by the next one; what is
written after the cutoff is refused, never migrated; what is left outside the prefix keeps the
cutoff just wide enough.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from proxy.config import load_config
from proxy.format.detect import classify
from proxy.format.manifest_mac import find_seal
from proxy.tools.migrate import STAGING_PREFIX
from tests.functional.test_objects import MARKER, MIB, cutoff_after, payload, raw_bytes, wait_past
from tests.support.medusa_helpers import medusa_manifest
from tests.support.servers import ProxyProcess, S3Server

REPO = Path(__file__).resolve().parents[2]
DATA = "node1/data/ks1/t-1/"
MANIFEST = "node1/bk1/meta/manifest.json"
INDEX = "index/backup_index/bk1/manifest_node1.json"
SCHEMA = "node1/bk1/meta/schema.cql"


def migrate(config: Path, bucket: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "migrate", "--config", str(config), "--bucket", bucket, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def write_unencrypted(raw: Any, bucket: str) -> dict[str, bytes]:
    """What Medusa writes straight to the bucket: data files (one multipart), a manifest naming
    them with the bucket's ETags, its index copy, a schema file."""
    data = {DATA + "small-Data.db": payload(100_000, 1), DATA + "big-Data.db": payload(6 * MIB + 5, 2)}
    for key, value in data.items():
        raw.put_object(Bucket=bucket, Key=key, Body=value)
    key, parts = DATA + "multi-Data.db", [payload(5 * MIB, 3), payload(5 * MIB, 4), payload(MIB + 7, 5)]
    upload = raw.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [
        {
            "PartNumber": n,
            "ETag": raw.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=p)["ETag"],
        }
        for n, p in enumerate(parts, 1)
    ]
    raw.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    data[key] = b"".join(parts)
    entries = [(k, raw.head_object(Bucket=bucket, Key=k)["ETag"].strip('"'), len(v)) for k, v in data.items()]
    body = medusa_manifest(entries)
    for key in (MANIFEST, INDEX):
        raw.put_object(Bucket=bucket, Key=key, Body=body)
        data[key] = body
    raw.put_object(Bucket=bucket, Key=SCHEMA, Body=b"CREATE TABLE ks1.t1 (k int PRIMARY KEY);")
    return data


def legacy_proxy(make_proxy: Any, raw: Any, bucket: str, tmp_path: Path, **client: Any) -> tuple[ProxyProcess, Path]:
    """A proxy declaring everything in the bucket now legacy, and its config file (clients
    limited to ``bucket`` unless ``client`` says otherwise)."""
    cutoff = cutoff_after(raw, bucket)
    wait_past(cutoff)
    proxy = make_proxy(start=False)
    proxy.config["encryption"] = {**proxy.config["encryption"], "legacy_plaintext_before": cutoff}
    proxy.config["clients"] = [{**proxy.config["clients"][0], "buckets": [bucket], **client}]
    proxy.start()
    path = tmp_path / "migrate.yaml"
    path.write_text(yaml.safe_dump(proxy.config))
    return proxy, path


def view(client: Any, bucket: str, keys: list[str]) -> dict[str, tuple[int, str, str]]:
    out = {}
    for key in keys:
        got = client.get_object(Bucket=bucket, Key=key)
        out[key] = (got["ContentLength"], got["ETag"], hashlib.md5(got["Body"].read()).hexdigest())
    return out


def stored(raw: Any, bucket: str) -> dict[str, str]:
    listed = raw.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: f"{o['Size']} {o['ETag']}" for o in listed}


def is_encrypted(raw: Any, bucket: str, key: str) -> bool:
    body = raw_bytes(raw, bucket, key)
    return classify(body[:16], body[-16:], len(body)) == "encrypted" and MARKER not in body


def test_migrate_encrypts_a_bucket_in_place_and_removes_the_cutoff(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    data = write_unencrypted(raw_client, bucket)
    proxy, config = legacy_proxy(make_proxy, raw_client, bucket, tmp_path)
    keys = [*data, SCHEMA]
    before = view(proxy.client(), bucket, keys)
    assert before[DATA + "big-Data.db"][1] == f'"{hashlib.md5(data[DATA + "big-Data.db"]).hexdigest()}"'

    untouched = stored(raw_client, bucket)
    dry = migrate(config, bucket, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert stored(raw_client, bucket) == untouched
    for key in [DATA + "small-Data.db", DATA + "big-Data.db", DATA + "multi-Data.db", MANIFEST, INDEX]:
        assert f"WOULD encrypt {key} " in dry.stdout, dry.stdout
    assert SCHEMA not in dry.stdout
    assert "dry run: 3 object(s) and 2 manifest(s) to encrypt" in dry.stdout
    assert "legacy_plaintext_before can be removed" in dry.stdout, dry.stdout

    done = migrate(config, bucket, "--concurrency", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "encrypted 3 of 3 unencrypted object(s)" in done.stdout, done.stdout
    assert "rewrote 2 manifest(s)" in done.stdout and "progress: 3/3 objects" in done.stderr
    for key in (DATA + "small-Data.db", DATA + "big-Data.db", DATA + "multi-Data.db"):
        assert is_encrypted(raw_client, bucket, key), key
    for key in (MANIFEST, INDEX):
        assert find_seal(raw_bytes(raw_client, bucket, key)) is not None, key
    assert raw_bytes(raw_client, bucket, SCHEMA) == b"CREATE TABLE ks1.t1 (k int PRIMARY KEY);"
    assert not [k for k in stored(raw_client, bucket) if k.startswith(STAGING_PREFIX)]
    assert load_config(str(config)).encryption.legacy_plaintext_before is None
    assert "# legacy_plaintext_before:" in config.read_text() and "removed by migrate" in config.read_text()

    # Without any cutoff now, Medusa's view is what it was: every object verified as ours.
    proxy.stop()
    proxy.config = yaml.safe_load(config.read_text())
    proxy.start()
    assert view(proxy.client(), bucket, keys) == before
    key_file = proxy.config["encryption"]["key_files"][0]
    command = [sys.executable, "-m", "proxy", "verify-bucket", "--config", str(config), "--bucket", bucket]
    checked = subprocess.run([*command, "--key-file", key_file], cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    again = migrate(config, bucket)
    assert again.returncode == 2 and "legacy_plaintext_before is not set" in again.stderr, again.stderr
