"""Unmodified Medusa 0.31 through the real proxy, in front of moto and ``rclone serve s3``
(and SeaweedFS for test_delete_and_purge_leave_no_orphans, the slim run of every step).

The same scenarios as tests/e2e/test_infra.py runs straight against moto, here THROUGH the proxy:
full backup, verify (with and without md5 checks), list-backups, download byte for byte,
differential backups (counts of uploaded / re-uploaded / kept files, also after the proxy
restarts with an empty cache), restore of plaintext backups taken without the proxy, a bucket
holding both kinds, delete-backup and purge without orphans, and the raw bucket's contents
(no plaintext SSTable bytes; metadata stays readable).

Thresholds are 5 MiB (threshold = multipart_chunksize), so the default snapshot has files
under, at and over the threshold, with several parts, and exact multiples of the part size.

Nothing here depends on whether the proxy rewrites stored manifests (source_size/source_MD5):
Medusa must see the same thing either way, and that is all these tests look at.

Run with ``-s`` to see the differential counts table printed by test_differential_counts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MEDUSA_CLIENT_CONFIG
from tests.functional.test_objects import cutoff_after, wait_past
from tests.support.medusa_helpers import (
    FakeSnapshot,
    MiB,
    keys_containing,
    list_keys,
    make_snapshot,
    medusa_storage,
    run_medusa,
    s3_etag,
    small_layout,
)
from tests.support.servers import ProxyProcess, S3Server

PART = 5 * MiB  # multi_part_upload_threshold = multipart_chunksize = 5MB (Medusa: MiB)
FQDN = "node1.test"
T1 = "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d"


# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------


def proxy_storage(proxy: ProxyProcess, bucket: str, **kw: Any) -> dict[str, Any]:
    return medusa_storage(proxy.endpoint_url, bucket, proxy.access_key, proxy.secret_key, **kw)


def backup(
    storage: dict[str, Any], name: str, snap: FakeSnapshot, tmp: Path, *, mode: str = "full", md5: bool = False
) -> dict[str, Any]:
    return run_medusa(
        "backup",
        {
            "storage": storage,
            "backup_name": name,
            "mode": mode,
            "snapshot_dir": str(snap.root),
            "enable_md5_checks": md5,
        },
        tmp_dir=tmp,
    )


def verify(storage: dict[str, Any], name: str, tmp: Path, *, md5: bool, check: bool = True) -> dict[str, Any]:
    return run_medusa(
        "verify", {"storage": storage, "backup_name": name, "enable_md5_checks": md5}, tmp_dir=tmp, check=check
    )


def download(storage: dict[str, Any], name: str, dest: Path, tmp: Path) -> dict[str, Any]:
    assert not dest.exists()  # a fresh directory
    return run_medusa("download", {"storage": storage, "backup_name": name, "destination": str(dest)}, tmp_dir=tmp)


def list_backups(storage: dict[str, Any], tmp: Path) -> dict[str, Any]:
    return run_medusa("list", {"storage": storage}, tmp_dir=tmp)


def listed_entry(client: Any, bucket: str, key: str) -> tuple[int, str]:
    entry = client.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"][0]
    return entry["Size"], entry["ETag"]


def counts(result: dict[str, Any]) -> tuple[int, int, int]:
    return result["uploaded"], result["reuploaded"], result["kept"]


def manifest_entries(result: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """rel -> (size, MD5) of a backup result's manifest (as Medusa wrote and read it)."""
    return {o["path"].split("/data/", 1)[1]: (o["size"], o["MD5"]) for t in result["manifest"] for o in t["objects"]}


def expected_entries(snap: FakeSnapshot) -> dict[str, tuple[int, str]]:
    """What S3 itself would report for every snapshot file uploaded the way s3transfer does."""
    return {rel: (snap.path(rel).stat().st_size, s3_etag(snap.path(rel))) for rel in snap.files}


def exact_multiples(snap: FakeSnapshot) -> list[str]:
    """Files Medusa's md5_multipart hashes with one part too many (its quirk, reference s.5)."""
    return sorted(rel for rel, size in snap.files.items() if size >= PART and size % PART == 0)


def copy_snapshot(snap: FakeSnapshot, root: Path) -> FakeSnapshot:
    shutil.copytree(snap.root, root)
    return FakeSnapshot(root=root, marker=snap.marker, tag=snap.tag, seed=snap.seed, files=dict(snap.files))


def nonempty(snap: FakeSnapshot, prefix: str) -> list[str]:
    return sorted(prefix + rel for rel, size in snap.files.items() if size > 0)


def check_plaintext_metadata(raw: Any, bucket: str, name: str, snap: FakeSnapshot) -> None:
    """Medusa's metadata objects are stored as they were written: readable without the key."""

    def get(key: str) -> bytes:
        return raw.get_object(Bucket=bucket, Key=key)["Body"].read()

    meta = f"{FQDN}/{name}/meta/"
    assert get(meta + "schema.cql").startswith(b"CREATE KEYSPACE ks1")
    assert FQDN in json.loads(get(meta + "tokenmap.json"))
    assert json.loads(get(meta + "server_version.json"))
    for key in (meta + "manifest.json", f"index/backup_index/{name}/manifest_{FQDN}.json"):
        manifest = json.loads(get(key))  # plaintext JSON, its last element the proxy's MAC
        assert set(manifest[-1]) == {"medusa_crypt_proxy"}
        paths = sorted(o["path"] for t in manifest[:-1] for o in t["objects"])
        assert [p.split("/data/", 1)[1] for p in paths] == sorted(snap.files)
    index = f"index/backup_index/{name}/"
    assert get(index + f"schema_{FQDN}.cql").startswith(b"CREATE KEYSPACE ks1")
    assert FQDN in json.loads(get(index + f"tokenmap_{FQDN}.json"))
    assert get(f"index/latest_backup/{FQDN}/backup_name.txt") == name.encode()
    assert FQDN in json.loads(get(f"index/latest_backup/{FQDN}/tokenmap.json"))
    timestamps = [k for k in list_keys(raw, bucket, index) if k.endswith(".timestamp")]
    assert len(timestamps) == 2  # started_ and finished_


# ------------------------------------------------------------------------------------
# 1 + 6: full backup, verify, list, download; what the raw bucket holds
# ------------------------------------------------------------------------------------


def test_full_backup_verify_list_download(
    upstream: S3Server,
    bucket: str,
    proxy: ProxyProcess,
    medusa_proxy_storage: dict[str, Any],
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    storage, snap, tmp, raw = medusa_proxy_storage, snapshot, tmp_path / "t", raw_client
    r = backup(storage, "full-a", snap, tmp)
    assert counts(r) == (17, 0, 0)
    assert r["uploaded_files"] == sorted(snap.files)
    # Medusa's manifest holds plaintext sizes and S3-style plaintext ETags (HEAD after each
    # upload), on rclone too: the proxy computes the ETags itself.
    assert manifest_entries(r) == expected_entries(snap)

    # LIST and HEAD through the proxy agree with the manifest; the raw objects are larger.
    client = proxy.client(**MEDUSA_CLIENT_CONFIG)
    data = f"{FQDN}/full-a/data/"
    listed = {
        o["Key"]: o
        for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=data)
        for o in p.get("Contents", [])
    }
    raw_listed = {o["Key"]: o for o in raw.list_objects_v2(Bucket=bucket, Prefix=data)["Contents"]}
    assert sorted(listed) == sorted(raw_listed) == [data + rel for rel in sorted(snap.files)]
    for rel, (size, etag) in expected_entries(snap).items():
        head = client.head_object(Bucket=bucket, Key=data + rel)
        assert (listed[data + rel]["Size"], listed[data + rel]["ETag"].strip('"')) == (size, etag)
        assert (head["ContentLength"], head["ETag"].strip('"')) == (size, etag)
        assert raw_listed[data + rel]["Size"] > size  # ciphertext: records + trailer

    for md5 in (False, True):
        v = verify(storage, "full-a", tmp, md5=md5)
        assert v["ok"] and v["errors"] == [] and "Manifest validated: OK" in v["output"], v["output"]

    lst = list_backups(storage, tmp)
    assert [b["name"] for b in lst["backups"]] == ["full-a"]
    assert lst["backups"][0]["num_objects"] == 17
    assert lst["backups"][0]["size"] == sum(snap.files.values())
    assert lst["backups"][0]["finished"] is not None
    assert lst["latest"] == "full-a"

    d = download(storage, "full-a", tmp_path / "restore", tmp)
    assert snap.compare_download(d["destination"]) == []
    assert {"manifest.json", "schema.cql", "tokenmap.json"} <= set(d["files"])
    assert json.loads(Path(d["destination"], "manifest.json").read_text()) == r["manifest"]

    # 6: no plaintext SSTable bytes anywhere in the bucket's data, metadata in plaintext
    assert keys_containing(raw, bucket, snap.marker) == []  # data, metadata, anywhere
    check_plaintext_metadata(raw, bucket, "full-a", snap)

    # verify can fail through the proxy: an object replaced behind its back is reported
    bad = next(rel for rel, size in sorted(snap.files.items()) if 0 < size < MiB)
    raw.put_object(Bucket=bucket, Key=data + bad, Body=b"changed")
    v = verify(storage, "full-a", tmp, md5=False, check=False)
    assert not v["ok"]
    assert v["errors"] == [f"  - [{data}{bad}] Blob different"], v["output"]
    # the planted object is refused, yet listing the backups still works
    assert [b["name"] for b in list_backups(storage, tmp)["backups"]] == ["full-a"]
    assert listed_entry(client, bucket, data + bad) == (-1, '"00000000000000000000000000000000-0"')


# ------------------------------------------------------------------------------------
# 2 + 3: differential backups, counts; with a fresh proxy (empty cache) for every step
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fresh_proxy", [False, True], ids=["one-proxy", "fresh-proxy-per-step"])
def test_differential_counts(
    upstream: S3Server,
    bucket: str,
    make_proxy: Callable[..., ProxyProcess],
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
    fresh_proxy: bool,
) -> None:
    """Exactly the changed files are uploaded; Medusa's own md5 quirk is the only exception.

    fresh_proxy: every backup goes through a newly started proxy with an empty cache (a new
    node with the same bucket and fqdn), so every LIST answer is rebuilt from the bucket.
    """
    snap, tmp = snapshot, tmp_path / "t"
    current: list[ProxyProcess] = []
    rows: list[tuple[str, bool, tuple[int, int, int]]] = []

    def storage() -> dict[str, Any]:
        if not current or fresh_proxy:
            if current:
                current[-1].stop()
            current.append(make_proxy())
        return proxy_storage(current[-1], bucket)

    def diff(name: str, md5: bool, step: str) -> dict[str, Any]:
        r = backup(storage(), name, snap, tmp, mode="differential", md5=md5)
        assert r["node_backup"]["differential"] is True
        rows.append((step, md5, counts(r)))
        return r

    quirk = exact_multiples(snap)
    assert len(quirk) == 2  # nb-2 Data (5 MiB) and nb-3 Data (10 MiB)
    multipart = sorted(rel for rel, size in snap.files.items() if size >= PART)

    d1 = diff("d1", False, "first differential")
    assert counts(d1) == (17, 0, 0)
    assert d1["uploaded_files"] == sorted(snap.files)
    assert manifest_entries(d1) == expected_entries(snap)

    d2 = diff("d2", False, "same data again")
    assert counts(d2) == (0, 0, 17)
    assert d2["kept_files"] == sorted(snap.files)
    assert manifest_entries(d2) == expected_entries(snap)

    # md5 on: the proxy reports S3-style plaintext ETags (md5 of the part md5s, "-N"), which
    # Medusa's md5_multipart reproduces except for exact multiples of the part size (its own
    # quirk, real S3 too). On rclone the raw multipart ETag is the MD5 of the whole (stored)
    # object, which would make Medusa re-upload every multipart file; through the proxy it
    # does not apply, because the proxy answers with its own ETags.
    client = current[-1].client(**MEDUSA_CLIENT_CONFIG)
    for rel in multipart:
        key = f"{FQDN}/data/{rel}"
        via_proxy = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        assert via_proxy == s3_etag(snap.path(rel)) and "-" in via_proxy
        raw_etag = raw_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        assert ("-" in raw_etag) is (upstream.name == "moto"), raw_etag  # rclone: whole-object MD5
    d3 = diff("d3", True, "same data again")
    assert d3["uploaded_files"] == []
    assert d3["reuploaded_files"] == quirk
    assert counts(d3) == (0, 2, 15)
    assert manifest_entries(d3) == expected_entries(snap)

    # changes, md5 on: add, delete, grow, same-size changes (small and multipart)
    small = sorted(rel for rel, size in snap.files.items() if len(snap.marker) < size < MiB)
    added_a = f"{T1}/nb-9-big-Data.db"
    snap.add(added_a, 777)
    snap.grow(small[0], 10)
    snap.change_same_size(small[1])
    snap.change_same_size(f"{T1}/nb-1-big-Data.db")  # 2 parts + 123 bytes, not a multiple
    snap.delete(small[2])
    d4 = diff("d4", True, "+1 new, 1 grown, 2 same-size, 1 deleted")
    assert d4["uploaded_files"] == [added_a]
    assert d4["reuploaded_files"] == sorted([small[0], small[1], f"{T1}/nb-1-big-Data.db", *quirk])
    assert counts(d4) == (1, 5, 11)
    assert manifest_entries(d4) == expected_entries(snap)
    assert small[2] not in manifest_entries(d4)

    # changes, md5 off: only sizes decide; the same-size change is kept, stale (Medusa's rule)
    added_b = f"{T1}/nb-10-big-Data.db"
    snap.add(added_b, PART + 4096)  # a new multipart file
    snap.grow(small[3], 1)
    snap.change_same_size(small[4])
    snap.delete(small[5])
    d5 = diff("d5", False, "+1 new, 1 grown, 1 same-size, 1 deleted")
    assert d5["uploaded_files"] == [added_b]
    assert d5["reuploaded_files"] == [small[3]]
    assert small[4] in d5["kept_files"]
    assert counts(d5) == (1, 1, len(snap.files) - 2)
    stale = {rel: v for rel, v in manifest_entries(d5).items() if v != expected_entries(snap)[rel]}
    assert list(stale) == [small[4]]

    # md5 on again, nothing changed: catches what md5 off missed, plus the quirk
    d6 = diff("d6", True, "nothing changed (md5 on catches the stale one)")
    assert d6["uploaded_files"] == []
    assert d6["reuploaded_files"] == sorted([small[4], *quirk])
    assert counts(d6) == (0, 3, len(snap.files) - 3)
    assert manifest_entries(d6) == expected_entries(snap)

    last = proxy_storage(current[-1], bucket)
    v = verify(last, "d6", tmp, md5=True)
    assert v["ok"] and v["errors"] == [], v["output"]
    d = download(last, "d6", tmp_path / "restore", tmp)
    assert snap.compare_download(d["destination"]) == []
    assert keys_containing(raw_client, bucket, snap.marker, prefix=f"{FQDN}/data/") == []

    mode = "fresh proxy per step" if fresh_proxy else "one proxy"
    print(f"\ndifferential counts, {upstream.name}, {mode} (uploaded / re-uploaded / kept):")
    for step, md5, (up, re_up, kept) in rows:
        print(f"  md5 {'on ' if md5 else 'off'} {up:3d} / {re_up:3d} / {kept:3d}  {step}")


# ------------------------------------------------------------------------------------
# 4: backups taken without the proxy, restored through it; a bucket holding both kinds
# ------------------------------------------------------------------------------------


def test_plaintext_backups_restore_through_proxy(
    upstream: S3Server,
    bucket: str,
    make_proxy: Callable[..., ProxyProcess],
    medusa_raw_storage: dict[str, Any],
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    snap, tmp, raw = snapshot, tmp_path / "t", raw_client
    p_full = backup(medusa_raw_storage, "plain-full", snap, tmp)
    p_diff = backup(medusa_raw_storage, "plain-diff", snap, tmp, mode="differential")
    assert counts(p_full) == counts(p_diff) == (17, 0, 0)
    # The operator declares everything written so far older than encryption.
    cutoff = cutoff_after(raw, bucket)
    wait_past(cutoff)
    via = proxy_storage(make_proxy(encryption={"legacy_plaintext_before": cutoff}), bucket)
    original = copy_snapshot(snap, tmp_path / "snapshot-original")
    assert keys_containing(raw, bucket, snap.marker, prefix=f"{FQDN}/data/") == nonempty(
        snap, f"{FQDN}/data/"
    )  # really plaintext

    # restore through the proxy of a backup it never saw (verify and list: below)
    d = download(via, "plain-full", tmp_path / "restore-plain-full", tmp)
    assert original.compare_download(d["destination"]) == []

    # A differential through the proxy over the plaintext objects in {fqdn}/data/: plaintext
    # objects are reported with the upstream's own ETag, so the upstream's multipart ETag rule
    # decides here: moto's S3-style ETags leave only Medusa's exact-multiple quirk; rclone's
    # whole-object MD5 re-uploads every multipart file (the documented rclone behaviour).
    c_diff = backup(via, "crypt-diff", snap, tmp, mode="differential", md5=True)
    multipart = sorted(rel for rel, size in snap.files.items() if size >= PART)
    reuploaded = exact_multiples(snap) if upstream.name == "moto" else multipart
    assert c_diff["uploaded_files"] == []
    assert c_diff["reuploaded_files"] == reuploaded
    assert counts(c_diff) == (0, len(reuploaded), 17 - len(reuploaded))
    assert manifest_entries(c_diff) == {
        rel: (size, s3_etag(snap.path(rel)) if rel in reuploaded else etag)
        for rel, (size, etag) in manifest_entries(p_diff).items()
    }
    # the re-uploaded objects are now encrypted, the others still the old plaintext
    assert keys_containing(raw, bucket, snap.marker, prefix=f"{FQDN}/data/") == [
        k for k in nonempty(snap, f"{FQDN}/data/") if k.split("/data/", 1)[1] not in reuploaded
    ]

    # then a full backup of changed data through the proxy
    small = sorted(rel for rel, size in snap.files.items() if len(snap.marker) < size < MiB)
    snap.change_same_size(small[0])
    snap.add(f"{T1}/nb-9-big-Data.db", 3000)
    c_full = backup(via, "crypt-full", snap, tmp)
    assert counts(c_full) == (18, 0, 0)
    assert keys_containing(raw, bucket, snap.marker, prefix=f"{FQDN}/crypt-full/") == []
    assert keys_containing(raw, bucket, snap.marker, prefix=f"{FQDN}/plain-full/") == nonempty(
        original, f"{FQDN}/plain-full/data/"
    )

    lst = list_backups(via, tmp)
    assert [b["name"] for b in lst["backups"]] == ["plain-full", "plain-diff", "crypt-diff", "crypt-full"]
    assert [b["num_objects"] for b in lst["backups"]] == [17, 17, 17, 18]
    assert lst["latest"] == "crypt-full"
    for name in ("crypt-diff", "crypt-full", "plain-full"):
        v = verify(via, name, tmp, md5=True)
        assert v["ok"] and v["errors"] == [], (name, v["output"])
    # plain-diff's manifest holds the upstream's ETags of objects crypt-diff re-uploaded; the
    # proxy reports S3-style ETags for them: equal on moto, not rclone's whole-object MD5s.
    differs = sorted(rel for rel in reuploaded if manifest_entries(p_diff)[rel][1] != s3_etag(original.path(rel)))
    assert bool(differs) is (upstream.name == "rclone")
    v = verify(via, "plain-diff", tmp, md5=True, check=False)
    assert v["ok"] is not differs
    # (Medusa reports them in manifest order)
    assert sorted(v["errors"]) == [f"  - [{FQDN}/data/{rel}] Blob different" for rel in differs]

    for name, expected in (("crypt-diff", original), ("crypt-full", snap)):
        d = download(via, name, tmp_path / f"restore-{name}", tmp)
        assert expected.compare_download(d["destination"]) == [], name


# ------------------------------------------------------------------------------------
# 5: delete-backup and purge leave no orphans
# ------------------------------------------------------------------------------------


@pytest.mark.all_upstreams  # the slim end to end on SeaweedFS too: full, differential, verify, download, purge
def test_delete_and_purge_leave_no_orphans(
    upstream: S3Server,
    bucket: str,
    proxy: ProxyProcess,
    medusa_proxy_storage: dict[str, Any],
    raw_client: Any,
    tmp_path: Path,
) -> None:
    # names that are not prefixes of each other (Medusa's own bk1/bk10 quirk)
    storage, tmp, raw = medusa_proxy_storage, tmp_path / "t", raw_client
    layout = {**small_layout(), f"{T1}/nb-2-big-Data.db": PART + 100}  # one multipart file
    snap = make_snapshot(tmp_path / "data", layout)
    assert counts(backup(storage, "alpha", snap, tmp)) == (5, 0, 0)  # a full backup
    for name in ("bravo", "charlie"):
        backup(storage, name, snap, tmp, mode="differential")
    # a data file only bravo and charlie reference becomes an orphan once both are gone
    orphan = f"{T1}/nb-1-big-Index.db"
    snap.delete(orphan)
    assert counts(backup(storage, "delta", snap, tmp, mode="differential")) == (0, 0, 4)
    assert f"{FQDN}/data/{orphan}" in list_keys(raw, bucket)

    d = run_medusa("delete", {"storage": storage, "backup_name": "alpha"}, tmp_dir=tmp)
    assert d["deleted"] == ["alpha"]
    keys = list_keys(raw, bucket)
    assert [k for k in keys if "/alpha/" in k or k.startswith("index/backup_index/alpha/")] == []
    assert [b["name"] for b in list_backups(storage, tmp)["backups"]] == ["bravo", "charlie", "delta"]

    p = run_medusa("purge", {"storage": storage, "max_backup_count": 1}, tmp_dir=tmp)
    assert p["backups_purged"] == 2
    lst = list_backups(storage, tmp)
    assert [b["name"] for b in lst["backups"]] == ["delta"]
    assert lst["latest"] == "delta"

    # exactly delta's objects are left: nothing of the others, no orphaned data file
    keys = list_keys(raw, bucket)
    expected = sorted(
        [f"{FQDN}/data/{rel}" for rel in snap.files]
        + [
            f"{FQDN}/delta/meta/{n}"
            for n in ("differential", "manifest.json", "schema.cql", "server_version.json", "tokenmap.json")
        ]
        + [
            f"index/backup_index/delta/{n}"
            for n in (f"differential_{FQDN}", f"manifest_{FQDN}.json", f"schema_{FQDN}.cql", f"tokenmap_{FQDN}.json")
        ]
        + [f"index/latest_backup/{FQDN}/{n}" for n in ("backup_name.txt", "tokenmap.json")]
    )
    timestamps = [k for k in keys if k.endswith(".timestamp")]
    assert sorted(k for k in keys if not k.endswith(".timestamp")) == expected
    assert sorted(k.split("/")[-1].split("_")[0] for k in timestamps) == ["finished", "started"]
    assert all(k.startswith("index/backup_index/delta/") for k in timestamps)
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    v = verify(storage, "delta", tmp, md5=True)
    assert v["ok"] and v["errors"] == [], v["output"]
    dl = download(storage, "delta", tmp_path / "restore", tmp)
    assert snap.compare_download(dl["destination"]) == []
    assert keys_containing(raw, bucket, snap.marker) == []
