"""The older Medusa releases operators still run (latest 0.29.x and 0.30.x), through the proxy.

test_medusa_e2e runs every scenario with Medusa 0.31; here each older version gets ONE combined
scenario per upstream (full -> verify -> list -> differential with md5 off and on -> a changed
file -> download byte for byte -> purge), to keep the suite's wall time small.

Why these versions matter: all three pin botocore 1.40.41, but 0.29 builds its client with
botocore's defaults, which (botocore >= 1.36) send flexible checksums: over HTTPS, PutObject and
UploadPart bodies go as ``Content-Encoding: aws-chunked`` with an ``x-amz-checksum-crc32``
trailer (over plain HTTP botocore sends the CRC as a header instead), and GETs ask for checksums
(``x-amz-checksum-mode: ENABLED``).  0.30+ set ``when_required``: plain bodies, no CRC.  So the
proxy serves TLS here, as Medusa's default ``secure = True`` (``ssl_verify = False``) expects;
test_medusa_029_over_plain_http covers the header case, k8ssandra-operator's default (``secure:
false``, Medusa 0.29.1).
The test checks which kind each version really sent (recorded in botocore by the driver), so a
Medusa that changes its client settings is noticed.

0.29's own quirks (the same straight against moto, without the proxy): it lists a backup's
objects without the empty ones, so its verify reports every 0-byte SSTable component as
"Doesn't exists" and its purge leaves them behind (fixed in 0.30), and its uploads and md5
checks use other part sizes (below).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_operations import TLSProxyProcess
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

PART = 5 * MiB
FQDN = "node1.test"
T1 = "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d"


@dataclass(frozen=True)
class Medusa:
    """What differs between the versions, as their own code does it (not the proxy's doing)."""

    chunked: bool  # uploads are aws-chunked with a CRC trailer (botocore's default checksums)
    # 0.29 does not pass multi_part_upload_threshold to s3transfer (whose default is 8 MiB) and
    # hashes local files in 8 MiB parts for its md5 check; 0.30+ use the configured sizes.
    upload_threshold: int
    md5_part: int
    drops_empty: bool  # 0.29 lists objects without the 0-byte ones (verify and purge miss them)
    threshold_setting: str  # 0.29's differential does int(multi_part_upload_threshold): bytes only


VERSIONS = {
    "0.29.1": Medusa(
        chunked=True, upload_threshold=8 * MiB, md5_part=8 * MiB, drops_empty=True, threshold_setting=str(PART)
    ),
    "0.30.1": Medusa(chunked=False, upload_threshold=PART, md5_part=PART, drops_empty=False, threshold_setting="5MB"),
}


def entries(result: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {o["path"].split("/data/", 1)[1]: (o["size"], o["MD5"]) for t in result["manifest"] for o in t["objects"]}


def expected(snap: FakeSnapshot, m: Medusa) -> dict[str, tuple[int, str]]:
    """What S3 itself reports for each file the way this Medusa uploads it (size, ETag)."""
    return {
        rel: (snap.path(rel).stat().st_size, s3_etag(snap.path(rel), PART, m.upload_threshold)) for rel in snap.files
    }


def medusa_multipart_md5(data: bytes, part: int) -> str:
    """Medusa's md5_multipart: reads parts until an empty read, so exact multiples get one more."""
    parts = [data[i * part : (i + 1) * part] for i in range(len(data) // part + 1)]
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


def md5_mismatches(snap: FakeSnapshot, m: Medusa) -> list[str]:
    """Unchanged files an md5-checking differential re-uploads anyway (Medusa's hash != S3's ETag).

    Medusa hashes files at or over multi_part_upload_threshold (5 MiB here) in parts; smaller
    ones by plain MD5, which always matches.
    """
    stored = expected(snap, m)
    return sorted(
        rel
        for rel, size in snap.files.items()
        if size >= PART and medusa_multipart_md5(snap.path(rel).read_bytes(), m.md5_part) != stored[rel][1]
    )


def counts(result: dict[str, Any]) -> tuple[int, int, int]:
    return result["uploaded"], result["reuploaded"], result["kept"]


def tls_proxy(make_proxy: Callable[..., ProxyProcess], out: Path) -> ProxyProcess:
    """A proxy serving HTTPS with a fresh self-signed certificate (``tls-selfsigned``)."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "tls-selfsigned", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    printed = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    proxy = make_proxy(start=False, tls={"cert_file": printed["certificate"], "key_file": printed["private key"]})
    proxy.__class__ = TLSProxyProcess  # same process handling, https endpoint
    proxy.start()
    return proxy


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("version", list(VERSIONS))
def test_medusa_version_through_proxy(
    version: str,
    upstream: S3Server,
    bucket: str,
    make_proxy: Callable[..., ProxyProcess],
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    snap, tmp, raw, m = snapshot, tmp_path / "t", raw_client, VERSIONS[version]
    proxy = tls_proxy(make_proxy, tmp_path / "tls")
    storage = medusa_storage(
        proxy.endpoint_url,
        bucket,
        proxy.access_key,
        proxy.secret_key,
        ssl_verify=False,
        multi_part_upload_threshold=m.threshold_setting,
    )
    assert storage["secure"] is True

    def medusa(action: str, check: bool = True, **args: Any) -> dict[str, Any]:
        return run_medusa(action, {"storage": storage, **args}, tmp_dir=tmp, version=version, check=check)

    def backup(name: str, mode: str, md5: bool, **kw: Any) -> dict[str, Any]:
        r = medusa("backup", backup_name=name, mode=mode, snapshot_dir=str(snap.root), enable_md5_checks=md5, **kw)
        assert r["node_backup"]["differential"] is (mode == "differential")
        return r

    assert medusa("version")["medusa"] == version

    # full, recording what kind of upload bodies this version sends
    full = backup("full", "full", False, record_requests=True)
    assert counts(full) == (17, 0, 0)
    assert entries(full) == expected(snap, m)
    bodies = {(enc, trailer, crc_header) for method, _, enc, trailer, crc_header in full["requests"] if method == "PUT"}
    assert bodies == ({("aws-chunked", "x-amz-checksum-crc32", False)} if m.chunked else {(None, None, False)}), bodies
    assert keys_containing(raw, bucket, snap.marker) == []  # nothing in plaintext, anywhere

    def check_verify(name: str, md5: bool, prefix: str) -> None:
        v = medusa("verify", check=False, backup_name=name, enable_md5_checks=md5)
        if m.drops_empty:
            missing = [
                f"  - [{FQDN}/{prefix}{rel}] Doesn't exists" for rel, size in sorted(snap.files.items()) if not size
            ]
            assert not v["ok"] and sorted(v["errors"]) == missing, v["output"]
        else:
            assert v["ok"] and v["errors"] == [] and "Manifest validated: OK" in v["output"], v["output"]

    for md5 in (False, True):
        check_verify("full", md5, "full/data/")
    full_files = dict(snap.files)

    # differential: md5 off keeps everything; md5 on re-uploads only what Medusa's own hashing
    # misjudges (0.30+: exact multiples of the part size; 0.29: every file of 5 MiB or more)
    same = backup("d1", "differential", False)
    assert counts(same) == (17, 0, 0)  # the first differential uploads into {fqdn}/data/
    kept = backup("d2", "differential", False)
    assert counts(kept) == (0, 0, 17)
    quirk = md5_mismatches(snap, m)
    assert len(quirk) == (4 if version == "0.29.1" else 2)
    with_md5 = backup("d3", "differential", True)
    assert with_md5["uploaded_files"] == []
    assert with_md5["reuploaded_files"] == quirk and counts(with_md5) == (0, len(quirk), 17 - len(quirk))

    # a changed multipart file, a new file, a deleted one, md5 on
    snap.change_same_size(f"{T1}/nb-1-big-Data.db")
    snap.add(f"{T1}/nb-9-big-Data.db", PART + 4096)
    snap.delete(f"{T1}/nb-1-big-Index.db")
    changed = backup("d4", "differential", True)
    assert changed["uploaded_files"] == [f"{T1}/nb-9-big-Data.db"]
    quirk = [rel for rel in md5_mismatches(snap, m) if rel != f"{T1}/nb-9-big-Data.db"]
    assert changed["reuploaded_files"] == sorted({f"{T1}/nb-1-big-Data.db", *quirk})
    assert entries(changed) == expected(snap, m)
    check_verify("d4", True, "data/")

    # download (restore) byte for byte
    dest = tmp_path / "restore"
    d = medusa("download", backup_name="d4", destination=str(dest))
    assert snap.compare_download(d["destination"]) == []

    # purge down to the last backup: nothing of the others is left, all of d4 is
    p = medusa("purge", max_backup_count=1)
    assert p["ok"] and p["backups_purged"] == 4
    lst = medusa("list")
    assert [b["name"] for b in lst["backups"]] == ["d4"] and lst["latest"] == "d4"
    keys = list_keys(raw, bucket)
    left = [k for k in keys if k.startswith(FQDN + "/") and not k.startswith((f"{FQDN}/data/", f"{FQDN}/d4/"))]
    empty_in_full = [f"{FQDN}/full/data/{rel}" for rel, size in sorted(full_files.items()) if not size]
    assert left == (empty_in_full if m.drops_empty else [])
    assert [k for k in keys if k.startswith("index/backup_index/") and "/d4/" not in k] == []
    assert sorted(k.split("/data/", 1)[1] for k in keys if k.startswith(f"{FQDN}/data/")) == sorted(snap.files)
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_medusa_029_over_plain_http(
    upstream: S3Server, bucket: str, make_proxy: Callable[..., ProxyProcess], raw_client: Any, tmp_path: Path
) -> None:
    """What k8ssandra-operator sets up by default (secure: false, Medusa 0.29.1): botocore then
    sends the CRC32 of each upload as a header instead of an aws-chunked trailer."""
    version, m = "0.29.1", VERSIONS["0.29.1"]
    layout = {**small_layout(), f"{T1}/nb-2-big-Data.db": 8 * MiB + 100}  # one multipart file
    snap, tmp = make_snapshot(tmp_path / "data", layout), tmp_path / "t"
    proxy = make_proxy()
    storage = medusa_storage(
        proxy.endpoint_url, bucket, proxy.access_key, proxy.secret_key, multi_part_upload_threshold=m.threshold_setting
    )
    assert storage["secure"] is False
    args = {"storage": storage, "backup_name": "plain", "mode": "full", "snapshot_dir": str(snap.root)}
    r = run_medusa("backup", {**args, "record_requests": True}, tmp_dir=tmp, version=version)
    bodies = {(enc, trailer, crc_header) for method, _, enc, trailer, crc_header in r["requests"] if method == "PUT"}
    assert bodies == {(None, None, True)}, bodies
    assert entries(r) == expected(snap, m)
    assert keys_containing(raw_client, bucket, snap.marker) == []
    dest = tmp_path / "restore"
    d = run_medusa(
        "download", {"storage": storage, "backup_name": "plain", "destination": str(dest)}, tmp_dir=tmp, version=version
    )
    assert snap.compare_download(d["destination"]) == []
