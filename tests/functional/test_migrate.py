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
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from proxy.config import load_config
from proxy.format.constants import PROVIDER_AWS_KMS
from proxy.format.detect import classify
from proxy.format.manifest_mac import find_seal
from proxy.tools.migrate import STAGED_ETAG, STAGING_PREFIX
from tests.functional.test_kms import kms_client, kms_config, stored_trailer
from tests.functional.test_objects import MARKER, MIB, cutoff_after, payload, raw_bytes, wait_past
from tests.functional.test_seed_proxy import seed_object
from tests.support.medusa_helpers import medusa_manifest
from tests.support.servers import MotoServer, ProxyProcess, S3Server

REPO = Path(__file__).resolve().parents[2]
DATA = "node1/data/ks1/t-1/"
MANIFEST = "node1/bk1/meta/manifest.json"
INDEX = "index/backup_index/bk1/manifest_node1.json"
SCHEMA = "node1/bk1/meta/schema.cql"


def migrate(config: Path, bucket: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxy", "migrate", "--config", str(config), "--bucket", bucket, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def upload_in_parts(raw: Any, bucket: str, key: str, parts: list[bytes]) -> None:
    upload = raw.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for n, part in enumerate(parts, 1):
        etag = raw.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=part)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    raw.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})


def write_unencrypted(raw: Any, bucket: str) -> dict[str, bytes]:
    """What Medusa writes straight to the bucket: data files (one multipart), a manifest naming
    them with the bucket's ETags, its index copy, a schema file."""
    data = {DATA + "small-Data.db": payload(100_000, 1), DATA + "big-Data.db": payload(6 * MIB + 5, 2)}
    for key, value in data.items():
        raw.put_object(Bucket=bucket, Key=key, Body=value)
    key, parts = DATA + "multi-Data.db", [payload(5 * MIB, 3), payload(5 * MIB, 4), payload(MIB + 7, 5)]
    upload_in_parts(raw, bucket, key, parts)
    data[key] = b"".join(parts)
    entries = [(k, raw.head_object(Bucket=bucket, Key=k)["ETag"].strip('"'), len(v)) for k, v in data.items()]
    body = medusa_manifest(entries)
    for key in (MANIFEST, INDEX):
        raw.put_object(Bucket=bucket, Key=key, Body=body)
        data[key] = body
    raw.put_object(Bucket=bucket, Key=SCHEMA, Body=b"CREATE TABLE ks1.t1 (k int PRIMARY KEY);")
    return data


def legacy_proxy(
    proxy: ProxyProcess, raw: Any, bucket: str, tmp_path: Path, **client: Any
) -> tuple[ProxyProcess, Path]:
    """``proxy`` (stopped) started declaring everything in the bucket now legacy, and its config
    file (clients limited to ``bucket`` unless ``client`` says otherwise)."""
    cutoff = cutoff_after(raw, bucket)
    wait_past(cutoff)
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
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path)
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


def stage_by_hand(raw: Any, bucket: str, key: str) -> None:
    """What migrate's first step leaves: the original copied to its staging key, its ETag recorded."""
    etag = raw.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    raw.copy_object(
        Bucket=bucket,
        Key=STAGING_PREFIX + key,
        CopySource={"Bucket": bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata={STAGED_ETAG: etag},
    )


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone: the in-place and Medusa tests
def test_an_interrupted_migration_is_finished_by_the_next_run(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    data = write_unencrypted(raw_client, bucket)
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path)
    before = view(proxy.client(), bucket, list(data))
    # Stopped after staging, before the write: the original is still plaintext.
    stage_by_hand(raw_client, bucket, DATA + "big-Data.db")
    # Stopped after the write, before unstaging: the object is encrypted, its plaintext staged.
    small = DATA + "small-Data.db"
    stage_by_hand(raw_client, bucket, small)
    proxy.client().put_object(Bucket=bucket, Key=small, Body=data[small])
    assert is_encrypted(raw_client, bucket, small)

    dry = migrate(config, bucket, "--dry-run")
    assert f"WOULD finish {small}: verify it and remove its staged plaintext" in dry.stdout, dry.stdout
    assert f"WOULD encrypt {DATA}big-Data.db " in dry.stdout and f"WOULD encrypt {small} " not in dry.stdout

    done = migrate(config, bucket)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "encrypted 2 of 2 unencrypted object(s)" in done.stdout and "finished 1 left by an earlier run" in done.stdout
    )
    assert f"finished {small} (an earlier run's)" in done.stderr
    assert not [k for k in stored(raw_client, bucket) if k.startswith(STAGING_PREFIX)]
    assert all(is_encrypted(raw_client, bucket, key) for key in data if "/data/" in key)
    proxy.stop()
    proxy.config = yaml.safe_load(config.read_text())
    proxy.start()
    assert view(proxy.client(), bucket, list(data)) == before


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone: the in-place and Medusa tests
def test_the_cutoff_narrows_to_what_is_left_outside_the_prefix(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    other = "node2/data/ks1/t-1/other-Data.db"
    raw_client.put_object(Bucket=bucket, Key=other, Body=payload(2000, 9))
    wait_past(cutoff_after(raw_client, bucket))  # the rest is newer
    data = write_unencrypted(raw_client, bucket)
    raw_client.delete_object(Bucket=bucket, Key=INDEX)  # outside node1/ as well: node2's alone is left
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path)
    old = load_config(str(config)).encryption.legacy_plaintext_before
    left = datetime.fromisoformat(cutoff_after(raw_client, bucket, other))
    assert old is not None and left < old

    done = migrate(config, bucket, "--prefix", "node1/")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "encrypted 3 of 3 unencrypted object(s)" in done.stdout
    assert load_config(str(config)).encryption.legacy_plaintext_before == left  # just wide enough for node2's
    assert f"1 unencrypted object(s) left in {bucket}" in done.stdout
    assert not is_encrypted(raw_client, bucket, other) and is_encrypted(raw_client, bucket, DATA + "big-Data.db")
    proxy.stop()
    proxy.config = yaml.safe_load(config.read_text())
    proxy.start()
    assert proxy.client().get_object(Bucket=bucket, Key=other)["Body"].read() == payload(2000, 9)
    assert (
        view(proxy.client(), bucket, [DATA + "big-Data.db"])[DATA + "big-Data.db"][2]
        == hashlib.md5(data[DATA + "big-Data.db"]).hexdigest()
    )


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)
def test_what_migrate_cannot_vouch_for_is_reported_and_kept(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    data = write_unencrypted(raw_client, bucket)
    gone = DATA + "gone-Data.db"
    raw_client.put_object(Bucket=bucket, Key=gone, Body=payload(3000, 7))
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path)
    text = config.read_text()
    # A manifest planted after the cutoff: refused by the proxy, never sealed by migrate.
    planted = "node1/bk2/meta/manifest.json"
    raw_client.put_object(Bucket=bucket, Key=planted, Body=data[MANIFEST])
    # An earlier run's staged copy whose object was since replaced by other bytes, and one whose
    # object is gone: neither plaintext copy is deleted.
    small = DATA + "small-Data.db"
    stage_by_hand(raw_client, bucket, small)
    proxy.client().put_object(Bucket=bucket, Key=small, Body=b"other bytes")
    stage_by_hand(raw_client, bucket, gone)
    raw_client.delete_object(Bucket=bucket, Key=gone)

    done = migrate(config, bucket)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"PROBLEM {planted}: an unauthenticated manifest written after the cutoff" in done.stdout
    assert f"PROBLEM {small}: " in done.stdout and f"its plaintext is kept at {STAGING_PREFIX}{small}" in done.stdout
    assert f"PROBLEM {gone}: gone; its plaintext is kept at {STAGING_PREFIX}{gone}" in done.stdout
    assert raw_bytes(raw_client, bucket, STAGING_PREFIX + small) == data[small]
    assert raw_bytes(raw_client, bucket, STAGING_PREFIX + gone) == payload(3000, 7)
    assert find_seal(raw_bytes(raw_client, bucket, planted)) is None
    # The rest is migrated; the cutoff stays while anything is unresolved.
    assert is_encrypted(raw_client, bucket, DATA + "big-Data.db") and is_encrypted(
        raw_client, bucket, DATA + "multi-Data.db"
    )
    assert "legacy_plaintext_before stays" in done.stdout and config.read_text() == text


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)
def test_a_config_reaching_other_buckets_is_not_edited_and_versions_are_warned_of(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    raw_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    write_unencrypted(raw_client, bucket)
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path, buckets=[])
    text = config.read_text()
    done = migrate(config, bucket)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"warning: {bucket} keeps versions: each plaintext original" in done.stdout
    assert f"client(s) {proxy.access_key} of this config may reach other buckets" in done.stdout, done.stdout
    assert "set no legacy_plaintext_before" in done.stdout and config.read_text() == text
    kept = migrate(config, bucket, "--keep-config")
    assert kept.returncode == 0 and "legacy_plaintext_before can be removed" in kept.stdout, kept.stdout


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone's ETags of uploads are plain MD5s
def test_multipart_originals_keep_their_etag_or_are_left_whole(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    # 6 MiB parts (no common size): the layout comes from the bucket's HEAD of part 1.
    odd, uneven = DATA + "odd-Data.db", DATA + "uneven-Data.db"
    upload_in_parts(raw_client, bucket, odd, [payload(6 * MIB, 1), payload(6 * MIB, 2), payload(100, 3)])
    # Parts of different sizes: no layout of equal parts gives its ETag, so it is left as it is.
    upload_in_parts(raw_client, bucket, uneven, [payload(5 * MIB, 4), payload(7 * MIB, 5), payload(100, 6)])
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path)
    before = view(proxy.client(), bucket, [odd, uneven])
    done = migrate(config, bucket)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"PROBLEM {uneven}: its bytes in parts of" in done.stdout and "not migrated" in done.stdout
    assert is_encrypted(raw_client, bucket, odd) and not is_encrypted(raw_client, bucket, uneven)
    assert not [k for k in stored(raw_client, bucket) if k.startswith(STAGING_PREFIX)]  # the original is intact
    assert view(proxy.client(), bucket, [odd, uneven]) == before


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)  # rclone: the in-place and Medusa tests
def test_a_mixed_bucket_needs_no_cutoff_after_migrate_and_rotate(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    """Format 1 and 2 objects of the proxy, one of the old in-Medusa encryption and one unencrypted,
    all before the cutoff: migrate encrypts the unencrypted one alone and keeps the cutoff for the
    old format's; rotate re-encrypts that one; then migrate finds nothing and removes the cutoff."""
    seed_file = tmp_path / "seed.key"
    seed_file.write_bytes(Fernet.generate_key())
    seed_file.chmod(0o600)
    v1, v2, plain, seed = (DATA + f"{name}-Data.db" for name in ("v1", "v2", "plain", "seed"))
    proxy = make_proxy()
    proxy.client().put_object(Bucket=bucket, Key=v1, Body=payload(3000, 1))
    proxy.restart(encryption={**proxy.config["encryption"], "format_version": 2})
    proxy.client().put_object(Bucket=bucket, Key=v2, Body=payload(3000, 2))
    raw_client.put_object(Bucket=bucket, Key=plain, Body=payload(4000, 3))
    raw_client.put_object(Bucket=bucket, Key=seed, Body=seed_object(Fernet(seed_file.read_bytes()), payload(5000, 4)))
    proxy.stop()
    proxy.config["encryption"]["seed_key_files"] = [str(seed_file)]
    proxy, config = legacy_proxy(proxy, raw_client, bucket, tmp_path)
    keys = [v1, v2, plain, seed]
    before = view(proxy.client(), bucket, keys)
    untouched = {k: v for k, v in stored(raw_client, bucket).items() if k in (v1, v2, seed)}

    first = migrate(config, bucket)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "encrypted 1 of 1 unencrypted object(s)" in first.stdout
    assert "1 object(s) of the old in-Medusa encryption left for rotate" in first.stdout
    assert is_encrypted(raw_client, bucket, plain)
    assert {k: v for k, v in stored(raw_client, bucket).items() if k in untouched} == untouched
    assert load_config(str(config)).encryption.legacy_plaintext_before is not None  # the seed object needs it

    rotated = subprocess.run(
        [sys.executable, "-m", "proxy", "rotate", "--config", str(config), "--bucket", bucket],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    last = migrate(config, bucket)
    assert last.returncode == 0, last.stdout + last.stderr
    assert "encrypted 0 of 0 unencrypted object(s)" in last.stdout
    assert load_config(str(config)).encryption.legacy_plaintext_before is None
    proxy.stop()
    proxy.config = yaml.safe_load(config.read_text())
    del proxy.config["encryption"]["seed_key_files"]
    proxy.start()
    assert view(proxy.client(), bucket, keys) == before


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)
def test_a_migration_killed_mid_way_is_finished_by_the_next_run(
    make_proxy: Any, upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    data = {f"{DATA}{i}-Data.db": payload(6 * MIB if i % 2 else 50_000, i) for i in range(8)}
    for key, value in data.items():
        raw_client.put_object(Bucket=bucket, Key=key, Body=value)
    proxy, config = legacy_proxy(make_proxy(start=False), raw_client, bucket, tmp_path)
    command = [sys.executable, "-m", "proxy", "migrate", "--config", str(config), "--bucket", bucket]
    running = subprocess.Popen([*command, "--concurrency", "1"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert running.stderr is not None
    for line in running.stderr:  # SIGKILL once the first object is done: no clean-up runs
        if line.startswith("progress: 1/8"):
            running.kill()
            break
    running.communicate(timeout=60)
    encrypted = {key for key in data if is_encrypted(raw_client, bucket, key)}
    assert encrypted and encrypted != set(data), encrypted
    for key, value in data.items():  # each object its plaintext original or its encrypted copy
        assert proxy.client().get_object(Bucket=bucket, Key=key)["Body"].read() == value

    done = migrate(config, bucket)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(is_encrypted(raw_client, bucket, key) for key in data)
    assert not [k for k in stored(raw_client, bucket) if k.startswith(STAGING_PREFIX)]
    assert load_config(str(config)).encryption.legacy_plaintext_before is None


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)
def test_migrate_with_a_kms_gives_each_object_a_kms_data_key(
    make_proxy: Any, upstream: S3Server, moto_server: MotoServer, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    arn = str(kms_client(moto_server).create_key(Description="migrate test")["KeyMetadata"]["Arn"])
    data = write_unencrypted(raw_client, bucket)
    proxy = make_proxy(start=False)
    proxy.config["encryption"] = {**proxy.config["encryption"], **kms_config(moto_server, arn)}
    proxy, config = legacy_proxy(proxy, raw_client, bucket, tmp_path)
    before = view(proxy.client(), bucket, list(data))
    done = migrate(config, bucket)
    assert done.returncode == 0, done.stdout + done.stderr
    for key in (DATA + "small-Data.db", DATA + "big-Data.db", DATA + "multi-Data.db"):
        trailer = stored_trailer(raw_client, bucket, key)
        assert trailer.wrapped is not None and trailer.wrapped.provider == PROVIDER_AWS_KMS, key
        assert trailer.wrapped.key_ref == arn
    proxy.stop()
    proxy.config = yaml.safe_load(config.read_text())
    proxy.start()
    assert view(proxy.client(), bucket, list(data)) == before
