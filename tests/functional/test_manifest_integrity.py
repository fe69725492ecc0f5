"""Authenticated manifests through the real proxy: an attacker who writes to the bucket directly
(``raw_client``) but has no key cannot get an edited, stripped or moved manifest served, and
``verify-bucket --key-file`` names every swapped, edited or rolled-back object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.format.manifest_mac import find_seal
from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.functional.test_manifest import run_verify_bucket
from tests.functional.test_objects import MIB, payload, raw_bytes
from tests.functional.test_operations import metric, scrape
from tests.support.medusa_helpers import medusa_manifest
from tests.support.servers import ProxyProcess

# SeaweedFS too (tests/conftest.py): a store's differences show up here first.
pytestmark = pytest.mark.all_upstreams

NODE_KEY = "node1/bk1/meta/manifest.json"
INDEX_KEY = "index/backup_index/bk1/manifest_node1.json"
DATA = {f"node1/data/ks1/t-1/nb-{i}-big-Data.db": payload(size, i) for i, size in enumerate([10, 3000, MIB + 7])}


def backup(client: Any, bucket: str, keys: tuple[str, ...] = (NODE_KEY, INDEX_KEY)) -> bytes:
    """Medusa's part: the data files, then the manifest (node copy and index copy)."""
    for key, value in DATA.items():
        client.put_object(Bucket=bucket, Key=key, Body=value)
    body = medusa_manifest([(k, hashlib.md5(v).hexdigest(), len(v)) for k, v in DATA.items()])
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def get(client: Any, bucket: str, key: str, **kwargs: Any) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()
    return data


def assert_refused(client: Any, bucket: str, key: str) -> None:
    for call in (lambda: get(client, bucket, key), lambda: client.head_object(Bucket=bucket, Key=key)):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    listed = {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]}
    assert listed[key]["Size"] == -1


def listed_size(client: Any, bucket: str, key: str) -> int:
    contents = client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
    size: int = next(o["Size"] for o in contents if o["Key"] == key)
    return size


def test_sealed_manifest_reads_back_as_written(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    body = backup(client, bucket)
    stored = raw_bytes(raw_client, bucket, NODE_KEY)
    document = json.loads(stored)  # still a readable JSON array without the key
    assert set(document[-1]) == {"medusa_crypt_proxy"} and document[-1]["medusa_crypt_proxy"]["version"] == 1
    assert document[0]["objects"][0]["source_size"] == 10
    for key in (NODE_KEY, INDEX_KEY):
        assert get(client, bucket, key) == body
        head = client.head_object(Bucket=bucket, Key=key)
        assert (head["ContentLength"], head["ETag"].strip('"')) == (len(body), hashlib.md5(body).hexdigest())
        assert get(client, bucket, key, Range="bytes=5-104") == body[5:105]
        assert get(client, bucket, key, Range=f"bytes=-{len(body) - 3}") == body[3:]
        assert listed_size(client, bucket, key) == len(body)
    # A fresh proxy (empty cache) verifies the bucket's manifests and gives the same view.
    fresh = proxy.client(**MEDUSA_CLIENT_CONFIG)
    proxy.restart(cache={"path": str(proxy.tmp_path / "fresh-cache.sqlite")})
    assert listed_size(fresh, bucket, NODE_KEY) == len(body)
    assert get(fresh, bucket, INDEX_KEY) == body


def test_listing_a_known_manifest_reads_nothing(proxy: ProxyProcess, bucket: str) -> None:
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    body = backup(client, bucket)
    _, before = scrape(proxy)
    for _ in range(3):
        assert listed_size(client, bucket, NODE_KEY) == len(body)
        client.head_object(Bucket=bucket, Key=INDEX_KEY)
    _, after = scrape(proxy)
    assert metric(after, "upstream_requests_total", operation="GetObject") == metric(
        before, "upstream_requests_total", operation="GetObject"
    )
    # The same with an empty cache reads each manifest once (and remembers it).
    proxy.restart(cache={"path": str(proxy.tmp_path / "empty-cache.sqlite")})
    _, before = scrape(proxy)
    for _ in range(3):
        assert listed_size(client, bucket, NODE_KEY) == len(body)
    _, after = scrape(proxy)
    assert (
        metric(after, "upstream_requests_total", operation="GetObject")
        == metric(before, "upstream_requests_total", operation="GetObject") + 1
    )


def _edit_entry(stored: bytes) -> bytes:
    """The attacker's edit: the first entry's recorded stored size and ETag changed."""
    entry = json.loads(stored)[0]["objects"][0]
    old = f'"MD5": "{entry["MD5"]}", "size": {entry["size"]}'.encode()
    assert old in stored
    return stored.replace(old, f'"MD5": "{"0" * 32}", "size": {entry["size"] + 1}'.encode())


def _strip_mac(stored: bytes) -> bytes:
    seal = find_seal(stored)
    assert seal is not None
    return stored[: seal.body_len] + b"]"


@pytest.mark.parametrize("attack", ["edit-entry", "strip-mac", "truncate-mac", "moved-to-another-backup"])
def test_tampered_manifest_is_refused(proxy: ProxyProcess, raw_client: Any, bucket: str, attack: str) -> None:
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    body = backup(client, bucket)
    stored = raw_bytes(raw_client, bucket, INDEX_KEY)
    target = INDEX_KEY
    if attack == "edit-entry":
        planted = _edit_entry(stored)
    elif attack == "strip-mac":
        planted = _strip_mac(stored)
    elif attack == "truncate-mac":
        planted = stored[:-3] + b"]"
    else:
        target = INDEX_KEY.replace("bk1", "bk2")
        planted = stored
    raw_client.put_object(Bucket=bucket, Key=target, Body=planted)
    _, before = scrape(proxy)
    assert_refused(client, bucket, target)
    _, after = scrape(proxy)
    assert metric(after, "integrity_failures_total", kind="manifest") > metric(
        before, "integrity_failures_total", kind="manifest"
    )
    assert get(client, bucket, NODE_KEY) == body  # the untouched copy still reads
    assert "Traceback" not in proxy.log_text()


def test_unauthenticated_manifest_is_served_only_when_declared_legacy(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str
) -> None:
    """A manifest written before the proxy (no MAC) reads as before, until the cutoff says otherwise."""
    old = medusa_manifest([("node1/data/ks1/t-1/old-Data.db", "ab" * 16, 3)])
    raw_client.put_object(Bucket=bucket, Key=NODE_KEY, Body=old)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    legacy = make_proxy(encryption={"legacy_plaintext_before": tomorrow})
    client = legacy.client(**MEDUSA_CLIENT_CONFIG)
    assert get(client, bucket, NODE_KEY) == old
    assert client.head_object(Bucket=bucket, Key=NODE_KEY)["ContentLength"] == len(old)
    assert listed_size(client, bucket, NODE_KEY) == len(old)

    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    strict = make_proxy(encryption={"legacy_plaintext_before": yesterday})
    assert_refused(strict.client(**MEDUSA_CLIENT_CONFIG), bucket, NODE_KEY)
    # The first proxy cached the legacy view: a stricter cutoff applies to it as well.
    legacy.restart(encryption={**legacy.config["encryption"], "legacy_plaintext_before": yesterday})
    assert_refused(legacy.client(**MEDUSA_CLIENT_CONFIG), bucket, NODE_KEY)


def test_seed_era_manifest_is_restored_when_legacy(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str
) -> None:
    """The old in-Medusa encryption wrote source_size/source_MD5 (base64): restored as before."""
    import base64

    md5 = hashlib.md5(b"abc").digest()
    stored = json.dumps(
        [
            {
                "keyspace": "k",
                "columnfamily": "t",
                "objects": [
                    {
                        "path": "node1/data/k/t/a-Data.db",
                        "MD5": "c" * 32,
                        "size": 200,
                        "source_size": 3,
                        "source_MD5": base64.b64encode(md5).decode(),
                    }
                ],
            }
        ]
    ).encode()
    raw_client.put_object(Bucket=bucket, Key=NODE_KEY, Body=stored)
    proxy = make_proxy(encryption={"legacy_plaintext_before": (datetime.now(UTC) + timedelta(days=1)).isoformat()})
    got = json.loads(get(proxy.client(**MEDUSA_CLIENT_CONFIG), bucket, NODE_KEY))
    assert got[0]["objects"][0] == {"path": "node1/data/k/t/a-Data.db", "MD5": md5.hex(), "size": 3}


def nested(depth: int) -> bytes:
    return b'[{"objects": [' + b"[" * depth + b"]" * depth + b"]}]"


@pytest.mark.parametrize(
    "body",
    [
        nested(100000),
        nested(40),
        b"[" * 200000,
        b"not json at all",
        b"\xff\xfe invalid utf-8",
        b"",
        json.dumps([{"keyspace": "k", "objects": []}], indent=2).encode(),
        b'[{"objects": [{"path": "a", "MD5": "e", "size": 3, "source_size": 1, "source_MD5": "x"}]}]',
        b'[{"objects": [{"path": "a", "size": ' + b"9" * 5000 + b"}]}]",
    ],
    ids=[
        "deep",
        "deeper-than-limit",
        "open-brackets",
        "not-json",
        "not-utf8",
        "empty",
        "indented",
        "with-source-fields",
        "huge-integer",
    ],
)
def test_odd_manifest_bodies_read_back_exactly(proxy: ProxyProcess, raw_client: Any, bucket: str, body: bytes) -> None:
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    client.put_object(Bucket=bucket, Key=NODE_KEY, Body=body)
    stored = raw_bytes(raw_client, bucket, NODE_KEY)
    assert stored.endswith(b"MCPTEND1")  # stored encrypted, not as unauthenticated plaintext
    assert get(client, bucket, NODE_KEY) == body
    head = client.head_object(Bucket=bucket, Key=NODE_KEY)
    assert (head["ContentLength"], head["ETag"].strip('"')) == (len(body), hashlib.md5(body).hexdigest())
    assert listed_size(client, bucket, NODE_KEY) == len(body)
    if body:
        assert get(client, bucket, NODE_KEY, Range="bytes=1-3") == body[1:4]
    assert "Traceback" not in proxy.log_text()
    assert "stored encrypted" in proxy.log_text()


def test_oversized_manifest_is_stored_encrypted(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str
) -> None:
    proxy = make_proxy(limits={"max_manifest_bytes": 4096})
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    body = medusa_manifest([(f"node1/data/ks1/t-1/nb-{i}-big-Data.db", "ab" * 16, i) for i in range(200)])
    assert len(body) > 4096
    client.put_object(Bucket=bucket, Key=INDEX_KEY, Body=body)
    assert raw_bytes(raw_client, bucket, INDEX_KEY).endswith(b"MCPTEND1")
    assert get(client, bucket, INDEX_KEY) == body
    assert listed_size(client, bucket, INDEX_KEY) == len(body)
    fresh = make_proxy(limits={"max_manifest_bytes": 4096})  # an empty cache: the view from the trailer
    assert fresh.client(**MEDUSA_CLIENT_CONFIG).head_object(Bucket=bucket, Key=INDEX_KEY)["ContentLength"] == len(body)


def test_encrypted_manifest_swapped_is_refused(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    """A manifest stored as an encrypted object is bound to its name like any other object."""
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    client.put_object(Bucket=bucket, Key=NODE_KEY, Body=b"{not a manifest")
    other = NODE_KEY.replace("bk1", "bk2")
    raw_client.put_object(Bucket=bucket, Key=other, Body=raw_bytes(raw_client, bucket, NODE_KEY))
    assert_refused(client, bucket, other)


# --- verify-bucket -------------------------------------------------------------------------


def test_copied_manifest_is_sealed_for_its_new_key(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    """A CopyObject of a manifest (the seal names the key) reads back as written at the new key,
    with its metadata; a copy of a tampered one is refused, and the conditions name the source."""
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    body = backup(client, bucket, keys=(NODE_KEY,))
    client.put_object(Bucket=bucket, Key=NODE_KEY, Body=body, Metadata={"who": "medusa"})
    etag = client.head_object(Bucket=bucket, Key=NODE_KEY)["ETag"]
    copy_key = "node1/bk2/meta/manifest.json"
    copied = client.copy_object(
        Bucket=bucket, Key=copy_key, CopySource={"Bucket": bucket, "Key": NODE_KEY}, CopySourceIfMatch=etag
    )
    assert copied["CopyObjectResult"]["ETag"] == etag == f'"{hashlib.md5(body).hexdigest()}"'
    assert get(client, bucket, copy_key) == body
    assert client.head_object(Bucket=bucket, Key=copy_key)["Metadata"] == {"who": "medusa"}
    assert raw_bytes(raw_client, bucket, copy_key) != raw_bytes(raw_client, bucket, NODE_KEY)  # sealed anew
    with pytest.raises(ClientError) as err:
        client.copy_object(
            Bucket=bucket, Key=copy_key, CopySource={"Bucket": bucket, "Key": NODE_KEY}, CopySourceIfNoneMatch=etag
        )
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    raw_client.put_object(Bucket=bucket, Key=NODE_KEY, Body=_edit_entry(raw_bytes(raw_client, bucket, NODE_KEY)))
    with pytest.raises(ClientError) as err:
        client.copy_object(
            Bucket=bucket, Key="node1/bk3/meta/manifest.json", CopySource={"Bucket": bucket, "Key": NODE_KEY}
        )
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert get(client, bucket, copy_key) == body  # the good copy stands


def verify(proxy: ProxyProcess, bucket: str, with_key: bool = True) -> tuple[int, str]:
    key_file = proxy.config["encryption"]["key_files"][0]
    result = run_verify_bucket(proxy, bucket, *(("--key-file", key_file) if with_key else ()))
    return result.returncode, result.stdout + result.stderr


def problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("PROBLEM ")]


def test_verify_bucket_accepts_a_good_backup(proxy: ProxyProcess, bucket: str) -> None:
    backup(proxy.client(**MEDUSA_CLIENT_CONFIG), bucket)
    code, output = verify(proxy, bucket)
    assert code == 0, output
    assert f"checked {len(DATA)} objects in 2 manifests: 0 problem(s)" in output


def test_verify_bucket_reports_a_swapped_object(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    backup(proxy.client(**MEDUSA_CLIENT_CONFIG), bucket)
    victim, other = list(DATA)[:2]
    raw_client.put_object(Bucket=bucket, Key=victim, Body=raw_bytes(raw_client, bucket, other))
    code, output = verify(proxy, bucket)
    assert code == 1 and [p for p in problems(output) if p.startswith(f"PROBLEM {victim}: ")], output


def test_verify_bucket_reports_an_edited_manifest(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    """The attacker swaps an object and edits the manifest to match: only the MAC shows it."""
    backup(proxy.client(**MEDUSA_CLIENT_CONFIG), bucket)
    victim, other = list(DATA)[:2]
    raw_client.put_object(Bucket=bucket, Key=victim, Body=raw_bytes(raw_client, bucket, other))
    swapped = raw_client.head_object(Bucket=bucket, Key=victim)
    for key in (NODE_KEY, INDEX_KEY):
        stored = raw_bytes(raw_client, bucket, key)
        entry = json.loads(stored)[0]["objects"][0]
        old = f'"MD5": "{entry["MD5"]}", "size": {entry["size"]}'.encode()
        new = f'"MD5": "{swapped["ETag"].strip(chr(34))}", "size": {swapped["ContentLength"]}'.encode()
        raw_client.put_object(Bucket=bucket, Key=key, Body=stored.replace(old, new))
    code, output = verify(proxy, bucket)
    assert code == 1
    found = problems(output)
    assert any(p.startswith(f"PROBLEM {INDEX_KEY}: ") and "MAC mismatch" in p for p in found), output
    assert any(p.startswith(f"PROBLEM {NODE_KEY}: ") and "MAC mismatch" in p for p in found), output
    # Without the key the edit is invisible, as documented: only the MAC catches it.
    assert verify(proxy, bucket, with_key=False)[0] == 0


def test_verify_bucket_reports_a_stripped_mac(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    backup(proxy.client(**MEDUSA_CLIENT_CONFIG), bucket)
    raw_client.put_object(Bucket=bucket, Key=INDEX_KEY, Body=_strip_mac(raw_bytes(raw_client, bucket, INDEX_KEY)))
    code, output = verify(proxy, bucket)
    assert code == 1 and any(p.startswith(f"PROBLEM {INDEX_KEY}: manifest has no MAC") for p in problems(output))


def test_verify_bucket_reports_a_rolled_back_object(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    victim = list(DATA)[2]
    client.put_object(Bucket=bucket, Key=victim, Body=payload(MIB + 7, 99))  # an older version
    older = raw_bytes(raw_client, bucket, victim)
    backup(client, bucket)  # the backup writes the current version, then its manifest
    raw_client.put_object(Bucket=bucket, Key=victim, Body=older)  # rolled back behind the proxy's back
    code, output = verify(proxy, bucket)
    assert code == 1
    # With the key, the plaintext the bucket now holds is what differs from the manifest.
    assert [p for p in problems(output) if p.startswith(f"PROBLEM {victim}: the bucket has plaintext size")], output
    assert verify(proxy, bucket, with_key=False)[0] == 1  # the stored ETag shows it even without the key


@pytest.mark.parametrize("damage", ["reordered", "dropped"])
def test_verify_bucket_reports_a_damaged_seed_object(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str, tmp_path: Any, damage: str
) -> None:
    """A backup of the old in-Medusa encryption whose object lost or reordered whole records (the
    format cannot tell) while its manifest kept the original source_size/source_MD5."""
    import base64

    from cryptography.fernet import Fernet

    from proxy.format.seed import seed_record_size
    from tests.functional.test_objects import cutoff_after
    from tests.functional.test_seed_proxy import seed_object

    seed_key = Fernet.generate_key()
    key_path = tmp_path / "seed.key"
    key_path.write_bytes(seed_key)
    key_path.chmod(0o600)
    data = payload(3 * MIB + 100, 5)
    genuine = seed_object(Fernet(seed_key), data)
    record = seed_record_size(MIB)  # three full records, then a short one
    records = [genuine[i * record : (i + 1) * record] for i in range(3)] + [genuine[3 * record :]]
    stored = (
        records[1] + records[0] + records[2] + records[3]
        if damage == "reordered"
        else records[0] + records[1] + records[3]
    )
    path = "node1/bk0/data/ks1/t-1/nb-1-big-Data.db"
    raw_client.put_object(Bucket=bucket, Key=path, Body=stored)
    manifest = json.dumps(
        [
            {
                "keyspace": "ks1",
                "columnfamily": "t-1",
                "objects": [
                    {
                        "path": path,
                        "MD5": hashlib.md5(stored).hexdigest(),
                        "size": len(stored),
                        "source_size": len(data),
                        "source_MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
                    }
                ],
            }
        ]
    ).encode()
    raw_client.put_object(Bucket=bucket, Key="index/backup_index/bk0/manifest_node1.json", Body=manifest)
    cutoff = cutoff_after(raw_client, bucket)
    proxy = make_proxy(start=False, encryption={"seed_key_files": [str(key_path)], "legacy_plaintext_before": cutoff})
    code, output = verify(proxy, bucket)
    assert code == 1, output
    reason = "records reordered" if damage == "reordered" else "does not fit stored size"
    assert any(p.startswith(f"PROBLEM {path}: ") and reason in p for p in problems(output)), output
    assert "no MAC: written before legacy_plaintext_before" in output


def test_moved_backup_is_accepted_with_accept_moved(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str
) -> None:
    """Backups moved to another prefix outside the proxy: accepted only where the operator says so."""
    client = make_proxy().client(**MEDUSA_CLIENT_CONFIG)
    body = medusa_manifest([("old/node1/data/ks1/t-1/a-Data.db", "ab" * 16, 3)])
    client.put_object(Bucket=bucket, Key="old/" + NODE_KEY, Body=body)
    raw_client.put_object(Bucket=bucket, Key="new/" + NODE_KEY, Body=raw_bytes(raw_client, bucket, "old/" + NODE_KEY))
    assert_refused(client, bucket, "new/" + NODE_KEY)
    moved = make_proxy(encryption={"accept_moved": [{"from_prefix": "old/", "to_prefix": "new/"}]})
    assert get(moved.client(**MEDUSA_CLIENT_CONFIG), bucket, "new/" + NODE_KEY) == body


@pytest.mark.parametrize(
    ("prefix", "index_key", "node_key"),
    [
        ("", "index/backup_index/bk1/manifest_node1.example.com.json", "node1.example.com/bk1/meta/manifest.json"),
        ("p/q/", "p/q/index/backup_index/b/manifest_n.json", "p/q/n/b/meta/manifest.json"),
        ("", "index/backup_index/bk1/tokenmap_n.json", None),
    ],
)
def test_node_manifest_key(prefix: str, index_key: str, node_key: str | None) -> None:
    from proxy.tools.verify_bucket import node_manifest_key

    assert node_manifest_key(prefix, index_key) == node_key
