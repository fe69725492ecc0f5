"""Soak: N clients x M minutes of mixed S3 operations through the proxy, every byte checked (not a test).

Usage:  python bench/soak.py [--clients 16] [--minutes 10 | --seconds S] [--upstream moto rclone]
                             [--proxies 1] [--rclone-etag none|md5] [--faults RATE]
                             [--fault-kinds KIND,...] [--seed N] [--out FILE] [--keep]

For each upstream in turn (default: moto, then rclone), starts on loopback, in a temporary
directory under /tmp (deleted at the end unless --keep):
  upstream  moto's server mode, or `rclone serve s3` over a local directory (`--etag-hash ""` unless
            --rclone-etag md5: the proxy then keys its view cache on size + Last-Modified)
  faults    with --faults RATE: tests/support/faults.py's FaultInjector between the proxy(s) and the upstream,
            faulting RATE of the upstream requests (--fault-kinds, default the transient ones)
  proxy     `python -m proxy serve` (one, or --proxies P sharing the bucket and the key, each with a
            cache of its own; client i talks to proxy i % P)
and runs N client threads (boto3, Medusa's settings) for the duration. Each loops over weighted
random operations: small and large single PUTs, multipart uploads (5 MiB parts and a short last
part, sometimes aborted), GETs, ranged GETs (a-b, a-, suffix), HEADs, LISTs (paginated), DELETEs and
DeleteObjects, over keys of its own and keys shared by all clients (encrypted data files and a
plaintext metadata file each).

The checker keeps a model of every key: each write's version (seed and size of its content, its
plaintext ETag), when it started and ended and whether it succeeded. A read that ran from s to e
may return any version whose write started before e and that no successful write started after it
ended and finished before s (a failed write may or may not have happened), or no object when
such a version is a delete (or the initial state). Every byte a GET returns is compared, every
HEAD and LIST entry's size and ETag. A read outside that set is a checker failure.

Reported per upstream: operations per second (per kind, with p50/p99 latency), errors (exceptions
the clients saw that are not answers the model allows; goal 0), read races (reads that failed the
way the proxy once failed a read racing a write of the same key, while one ran: counted apart so
that they do not hide other errors; goal 0), cut reads (GET bodies cut short while a write of their
key ran, which an upstream may do: allowed), checker failures and the proxy's
``medusa_crypt_proxy_integrity_failures_total`` (goal 0), and for each proxy process RSS at start,
peak and end, open file descriptors and TCP connections (client side, upstream side) at start and
end (from /proc/PID/fd and /proc/PID/net/tcp), threads, CPU seconds; the load average while it ran.
JSON goes to bench/results/soak-*.json. MB = 10^6 bytes.

The functions are importable (tests/e2e/test_soak.py runs a short version): ``run_soak(SoakOptions(...))``
returns a ``SoakResult``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.servers import (  # noqa: E402
    MotoServer,
    ProxyProcess,
    RcloneS3Server,
    S3Server,
    proxy_config,
)

MiB = 1 << 20
KiB = 1 << 10
PART = 5 * MiB  # S3's smallest non-last part
CLK_TCK = os.sysconf("SC_CLK_TCK")
INTEGRITY_METRIC = "medusa_crypt_proxy_integrity_failures_total"
BUCKET = "soak-bucket"
PRUNE_AFTER = 300.0  # s: no read lasts this long, so writes superseded this long ago are dropped
#: The faults that a client should never notice (retried by the proxy's upstream client).
DEFAULT_FAULT_KINDS = ("reset_before", "error500", "error503")

#: Operation weights (relative).
OPS: dict[str, float] = {
    "put_small": 18,
    "put_large": 4,
    "multipart": 2,
    "multipart_abort": 0.5,
    "get": 20,
    "range": 18,
    "head": 18,
    "list": 5,
    "delete": 5,
    "delete_many": 1,
}
OWN_DATA_KEYS = 6
SHARED_DATA_KEYS = 6
SHARED_SHARE = 0.3  # chance that an operation picks a shared key
#: Sizes of writes to shared keys: few, so that two clients often write the same size at once
#: (the hard case for a cache keyed by size + Last-Modified). No 0: ranges on it are all 416.
SHARED_SIZES = (1000, 4096, 65536 + 7, 300_000, 2 * MiB + 1)
SMALL_SIZES = (0, 1, 15, 16, 17, 1000, 4095, 4096, 4097, 65535, 65536, 65537, 131072, 262143)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------


def content(seed: int, size: int) -> bytes:
    """The bytes a version holds (regenerated for every check instead of kept)."""
    return random.Random(seed).randbytes(size)


@dataclass(frozen=True)
class Version:
    """One write's content: ``etag`` is what S3 would report for it ("" when unknown: a plaintext
    object on an upstream that gives no ETags)."""

    seed: int
    size: int
    etag: str
    md5: str


@dataclass
class Write:
    version: Version | None  # None: a delete
    start: float
    end: float = math.inf
    ok: bool | None = None  # None while in flight; False: failed, may or may not have happened


class Model:
    """What each key may hold (see the module doc); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writes: dict[str, list[Write]] = {}
        self._initial = Write(None, -math.inf, -math.inf, True)

    def begin(self, key: str, version: Version | None) -> Write:
        write = Write(version, time.monotonic())
        with self._lock:
            self._writes.setdefault(key, []).append(write)
        return write

    def finish(self, key: str, write: Write, ok: bool) -> None:
        now = time.monotonic()
        with self._lock:
            write.end, write.ok = now, ok
            writes = self._writes[key]
            if len(writes) > 8:
                old = now - PRUNE_AFTER
                self._writes[key] = [
                    w for w in writes if not any(x.ok and x.start > w.end and x.end < old for x in writes)
                ]

    def acceptable(self, key: str, start: float, end: float) -> list[Version | None]:
        """The versions a read of ``key`` that ran from ``start`` to ``end`` may see (None: absent)."""
        with self._lock:
            writes = list(self._writes.get(key, []))
        done = [w for w in writes if w.ok]
        out: list[Version | None] = []
        for cand in [self._initial, *(w for w in writes if w.start < end)]:
            if any(w is not cand and w.start > cand.end and w.end < start for w in done):
                continue  # surely overwritten before the read began
            if cand.version not in out:
                out.append(cand.version)
        return out

    def overlapped(self, key: str, start: float, end: float) -> bool:
        """Whether a write of ``key`` (or of a key under it, for a listing's prefix) ran during [start, end]."""
        with self._lock:
            return any(
                w.start < end and w.end > start
                for name, writes in self._writes.items()
                if name == key or (key.endswith("/") and name.startswith(key))
                for w in writes
            )

    def history(self, key: str) -> list[Version]:
        """Every version written to ``key`` that the model still remembers (also superseded ones)."""
        with self._lock:
            return [w.version for w in self._writes.get(key, []) if w.version is not None]

    def latest(self, key: str) -> Version | None:
        with self._lock:
            writes = self._writes.get(key, [])
            return writes[-1].version if writes else None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._writes)


def single_etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(parts: list[bytes]) -> str:
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


RangeSpec = tuple[int | None, int | None]  # (first, last): (a, b), (a, None) or (None, n) = suffix


def resolve_range(spec: RangeSpec, size: int) -> tuple[int, int] | None:
    """The bytes S3 serves for ``spec`` of an object of ``size`` bytes; None: 416."""
    first, last = spec
    if first is None:
        n = last or 0
        if n <= 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    if first >= size:
        return None
    return first, size - 1 if last is None else min(last, size - 1)


def range_header(spec: RangeSpec) -> str:
    first, last = spec
    if first is None:
        return f"bytes=-{last}"
    return f"bytes={first}-{'' if last is None else last}"


# ------------------------------------------------------------------------------------------------
# process statistics
# ------------------------------------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state hex) of the TCP sockets in the process's namespace."""
    table: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


@dataclass
class ProcSample:
    rss_mb: float
    hwm_mb: float
    fds: int
    sockets: int
    client_conns: int  # TCP connections accepted on the proxy's port
    upstream_conns: int  # TCP connections to the upstream (or the fault injector)
    other_conns: int
    threads: int
    cpu_s: float


def sample_process(pid: int, listen_port: int, upstream_port: int) -> ProcSample:
    fds = sockets = 0
    inodes: list[int] = []
    for entry in os.scandir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            link = os.readlink(entry.path)
        except OSError:
            continue
        if link.startswith("socket:["):
            sockets += 1
            inodes.append(int(link[8:-1]))
    table = _tcp_table(pid)
    client = upstream = other = 0
    for inode in inodes:
        if inode not in table:
            continue
        lport, rport, state = table[inode]
        if state == "0A":  # LISTEN
            continue
        if lport == listen_port:
            client += 1
        elif rport == upstream_port:
            upstream += 1
        else:
            other += 1
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return ProcSample(
        rss_mb=_status_kb(pid, "VmRSS") * 1024 / 1e6,
        hwm_mb=_status_kb(pid, "VmHWM") * 1024 / 1e6,
        fds=fds,
        sockets=sockets,
        client_conns=client,
        upstream_conns=upstream,
        other_conns=other,
        threads=_status_kb(pid, "Threads"),
        cpu_s=(int(stat[11]) + int(stat[12])) / CLK_TCK,
    )


def proxy_pid(proxy: ProxyProcess) -> int:
    assert proxy.process is not None and proxy.process.proc is not None
    return proxy.process.proc.pid


def integrity_failures(proxy: ProxyProcess) -> float:
    """The sum of ``medusa_crypt_proxy_integrity_failures_total`` over its labels."""
    with urllib.request.urlopen(proxy.endpoint_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(INTEGRITY_METRIC + "{") or line.startswith(INTEGRITY_METRIC + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------------------------------
# options and results
# ------------------------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    upstream: str = "moto"  # "moto" | "rclone"
    clients: int = 16
    seconds: float = 600.0
    proxies: int = 1
    rclone_etag: str = "none"  # "none": `--etag-hash ""` (size + Last-Modified versions) | "md5"
    faults: float = 0.0  # share of upstream requests faulted (0: no injector)
    fault_kinds: tuple[str, ...] = DEFAULT_FAULT_KINDS
    seed: int = 1
    workdir: Path | None = None  # None: a temporary directory, deleted at the end
    settle_timeout: float = 30.0  # s to wait after the load for client connections to close
    log_level: str = "WARNING"  # the proxies' (INFO logs every request)
    verbose: bool = True


@dataclass
class ProxyStats:
    start: ProcSample
    end: ProcSample
    peak_rss_mb: float
    integrity_failures: float


@dataclass
class SoakResult:
    upstream: str
    clients: int
    seconds: float
    proxies: int
    faults: float
    ops: int
    ops_per_s: float
    by_op: dict[str, dict[str, float]]
    errors: int
    error_samples: list[str]
    checker_failures: int
    checker_samples: list[str]
    races: int  # reads that failed while a write of their key ran (``race_signature``): proxy bugs
    cut_reads: int  # GET bodies cut short while a write of their key ran (``cut_short``): allowed
    race_samples: list[str]
    race_kinds: dict[str, int]  # "op ErrorCode" -> count
    integrity_failures: float
    bytes_written: int
    bytes_read: int
    proxy_stats: list[ProxyStats]
    load_avg: dict[str, float]
    faults_injected: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# the clients
# ------------------------------------------------------------------------------------------------


class Tally:
    """Counts, latencies, errors and checker failures of all clients (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}
        self.errors = 0
        self.error_samples: list[str] = []
        self.failures = 0
        self.failure_samples: list[str] = []
        self.races = 0
        self.race_samples: list[str] = []
        self.race_kinds: dict[str, int] = {}
        self.cut_reads = 0
        self.bytes_written = 0
        self.bytes_read = 0

    def done(self, op: str, seconds: float, written: int = 0, read: int = 0) -> None:
        with self.lock:
            self.latencies.setdefault(op, []).append(seconds)
            self.bytes_written += written
            self.bytes_read += read

    def error(self, op: str, key: str, exc: BaseException) -> None:
        text = f"{time.strftime('%H:%M:%S')} {op} {key}: {type(exc).__name__}: {exc}"
        with self.lock:
            self.errors += 1
            if len(self.error_samples) < 30:
                self.error_samples.append(text)

    def race(self, op: str, key: str, exc: BaseException) -> None:
        text = f"{time.strftime('%H:%M:%S')} {op} {key}: {type(exc).__name__}: {exc}"
        kind = f"{op} {error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__}"
        with self.lock:
            self.races += 1
            self.race_kinds[kind] = self.race_kinds.get(kind, 0) + 1
            if len(self.race_samples) < 30:
                self.race_samples.append(text)

    def cut(self) -> None:
        with self.lock:
            self.cut_reads += 1

    def failure(self, op: str, key: str, what: str) -> None:
        text = f"{time.strftime('%H:%M:%S')} {op} {key}: {what}"
        with self.lock:
            self.failures += 1
            if len(self.failure_samples) < 30:
                self.failure_samples.append(text)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_absent(exc: ClientError) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


def is_invalid_range(exc: ClientError) -> bool:
    return error_code(exc) in ("InvalidRange", "416")


class RangeRace(Exception):
    """A ranged GET answered 416 that no version explains, while a write of the key ran."""


#: Reads whose failure can be a read racing a write of the same key (see ``race_signature``).
READS = frozenset({"get", "range", "head", "list"})


def cut_short(exc: BaseException) -> bool:
    """Whether ``exc`` is a GET body that ended early (after its headers, so the proxy could not
    start over on the new version): what an upstream that cuts the read of a file replaced or
    deleted meanwhile (rclone) gives. Never other bytes; the client retries (s3transfer does)."""
    text = f"{type(exc).__name__} {exc}"
    return "IncompleteRead" in text or "ResponseStreamingError" in text


def race_signature(exc: BaseException) -> bool:
    """Whether ``exc`` is how the proxy failed reads that raced an overwrite or delete of their key
    (bugs since fixed, see bench/README.md "Soak"; watched for so that they cannot come back
    unnoticed): 412 PreconditionFailed to a GET without conditions, 400 IncompleteBody for a
    read the upstream cut, 500 for a change that outlasts the proxy's retries."""
    if isinstance(exc, ClientError):
        return error_code(exc) in (
            "PreconditionFailed",
            "412",
            "InternalError",
            "500",
            "IncompleteBody",
            "ServiceUnavailable",
            "503",
        )
    return False


def describe(versions: list[Version | None]) -> str:
    return ", ".join("absent" if v is None else f"{v.size}B/{v.etag or '?'}" for v in versions)


class Client(threading.Thread):
    """One client: weighted random operations until the deadline, every answer checked."""

    def __init__(
        self,
        number: int,
        s3: Any,
        model: Model,
        tally: Tally,
        deadline: float,
        seed: int,
        plain_etags: bool,
        suffix_quirk: bool = False,
    ) -> None:
        super().__init__(name=f"soak-client-{number}", daemon=True)
        self.number = number
        self.s3 = s3
        self.model = model
        self.tally = tally
        self.deadline = deadline
        self.rng = random.Random(seed * 7919 + number)
        self.plain_etags = plain_etags  # the upstream gives plaintext objects an MD5 ETag
        # `rclone serve s3` answers 416 to a suffix range at least as long as the object (S3 serves
        # the whole object); plaintext objects are passed through, so their GETs show it.
        self.suffix_quirk = suffix_quirk
        self.own_prefix = f"c{number:02d}/"
        self.own_data = [f"c{number:02d}/data/ks/tbl-{number:02d}/md-{j}-big-Data.db" for j in range(OWN_DATA_KEYS)]
        self.own_plain = f"c{number:02d}/b1/meta/schema.cql"
        self.shared_data = [f"shared/data/ks/tbl/md-{j}-big-Data.db" for j in range(SHARED_DATA_KEYS)]
        self.shared_plain = "shared/b1/meta/schema.cql"
        self.key = ""
        self.ops = list(OPS)
        self.weights = [OPS[op] for op in self.ops]

    # --- choices ---------------------------------------------------------------------------------

    def seed(self) -> int:
        return self.rng.getrandbits(62)

    def pick_key(self, *, data_only: bool = False) -> str:
        shared = self.rng.random() < SHARED_SHARE
        keys = self.shared_data if shared else self.own_data
        if not data_only and self.rng.random() < 0.12:
            return self.shared_plain if shared else self.own_plain
        return self.rng.choice(keys)

    @staticmethod
    def is_plain(key: str) -> bool:
        return "/meta/" in key

    def size_for(self, key: str, large: bool) -> int:
        if key.startswith("shared/"):
            return self.rng.choice(SHARED_SIZES)
        if large:
            return self.rng.randint(256 * KiB, 8 * MiB)
        return self.rng.choice(SMALL_SIZES) if self.rng.random() < 0.5 else self.rng.randint(0, 256 * KiB)

    def version(self, key: str, seed: int, data: bytes, etag: str) -> Version:
        if self.is_plain(key) and not self.plain_etags:
            etag = ""
        return Version(seed, len(data), etag, single_etag(data))

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            op = self.rng.choices(self.ops, self.weights)[0]
            self.key = ""
            started = time.monotonic()
            try:
                moved = getattr(self, "op_" + op)()
            except Exception as exc:
                raced = op in READS and self.model.overlapped(self.key, started, time.monotonic())
                if raced and cut_short(exc):
                    self.tally.cut()
                elif raced and race_signature(exc):
                    self.tally.race(op, self.key, exc)
                else:
                    self.tally.error(op, self.key, exc)
                continue
            written, read = moved if isinstance(moved, tuple) else (0, 0)
            self.tally.done(op, time.monotonic() - started, written, read)

    # --- writes ----------------------------------------------------------------------------------

    def _put(self, key: str, large: bool) -> tuple[int, int]:
        self.key = key
        seed = self.seed()
        data = content(seed, self.size_for(key, large))
        write = self.model.begin(key, self.version(key, seed, data, single_etag(data)))
        ok = False
        try:
            reply = self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            ok = True
        finally:
            self.model.finish(key, write, ok)
        got = reply.get("ETag", "").strip('"')
        if not self.is_plain(key) and got != single_etag(data):
            self.tally.failure("put", key, f"PUT answered ETag {got}, not the plaintext MD5 {single_etag(data)}")
        return len(data), 0

    def op_put_small(self) -> tuple[int, int]:
        return self._put(self.pick_key(), large=False)

    def op_put_large(self) -> tuple[int, int]:
        return self._put(self.pick_key(data_only=True), large=True)

    def _multipart_parts(self) -> list[tuple[int, int]]:
        """(seed, size) of each part: 1 or 2 parts of 5 MiB, then a last one of 1 B to 5 MiB."""
        sizes = [PART] * self.rng.randint(1, 2)
        sizes.append(PART if self.rng.random() < 0.2 else self.rng.randint(1, PART))
        return [(self.seed(), size) for size in sizes]

    def op_multipart(self, abort: bool = False) -> tuple[int, int]:
        key = self.key = self.pick_key(data_only=True)
        parts = self._multipart_parts()
        upload = self.s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        done: list[dict[str, Any]] = []
        bodies: list[bytes] = []
        completing = False
        try:
            for number, (seed, size) in enumerate(parts, start=1):
                body = content(seed, size)
                reply = self.s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body)
                if reply["ETag"].strip('"') != single_etag(body):
                    self.tally.failure("multipart", key, f"part {number} ETag {reply['ETag']} is not its MD5")
                done.append({"PartNumber": number, "ETag": reply["ETag"]})
                bodies.append(body)
            if abort:
                self.s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
                return sum(len(b) for b in bodies), 0
            whole = b"".join(bodies)
            etag = multipart_etag(bodies)
            # The object's seed does not regenerate it (parts have their own); keep the bytes'
            # identity in md5 and regenerate ranges from the parts.
            version = Version(self._register(parts), len(whole), etag, single_etag(whole))
            write = self.model.begin(key, version)
            completing = True
            ok = False
            try:
                reply = self.s3.complete_multipart_upload(
                    Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
                )
                ok = True
            finally:
                self.model.finish(key, write, ok)
            if reply.get("ETag", "").strip('"') != etag:
                self.tally.failure("multipart", key, f"Complete answered ETag {reply.get('ETag')}, not {etag}")
            return len(whole), 0
        except BaseException:
            if not completing:
                with contextlib.suppress(Exception):
                    self.s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
            raise

    def op_multipart_abort(self) -> tuple[int, int]:
        return self.op_multipart(abort=True)

    def _register(self, parts: list[tuple[int, int]]) -> int:
        """A negative seed naming a multipart object's parts (see ``Checker.bytes_of``)."""
        with MULTIPART_LOCK:
            MULTIPART_PARTS.append(parts)
            return -len(MULTIPART_PARTS)

    def op_delete(self) -> tuple[int, int]:
        key = self.key = self.pick_key()
        write = self.model.begin(key, None)
        ok = False
        try:
            self.s3.delete_object(Bucket=BUCKET, Key=key)
            ok = True
        finally:
            self.model.finish(key, write, ok)
        return 0, 0

    def op_delete_many(self) -> tuple[int, int]:
        keys = self.rng.sample([*self.own_data, self.own_plain], 3)
        self.key = ",".join(keys)
        writes = [(key, self.model.begin(key, None)) for key in keys]
        deleted: set[str] = set()
        try:
            reply = self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
            deleted = {d["Key"] for d in reply.get("Deleted", [])}
            if reply.get("Errors"):
                raise RuntimeError(f"DeleteObjects errors: {reply['Errors']}")
        finally:
            for key, write in writes:
                self.model.finish(key, write, key in deleted)
        return 0, 0

    # --- reads -----------------------------------------------------------------------------------

    def _check_view(
        self, op: str, key: str, versions: list[Version | None], size: int | None, etag: str | None
    ) -> None:
        """A HEAD's or listing's (size, ETag), or (None, None) for absent, against the model."""
        if size is None:
            if None not in versions:
                self.tally.failure(op, key, f"absent, expected one of: {describe(versions)}")
            return
        for v in versions:
            if v is not None and v.size == size and (not v.etag or v.etag == etag):
                return
        self.tally.failure(op, key, f"size {size} ETag {etag}, expected one of: {describe(versions)}")

    def op_head(self) -> tuple[int, int]:
        key = self.key = self.pick_key()
        start = time.monotonic()
        size: int | None = None
        etag: str | None = None
        try:
            reply = self.s3.head_object(Bucket=BUCKET, Key=key)
            size, etag = int(reply["ContentLength"]), reply.get("ETag", "").strip('"')
        except ClientError as exc:
            if not is_absent(exc):
                raise
        self._check_view("head", key, self.model.acceptable(key, start, time.monotonic()), size, etag)
        return 0, 0

    def op_get(self) -> tuple[int, int]:
        key = self.key = self.pick_key()
        start = time.monotonic()
        try:
            reply = self.s3.get_object(Bucket=BUCKET, Key=key)
            body = reply["Body"].read()
        except ClientError as exc:
            if not is_absent(exc):
                raise
            body = None
        versions = self.model.acceptable(key, start, time.monotonic())
        if body is None:
            if None not in versions:
                self.tally.failure("get", key, f"absent, expected one of: {describe(versions)}")
            return 0, 0
        md5 = single_etag(body)
        if not any(v is not None and v.size == len(body) and v.md5 == md5 for v in versions):
            self.tally.failure(
                "get", key, f"{len(body)} bytes md5 {md5} are none of: {describe(versions)}{self.older(key, body, 0)}"
            )
        return 0, len(body)

    def _range_spec(self, size: int) -> RangeSpec:
        kind = self.rng.random()
        if kind < 0.2:
            return None, self.rng.randint(1, max(1, size + 10))
        first = self.rng.randint(0, max(0, size - 1))
        if kind < 0.35:
            return first, None
        length = self.rng.choice((1, 15, 16, 17, 4096, 65536, 65537, 1 << 20, self.rng.randint(1, max(1, size))))
        return first, first + length - 1

    def op_range(self) -> tuple[int, int]:
        key = self.key = self.pick_key()
        latest = self.model.latest(key)
        if latest is None or latest.size == 0:
            return self.op_get()
        spec = self._range_spec(latest.size)
        start = time.monotonic()
        got: tuple[str, bytes] | None
        try:
            reply = self.s3.get_object(Bucket=BUCKET, Key=key, Range=range_header(spec))
            got = (str(reply.get("ContentRange", "")), reply["Body"].read())
            status = "ok"
        except ClientError as exc:
            if is_absent(exc):
                status, got = "absent", None
            elif is_invalid_range(exc):
                status, got = "416", None
            else:
                raise
        versions = self.model.acceptable(key, start, time.monotonic())
        for v in versions:
            if v is None:
                if status == "absent":
                    return 0, 0
                continue
            wanted = resolve_range(spec, v.size)
            if wanted is None or (
                self.suffix_quirk and self.is_plain(key) and spec[0] is None and (spec[1] or 0) >= v.size
            ):
                if status == "416":
                    return 0, 0
                if wanted is None:
                    continue
            if status != "ok" or got is None:
                continue
            first, last = wanted
            if got[0] == f"bytes {first}-{last}/{v.size}" and got[1] == bytes_of(v, first, last + 1):
                return 0, len(got[1])
        shown = status if got is None else f"{got[0]!r} {len(got[1])} bytes"
        what = f"{range_header(spec)} gave {shown}, expected one of: {describe(versions)}"
        if got is not None and got[0].startswith("bytes ") and "-" in got[0]:
            what += self.older(key, got[1], int(got[0][6:].split("-", 1)[0]))
        if status == "416" and self.model.overlapped(key, start, time.monotonic()):
            # The proxy mapped the range on the object it HEADed, the upstream refused it on the one
            # that replaced it meanwhile: an error answer (no wrong byte), the GET race of READS.
            self.tally.race("range", key, RangeRace(what))
            return 0, 0
        self.tally.failure("range", key, what)
        return 0, 0 if got is None else len(got[1])

    def older(self, key: str, data: bytes, first: int) -> str:
        """For a failure: whether ``data`` (from offset ``first``) is from a version the model
        excluded (the upstream served an overwritten version) or from none (bytes of nothing written)."""
        for v in self.model.history(key):
            if bytes_of(v, first, first + len(data)) == data:
                return f"; they are version {v.size}B/{v.etag or v.md5}'s, written earlier"
        return f"; they are no version of this key (first bytes {data[:16].hex()})"

    def op_list(self) -> tuple[int, int]:
        prefix = self.own_prefix if self.rng.random() >= SHARED_SHARE else "shared/"
        self.key = prefix
        page_size = self.rng.choice((3, 7, 1000))
        start = time.monotonic()
        listed: dict[str, tuple[int, str]] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": page_size}):
            for entry in page.get("Contents", []):
                listed[entry["Key"]] = (int(entry["Size"]), entry.get("ETag", "").strip('"'))
        end = time.monotonic()
        known = [k for k in self.model.names() if k.startswith(prefix)]
        for key in listed.keys() - set(known):
            self.tally.failure("list", key, "listed, but no client ever wrote it")
        for key in known:
            size, etag = listed.get(key, (None, None))
            self._check_view("list", key, self.model.acceptable(key, start, end), size, etag)
        return 0, 0


MULTIPART_LOCK = threading.Lock()
MULTIPART_PARTS: list[list[tuple[int, int]]] = []


def bytes_of(version: Version, first: int, end: int) -> bytes:
    """Bytes [first, end) of a version (a multipart one is its parts' contents, joined)."""
    if version.seed >= 0:
        return content(version.seed, version.size)[first:end]
    with MULTIPART_LOCK:
        parts = MULTIPART_PARTS[-version.seed - 1]
    out = bytearray()
    offset = 0
    for seed, size in parts:
        if offset < end and offset + size > first:
            data = content(seed, size)
            out += data[max(0, first - offset) : min(size, end - offset)]
        offset += size
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------


def log(opts: SoakOptions, msg: str) -> None:
    if opts.verbose:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_upstream(opts: SoakOptions, root: Path) -> S3Server:
    if opts.upstream == "moto":
        return MotoServer(root / "moto").start()
    if opts.upstream == "rclone":
        extra = ["--etag-hash", ""] if opts.rclone_etag == "none" else []
        return RcloneS3Server(root / "rclone", extra_args=extra).start()
    raise ValueError(f"unknown upstream {opts.upstream!r}")


def load_injector() -> Any:
    """tests/support/faults.py's FaultInjector (another part of the test suite)."""
    try:
        from tests.support.faults import FaultInjector
    except ImportError as exc:  # pragma: no cover - the hook stays usable without it
        raise SystemExit(f"--faults needs tests/support/faults.py (FaultInjector): {exc}") from None
    return FaultInjector


@contextlib.contextmanager
def stack(opts: SoakOptions, root: Path) -> Iterator[tuple[S3Server, Any, list[ProxyProcess], int]]:
    """Upstream, optional fault injector, proxies; yields them and the port the proxies talk to."""
    upstream = start_upstream(opts, root)
    injector = None
    proxies: list[ProxyProcess] = []
    try:
        upstream.client().create_bucket(Bucket=BUCKET)
        target_url, target_port = upstream.endpoint_url, upstream.port
        if opts.faults > 0:
            injector = load_injector()(upstream.endpoint_url).start()
            injector.chaos(opts.faults, list(opts.fault_kinds), seed=opts.seed)
            target_url, target_port = injector.url, injector.port
        for n in range(opts.proxies):
            workdir = root / f"proxy{n}"
            config = proxy_config(upstream, root, cache={"path": str(workdir / "cache.sqlite")})
            config["upstream"]["endpoint_url"] = target_url
            config["logging"] = {"format": "json", "level": opts.log_level}
            proxies.append(ProxyProcess(config, workdir))
        yield upstream, injector, proxies, target_port
    finally:
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        if injector is not None:
            with contextlib.suppress(Exception):
                injector.stop()
        with contextlib.suppress(Exception):
            upstream.stop()


def _client(proxy: ProxyProcess, faults: bool) -> Any:
    return proxy.client(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5 if faults else 2, "mode": "standard"},
        read_timeout=120,
        max_pool_connections=4,
    )


def _settle(opts: SoakOptions, proxies: list[ProxyProcess], port: int, start: list[ProcSample]) -> list[ProcSample]:
    """Wait (up to settle_timeout) until no client connection is left open on any proxy and no
    socket beyond those at the start and the upstream pool (connections being closed still hold
    their descriptor for a moment); a leak outlasts the wait."""
    deadline = time.monotonic() + opts.settle_timeout
    while True:
        samples = [sample_process(proxy_pid(p), p.port, port) for p in proxies]
        if (
            all(
                s.client_conns == 0 and s.sockets <= b.sockets + s.upstream_conns + 2
                for s, b in zip(samples, start, strict=True)
            )
            or time.monotonic() > deadline
        ):
            return samples
        time.sleep(0.5)


def run_soak(opts: SoakOptions) -> SoakResult:
    """One soak against one upstream; see the module doc."""
    own_root = opts.workdir is None
    root = Path(opts.workdir or tempfile.mkdtemp(prefix="soak-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with stack(opts, root) as (upstream, injector, proxies, port):
            return _run(opts, upstream, injector, proxies, port)
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)


def _run(opts: SoakOptions, upstream: S3Server, injector: Any, proxies: list[ProxyProcess], port: int) -> SoakResult:
    pids = [proxy_pid(p) for p in proxies]
    time.sleep(0.5)
    start_samples = [sample_process(pid, p.port, port) for pid, p in zip(pids, proxies, strict=True)]
    peak = [s.rss_mb for s in start_samples]
    plain_etags = not (opts.upstream == "rclone" and opts.rclone_etag == "none")
    model, tally = Model(), Tally()
    clients = [_client(proxies[n % len(proxies)], opts.faults > 0) for n in range(opts.clients)]
    load: list[float] = [os.getloadavg()[0]]
    began = time.monotonic()
    deadline = began + opts.seconds
    workers = [
        Client(n, clients[n], model, tally, deadline, opts.seed, plain_etags, opts.upstream == "rclone")
        for n in range(opts.clients)
    ]
    log(
        opts,
        f"{opts.upstream}: {opts.clients} clients x {opts.seconds:.0f} s through {len(proxies)} "
        f"prox{'ies' if len(proxies) > 1 else 'y'}{f', faults {opts.faults:.1%}' if opts.faults else ''}",
    )
    for worker in workers:
        worker.start()
    next_report = began + 60
    while any(w.is_alive() for w in workers):
        time.sleep(1.0)
        for n, pid in enumerate(pids):
            with contextlib.suppress(OSError):
                peak[n] = max(peak[n], _status_kb(pid, "VmRSS") * 1024 / 1e6)
        if time.monotonic() >= next_report:
            next_report += 60
            load.append(os.getloadavg()[0])
            with tally.lock:
                count = sum(len(v) for v in tally.latencies.values())
                errors, failures, races = tally.errors, tally.failures, tally.races
            log(
                opts,
                f"  {time.monotonic() - began:4.0f} s: {count} ops, {errors} errors, {races} read races, "
                f"{failures} checker "
                f"failures, proxy RSS {', '.join(f'{p:.0f}' for p in peak)} MB peak, load {load[-1]:.2f}",
            )
        if time.monotonic() > deadline + 600:
            tally.error("soak", "", RuntimeError("clients still running 10 minutes after the deadline"))
            break
    elapsed = time.monotonic() - began
    load.append(os.getloadavg()[0])
    for c in clients:
        with contextlib.suppress(Exception):
            c.close()
    end_samples = _settle(opts, proxies, port, start_samples)
    stats = []
    for n, proxy in enumerate(proxies):
        peak[n] = max(peak[n], end_samples[n].hwm_mb)
        stats.append(ProxyStats(start_samples[n], end_samples[n], peak[n], integrity_failures(proxy)))
    by_op: dict[str, dict[str, float]] = {}
    for op, values in sorted(tally.latencies.items()):
        ordered = sorted(values)
        by_op[op] = {
            "count": len(values),
            "per_s": len(values) / elapsed,
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        }
    ops = sum(len(v) for v in tally.latencies.values())
    faulted = len(injector.faulted()) if injector is not None else 0
    return SoakResult(
        upstream=opts.upstream + (f" (etag {opts.rclone_etag})" if opts.upstream == "rclone" else ""),
        clients=opts.clients,
        seconds=round(elapsed, 1),
        proxies=len(proxies),
        faults=opts.faults,
        ops=ops,
        ops_per_s=ops / elapsed,
        by_op=by_op,
        errors=tally.errors,
        error_samples=tally.error_samples,
        checker_failures=tally.failures,
        checker_samples=tally.failure_samples,
        races=tally.races,
        race_samples=tally.race_samples,
        race_kinds=dict(sorted(tally.race_kinds.items())),
        cut_reads=tally.cut_reads,
        integrity_failures=sum(s.integrity_failures for s in stats),
        bytes_written=tally.bytes_written,
        bytes_read=tally.bytes_read,
        proxy_stats=stats,
        load_avg={"min": min(load), "max": max(load), "mean": statistics.mean(load)},
        faults_injected=faulted,
    )


# ------------------------------------------------------------------------------------------------
# reporting
# ------------------------------------------------------------------------------------------------


def report(result: SoakResult) -> str:
    lines = [
        f"== {result.upstream}: {result.clients} clients x {result.seconds:.0f} s, {result.proxies} proxy(ies)"
        + (f", faults {result.faults:.1%} ({result.faults_injected} injected)" if result.faults else ""),
        f"operations      {result.ops} ({result.ops_per_s:.1f}/s); written {result.bytes_written / 1e6:.0f} MB, "
        f"read {result.bytes_read / 1e6:.0f} MB",
        f"errors          {result.errors}",
        f"read races      {result.races} (reads that failed while a write of their key ran: proxy bugs)"
        + (f": {', '.join(f'{k} {n}' for k, n in result.race_kinds.items())}" if result.races else ""),
        f"cut reads       {result.cut_reads} (GET bodies cut short while a write of their key ran)",
        f"checker fails   {result.checker_failures}",
        f"integrity fails {result.integrity_failures:.0f} (proxy metric)",
        f"load average    {result.load_avg['min']:.2f}-{result.load_avg['max']:.2f} "
        f"(mean {result.load_avg['mean']:.2f}) on {os.cpu_count()} cores",
        "",
        f"{'op':<16} {'count':>7} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for op, row in result.by_op.items():
        lines.append(f"{op:<16} {row['count']:>7.0f} {row['per_s']:>7.1f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}")
    lines += [
        "",
        f"{'proxy':<6} {'RSS MB start/peak/end':<22} {'fds start/end':<14} {'client conns':<13} "
        f"{'upstream conns':<15} {'threads':<8} CPU s",
    ]
    for n, s in enumerate(result.proxy_stats):
        lines.append(
            f"{n:<6} {f'{s.start.rss_mb:.0f}/{s.peak_rss_mb:.0f}/{s.end.rss_mb:.0f}':<22} "
            f"{f'{s.start.fds}/{s.end.fds}':<14} {f'{s.start.client_conns}/{s.end.client_conns}':<13} "
            f"{f'{s.start.upstream_conns}/{s.end.upstream_conns}':<15} "
            f"{f'{s.start.threads}/{s.end.threads}':<8} {s.end.cpu_s - s.start.cpu_s:.0f}"
        )
    for title, samples in (
        ("errors", result.error_samples),
        ("read races", result.race_samples),
        ("checker failures", result.checker_samples),
    ):
        if samples:
            lines += ["", f"first {title}:", *("  " + s for s in samples[:15])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="duration per upstream (overrides --minutes)")
    parser.add_argument("--upstream", nargs="+", choices=("moto", "rclone"), default=["moto", "rclone"])
    parser.add_argument("--proxies", type=int, default=1, help="proxies sharing the bucket (client i uses i %% P)")
    parser.add_argument("--rclone-etag", choices=("none", "md5"), default="none")
    parser.add_argument(
        "--faults",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fault this share of upstream requests (tests/support/faults.py)",
    )
    parser.add_argument("--fault-kinds", default=",".join(DEFAULT_FAULT_KINDS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="JSON file (default bench/results/soak-<time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches, data)")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the proxies' log level (INFO: one line per request)",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    results = []
    for name in args.upstream:
        workdir = Path(tempfile.mkdtemp(prefix=f"soak-{name}-")) if args.keep else None
        opts = SoakOptions(
            upstream=name,
            clients=args.clients,
            seconds=seconds,
            proxies=args.proxies,
            rclone_etag=args.rclone_etag,
            faults=args.faults,
            fault_kinds=tuple(k for k in args.fault_kinds.split(",") if k),
            seed=args.seed,
            workdir=workdir,
            log_level=args.log_level,
        )
        try:
            result = run_soak(opts)
        except Exception:
            traceback.print_exc()
            return 2
        print(report(result), flush=True)
        print(flush=True)
        if workdir is not None:
            print(f"work directory kept: {workdir}", flush=True)
        results.append(result.to_json())
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"argv": sys.argv, "cpu_count": os.cpu_count(), "results": results}, indent=2, default=str)
    )
    print(f"JSON: {out}")
    bad = any(r["errors"] or r["races"] or r["checker_failures"] or r["integrity_failures"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
