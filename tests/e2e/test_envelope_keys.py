"""Format version 2 (envelope keys) with Medusa's own code, through the proxy on moto and rclone.

A differential backup written with ``format_version: 2``, then the proxy switched back to
version 1 and a second differential backup made over it: Medusa keeps the unchanged files, and
verify, download, ``verify-bucket --key-file`` and ``restore-backup`` all see one consistent,
byte-identical backup made of both formats.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.format.trailer import Trailer
from tests.e2e.test_medusa_e2e import (
    FQDN,
    backup,
    copy_snapshot,
    counts,
    download,
    exact_multiples,
    proxy_storage,
    verify,
)
from tests.support.medusa_helpers import FakeSnapshot
from tests.support.servers import ProxyProcess

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "proxy"]


def stored_versions(raw: Any, bucket: str, prefix: str) -> dict[str, int]:
    """The format version of every object of ours under ``prefix`` (its trailer, read raw)."""
    versions = {}
    for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            ranged = {"Range": "bytes=-4096"} if obj["Size"] > 4096 else {}  # rclone: no suffix past the start
            tail = raw.get_object(Bucket=bucket, Key=obj["Key"], **ranged)["Body"].read()
            versions[obj["Key"].rsplit("/data/", 1)[1]] = Trailer.from_tail(tail).version
    return versions


def test_medusa_backups_in_format_v2_and_mixed(
    make_proxy: Callable[..., ProxyProcess],
    bucket: str,
    raw_client: Any,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    proxy = make_proxy(encryption={"format_version": 2})
    storage, tmp = proxy_storage(proxy, bucket), tmp_path / "t"
    first = backup(storage, "env-a", snapshot, tmp, mode="differential", md5=True)
    data = f"{FQDN}/data/"
    assert set(stored_versions(raw_client, bucket, data).values()) == {2}
    assert verify(storage, "env-a", tmp, md5=True)["ok"]

    changed = copy_snapshot(snapshot, tmp_path / "snap-b")
    rel = next(r for r in sorted(changed.files) if "nb-1-big-Data" in r).replace("nb-1-", "nb-9-")
    changed.path(rel).write_bytes(b"a new SSTable, written after the switch back to format 1\n")
    changed.files[rel] = changed.path(rel).stat().st_size
    proxy.restart(encryption={**proxy.config["encryption"], "format_version": 1})
    second = backup(storage, "mixed-b", changed, tmp, mode="differential", md5=True)
    # The new file is uploaded (and the exact part multiples again, Medusa's md5 quirk, now in
    # format 1); the other v2 objects are kept as they are.
    again = exact_multiples(snapshot)
    assert again and counts(second) == (1, len(again), counts(first)[0] - len(again))
    versions = stored_versions(raw_client, bucket, data)
    assert {r for r, v in versions.items() if v == 1} == {rel, *again}
    for md5 in (False, True):
        assert verify(storage, "mixed-b", tmp, md5=md5)["ok"]
    assert changed.compare_download(download(storage, "mixed-b", tmp_path / "dl", tmp)["destination"]) == []

    key_file = proxy.config["encryption"]["key_files"][0]
    checked = subprocess.run(
        [*CLI, "verify-bucket", "--config", str(proxy.config_path), "--bucket", bucket, "--key-file", key_file],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # env-a's manifest recorded the re-uploaded files' v2 stored sizes: the key shows they hold
    # the same plaintext, so verify-bucket notes them instead of failing.
    assert checked.stdout.count("stored again since this manifest was written") >= len(again), checked.stdout
    # ... and says which keys the objects use, by format: what tells when a key can retire.
    from proxy.keyfiles import load_key_ring

    key_id = load_key_ring([key_file]).primary.key_id_hex
    by_version = Counter(versions.values())
    assert f"KEY {key_id} (format 1): {by_version[1]} object(s)" in checked.stdout, checked.stdout
    assert f"KEY {key_id} (format 2): {by_version[2]} object(s)" in checked.stdout, checked.stdout
    proxy.stop()
    args = ["--config", str(proxy.config_path), "--bucket", bucket, "--fqdn", FQDN, "--backup", "mixed-b"]
    restored = subprocess.run(
        [*CLI, "restore-backup", *args, str(tmp_path / "restored")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert restored.returncode == 0, restored.stderr
    assert changed.compare_download(tmp_path / "restored") == []
