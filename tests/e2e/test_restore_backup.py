"""``restore-backup``: a Medusa backup made through the proxy, restored with no proxy running.

Medusa's own code makes two differential backups through the proxy (the second keeps the
first's unchanged files and uploads one changed file); then the proxy is stopped and
``python -m proxy restore-backup`` alone downloads the second backup. What it writes must be, byte for byte,
the snapshot Medusa backed up, laid out as ``medusa download`` lays it out; an interrupted run
resumes; an object changed in the bucket is reported and never written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.test_medusa_e2e import FQDN, backup, copy_snapshot, download
from tests.support.medusa_helpers import FakeSnapshot
from tests.support.servers import ProxyProcess, S3Server

REPO = Path(__file__).resolve().parents[2]


def restore(proxy: ProxyProcess, bucket: str, name: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", "restore-backup", "--config", str(proxy.config_path)]
    cmd += ["--bucket", bucket, "--fqdn", FQDN, "--backup", name, *extra, str(dest)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_restore_backup_without_a_proxy(
    upstream: S3Server,
    bucket: str,
    proxy: ProxyProcess,
    medusa_proxy_storage: dict[str, Any],
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    storage, tmp = medusa_proxy_storage, tmp_path / "t"
    backup(storage, "diff-a", snapshot, tmp, mode="differential")
    changed = copy_snapshot(snapshot, tmp_path / "snap-b")
    rel = next(r for r, size in sorted(changed.files.items()) if 0 < size < 1 << 20)
    changed.path(rel).write_bytes(b"a changed file for the differential backup\n")
    changed.files[rel] = changed.path(rel).stat().st_size
    diff = backup(storage, "diff-b", changed, tmp, mode="differential")
    by_medusa = download(storage, "diff-b", tmp_path / "by-medusa", tmp)["destination"]
    proxy.stop()  # disaster: no proxy from here on

    dest = tmp_path / "restored"
    done = restore(proxy, bucket, "diff-b", dest)
    assert done.returncode == 0, done.stderr
    assert changed.compare_download(dest) == []
    assert json.loads((dest / "manifest.json").read_text()) == diff["manifest"]  # what Medusa wrote
    for name in ("manifest.json", "schema.cql", "tokenmap.json"):
        assert (dest / name).read_bytes() == Path(by_medusa, name).read_bytes(), name
    files = len(changed.files)
    assert f"{files} files, 0 already restored, {files} to go" in done.stderr

    # Interrupted: a file lost, another half written. The rerun reads only those two.
    lost, half = sorted(r for r, size in changed.files.items() if size > 0)[:2]
    (dest / lost).unlink()
    (dest / half).write_bytes(b"half")
    again = restore(proxy, bucket, "diff-b", dest)
    assert again.returncode == 0, again.stderr
    assert f"{files} files, {files - 2} already restored, 2 to go" in again.stderr
    assert changed.compare_download(dest) == []

    # An object changed behind the proxy's back: reported, exit 1, never written; the rest is.
    data_key = next(o["path"] for t in diff["manifest"] for o in t["objects"] if o["path"].endswith("/" + lost))
    raw_client.put_object(Bucket=bucket, Key=data_key, Body=b"planted by someone without the key")
    fresh = tmp_path / "fresh"
    refused = restore(proxy, bucket, "diff-b", fresh)
    assert refused.returncode == 1
    assert f"FAILED {data_key}" in refused.stderr
    assert not (fresh / lost).exists() and not list(fresh.rglob("*.partial"))
    assert changed.compare_download(fresh) == [f"missing {lost}"]


def test_restore_backup_one_line_errors(proxy: ProxyProcess, bucket: str, tmp_path: Path) -> None:
    missing = restore(proxy, bucket, "no-such-backup", tmp_path / "d")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("medusa-crypt-proxy: restore-backup: ")
    assert "NoSuchKey" in missing.stderr and "Traceback" not in missing.stderr
