"""End-to-end benchmark: direct upstream vs the proxy vs `rclone serve s3` over crypt (not a test).

Usage:  python bench/run.py [--quick] [--reps N] [--only SECTION ...] [--upstream rclone|seaweedfs]
                            [--upstream-etag none|md5] [--profile DIR] [--out FILE]

Starts, on loopback, in a temporary directory under /tmp (deleted at the end):
  upstream  `rclone serve s3` over a local directory (`--etag-hash ""` unless --upstream-etag md5),
            or with --upstream seaweedfs SeaweedFS's `weed mini` (tests/support/servers.py), a
            store operators run, so the ratios can be read against a real one too
  proxy     `python -m proxy serve` in front of it (fresh key, cache in the temp dir)
  peer      `rclone serve s3 mycrypt:` over a `crypt` remote of another local directory
and measures, alternating direct / proxy / rclone-crypt within every repetition (the order
rotates per repetition), with boto3 clients configured as Medusa's
(`request_checksum_calculation='when_required'`):

  put/get   1 GiB multipart via s3transfer, 8 MiB and 50 MiB parts, 4 in flight (MB/s)
  single    64 MiB single PUTs and single-stream GETs (MB/s)
  ranged    1 MiB ranged GETs at random offsets of a 1 GiB object (req/s, upstream bytes/req)
  small     4 KiB PUT, HEAD, GET latency p50/p99 (ms)
  list      LIST of 10,000 encrypted objects: direct, proxy warm, proxy cold (fresh proxy, empty cache)
  rss       proxy peak RSS (VmHWM) during 8 concurrent 1 GiB PUTs and GETs, and for 1 vs 4 GiB objects

plus the proxy's CPU seconds per GiB (utime+stime from /proc) for the throughput runs. Prints a
table and writes JSON to bench/results/. MB = 10^6 bytes; medians over the repetitions.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.servers import (  # noqa: E402
    ProxyProcess,
    RcloneS3Server,
    S3Server,
    SeaweedFSServer,
    _clean_env,
    proxy_config,
    rclone_binary,
)

MiB = 1 << 20
GiB = 1 << 30
TARGETS = ("direct", "proxy", "crypt")
SECTIONS = ("put", "single", "ranged", "small", "list", "rss")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# s3transfer as Medusa drives it: 4 parts in flight.
CONCURRENCY = 4

# Physical limit on this machine (bench/codec.py): MD5 + AES-CBC + HMAC
# (+ SHA-256 of a signed payload) per plaintext byte, both cores.
PUT_LIMIT_MBS = 500.0
GET_LIMIT_MBS = 2400.0


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------


class CryptRcloneServer(RcloneS3Server):
    """`rclone serve s3 mycrypt:` where mycrypt is a crypt remote over a local directory."""

    name = "rclone-crypt"

    def _env(self) -> dict[str, str]:
        env = _clean_env()
        password = subprocess.run(
            [rclone_binary(), "obscure", "bench-secret"], check=True, capture_output=True, text=True
        ).stdout.strip()
        env.update(
            RCLONE_CONFIG_MYCRYPT_TYPE="crypt",
            RCLONE_CONFIG_MYCRYPT_REMOTE=str(self.data_dir),
            RCLONE_CONFIG_MYCRYPT_PASSWORD=password,
        )
        return env

    def _command(self, port: int) -> list[str]:
        cmd = super()._command(port)
        cmd[-1] = "mycrypt:"
        return cmd


def proc_cpu(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or of one of its threads), seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmHWM, VmRSS) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Stack:
    """The three servers and one client per target."""

    def __init__(self, root: Path, upstream: str, etag_hash: str, crypto_threads: int | None) -> None:
        self.root = root
        self.upstream: S3Server
        if upstream == "seaweedfs":
            self.upstream = SeaweedFSServer(root / "upstream").start()
        else:
            extra = ["--etag-hash", ""] if etag_hash == "none" else []
            self.upstream = RcloneS3Server(root / "upstream", extra_args=extra).start()
        self.peer = CryptRcloneServer(root / "peer").start()
        self.crypto_threads = crypto_threads
        self.proxy = self._new_proxy("cache.sqlite")
        self.buckets = {"direct": "bench-direct", "proxy": "bench-proxy", "crypt": "bench-crypt"}
        self.upstream.create_bucket(self.buckets["direct"])  # SeaweedFS: waits until a PUT works
        self.upstream.create_bucket(self.buckets["proxy"])
        self.peer.client().create_bucket(Bucket=self.buckets["crypt"])
        self.clients = {t: self.client(t) for t in TARGETS}

    def _new_proxy(self, cache_name: str) -> ProxyProcess:
        extra: dict[str, Any] = {"cache": {"path": str(self.root / "proxy" / cache_name)}}
        if self.crypto_threads:
            extra["limits"] = {"crypto_threads": self.crypto_threads}
        config = proxy_config(self.upstream, self.root / "proxy", **extra)
        config["logging"] = {"format": "json", "level": "INFO"}
        return ProxyProcess(config, self.root / "proxy")

    def fresh_proxy(self) -> None:
        """Stop the proxy and start a new one with an empty cache (a cold start)."""
        self.proxy.stop()
        self.proxy = self._new_proxy(f"cache-{time.monotonic_ns()}.sqlite")
        self.clients["proxy"] = self.client("proxy")

    def client(self, target: str, pool: int = 64) -> Any:
        kwargs: dict[str, Any] = dict(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=pool,
            read_timeout=600,
        )
        if target == "proxy":
            return self.proxy.client(**kwargs)
        server = self.upstream if target == "direct" else self.peer
        return server.client(**kwargs)

    @property
    def proxy_pid(self) -> int:
        assert self.proxy.process is not None and self.proxy.process.proc is not None
        return self.proxy.process.proc.pid

    def server_pid(self, target: str) -> int:
        server = self.proxy if target == "proxy" else self.upstream if target == "direct" else self.peer
        assert server.process is not None and server.process.proc is not None
        return server.process.proc.pid

    def metric(self, name: str) -> float:
        """One unlabelled series from the proxy's /metrics (0 when absent)."""
        with urllib.request.urlopen(self.proxy.endpoint_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        for server in (self.proxy, self.peer, self.upstream):
            with contextlib.suppress(Exception):
                server.stop()


# ------------------------------------------------------------------------------------------------
# client-side data
# ------------------------------------------------------------------------------------------------


class RepeatReader(io.RawIOBase):
    """A seekable file of ``size`` bytes that repeats ``base`` (no disk, no per-run allocation)."""

    def __init__(self, base: bytes, size: int) -> None:
        self._base = memoryview(base)
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._size + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        out = bytearray()
        base_len = len(self._base)
        while self._pos < end:
            at = self._pos % base_len
            take = min(end - self._pos, base_len - at)
            out += self._base[at : at + take]
            self._pos += take
        return bytes(out)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class NullSink:
    """A seekable download target that discards the bytes (s3transfer writes parts out of order)."""

    def __init__(self) -> None:
        self.received = 0
        self._pos = 0
        self._lock = threading.Lock()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        with self._lock:
            self.received += len(data)
        return len(data)


def transfer_config(part: int) -> TransferConfig:
    return TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=CONCURRENCY, use_threads=True
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rotations(reps: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    for rep in range(reps):
        k = rep % len(TARGETS)
        yield rep, TARGETS[k:] + TARGETS[:k]


# ------------------------------------------------------------------------------------------------
# the measurements
# ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack = stack
        self.args = args
        self.base = os.urandom(64 * MiB)
        self.results: dict[str, Any] = {}
        self.profile_dir: Path | None = Path(args.profile) if args.profile else None

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def cpu(self, target: str, into: dict[str, list[float]], nbytes: int) -> Iterator[None]:
        """Record the server process's CPU seconds per GiB for this block (and, for the proxy,
        its event loop thread's, under "proxy_loop": one core caps the proxy at 1/that GiB/s)."""
        pid = self.stack.server_pid(target)
        up = self.stack.server_pid("direct")
        me = os.getpid()
        before, loop_before, up_before, me_before = proc_cpu(pid), proc_cpu(pid, pid), proc_cpu(up), proc_cpu(me)
        yield
        gib = nbytes / GiB
        server = (proc_cpu(pid) - before) / gib
        client = (proc_cpu(me) - me_before) / gib
        into.setdefault(target, []).append(server)
        # Everything this transfer cost the machine: client + proxy + upstream (or the one server).
        total = server + client + ((proc_cpu(up) - up_before) / gib if target == "proxy" else 0.0)
        into.setdefault(f"{target}_all", []).append(total)
        if target == "proxy":
            into.setdefault("proxy_loop", []).append((proc_cpu(pid, pid) - loop_before) / gib)

    @contextlib.contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        if self.profile_dir is None or "-proxy-" not in name:
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{name}.txt"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(self.stack.proxy_pid),
                "--threads",
                "--format",
                "raw",
                "--rate",
                "200",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        try:
            yield
        finally:
            spy.send_signal(2)
            spy.wait(timeout=60)

    # --- throughput ------------------------------------------------------------------------------

    def put_get(self) -> None:
        size = self.args.size
        for part in (8 * MiB, 50 * MiB):
            name = f"{part // MiB}MiB"
            puts: dict[str, list[float]] = {}
            gets: dict[str, list[float]] = {}
            cpu_put: dict[str, list[float]] = {}
            cpu_get: dict[str, list[float]] = {}
            for rep, order in rotations(self.args.reps):
                for target in order:
                    client, bucket = self.stack.clients[target], self.stack.buckets[target]
                    key = f"node1/data/ks/tbl/big-{name}-{rep}"
                    cfg = transfer_config(part)
                    with self.cpu(target, cpu_put, size), self.profiled(f"put-{name}-{target}-{rep}"):
                        t = time.perf_counter()
                        client.upload_fileobj(RepeatReader(self.base, size), bucket, key, Config=cfg)
                        put_s = time.perf_counter() - t
                    sink = NullSink()
                    with self.cpu(target, cpu_get, size), self.profiled(f"get-{name}-{target}-{rep}"):
                        t = time.perf_counter()
                        client.download_fileobj(bucket, key, sink, Config=cfg)
                        get_s = time.perf_counter() - t
                    assert sink.received == size, (target, sink.received)
                    client.delete_object(Bucket=bucket, Key=key)
                    puts.setdefault(target, []).append(size / put_s / 1e6)
                    gets.setdefault(target, []).append(size / get_s / 1e6)
                    self.log(
                        f"{name} parts rep {rep} {target}: PUT {puts[target][-1]:.0f} MB/s, "
                        f"GET {gets[target][-1]:.0f} MB/s"
                    )
            self.results[f"put_{name}"] = {"MBps": puts, "cpu_s_per_GiB": cpu_put}
            self.results[f"get_{name}"] = {"MBps": gets, "cpu_s_per_GiB": cpu_get}

    def single(self) -> None:
        size, count = 64 * MiB, self.args.single_count
        puts: dict[str, list[float]] = {}
        gets: dict[str, list[float]] = {}
        cpu_put: dict[str, list[float]] = {}
        cpu_get: dict[str, list[float]] = {}
        body = self.base[:size]
        for rep, order in rotations(self.args.reps):
            for target in order:
                client, bucket = self.stack.clients[target], self.stack.buckets[target]
                keys = [f"node1/data/ks/tbl/single-{rep}-{i}" for i in range(count)]
                with self.cpu(target, cpu_put, size * count):
                    t = time.perf_counter()
                    for key in keys:
                        client.put_object(Bucket=bucket, Key=key, Body=body)
                    put_s = time.perf_counter() - t
                with self.cpu(target, cpu_get, size * count):
                    t = time.perf_counter()
                    for key in keys:
                        stream = client.get_object(Bucket=bucket, Key=key)["Body"]
                        got = 0
                        for piece in stream.iter_chunks(MiB):
                            got += len(piece)
                        assert got == size
                    get_s = time.perf_counter() - t
                for key in keys:
                    client.delete_object(Bucket=bucket, Key=key)
                puts.setdefault(target, []).append(size * count / put_s / 1e6)
                gets.setdefault(target, []).append(size * count / get_s / 1e6)
                self.log(
                    f"64MiB single rep {rep} {target}: PUT {puts[target][-1]:.0f} MB/s, GET {gets[target][-1]:.0f} MB/s"
                )
        self.results["put_single_64MiB"] = {"MBps": puts, "cpu_s_per_GiB": cpu_put}
        self.results["get_single_64MiB"] = {"MBps": gets, "cpu_s_per_GiB": cpu_get}

    # --- ranged GETs -----------------------------------------------------------------------------

    def ranged(self) -> None:
        size, n = self.args.size, self.args.ranged_count
        rates: dict[str, list[float]] = {}
        upstream_per_req: list[float] = []
        rng = random.Random(6)
        for target in TARGETS:
            client, bucket = self.stack.clients[target], self.stack.buckets[target]
            client.upload_fileobj(
                RepeatReader(self.base, size), bucket, "node1/data/ks/tbl/ranged", Config=transfer_config(50 * MiB)
            )
        for rep, order in rotations(self.args.reps):
            offsets = [rng.randrange(0, size - MiB) for _ in range(n)]
            for target in order:
                client, bucket = self.stack.clients[target], self.stack.buckets[target]
                before = (
                    self.stack.metric("medusa_crypt_proxy_upstream_bytes_received_total") if target == "proxy" else 0.0
                )

                def one(offset: int, client: Any = client, bucket: str = bucket) -> None:
                    reply = client.get_object(
                        Bucket=bucket, Key="node1/data/ks/tbl/ranged", Range=f"bytes={offset}-{offset + MiB - 1}"
                    )
                    data = reply["Body"].read()
                    assert len(data) == MiB

                t = time.perf_counter()
                with cf.ThreadPoolExecutor(CONCURRENCY) as pool:
                    list(pool.map(one, offsets))
                rates.setdefault(target, []).append(n / (time.perf_counter() - t))
                if target == "proxy":
                    after = self.stack.metric("medusa_crypt_proxy_upstream_bytes_received_total")
                    upstream_per_req.append((after - before) / n)
                self.log(f"ranged rep {rep} {target}: {rates[target][-1]:.0f} req/s")
        for target in TARGETS:
            self.stack.clients[target].delete_object(Bucket=self.stack.buckets[target], Key="node1/data/ks/tbl/ranged")
        self.results["ranged_1MiB"] = {
            "req_per_s": rates,
            "proxy_upstream_bytes_per_req": upstream_per_req,
            "concurrency": CONCURRENCY,
        }

    # --- small objects ---------------------------------------------------------------------------

    def small(self) -> None:
        n = self.args.small_count
        body = self.base[:4096]
        lat: dict[str, dict[str, list[float]]] = {}
        for rep, order in rotations(self.args.reps):
            for target in order:
                client, bucket = self.stack.clients[target], self.stack.buckets[target]
                got = lat.setdefault(target, {"put": [], "head": [], "get": [], "put_head": []})
                with self.profiled(f"small-{target}-{rep}"):
                    self._small_round(client, bucket, body, rep, n, got)
                for i in range(n):
                    client.delete_object(Bucket=bucket, Key=f"node1/data/ks/tbl/small-{rep}-{i}")
                self.log(f"4KiB rep {rep} {target}: PUT+HEAD p50 {med(got['put_head'][-n:]):.2f} ms")
        out: dict[str, Any] = {}
        for target, ops in lat.items():
            out[target] = {op: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for op, v in ops.items()}
        self.results["small_4KiB"] = out

    @staticmethod
    def _small_round(client: Any, bucket: str, body: bytes, rep: int, n: int, got: dict[str, list[float]]) -> None:
        for i in range(n):
            key = f"node1/data/ks/tbl/small-{rep}-{i}"
            t0 = time.perf_counter()
            client.put_object(Bucket=bucket, Key=key, Body=body)
            t1 = time.perf_counter()
            client.head_object(Bucket=bucket, Key=key)
            t2 = time.perf_counter()
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            t3 = time.perf_counter()
            assert data == body
            got["put"].append((t1 - t0) * 1e3)
            got["head"].append((t2 - t1) * 1e3)
            got["get"].append((t3 - t2) * 1e3)
            got["put_head"].append((t2 - t0) * 1e3)

    # --- LIST ------------------------------------------------------------------------------------

    def listing(self) -> None:
        n = self.args.list_count
        client, bucket = self.stack.clients["proxy"], "bench-list"
        self.stack.upstream.create_bucket(bucket)
        body = self.base[:1024]
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: client.put_object(Bucket=bucket, Key=f"node1/data/ks/tbl/f-{i:06d}", Body=body), range(n)
                )
            )
        fill = n / (time.perf_counter() - t)
        self.log(f"list: {n} encrypted 1 KiB objects written at {fill:.0f} PUT/s (16 threads)")

        def list_all(c: Any) -> float:
            t = time.perf_counter()
            count = 0
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                count += len(page.get("Contents", []))
            assert count == n, count
            return time.perf_counter() - t

        direct, warm, cold = [], [], []
        for rep in range(self.args.reps):
            direct.append(list_all(self.stack.upstream.client()))
            self.stack.fresh_proxy()
            with self.profiled(f"list-cold-proxy-{rep}"):
                cold.append(list_all(self.stack.clients["proxy"]))
            with self.profiled(f"list-warm-proxy-{rep}"):
                warm.append(list_all(self.stack.clients["proxy"]))
            self.log(f"list rep {rep}: direct {direct[-1]:.2f} s, proxy cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s")
        if isinstance(self.stack.upstream, RcloneS3Server):  # else it goes with the temp directory
            shutil.rmtree(self.stack.upstream.bucket_path(bucket), ignore_errors=True)
        self.results["list"] = {
            "objects": n,
            "direct_s": direct,
            "proxy_cold_s": cold,
            "proxy_warm_s": warm,
            "fill_put_per_s": fill,
        }

    # --- memory ----------------------------------------------------------------------------------

    def rss(self) -> None:
        pid_of = lambda: self.stack.proxy_pid  # noqa: E731 - the proxy is restarted by other sections
        client = self.stack.client("proxy", pool=64)
        bucket = self.stack.buckets["proxy"]
        size, streams = self.args.size, 8
        out: dict[str, Any] = {"baseline_rss": proc_status(pid_of(), "VmRSS")}
        cfg = transfer_config(8 * MiB)
        keys = [f"node1/data/ks/tbl/conc-{i}" for i in range(streams)]
        reset_peak(pid_of())
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(streams) as pool:
            list(pool.map(lambda k: client.upload_fileobj(RepeatReader(self.base, size), bucket, k, Config=cfg), keys))
        out["concurrent_put_MBps"] = streams * size / (time.perf_counter() - t) / 1e6
        out["concurrent_put_peak"] = proc_status(pid_of(), "VmHWM")
        reset_peak(pid_of())
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(streams) as pool:
            list(pool.map(lambda k: client.download_fileobj(bucket, k, NullSink(), Config=cfg), keys))
        out["concurrent_get_MBps"] = streams * size / (time.perf_counter() - t) / 1e6
        out["concurrent_get_peak"] = proc_status(pid_of(), "VmHWM")
        for k in keys:
            client.delete_object(Bucket=bucket, Key=k)
        self.log(
            f"rss: 8 concurrent PUT peak {out['concurrent_put_peak'] / 1e6:.0f} MB, "
            f"GET peak {out['concurrent_get_peak'] / 1e6:.0f} MB"
        )
        for big in (size, self.args.big_size):
            key = "node1/data/ks/tbl/rss-big"
            reset_peak(pid_of())
            client.upload_fileobj(RepeatReader(self.base, big), bucket, key, Config=transfer_config(50 * MiB))
            put_peak = proc_status(pid_of(), "VmHWM")
            reset_peak(pid_of())
            client.download_fileobj(bucket, key, NullSink(), Config=transfer_config(50 * MiB))
            get_peak = proc_status(pid_of(), "VmHWM")
            reset_peak(pid_of())
            stream = client.get_object(Bucket=bucket, Key=key)["Body"]
            for _ in stream.iter_chunks(MiB):
                pass
            stream_peak = proc_status(pid_of(), "VmHWM")
            client.delete_object(Bucket=bucket, Key=key)
            out[f"object_{big // MiB}MiB"] = {
                "put_peak": put_peak,
                "get_peak": get_peak,
                "single_stream_get_peak": stream_peak,
            }
            self.log(
                f"rss: {big // MiB} MiB object: PUT peak {put_peak / 1e6:.0f} MB, GET peak "
                f"{get_peak / 1e6:.0f} MB, one-stream GET peak {stream_peak / 1e6:.0f} MB"
            )
        self.results["rss"] = out


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def summarize(results: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    rows: list[list[str]] = []
    targets: dict[str, Any] = {}

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    for name in ("put_8MiB", "get_8MiB", "put_50MiB", "get_50MiB", "put_single_64MiB", "get_single_64MiB"):
        if name not in results:
            continue
        mbps = {t: med(v) for t, v in results[name]["MBps"].items()}
        cpu = {t: med(v) for t, v in results[name]["cpu_s_per_GiB"].items()}
        p, d, c = mbps.get("proxy", 0), mbps.get("direct", 0), mbps.get("crypt", 0)
        results[name]["median"] = {
            "MBps": mbps,
            "cpu_s_per_GiB": cpu,
            "proxy/direct": ratio(p, d),
            "proxy/crypt": ratio(p, c),
        }
        rows.append(
            [
                name,
                f"{d:.0f}",
                f"{p:.0f}",
                f"{c:.0f}",
                f"{ratio(p, d):.2f}",
                f"{ratio(p, c):.2f}",
                f"{cpu.get('proxy', 0):.2f} ({cpu.get('proxy_loop', 0):.2f})",
                f"{cpu.get('crypt', 0):.2f}",
                f"{cpu.get('direct_all', 0):.1f}/{cpu.get('proxy_all', 0):.1f}/{cpu.get('crypt_all', 0):.1f}",
            ]
        )
    throughput = [r for r in rows]
    table: list[list[str]] = []
    if throughput:
        table.append(
            [
                "MB/s (median)",
                "direct",
                "proxy",
                "rclone-crypt",
                "proxy/direct",
                "proxy/crypt",
                "proxy CPU s/GiB (loop)",
                "crypt CPU s/GiB",
                "all CPU s/GiB d/p/c",
            ]
        )
        table += throughput
    if "ranged_1MiB" in results:
        r = results["ranged_1MiB"]
        rps = {t: med(v) for t, v in r["req_per_s"].items()}
        up = med(r["proxy_upstream_bytes_per_req"])
        r["median"] = {"req_per_s": rps, "proxy_upstream_bytes_per_req": up}
        table.append([])
        table.append(
            ["ranged 1 MiB GET", "direct", "proxy", "rclone-crypt", "proxy/direct", "proxy/crypt", "upstream B/req", ""]
        )
        table.append(
            [
                "req/s (4 threads)",
                f"{rps['direct']:.0f}",
                f"{rps['proxy']:.0f}",
                f"{rps['crypt']:.0f}",
                f"{ratio(rps['proxy'], rps['direct']):.2f}",
                f"{ratio(rps['proxy'], rps['crypt']):.2f}",
                f"{up:.0f}",
                "",
            ]
        )
    if "small_4KiB" in results:
        s = results["small_4KiB"]
        table.append([])
        table.append(
            ["4 KiB latency ms", "direct p50/p99", "proxy p50/p99", "crypt p50/p99", "proxy-direct p50", "", "", ""]
        )
        for op in ("put", "head", "get", "put_head"):
            cells = [f"{s[t][op]['p50_ms']:.2f}/{s[t][op]['p99_ms']:.2f}" for t in TARGETS]
            added = s["proxy"][op]["p50_ms"] - s["direct"][op]["p50_ms"]
            table.append([op.upper().replace("_", "+"), *cells, f"{added:+.2f}", "", "", ""])
        targets["small_put_head_added_p50_ms"] = s["proxy"]["put_head"]["p50_ms"] - s["direct"]["put_head"]["p50_ms"]
    if "list" in results:
        r = results["list"]
        d, w, c = med(r["direct_s"]), med(r["proxy_warm_s"]), med(r["proxy_cold_s"])
        r["median"] = {"direct_s": d, "proxy_warm_s": w, "proxy_cold_s": c}
        table.append([])
        table.append(
            [
                f"LIST {r['objects']} objects",
                "direct s",
                "proxy warm s",
                "proxy cold s",
                "warm/direct",
                "cold/direct",
                "",
                "",
            ]
        )
        table.append(["", f"{d:.2f}", f"{w:.2f}", f"{c:.2f}", f"{ratio(w, d):.2f}", f"{ratio(c, d):.2f}", "", ""])
        targets["cold_list_over_direct"] = ratio(c, d)
    if "rss" in results:
        r = results["rss"]
        table.append([])
        table.append(["proxy peak RSS MB", "PUT", "GET (ranged parts)", "GET (one stream)", "", "", "", ""])
        table.append(
            [
                "8 concurrent",
                f"{r['concurrent_put_peak'] / 1e6:.0f}",
                f"{r['concurrent_get_peak'] / 1e6:.0f}",
                "",
                f"{r['concurrent_put_MBps']:.0f} MB/s",
                f"{r['concurrent_get_MBps']:.0f} MB/s",
                "",
                "",
            ]
        )
        for k, v in r.items():
            if k.startswith("object_"):
                table.append(
                    [
                        k.replace("object_", "one object "),
                        f"{v['put_peak'] / 1e6:.0f}",
                        f"{v['get_peak'] / 1e6:.0f}",
                        f"{v['single_stream_get_peak'] / 1e6:.0f}",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
        peaks = [r["concurrent_put_peak"], r["concurrent_get_peak"]]
        targets["peak_rss_8_concurrent_MB"] = max(peaks) / 1e6
        objs = [v for k, v in r.items() if k.startswith("object_")]
        if len(objs) == 2:
            targets["rss_big_over_small"] = max(objs[1].values()) / max(objs[0].values())
    for name in ("put_50MiB", "put_8MiB"):
        if name in results:
            m = results[name]["median"]
            targets.setdefault("put_proxy_over_direct", m["proxy/direct"])
            targets.setdefault("put_proxy_over_crypt", m["proxy/crypt"])
            targets.setdefault("put_MBps_over_limit", m["MBps"]["proxy"] / PUT_LIMIT_MBS)
            targets[f"{name}_proxy_over_direct"] = m["proxy/direct"]
            targets[f"{name}_proxy_over_crypt"] = m["proxy/crypt"]
    for name in ("get_50MiB", "get_8MiB"):
        if name in results:
            m = results[name]["median"]
            targets.setdefault("get_proxy_over_direct", m["proxy/direct"])
            targets.setdefault("get_proxy_over_crypt", m["proxy/crypt"])
            targets[f"{name}_proxy_over_direct"] = m["proxy/direct"]
            targets[f"{name}_proxy_over_crypt"] = m["proxy/crypt"]
    return table, targets


GOALS: list[tuple[str, str, Callable[[float], bool]]] = [
    ("put_proxy_over_direct", "PUT 1 GiB proxy/direct >= 0.8 (50 MiB parts)", lambda v: v >= 0.8),
    ("put_8MiB_proxy_over_direct", "PUT 1 GiB proxy/direct >= 0.8 (8 MiB parts)", lambda v: v >= 0.8),
    ("get_proxy_over_direct", "GET 1 GiB proxy/direct >= 0.9 (50 MiB parts)", lambda v: v >= 0.9),
    ("get_8MiB_proxy_over_direct", "GET 1 GiB proxy/direct >= 0.9 (8 MiB parts)", lambda v: v >= 0.9),
    ("put_proxy_over_crypt", "PUT proxy/rclone-crypt >= 1.5 (50 MiB parts)", lambda v: v >= 1.5),
    ("put_8MiB_proxy_over_crypt", "PUT proxy/rclone-crypt >= 1.5 (8 MiB parts)", lambda v: v >= 1.5),
    ("get_proxy_over_crypt", "GET proxy/rclone-crypt >= 1.5 (50 MiB parts)", lambda v: v >= 1.5),
    ("get_8MiB_proxy_over_crypt", "GET proxy/rclone-crypt >= 1.5 (8 MiB parts)", lambda v: v >= 1.5),
    ("put_MBps_over_limit", f"PUT >= 0.6 x physical limit ({PUT_LIMIT_MBS:.0f} MB/s)", lambda v: v >= 0.6),
    ("peak_rss_8_concurrent_MB", "peak RSS <= 200 MB, 8 concurrent transfers", lambda v: v <= 200),
    ("rss_big_over_small", "peak RSS flat between object sizes (ratio <= 1.1)", lambda v: v <= 1.1),
    ("small_put_head_added_p50_ms", "4 KiB PUT+HEAD added p50 <= 2 ms", lambda v: v <= 2.0),
    ("cold_list_over_direct", "cold LIST <= 3 x direct", lambda v: v <= 3.0),
]


def render(table: list[list[str]], targets: dict[str, Any]) -> str:
    widths = [max((len(r[i]) for r in table if len(r) > i), default=0) for i in range(9)]
    lines = []
    for row in table:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() if row else "")
    lines.append("")
    lines.append("targets (bench/README.md):")
    for key, label, ok in GOALS:
        if key in targets:
            v = targets[key]
            lines.append(f"  [{'PASS' if ok(v) else 'MISS'}] {label}: {v:.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "proxy"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller objects and fewer repetitions (minutes)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--upstream",
        choices=("rclone", "seaweedfs"),
        default="rclone",
        help="the store behind direct and proxy: rclone serve s3 (default) or SeaweedFS (weed mini)",
    )
    parser.add_argument(
        "--upstream-etag",
        choices=("none", "md5"),
        default="none",
        help='upstream rclone ETags: none (--etag-hash "", default) or md5 (rclone default)',
    )
    parser.add_argument("--crypto-threads", type=int, help="the proxy's limits.crypto_threads")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record the proxy during PUT/GET and LIST runs (raw)")
    parser.add_argument("--out", help="JSON output (default bench/results/run-<time>.json)")
    args = parser.parse_args()
    quick = args.quick
    args.reps = args.reps or (1 if quick else 3)
    args.size = 256 * MiB if quick else GiB
    args.big_size = GiB if quick else 4 * GiB
    args.single_count = 2 if quick else 4
    args.ranged_count = 100 if quick else 400
    args.small_count = 50 if quick else 200
    args.list_count = 2000 if quick else 10000
    sections = args.only or list(SECTIONS)

    root = Path(tempfile.mkdtemp(prefix="mcp-bench-", dir="/tmp"))
    started = time.time()
    stack = Stack(root, args.upstream, args.upstream_etag, args.crypto_threads)
    bench = Bench(stack, args)
    try:
        for section in sections:
            {
                "put": bench.put_get,
                "single": bench.single,
                "ranged": bench.ranged,
                "small": bench.small,
                "list": bench.listing,
                "rss": bench.rss,
            }[section]()
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    raw = REPO / "bench" / "results" / "last-raw.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(bench.results, default=str))
    table, targets = summarize(bench.results)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        "quick": quick,
        "reps": args.reps,
        "object_size": args.size,
        "upstream": args.upstream,
        "upstream_etag": args.upstream_etag,
        "crypto_threads": args.crypto_threads,
        "seconds": round(time.time() - started),
        "cpus": os.cpu_count(),
        "put_limit_MBps": PUT_LIMIT_MBS,
    }
    print(
        f"medusa-crypt-proxy bench {meta['date']} commit {meta['commit']} "
        f"({'quick, ' if quick else ''}{args.reps} rep(s), objects {args.size // MiB} MiB, "
        f"upstream {args.upstream}"
        + (f", upstream ETags {args.upstream_etag}" if args.upstream == "rclone" else "")
        + f", {meta['seconds']} s)"
    )
    print(render(table, targets))
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "targets": targets, "results": bench.results}, indent=1, default=str))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
