"""Key rotation (``medusa-crypt-proxy rotate``): objects per second and upstream bytes sent per
stored byte, on moto and on ``rclone serve s3`` (not a test).

    python bench/rotation.py [--objects 8] [--size-mib 64] [--upstream moto rclone] [--out FILE]

For each upstream: ``--objects`` objects of ``--size-mib`` MiB are stored in format 2 under key A
(``proxy.format.encrypt_object``, put raw into the bucket), then ``rotate`` runs (its command
line, a process of its own) with key B primary. Reported: wall seconds of the run, objects/s,
stored MiB/s, and the bytes ``rotate`` sent to the bucket per stored byte rotated (its own count,
printed in its last line). The goal is at most 1% for objects of 64 MiB and more; on
moto that is a server-side copy (``UploadPartCopy``) plus one trailer part per object. rclone's
``UploadPartCopy`` stores an empty part, so rotate re-encrypts there (about 100%: every byte sent).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from proxy.format import encrypt_object  # noqa: E402
from proxy.format.keys import local_data_key  # noqa: E402
from proxy.keyfiles import load_key_ring  # noqa: E402
from tests.support.servers import (  # noqa: E402
    MotoServer,
    RcloneS3Server,
    S3Server,
    generate_fernet_key_file,
    proxy_config,
)

MiB = 1 << 20
LAST = re.compile(r"(\d+) bytes sent for (\d+) stored bytes")


def one(server: S3Server, root: Path, objects: int, size: int) -> dict[str, Any]:
    old_key = generate_fernet_key_file(root / "keys" / "a.key")
    new_key = generate_fernet_key_file(root / "keys" / "b.key")
    ring = load_key_ring([old_key])
    client = server.client()
    bucket = server.create_bucket()
    plaintext = os.urandom(size)
    for i in range(objects):
        key = f"node1/data/ks/t/nb-{i}-big-Data.db"
        stored = encrypt_object(ring, key, plaintext, data_key=local_data_key(ring.primary))
        client.put_object(Bucket=bucket, Key=key, Body=stored)
    config = proxy_config(server, root / "proxy", encryption={"key_files": [str(new_key), str(old_key)]})
    config_path = root / "rotate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "rotate", "--config", str(config_path), "--bucket", bucket],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"rotate failed on {server.name}:\n{done.stdout}\n{done.stderr}")
    found = LAST.search(done.stdout)
    assert found, done.stdout
    sent, rotated = int(found.group(1)), int(found.group(2))
    how = "copy" if " by copy: " in done.stderr else "re-encryption"
    return {
        "upstream": server.name,
        "objects": objects,
        "object_mib": size / MiB,
        "how": how,
        "seconds": round(seconds, 2),
        "objects_per_s": round(objects / seconds, 2),
        "stored_mib_per_s": round(rotated / MiB / seconds, 1),
        "bytes_sent": sent,
        "sent_per_stored_byte": sent / rotated,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8, help="objects rotated (default 8)")
    parser.add_argument("--size-mib", type=int, default=64, help="plaintext MiB per object (default 64)")
    parser.add_argument("--upstream", nargs="+", default=["moto", "rclone"], choices=["moto", "rclone"])
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-rotation-") as tmp:
        for name in args.upstream:
            root = Path(tmp) / name
            server: S3Server = MotoServer(root / "server") if name == "moto" else RcloneS3Server(root / "server")
            with server:
                results.append(one(server, root, args.objects, args.size_mib * MiB))
    print(f"{'upstream':8} {'objects':>7} {'MiB':>5} {'how':14} {'s':>7} {'obj/s':>6} {'MiB/s':>6} {'sent/stored':>12}")
    for r in results:
        print(
            f"{r['upstream']:8} {r['objects']:7} {r['object_mib']:5.0f} {r['how']:14} {r['seconds']:7.2f} "
            f"{r['objects_per_s']:6.2f} {r['stored_mib_per_s']:6.1f} {100 * r['sent_per_stored_byte']:11.4f}%"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
