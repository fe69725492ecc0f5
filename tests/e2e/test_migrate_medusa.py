"""Medusa's own code after ``migrate``: full and differential backups written straight to the
bucket (no proxy), declared legacy, then encrypted in place. Afterwards nothing under the host is
plaintext, the cutoff is gone from the config, and through a proxy without it Medusa verifies both
backups, its next differential backup keeps what it kept before the migration, and both backups
download byte-identical; ``verify-bucket`` is clean.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from proxy.config import load_config
from tests.e2e.test_medusa_e2e import (
    FQDN,
    PART,
    backup,
    copy_snapshot,
    counts,
    download,
    exact_multiples,
    proxy_storage,
    verify,
)
from tests.functional.test_objects import cutoff_after, wait_past
from tests.support.medusa_helpers import FakeSnapshot, keys_containing
from tests.support.servers import ProxyProcess, S3Server

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "proxy"]


def test_medusa_backups_survive_a_migration(
    upstream: S3Server,
    bucket: str,
    make_proxy: Callable[..., ProxyProcess],
    medusa_raw_storage: dict[str, Any],
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    snap, tmp, raw = snapshot, tmp_path / "t", raw_client
    backup(medusa_raw_storage, "plain-full", snap, tmp)
    backup(medusa_raw_storage, "plain-diff", snap, tmp, mode="differential")
    original = copy_snapshot(snap, tmp_path / "snapshot-original")
    assert keys_containing(raw, bucket, snap.marker, prefix=f"{FQDN}/") != []  # plaintext, for now
    cutoff = cutoff_after(raw, bucket)
    wait_past(cutoff)
    proxy = make_proxy(start=False)
    proxy.config["encryption"] = {**proxy.config["encryption"], "legacy_plaintext_before": cutoff}
    proxy.config["clients"] = [{**proxy.config["clients"][0], "buckets": [bucket]}]
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(proxy.config))

    migrated = subprocess.run(
        [*CLI, "migrate", "--config", str(config), "--bucket", bucket],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    files = 2 * len(snap.files)  # both backups' data files (the full one's own, the shared ones), empty ones too
    assert f"encrypted {files} of {files} unencrypted object(s)" in migrated.stdout
    assert "rewrote 4 manifest(s)" in migrated.stdout  # each backup's, and its index copy
    assert keys_containing(raw, bucket, snap.marker, prefix=f"{FQDN}/") == []
    assert load_config(str(config)).encryption.legacy_plaintext_before is None

    key_file = proxy.config["encryption"]["key_files"][0]
    checked = subprocess.run(
        [*CLI, "verify-bucket", "--config", str(config), "--bucket", bucket, "--key-file", key_file],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"(format 2): {files} object(s)" in checked.stdout, checked.stdout

    proxy.config = yaml.safe_load(config.read_text())  # no cutoff: only the proxy's own objects are served
    proxy.start()
    via = proxy_storage(proxy, bucket)
    for name in ("plain-full", "plain-diff"):
        v = verify(via, name, tmp, md5=True)
        assert v["ok"] and v["errors"] == [], (name, v["output"])
    # As it would have over the plaintext objects (test_plaintext_backups_restore_through_proxy):
    # the same plaintext ETags, so moto leaves only Medusa's exact-multiple quirk, rclone's
    # whole-object MD5s re-upload its multipart files.
    diff = backup(via, "crypt-diff", snap, tmp, mode="differential", md5=True)
    multipart = sorted(rel for rel, size in snap.files.items() if size >= PART)
    reuploaded = exact_multiples(snap) if upstream.name == "moto" else multipart
    assert diff["uploaded_files"] == [] and diff["reuploaded_files"] == reuploaded
    assert counts(diff) == (0, len(reuploaded), len(snap.files) - len(reuploaded))
    for name in ("plain-full", "plain-diff", "crypt-diff"):
        d = download(via, name, tmp_path / f"restore-{name}", tmp)
        assert original.compare_download(d["destination"]) == [], name
