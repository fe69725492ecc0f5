"""Backups of the old in-Medusa encryption (the seed's format) stay restorable through the proxy."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.functional.test_objects import MIB, cutoff_after, payload

KEY = "node1/bk0/data/ks1/t-1/nb-1-big-Data.db"


def seed_object(fernet: Fernet, data: bytes) -> bytes:
    """The seed's layout: per MiB of plaintext, u32 BE length + the base64 Fernet token."""
    records = []
    for offset in range(0, len(data), MIB):
        token = fernet.encrypt(data[offset : offset + MIB])
        records.append(len(token).to_bytes(4, "big") + token)
    return b"".join(records)


@pytest.fixture
def seed_fernet(tmp_path: Path) -> tuple[Fernet, str]:
    key = Fernet.generate_key()
    path = tmp_path / "seed.key"
    path.write_bytes(key)
    path.chmod(0o600)
    return Fernet(key), str(path)


@pytest.mark.parametrize("size", [1, 16, 2 * MIB + 17])
def test_seed_objects_read_through_proxy(
    make_proxy: Any, raw_client: Any, bucket: str, seed_fernet: tuple[Fernet, str], size: int
) -> None:
    fernet, key_file = seed_fernet
    data = payload(size, size)
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=seed_object(fernet, data))
    client = make_proxy(
        encryption={"seed_key_files": [key_file], "legacy_plaintext_before": cutoff_after(raw_client, bucket, KEY)}
    ).client()
    head = client.head_object(Bucket=bucket, Key=KEY)
    assert (head["ContentLength"], head["ETag"].strip('"')) == (size, hashlib.md5(data).hexdigest())
    assert client.get_object(Bucket=bucket, Key=KEY)["Body"].read() == data
    for first, last in [(0, 0), (size // 2, size - 1), (max(0, size - 5), size - 1)]:
        got = client.get_object(Bucket=bucket, Key=KEY, Range=f"bytes={first}-{last}")
        assert got["Body"].read() == data[first : last + 1]
    listed = client.list_objects_v2(Bucket=bucket)["Contents"][0]
    assert (listed["Size"], listed["ETag"].strip('"')) == (size, hashlib.md5(data).hexdigest())


def test_seed_object_without_its_key_is_refused(
    proxy_client: Any, raw_client: Any, bucket: str, seed_fernet: tuple[Fernet, str]
) -> None:
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=seed_object(seed_fernet[0], b"secret"))
    with pytest.raises(Exception) as err:
        proxy_client.get_object(Bucket=bucket, Key=KEY)["Body"].read()
    assert "500" in str(err.value) or "InternalError" in str(err.value)


def test_seed_manifest_restored_with_hex_md5(
    make_proxy: Any, raw_client: Any, bucket: str, seed_fernet: tuple[Fernet, str]
) -> None:
    """The seed's manifests keep source_MD5 in base64; Medusa gets hex, as its ETags are."""
    fernet, key_file = seed_fernet
    data = payload(3000, 1)
    stored = seed_object(fernet, data)
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=stored)
    manifest = json.dumps(
        [
            {
                "keyspace": "ks1",
                "columnfamily": "t-1",
                "objects": [
                    {
                        "path": KEY,
                        "MD5": hashlib.md5(stored).hexdigest(),
                        "size": len(stored),
                        "source_size": len(data),
                        "source_MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
                    }
                ],
            }
        ]
    ).encode()
    raw_client.put_object(Bucket=bucket, Key="node1/bk0/meta/manifest.json", Body=manifest)
    cutoff = cutoff_after(raw_client, bucket, "node1/bk0/meta/manifest.json")
    client = make_proxy(encryption={"seed_key_files": [key_file], "legacy_plaintext_before": cutoff}).client()
    seen = json.loads(client.get_object(Bucket=bucket, Key="node1/bk0/meta/manifest.json")["Body"].read())
    entry = seen[0]["objects"][0]
    assert entry == {"path": KEY, "MD5": hashlib.md5(data).hexdigest(), "size": len(data)}
    head = client.head_object(Bucket=bucket, Key=KEY)
    assert (head["ContentLength"], head["ETag"].strip('"')) == (entry["size"], entry["MD5"])
