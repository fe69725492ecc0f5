"""Medusa's own code after ``rotate``: a differential backup written under key A, key B made
primary and the bucket rotated, then key A dropped. Medusa verifies the backup, its next
differential backup keeps every unchanged file (as it would without the rotation), and both
backups download byte-identical; ``verify-bucket`` with key B alone is clean.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from proxy.keyfiles import load_key_ring
from tests.e2e.test_medusa_e2e import backup, counts, download, exact_multiples, proxy_storage, verify
from tests.support.medusa_helpers import FakeSnapshot
from tests.support.servers import ProxyProcess, S3Server, generate_fernet_key_file

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "proxy"]


def test_medusa_backups_survive_a_rotation(
    make_proxy: Callable[..., ProxyProcess],
    upstream: S3Server,
    bucket: str,
    snapshot: FakeSnapshot,
    tmp_path: Path,
) -> None:
    proxy = make_proxy(encryption={"format_version": 2})
    storage, tmp = proxy_storage(proxy, bucket), tmp_path / "t"
    first = backup(storage, "rot-a", snapshot, tmp, mode="differential", md5=True)
    old_key = Path(proxy.config["encryption"]["key_files"][0])
    new_key = generate_fernet_key_file(tmp_path / "keys" / "new.key")
    old_id, new_id = (load_key_ring([str(k)]).primary.key_id_hex for k in (old_key, new_key))
    encryption = {**proxy.config["encryption"], "key_files": [str(new_key), str(old_key)]}
    config = tmp_path / "rotate.yaml"
    config.write_text(yaml.safe_dump({**proxy.config, "encryption": encryption}))

    rotated = subprocess.run(
        [*CLI, "rotate", "--config", str(config), "--bucket", bucket],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert f"no object uses key {old_id}" in rotated.stdout, rotated.stdout
    if upstream.name == "moto":  # rclone cannot copy ranges: everything is re-encrypted there
        assert "by copy" in rotated.stderr and " 0 object(s) by copy" not in rotated.stdout, rotated.stdout

    proxy.restart(encryption={**encryption, "key_files": [str(new_key)]})  # key A is gone
    for md5 in (False, True):
        assert verify(storage, "rot-a", tmp, md5=md5)["ok"]
    second = backup(storage, "rot-b", snapshot, tmp, mode="differential", md5=True)
    # As without the rotation: only Medusa's exact-multiple quirk re-uploads (test_medusa_e2e).
    again = exact_multiples(snapshot)
    assert counts(second) == (0, len(again), counts(first)[0] - len(again))
    for name in ("rot-a", "rot-b"):
        assert snapshot.compare_download(download(storage, name, tmp_path / f"dl-{name}", tmp)["destination"]) == []

    checked = subprocess.run(
        [*CLI, "verify-bucket", "--config", str(config), "--bucket", bucket, "--key-file", str(new_key)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert old_id not in checked.stdout and f"KEY {new_id} (format 2)" in checked.stdout, checked.stdout
