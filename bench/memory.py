"""Peak memory of the proxy while N clients each PUT then GET a large object (the flat-memory check).

    python bench/memory.py [--clients 4] [--size-mib 1024]

Starts `rclone serve s3` over a temporary directory and the proxy in front of it, runs the
clients in threads (boto3 with Medusa's settings, 50 MiB parts, 4 in flight each), verifies every
download, and prints the proxy's peak RSS (VmHWM) next to its RSS when idle.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boto3.s3.transfer import TransferConfig

from tests.support.servers import ProxyProcess, RcloneS3Server, proxy_config

MIB = 1 << 20
MEDUSA = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-mem-") as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "source.bin"
        with source.open("wb") as out:
            block = os.urandom(MIB)
            for i in range(args.size_mib):
                out.write(hashlib.sha256(block + i.to_bytes(4, "big")).digest() * (MIB // 32))
        digest = hashlib.md5(source.read_bytes()).hexdigest()
        upstream = RcloneS3Server(tmp / "upstream").start()
        bucket = upstream.create_bucket()
        config = proxy_config(upstream, tmp / "proxy")
        config["cache"] = {"path": str(tmp / "proxy" / "cache.sqlite")}
        proxy = ProxyProcess(config, tmp / "proxy")
        try:
            assert proxy.process is not None and proxy.process.proc is not None
            pid = proxy.process.proc.pid
            idle = status_kib(pid, "VmRSS")
            transfer = TransferConfig(multipart_threshold=50 * MIB, multipart_chunksize=50 * MIB, max_concurrency=4)
            errors: list[BaseException] = []

            def client_run(n: int) -> None:
                try:
                    client = proxy.client(max_pool_connections=8, **MEDUSA)
                    key = f"node1/data/ks/t/big-{n}-Data.db"
                    client.upload_file(str(source), bucket, key, Config=transfer)
                    target = tmp / f"down-{n}.bin"
                    client.download_file(bucket, key, str(target), Config=transfer)
                    assert hashlib.md5(target.read_bytes()).hexdigest() == digest
                    target.unlink()
                except BaseException as exc:  # reported below
                    errors.append(exc)

            started = time.monotonic()
            threads = [threading.Thread(target=client_run, args=(n,)) for n in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.monotonic() - started
            peak = status_kib(pid, "VmHWM")
        finally:
            proxy.stop()
            upstream.stop()
    if errors:
        print(f"FAILED: {errors[0]!r}")
        return 1
    total = 2 * args.clients * args.size_mib * MIB
    print(
        f"{args.clients} clients x {args.size_mib} MiB PUT then GET, verified: {seconds:.1f}s "
        f"({total / seconds / 1e6:.0f} MB/s through the proxy)"
    )
    print(f"proxy RSS idle {idle / 1024:.0f} MiB, peak (VmHWM) {peak / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
