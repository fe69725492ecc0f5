"""Migration (``medusa-crypt-proxy migrate``): objects per second, plaintext MiB/s and upstream
bytes read and sent per plaintext byte, against a plain download and re-upload of the same
objects, on moto and on ``rclone serve s3`` (not a test).

    python bench/migration.py [--objects 8] [--size-mib 64] [--upstream moto rclone]
                              [--concurrency 4 [2 1 ...]] [--out FILE]

For each upstream and each ``--concurrency``, a fresh bucket gets what Medusa wrote before the
proxy: ``--objects`` plaintext objects of ``--size-mib`` MiB put raw under ``node1/data/ks1/t1/``
(every second one multipart in 8 MiB parts, boto3's default and so Medusa's) and a manifest
naming them at ``node1/bk1/meta/manifest.json``. The baseline then downloads every object with
boto3 and uploads it again straight to the upstream (into a bucket of its own, as many objects
at a time as migrate works on): the I/O any in-place re-encryption cannot avoid, one read and
one write of each byte. Last, the cutoff is set one second after the newest object and
``migrate`` runs (its command line, a process of its own), first with ``--dry-run`` (its fixed
cost: start, listing, planning), then for real. Reported: wall seconds of each,
objects/s and plaintext MiB/s of migrate, its own count of bytes read from and sent to the bucket
per plaintext byte (its last line; checked against the bytes stored under the keys it
migrated, from a listing), the ratio of the wall times migrate/baseline, and CPU
seconds per GiB of plaintext of migrate, of the client of the baseline and of the upstream in
each (steadier than wall times on a shared machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from boto3.s3.transfer import TransferConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from proxy.tools.migrate import STAGING_PREFIX  # noqa: E402
from tests.support.medusa_helpers import medusa_manifest  # noqa: E402
from tests.support.servers import MotoServer, RcloneS3Server, S3Server, proxy_config  # noqa: E402

MiB = 1 << 20
PART = 8 * MiB
DATA = "node1/data/ks1/t1/"
MANIFEST = "node1/bk1/meta/manifest.json"
LAST = re.compile(r"encrypted (\d+) of (\d+) unencrypted object\(s\) \((\d+) bytes\).*; (\d+) bytes read, (\d+) sent")
#: boto3 as Medusa (and aws s3 cp) moves objects: 8 MiB parts, no extra checksums.
TRANSFER = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)


def process_cpu(server: S3Server) -> float:
    """CPU seconds (user + system) the upstream server's process has used so far."""
    assert server.process is not None and server.process.proc is not None
    fields = Path(f"/proc/{server.process.proc.pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu(who: int) -> float:
    """CPU seconds of this process (RUSAGE_SELF) or of its waited-for children (RUSAGE_CHILDREN)."""
    used = resource.getrusage(who)
    return used.ru_utime + used.ru_stime


def put_multipart(client: Any, bucket: str, key: str, body: bytes) -> None:
    """``body`` in 8 MiB parts, as boto3's upload_file leaves a large SSTable."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, start in enumerate(range(0, len(body), PART), 1):
        chunk = body[start : start + PART]
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=chunk)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


def write_legacy(client: Any, bucket: str, objects: int, size: int) -> list[str]:
    """What Medusa left in the bucket before the proxy: the objects, then a manifest naming them."""
    base = os.urandom(size)
    keys = []
    for i in range(objects):
        key = f"{DATA}nb-{i}-big-Data.db"
        body = i.to_bytes(8, "big") + base[8:]  # distinct objects, distinct ETags
        if i % 2:
            put_multipart(client, bucket, key, body)
        else:
            client.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(key)
    entries = [(k, client.head_object(Bucket=bucket, Key=k)["ETag"].strip('"'), size) for k in keys]
    client.put_object(Bucket=bucket, Key=MANIFEST, Body=medusa_manifest(entries))
    return keys


def cutoff_after(client: Any, bucket: str) -> str:
    """One second after the newest Last-Modified (1 s resolution): everything there is legacy."""
    newest = max(o["LastModified"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    return (newest.replace(microsecond=0) + timedelta(seconds=1)).isoformat()


def wait_past(cutoff: str) -> None:
    """Until the clock's second is past ``cutoff``, so that migrate's writes are newer."""
    time.sleep(max(0.0, (datetime.fromisoformat(cutoff) - datetime.now(UTC)).total_seconds()) + 1.05)


def baseline(server: S3Server, bucket: str, keys: list[str], workers: int) -> tuple[float, float, float]:
    """Seconds to download every object and upload it again (to another bucket), ``workers``
    objects at a time, each through s3transfer as ``aws s3 cp`` does; and the CPU seconds the
    client (this process) and the upstream used."""
    client = server.client(
        request_checksum_calculation="when_required", max_pool_connections=TRANSFER.max_request_concurrency * workers
    )
    target = server.create_bucket()

    def copy(key: str) -> None:
        buffer = io.BytesIO()
        client.download_fileobj(bucket, key, buffer, Config=TRANSFER)
        buffer.seek(0)
        client.upload_fileobj(buffer, target, key, Config=TRANSFER)

    cpu, upstream_cpu, started = own_cpu(resource.RUSAGE_SELF), process_cpu(server), time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(copy, keys))
    seconds, cpu, upstream_cpu = (
        time.monotonic() - started,
        own_cpu(resource.RUSAGE_SELF) - cpu,
        process_cpu(server) - upstream_cpu,
    )
    server.delete_bucket(target)  # moto keeps objects in memory: not one copy per run
    return seconds, cpu, upstream_cpu


def check_encrypted(client: Any, bucket: str, keys: list[str], size: int) -> int:
    """Every object stored larger than its plaintext (an encrypted object's header and tags) and
    no staged copy left: migrate did the work it counted. The bytes now stored under the keys
    migrated (objects and manifest): what it must have sent at least, to check its own count."""
    listed = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert not [k for k in listed if k.startswith(STAGING_PREFIX)], listed
    small = [k for k in keys if listed[k] <= size]
    assert not small, f"still plaintext-sized: {small}"
    return sum(listed[k] for k in [*keys, MANIFEST])


def one(server: S3Server, root: Path, objects: int, size: int, concurrency: int) -> dict[str, Any]:
    client = server.client(request_checksum_calculation="when_required")
    bucket = server.create_bucket()
    keys = write_legacy(client, bucket, objects, size)
    cutoff = cutoff_after(client, bucket)
    base_seconds, base_cpu, base_upstream_cpu = baseline(server, bucket, keys, concurrency)
    wait_past(cutoff)
    config = proxy_config(server, root / "proxy", encryption={"legacy_plaintext_before": cutoff})
    config["clients"] = [{**config["clients"][0], "buckets": [bucket]}]
    config_path = root / f"migrate-{bucket}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "proxy", "migrate", "--config", str(config_path), "--bucket", bucket]
    # The fixed cost (start, config, listing, planning): a dry run.
    cpu, started = own_cpu(resource.RUSAGE_CHILDREN), time.monotonic()
    dry = subprocess.run([*command, "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=600)
    dry_seconds, dry_cpu = time.monotonic() - started, own_cpu(resource.RUSAGE_CHILDREN) - cpu
    assert dry.returncode == 0 and f"dry run: {objects} object(s) and 1 manifest(s)" in dry.stdout, dry.stdout
    cpu, upstream_cpu, started = own_cpu(resource.RUSAGE_CHILDREN), process_cpu(server), time.monotonic()
    done = subprocess.run(
        [*command, "--concurrency", str(concurrency)], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    seconds = time.monotonic() - started
    cpu, upstream_cpu = own_cpu(resource.RUSAGE_CHILDREN) - cpu, process_cpu(server) - upstream_cpu
    if done.returncode != 0:
        raise SystemExit(f"migrate failed on {server.name}:\n{done.stdout}\n{done.stderr}")
    found = LAST.search(done.stdout)
    assert found, done.stdout
    migrated, total, plaintext, read, sent = map(int, found.groups())
    assert migrated == total == objects and plaintext == objects * size, done.stdout
    stored = check_encrypted(client, bucket, keys, size)
    server.delete_bucket(bucket)
    if sent != stored:
        print(f"warning: {server.name}: migrate counts {sent} bytes sent, {stored} are stored now", file=sys.stderr)
    gib = plaintext / (1 << 30)
    return {
        "upstream": server.name,
        "objects": objects,
        "object_mib": size / MiB,
        "multipart": objects // 2,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "dry_run_seconds": round(dry_seconds, 2),
        "dry_run_cpu_s": round(dry_cpu, 2),
        "objects_per_s": round(objects / seconds, 2),
        "plaintext_mib_per_s": round(plaintext / MiB / seconds, 1),
        "bytes_read": read,
        "bytes_sent": sent,
        "read_per_plaintext_byte": read / plaintext,
        "sent_per_plaintext_byte": sent / plaintext,
        "stored_per_plaintext_byte": stored / plaintext,  # of the keys migrated, from the listing
        "baseline_seconds": round(base_seconds, 2),
        "baseline_mib_per_s": round(plaintext / MiB / base_seconds, 1),
        "migrate_over_baseline": round(seconds / base_seconds, 2),
        # CPU per GiB of plaintext: on a shared machine steadier than the wall times
        "migrate_cpu_s_per_gib": round(cpu / gib, 2),
        "migrate_upstream_cpu_s_per_gib": round(upstream_cpu / gib, 2),
        "baseline_client_cpu_s_per_gib": round(base_cpu / gib, 2),
        "baseline_upstream_cpu_s_per_gib": round(base_upstream_cpu / gib, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8, help="objects migrated (default 8)")
    parser.add_argument("--size-mib", type=int, default=64, help="plaintext MiB per object (default 64)")
    parser.add_argument("--upstream", nargs="+", default=["moto", "rclone"], choices=["moto", "rclone"])
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[4], help="migrate's --concurrency, one run each (default 4)"
    )
    parser.add_argument("--out", type=Path, help="the JSON results (default bench/results/migration-<time>.json)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as tmp:
        for name in args.upstream:
            root = Path(tmp) / name
            server: S3Server = MotoServer(root / "server") if name == "moto" else RcloneS3Server(root / "server")
            with server:
                for concurrency in args.concurrency:
                    results.append(one(server, root, args.objects, args.size_mib * MiB, concurrency))
    print(
        f"{'upstream':8} {'objects':>7} {'MiB':>5} {'conc':>4} {'s':>7} {'dry s':>5} {'obj/s':>6} {'MiB/s':>6} "
        f"{'read/pt':>8} {'sent/pt':>8} {'stored/pt':>9} {'base s':>7} {'base MiB/s':>10} {'mig/base':>8} "
        f"{'CPU s/GiB mig+up':>16} {'base cl+up':>10} {'load':>5}"
    )
    for r in results:
        print(
            f"{r['upstream']:8} {r['objects']:7} {r['object_mib']:5.0f} {r['concurrency']:4} "
            f"{r['seconds']:7.2f} {r['dry_run_seconds']:5.2f} "
            f"{r['objects_per_s']:6.2f} {r['plaintext_mib_per_s']:6.1f} {r['read_per_plaintext_byte']:8.4f} "
            f"{r['sent_per_plaintext_byte']:8.4f} {r['stored_per_plaintext_byte']:9.4f} "
            f"{r['baseline_seconds']:7.2f} {r['baseline_mib_per_s']:10.1f} "
            f"{r['migrate_over_baseline']:8.2f} "
            f"{r['migrate_cpu_s_per_gib']:7.2f}+{r['migrate_upstream_cpu_s_per_gib']:<8.2f} "
            f"{r['baseline_client_cpu_s_per_gib']:4.2f}+{r['baseline_upstream_cpu_s_per_gib']:<5.2f} "
            f"{r['load_average_1m']:5.1f}"
        )
    out = args.out or REPO / "bench" / "results" / f"migration-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
