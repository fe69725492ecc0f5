"""``rotate`` on moto and rclone: objects of every kind moved to a new primary key, the
manifests naming them resealed, and nothing else changed in what Medusa sees.

A mixed bucket written with key A (format 1, format 2 small, single and multipart of more than
5 MiB, a manifest and its index copy), then key B made primary: large format 2 objects move by a
server-side copy (the bytes sent are the trailer's), the others by re-encryption; the plaintext
view (size, ETag, bytes) is unchanged, ``verify-bucket`` with key B alone is clean, and a second
run does nothing. A dry run changes nothing; an interrupted run (a part of the prefix) is finished
by the next one; a tampered object is reported and left as it is.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from proxy.format.constants import PROVIDER_AWS_KMS
from proxy.format.trailer import Trailer
from proxy.keyfiles import load_key_ring
from tests.functional.test_kms import kms_client, kms_config, stored_trailer
from tests.functional.test_objects import MIB, cutoff_after, payload, raw_bytes
from tests.functional.test_seed_proxy import seed_object
from tests.support.medusa_helpers import medusa_manifest
from tests.support.servers import MotoServer, ProxyProcess, S3Server, generate_fernet_key_file

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "proxy"]
DATA = "node1/data/ks1/t-1/"
MANIFEST = "node1/bk1/meta/manifest.json"
INDEX = "index/backup_index/bk1/manifest_node1.json"


def key_id(path: str | Path) -> str:
    return load_key_ring([str(path)]).primary.key_id_hex


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def rotate(config: Path, bucket: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("rotate", "--config", str(config), "--bucket", bucket, *args)


def config_with_keys(proxy: ProxyProcess, tmp_path: Path, name: str, *keys: Path) -> Path:
    """The proxy's config with ``keys`` as its key files (the first is primary)."""
    config = {**proxy.config, "encryption": {**proxy.config["encryption"], "key_files": [str(k) for k in keys]}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def backed_up_then_new_primary(
    proxy: ProxyProcess, bucket: str, data: dict[str, bytes], tmp_path: Path
) -> tuple[Path, Path, Path]:
    """``data`` written through ``proxy`` and named by a Medusa manifest, then a config whose
    primary key is a new one (the old kept): (new key, old key, config)."""
    client = proxy.client()
    for key, value in data.items():
        client.put_object(Bucket=bucket, Key=key, Body=value)
    client.put_object(
        Bucket=bucket,
        Key=INDEX,
        Body=medusa_manifest([(k, hashlib.md5(v).hexdigest(), len(v)) for k, v in data.items()]),
    )
    old_key = Path(proxy.config["encryption"]["key_files"][0])
    new_key = generate_fernet_key_file(tmp_path / "keys" / "new.key")
    return new_key, old_key, config_with_keys(proxy, tmp_path, "rotate.yaml", new_key, old_key)


def trailer_key(raw: Any, bucket: str, key: str) -> tuple[str, int]:
    tail = raw_bytes(raw, bucket, key)
    trailer = Trailer.from_tail(tail)
    return trailer.key_id_hex, trailer.version


def sent_for(stderr: str, key: str) -> tuple[str, int]:
    found = re.search(rf"rotated {re.escape(key)} by (\S+): (\d+) bytes sent", stderr)
    assert found, stderr
    return found.group(1), int(found.group(2))


def stored_versions(raw: Any, bucket: str) -> dict[str, str]:
    listed = raw.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: f"{o['Size']} {o['ETag']}" for o in listed}


def write_mixed(make_proxy: Callable[..., ProxyProcess], bucket: str) -> tuple[ProxyProcess, dict[str, bytes]]:
    """A bucket of every kind under key A, with a manifest naming them (and its index copy)."""
    proxy = make_proxy()  # format 1
    client = proxy.client()
    data = {DATA + "v1-Data.db": payload(6 * MIB + 5, 1)}
    client.put_object(Bucket=bucket, Key=DATA + "v1-Data.db", Body=data[DATA + "v1-Data.db"])
    proxy.restart(encryption={**proxy.config["encryption"], "format_version": 2})
    client = proxy.client()
    data[DATA + "small-Data.db"] = payload(100_000, 2)
    data[DATA + "big-Data.db"] = payload(7 * MIB + 3, 3)
    for key in (DATA + "small-Data.db", DATA + "big-Data.db"):
        client.put_object(Bucket=bucket, Key=key, Body=data[key])
    parts = [payload(5 * MIB, 4), payload(5 * MIB, 5), payload(MIB + 7, 6)]
    key = DATA + "multi-Data.db"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [
        {
            "PartNumber": n,
            "ETag": client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=p)["ETag"],
        }
        for n, p in enumerate(parts, 1)
    ]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    data[key] = b"".join(parts)
    entries = []
    for path, value in data.items():
        etag = client.head_object(Bucket=bucket, Key=path)["ETag"].strip('"')
        entries.append((path, etag, len(value)))
    body = medusa_manifest(entries)
    client.put_object(Bucket=bucket, Key=MANIFEST, Body=body)
    client.put_object(Bucket=bucket, Key=INDEX, Body=body)
    return proxy, data


def plaintext_view(client: Any, bucket: str, keys: list[str]) -> dict[str, tuple[int, str, str]]:
    view = {}
    for key in keys:
        got = client.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
        view[key] = (got["ContentLength"], got["ETag"], hashlib.md5(body).hexdigest())
    return view


def test_rotate_moves_a_mixed_bucket_to_the_new_key(
    make_proxy: Callable[..., ProxyProcess], upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    proxy, data = write_mixed(make_proxy, bucket)
    old_key = Path(proxy.config["encryption"]["key_files"][0])
    new_key = generate_fernet_key_file(tmp_path / "keys" / "new.key")
    keys = [*data, MANIFEST, INDEX]
    before = plaintext_view(proxy.client(), bucket, keys)
    config = config_with_keys(proxy, tmp_path, "rotate.yaml", new_key, old_key)

    stored = stored_versions(raw_client, bucket)
    dry = rotate(config, bucket, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert stored_versions(raw_client, bucket) == stored  # nothing written
    assert f"WOULD rotate {DATA}big-Data.db ({key_id(old_key)} (format 2)) by copy" in dry.stdout
    assert f"WOULD rotate {DATA}small-Data.db ({key_id(old_key)} (format 2)) by re-encryption" in dry.stdout
    assert f"WOULD rotate {DATA}v1-Data.db ({key_id(old_key)} (format 1)) by re-encryption" in dry.stdout
    assert f"WOULD reseal manifest {MANIFEST}" in dry.stdout and f"WOULD reseal manifest {INDEX}" in dry.stdout

    # For a compromised key: never a copy, which would keep the data keys it may have exposed.
    fresh = rotate(config, bucket, "--dry-run", "--re-encrypt")
    assert fresh.returncode == 0 and " by copy" not in fresh.stdout, fresh.stdout + fresh.stderr
    assert f"WOULD rotate {DATA}big-Data.db ({key_id(old_key)} (format 2)) by re-encryption" in fresh.stdout
    assert stored_versions(raw_client, bucket) == stored

    done = rotate(config, bucket, "--concurrency", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    for key in (DATA + "big-Data.db", DATA + "multi-Data.db"):
        how, sent = sent_for(done.stderr, key)
        if upstream.name == "rclone":
            # rclone serve s3 accepts UploadPartCopy but stores an empty part: the upload is
            # checked (ListParts) before it completes, and the object re-encrypted instead.
            assert "the bucket refuses range copies" in done.stderr
            assert (how, sent) == ("re-encryption", len(raw_bytes(raw_client, bucket, key))), done.stderr
            continue
        # By a server-side copy: what is sent is the trailer, not the object.
        assert (how, sent) == ("copy", Trailer.from_tail(raw_bytes(raw_client, bucket, key)).record_len), done.stderr
        assert sent < 1024, done.stderr
    for key in (DATA + "small-Data.db", DATA + "v1-Data.db"):
        how, sent = sent_for(done.stderr, key)
        assert how == "re-encryption" and sent >= len(data[key]), done.stderr
    for key in data:
        assert trailer_key(raw_client, bucket, key) == (key_id(new_key), 2), key
    assert "progress: 4/4 objects" in done.stderr
    assert f"KEY {key_id(new_key)} (format 2): 4 object(s)" in done.stdout, done.stdout
    assert f"KEY {key_id(new_key)}: 2 manifest(s)" in done.stdout, done.stdout
    assert f"no object uses key {key_id(old_key)}" in done.stdout, done.stdout

    # Key A can go: with key B alone the proxy serves the same view, and verify-bucket is clean.
    only_new = config_with_keys(proxy, tmp_path, "new-only.yaml", new_key)
    proxy.stop()
    proxy.config = yaml.safe_load(only_new.read_text())
    proxy.start()
    assert plaintext_view(proxy.client(), bucket, keys) == before
    checked = run_cli("verify-bucket", "--config", str(only_new), "--bucket", bucket, "--key-file", str(new_key))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"KEY {key_id(new_key)} (format 2): 4 object(s)" in checked.stdout

    stored = stored_versions(raw_client, bucket)
    again = rotate(config, bucket)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "rotated 0 object(s) by copy, 0 by re-encryption, resealed 0 manifest(s); 4 already" in again.stdout
    assert stored_versions(raw_client, bucket) == stored


def test_interrupted_rotation_resumes_and_a_tampered_object_is_left_alone(
    make_proxy: Callable[..., ProxyProcess], upstream: S3Server, bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    proxy = make_proxy(encryption={"format_version": 2})
    client = proxy.client()
    data = {f"{DATA}{name}-Data.db": payload(size, i) for i, (name, size) in enumerate([("a", 6 * MIB), ("b", 1000)])}
    data["node1/data/ks1/t-2/c-Data.db"] = payload(6 * MIB + 1, 9)
    new_key, old_key, config = backed_up_then_new_primary(proxy, bucket, data, tmp_path)
    # An object edited behind the proxy's back: one byte of its trailer's MAC.
    victim = "node1/data/ks1/t-2/c-Data.db"
    tampered = bytearray(raw_bytes(raw_client, bucket, victim))
    tampered[-20] ^= 1
    raw_client.put_object(Bucket=bucket, Key=victim, Body=bytes(tampered))

    # Stopped after part of the bucket (here: one table): the manifest still names the old versions.
    first = rotate(config, bucket, "--prefix", DATA)
    assert first.returncode == 0, first.stdout + first.stderr
    copies = 0 if upstream.name == "rclone" else 1  # rclone: no range copies (see above)
    assert f"rotated {copies} object(s) by copy, {2 - copies} by re-encryption, resealed 0" in first.stdout
    assert trailer_key(raw_client, bucket, victim)[0] == key_id(old_key)

    rest = rotate(config, bucket)
    assert rest.returncode == 1, rest.stdout + rest.stderr
    assert "rotated 0 object(s) by copy, 0 by re-encryption, resealed 1 manifest(s)" in rest.stdout, rest.stdout
    assert re.search(rf"PROBLEM {re.escape(victim)}: .*not rotated", rest.stdout), rest.stdout
    assert raw_bytes(raw_client, bucket, victim) == bytes(tampered)  # left as it was
    # The tampered object may still need key A: no key is declared unused.
    assert "1 problem(s): no key can be declared unused" in rest.stdout
    assert "no object uses key" not in rest.stdout
    proxy.restart(encryption={**proxy.config["encryption"], "key_files": [str(new_key), str(old_key)]})
    client = proxy.client()
    for key in list(data)[:2]:
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data[key]
    checked = run_cli("verify-bucket", "--config", str(config), "--bucket", bucket, "--key-file", str(new_key))
    assert checked.returncode == 1
    assert [line for line in checked.stdout.splitlines() if line.startswith("PROBLEM")] == [
        line for line in checked.stdout.splitlines() if line.startswith(f"PROBLEM {victim}")
    ], checked.stdout


def test_objects_of_the_old_in_medusa_encryption_are_re_encrypted(
    make_proxy: Callable[..., ProxyProcess], bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    fernet_key = Fernet.generate_key()
    seed_file = tmp_path / "seed.key"
    seed_file.write_bytes(fernet_key)
    seed_file.chmod(0o600)
    data = payload(2 * MIB + 17, 5)
    key = DATA + "seed-Data.db"
    raw_client.put_object(Bucket=bucket, Key=key, Body=seed_object(Fernet(fernet_key), data))
    proxy = make_proxy(
        encryption={
            "seed_key_files": [str(seed_file)],
            "legacy_plaintext_before": cutoff_after(raw_client, bucket, key),
        }
    )
    before = plaintext_view(proxy.client(), bucket, [key])
    config = config_with_keys(proxy, tmp_path, "rotate.yaml", *proxy.config["encryption"]["key_files"])
    done = rotate(config, bucket)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sent_for(done.stderr, key)[0] == "re-encryption"
    assert trailer_key(raw_client, bucket, key) == (key_id(proxy.config["encryption"]["key_files"][0]), 2)
    assert "no object uses the old in-Medusa encryption's keys" in done.stdout, done.stdout
    proxy.restart(encryption={"key_files": proxy.config["encryption"]["key_files"]})  # no seed keys
    assert plaintext_view(proxy.client(), bucket, [key]) == before
    assert before[key][2] == hashlib.md5(data).hexdigest()


@pytest.fixture
def kms_arn(moto_server: MotoServer) -> str:
    return str(kms_client(moto_server).create_key(Description="rotate test")["KeyMetadata"]["Arn"])


# The KMS is moto's either way, and what rotate does there is re-encryption, run on rclone above.
@pytest.mark.parametrize("upstream", ["moto"], indirect=True)
def test_rotation_to_a_kms_re_encrypts_with_its_data_keys(
    make_proxy: Callable[..., ProxyProcess],
    moto_server: MotoServer,
    kms_arn: str,
    bucket: str,
    raw_client: Any,
    tmp_path: Path,
) -> None:
    proxy = make_proxy(encryption={"format_version": 2})
    data = {DATA + "a-Data.db": payload(6 * MIB, 1), DATA + "b-Data.db": payload(5000, 2)}
    for key, value in data.items():
        proxy.client().put_object(Bucket=bucket, Key=key, Body=value)
    with_kms = {**proxy.config["encryption"], **kms_config(moto_server, kms_arn)}
    config = tmp_path / "kms.yaml"
    config.write_text(yaml.safe_dump({**proxy.config, "encryption": with_kms}))

    done = rotate(config, bucket)
    assert done.returncode == 0, done.stdout + done.stderr
    # A KMS makes data keys, it does not wrap the proxy's: both are re-encrypted under KMS keys.
    assert "rotated 0 object(s) by copy, 2 by re-encryption" in done.stdout, done.stdout
    for key in data:
        trailer = stored_trailer(raw_client, bucket, key)
        assert trailer.wrapped is not None and trailer.wrapped.provider == PROVIDER_AWS_KMS
        assert trailer.wrapped.key_ref == kms_arn
    again = rotate(config, bucket)
    assert "rotated 0 object(s) by copy, 0 by re-encryption" in again.stdout and "2 already" in again.stdout
    proxy.restart(encryption=with_kms)
    for key, value in data.items():
        assert proxy.client().get_object(Bucket=bucket, Key=key)["Body"].read() == value


@pytest.mark.parametrize("upstream", ["moto"], indirect=True)
def test_a_rotation_killed_mid_way_is_finished_by_the_next_run(
    make_proxy: Callable[..., ProxyProcess], bucket: str, raw_client: Any, tmp_path: Path
) -> None:
    proxy = make_proxy(encryption={"format_version": 2})
    data = {f"{DATA}{i}-Data.db": payload(6 * MIB if i % 2 else 50_000, i) for i in range(8)}
    new_key, old_key, config = backed_up_then_new_primary(proxy, bucket, data, tmp_path)
    command = [*CLI, "rotate", "--config", str(config), "--bucket", bucket, "--concurrency", "1"]
    running = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert running.stderr is not None
    for line in running.stderr:  # SIGKILL once the first object is done: no cleanup runs
        if line.startswith("rotated "):
            running.kill()
            break
    running.communicate(timeout=60)
    keys = {key: trailer_key(raw_client, bucket, key)[0] for key in data}
    assert key_id(new_key) in keys.values() and key_id(old_key) in keys.values(), keys
    proxy.restart(encryption={**proxy.config["encryption"], "key_files": [str(new_key), str(old_key)]})
    for key, value in data.items():  # each object is its old version or its new one, never half of it
        assert proxy.client().get_object(Bucket=bucket, Key=key)["Body"].read() == value

    rest = rotate(config, bucket)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "resealed 1 manifest(s)" in rest.stdout and f"no object uses key {key_id(old_key)}" in rest.stdout
    checked = run_cli("verify-bucket", "--config", str(config), "--bucket", bucket, "--key-file", str(new_key))
    assert checked.returncode == 0, checked.stdout + checked.stderr
