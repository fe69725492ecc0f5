"""The manifest rewrite through the real proxy, and verify-bucket on what it stored.

The pure functions (proxy.manifest) are tested in tests/unit/test_manifest.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from proxy.format.manifest_mac import find_seal
from tests.functional.test_objects import MIB, payload, raw_bytes
from tests.support.medusa_helpers import medusa_manifest


def test_manifest_through_proxy(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    small, big = payload(1000, 1), payload(6 * MIB, 2)
    proxy_client.put_object(Bucket=bucket, Key="node1/data/ks1/t-1/a-Data.db", Body=small)
    proxy_client.put_object(Bucket=bucket, Key="node1/data/ks1/t-1/b-Data.db", Body=big)
    raw_client.put_object(Bucket=bucket, Key="node1/data/ks1/t-1/legacy-Data.db", Body=b"old")
    body = medusa_manifest(
        [
            ("node1/data/ks1/t-1/a-Data.db", hashlib.md5(small).hexdigest(), len(small)),
            ("node1/data/ks1/t-1/b-Data.db", hashlib.md5(big).hexdigest(), len(big)),
            ("node1/data/ks1/t-1/legacy-Data.db", hashlib.md5(b"old").hexdigest(), 3),
            ("node1/data/ks1/t-1/missing-Data.db", "00" * 16, 5),
        ]
    )
    key = "node1/bk1/meta/manifest.json"
    put = proxy_client.put_object(Bucket=bucket, Key=key, Body=body)
    assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest()

    stored = json.loads(raw_bytes(raw_client, bucket, key))[0]["objects"]
    for entry in stored[:2]:
        head = raw_client.head_object(Bucket=bucket, Key=entry["path"])
        assert (entry["size"], entry["MD5"]) == (head["ContentLength"], head["ETag"].strip('"'))
    assert (stored[0]["source_size"], stored[0]["source_MD5"]) == (len(small), hashlib.md5(small).hexdigest())
    assert "source_size" not in stored[2] and "source_size" not in stored[3]

    got = proxy_client.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == body
    head = proxy_client.head_object(Bucket=bucket, Key=key)
    assert (head["ContentLength"], head["ETag"].strip('"')) == (len(body), hashlib.md5(body).hexdigest())
    ranged = proxy_client.get_object(Bucket=bucket, Key=key, Range="bytes=10-", IfMatch=head["ETag"])
    assert ranged["Body"].read() == body[10:]
    listed = proxy_client.list_objects_v2(Bucket=bucket, Prefix="node1/bk1/")["Contents"]
    assert (listed[0]["Size"], listed[0]["ETag"].strip('"')) == (len(body), hashlib.md5(body).hexdigest())

    # Medusa copies the manifest into the index by GET then PUT: the same rewrite again.
    index_key = "index/backup_index/bk1/manifest_node1.json"
    proxy_client.put_object(Bucket=bucket, Key=index_key, Body=got_body(proxy_client, bucket, key))
    assert unsealed(raw_bytes(raw_client, bucket, index_key)) == unsealed(raw_bytes(raw_client, bucket, key))
    assert got_body(proxy_client, bucket, index_key) == body


def unsealed(stored: bytes) -> bytes:
    """The manifest as the proxy rewrote it, without its MAC element (which names its key)."""
    seal = find_seal(stored)
    assert seal is not None
    return stored[: seal.body_len] + b"]"


def got_body(client: Any, bucket: str, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def test_not_a_manifest_is_stored_encrypted(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    """Stored as it is, it would be an unauthenticated manifest (refused after the cutoff)."""
    key = "node1/bk1/meta/manifest.json"
    proxy_client.put_object(Bucket=bucket, Key=key, Body=b"{broken")
    assert raw_bytes(raw_client, bucket, key).endswith(b"MCPTEND1")
    assert got_body(proxy_client, bucket, key) == b"{broken"


def run_verify_bucket(proxy: Any, bucket: str, *extra: str) -> Any:
    import subprocess
    import sys

    proxy.write_config()
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "verify-bucket",
            "--config",
            str(proxy.config_path),
            "--bucket",
            bucket,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_verify_bucket_without_and_with_key(proxy: Any, raw_client: Any, bucket: str) -> None:
    client = proxy.client()
    data = {f"node1/data/ks1/t-1/{i}-Data.db": payload(size, i) for i, size in enumerate([0, 10, MIB + 1])}
    for key, value in data.items():
        client.put_object(Bucket=bucket, Key=key, Body=value)
    body = medusa_manifest([(k, hashlib.md5(v).hexdigest(), len(v)) for k, v in data.items()])
    client.put_object(Bucket=bucket, Key="index/backup_index/bk1/manifest_node1.json", Body=body)
    key_file = proxy.config["encryption"]["key_files"][0]

    plain = run_verify_bucket(proxy, bucket)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "checked 3 objects in 1 manifests: 0 problem(s) (without the key)" in plain.stdout
    keyed = run_verify_bucket(proxy, bucket, "--key-file", key_file)
    assert keyed.returncode == 0, keyed.stdout + keyed.stderr

    # An object replaced behind the proxy's back (here by another encrypted object).
    victim, other = list(data)[1], list(data)[2]
    raw_client.put_object(Bucket=bucket, Key=victim, Body=raw_bytes(raw_client, bucket, other))
    broken = run_verify_bucket(proxy, bucket)
    assert broken.returncode == 1
    assert f"PROBLEM {victim}" in broken.stdout
