"""Memory and time of the proxy for one large Medusa-shaped manifest: PUT, GET and LIST (not a test).

    python bench/manifest.py [--size-mib 32] [--objects N] [--out FILE]

Starts `rclone serve s3` over a temporary directory holding the backup's data files, already
encrypted as the proxy stores them (``proxy.format.encrypt_object`` under the proxy's key, written
straight into rclone's directory: ~150,000 files take seconds this way). A first proxy lists them
once, so the view cache is warm as after Medusa uploaded them through it. Then every phase runs in
a proxy process of its own (the cache file is kept unless the phase says "cold") and reports:

  idle   the proxy's RSS once started and ready (VmRSS)
  peak   its peak RSS during the phase (VmHWM), and peak / idle
  time   wall seconds of the phase, and the proxy's CPU seconds (utime + stime)
  reads  upstream GETs the phase made (from /metrics): a warm LIST must make none

Phases: PUT (rewrite + seal; the data files' views are cached), GET (warm: the view is cached, the
manifest read once and streamed), GET cold (empty cache: view computed, then streamed),
LIST warm, LIST cold (empty cache: read, verified, digested), HEAD cold.
Run it from another checkout (``git archive <rev> | tar -x -C DIR``, then this file) to compare.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from proxy.format import encrypt_object  # noqa: E402
from proxy.keyfiles import load_key_ring  # noqa: E402
from tests.support.servers import ProxyProcess, RcloneS3Server, generate_fernet_key_file, proxy_config  # noqa: E402

MiB = 1 << 20
MEDUSA = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
FQDN = "node1.example.com"
BACKUP = "bk1"
COMPONENTS = [
    "Data.db",
    "Index.db",
    "Filter.db",
    "Statistics.db",
    "Summary.db",
    "TOC.txt",
    "Digest.crc32",
    "CompressionInfo.db",
]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upstream_gets(proxy: ProxyProcess) -> float:
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("medusa_crypt_proxy_upstream_requests_total{") and 'operation="GetObject"' in line
    )


def entries_for(size: int, objects: int | None) -> list[dict[str, Any]]:
    """Medusa-shaped entries (8 components per SSTable, 300 tables) making a manifest of ``size`` bytes."""
    out: list[dict[str, Any]] = []
    total = 0
    i = 0
    while total < size:
        table = f"table_{i // 8 % 300}-{hashlib.md5(str(i // 8 % 300).encode()).hexdigest()}"
        path = f"{FQDN}/data/ks{i // 8 % 300 % 7}/{table}/nb-{i // 8}-big-{COMPONENTS[i % 8]}"
        data = hashlib.sha256(path.encode()).digest() * 4
        entry = {
            "path": path,
            "MD5": hashlib.md5(data).hexdigest(),
            "size": len(data),
            "_data": data if objects is None or i < objects else None,
        }
        total += len(json.dumps({k: v for k, v in entry.items() if k != "_data"})) + 2
        out.append(entry)
        i += 1
    return out


def sections(entries: list[dict[str, Any]]) -> bytes:
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        tables.setdefault(entry["path"].split("/")[3], []).append({k: v for k, v in entry.items() if k != "_data"})
    return json.dumps(
        [{"keyspace": "ks", "columnfamily": name, "objects": objs} for name, objs in tables.items()]
    ).encode()


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.upstream = RcloneS3Server(root / "upstream")
        self.bucket = "bench"
        key_file = generate_fernet_key_file(root / "proxy" / "keys" / "test.key")  # proxy_config's
        self.ring = load_key_ring([key_file])
        started = time.monotonic()
        self.entries = entries_for(args.size_mib * MiB, args.objects)
        self.body = sections(self.entries)
        bucket_dir = self.upstream.bucket_path(self.bucket)
        written = 0
        for entry in self.entries:
            if entry["_data"] is None:
                continue
            target = bucket_dir / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encrypt_object(self.ring, entry["path"], entry["_data"]))
            written += 1
        for entry in self.entries:
            entry.pop("_data")
        print(
            f"manifest {len(self.body) / MiB:.1f} MiB, {len(self.entries)} entries, {written} data files "
            f"written in {time.monotonic() - started:.0f}s",
            flush=True,
        )
        self.upstream.start()  # after the files: rclone caches the directories it has listed
        self.config = proxy_config(self.upstream, root / "proxy")
        self.results: list[dict[str, Any]] = []
        self.proxies = 0

    def proxy(self, cache: str = "cache.sqlite") -> ProxyProcess:
        self.proxies += 1
        config = {**self.config, "cache": {"path": str(self.root / "proxy" / cache)}}
        return ProxyProcess(config, self.root / f"proxy{self.proxies}")

    def phase(self, name: str, action: Any, cache: str = "cache.sqlite") -> Any:
        proxy = self.proxy(cache)
        try:
            assert proxy.process is not None and proxy.process.proc is not None
            pid = proxy.process.proc.pid
            client = proxy.client(max_pool_connections=4, read_timeout=600, **MEDUSA)
            time.sleep(0.5)
            idle = status_kib(pid, "VmRSS")
            reads, cpu = upstream_gets(proxy), cpu_seconds(pid)
            started = time.monotonic()
            result = action(client)
            seconds = time.monotonic() - started
            peak = status_kib(pid, "VmHWM")
            reads, cpu = upstream_gets(proxy) - reads, cpu_seconds(pid) - cpu
        finally:
            proxy.stop()
        row = {
            "phase": name,
            "idle_mib": idle / 1024,
            "peak_mib": peak / 1024,
            "ratio": peak / idle,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "upstream_gets": reads,
        }
        self.results.append(row)
        print(
            f"{name:<12} idle {row['idle_mib']:6.0f} MiB  peak {row['peak_mib']:6.0f} MiB  "
            f"peak/idle {row['ratio']:5.2f}  {seconds:6.2f}s (proxy CPU {cpu:6.2f}s)  upstream GETs {reads:.0f}",
            flush=True,
        )
        return result

    def run(self) -> None:
        key = f"{FQDN}/{BACKUP}/meta/manifest.json"
        prefix = f"{FQDN}/{BACKUP}/meta/"
        body = self.body
        digest = hashlib.md5(body).hexdigest()

        def warm(client: Any) -> int:
            listed = 0
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{FQDN}/data/"):
                listed += len(page.get("Contents", []))
            return listed

        started = time.monotonic()
        listed = self.phase("warm-up", warm)
        print(f"  (warm-up listed {listed} data files through the proxy in {time.monotonic() - started:.0f}s)")

        def put(client: Any) -> None:
            reply = client.put_object(Bucket=self.bucket, Key=key, Body=body)
            assert reply["ETag"].strip('"') == digest

        def get(client: Any) -> None:
            data = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            assert hashlib.md5(data).hexdigest() == digest, "GET gave other bytes"

        def listing(client: Any) -> None:
            contents = client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)["Contents"]
            assert (contents[0]["Size"], contents[0]["ETag"].strip('"')) == (len(body), digest)

        def head(client: Any) -> None:
            reply = client.head_object(Bucket=self.bucket, Key=key)
            assert reply["ContentLength"] == len(body)

        self.phase("PUT", put)
        stored = self.upstream.bucket_path(self.bucket) / key
        print(f"  (stored manifest {stored.stat().st_size / MiB:.1f} MiB)")
        self.phase("GET", get)
        self.phase("GET cold", get, cache="cold-get.sqlite")
        self.phase("LIST", listing)
        self.phase("LIST cold", listing, cache="cold-list.sqlite")
        self.phase("HEAD cold", head, cache="cold-head.sqlite")

    def stop(self) -> None:
        self.upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=32, help="size of the manifest (default 32 MiB)")
    parser.add_argument(
        "--objects",
        type=int,
        default=None,
        help="data files that exist (default: every entry's); the others are missing",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-manifest-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            bench.run()
        finally:
            bench.stop()
    if args.out:
        args.out.write_text(json.dumps({"size_mib": args.size_mib, "phases": bench.results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
