"""Fake Cassandra snapshots and a wrapper around tests/support/medusa_driver.py.

``make_snapshot(root)`` writes a data directory shaped like Cassandra's
(``<root>/<ks>/<table>-<cfid>/snapshots/<tag>/...``) with SSTable-like files of the sizes
that matter for Medusa and for an encrypting proxy: 0 B, a few bytes, KiB, just under, at
and just over the multipart threshold, several parts, exact multiples of the part size, and
a secondary index sub-folder.  Every non-empty file contains ``snapshot.marker`` (at its
start and at every MiB), so a test can grep a raw bucket for plaintext leaks.

``run_medusa(action, args)`` runs the driver with the Medusa venv's python and returns its
JSON result (``version=`` picks another tested Medusa, toolenv.MEDUSA_VERSIONS).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.toolenv import MEDUSA_VERSION, medusa_python

MiB = 1024 * 1024
DRIVER = Path(__file__).resolve().parent / "medusa_driver.py"
SNAPSHOT_TAG = "medusa-snap"


def default_layout(threshold: int = 5 * MiB) -> dict[str, int]:
    """relative path ("ks/table-cfid/[.idx/]name") -> size.  17 files, about 41 MiB at 5 MiB."""
    t = threshold
    return {
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Data.db": 2 * t + 123,  # 3 parts
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Index.db": 4 * 1024 + 7,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Statistics.db": 5 * 1024,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Summary.db": 93,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-TOC.txt": 70,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Filter.db": 0,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-2-big-Data.db": t,  # exactly 1 part
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-2-big-Index.db": t - 1,  # single PUT
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-2-big-CompressionInfo.db": t + 1,
        "ks1/t2-1b2c3d4e5f6a4b5c8d9e0f1a2b3c4d5e/nb-3-big-Data.db": 2 * t,  # exact multiple
        "ks1/t2-1b2c3d4e5f6a4b5c8d9e0f1a2b3c4d5e/nb-3-big-Digest.crc32": 50,
        "ks1/t2-1b2c3d4e5f6a4b5c8d9e0f1a2b3c4d5e/.t2_idx/nb-1-big-Data.db": 2 * 1024,
        "ks1/t2-1b2c3d4e5f6a4b5c8d9e0f1a2b3c4d5e/.t2_idx/nb-1-big-Index.db": 0,
        "ks1/t2-1b2c3d4e5f6a4b5c8d9e0f1a2b3c4d5e/.t2_idx/nb-1-big-TOC.txt": 64,
        "ks2/t3-2c3d4e5f6a7b4c5d8e9f0a1b2c3d4e5f/nb-1-big-Data.db": 300 * 1024,
        "ks2/t3-2c3d4e5f6a7b4c5d8e9f0a1b2c3d4e5f/nb-1-big-Index.db": 48,
        "ks2/t3-2c3d4e5f6a7b4c5d8e9f0a1b2c3d4e5f/nb-1-big-Statistics.db": 1024,
    }


def small_layout() -> dict[str, int]:
    """A few small files, no multipart: for tests that only need a backup to exist."""
    return {
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Data.db": 4 * 1024,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Index.db": 60,
        "ks1/t1-0a1b2c3d4e5f4a5b8c9d0e1f2a3b4c5d/nb-1-big-Filter.db": 0,
        "ks1/t2-1b2c3d4e5f6a4b5c8d9e0f1a2b3c4d5e/.t2_idx/nb-1-big-Data.db": 100,
    }


@dataclass
class FakeSnapshot:
    """A snapshot directory on disk and what is in it."""

    root: Path
    marker: str
    tag: str = SNAPSHOT_TAG
    seed: int = 0
    files: dict[str, int] = field(default_factory=dict)  # rel -> size

    def path(self, rel: str) -> Path:
        ks, table, *rest = rel.split("/")
        return self.root / ks / table / "snapshots" / self.tag / Path(*rest)

    def _content(self, rel: str, size: int, salt: str = "") -> bytes:
        if size == 0:
            return b""
        rng = random.Random(f"{self.seed}:{rel}:{salt}")
        data = bytearray(rng.randbytes(size))
        marker = self.marker.encode()
        for off in range(0, size, MiB):  # the marker at the start of every MiB
            piece = marker[: size - off]
            data[off : off + len(piece)] = piece
        return bytes(data)

    def write(self, rel: str, size: int, salt: str = "") -> Path:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(self._content(rel, size, salt))
        self.files[rel] = size
        return p

    # -- changes for differential backups -------------------------------------------
    def add(self, rel: str, size: int) -> Path:
        return self.write(rel, size, salt="added")

    def delete(self, rel: str) -> None:
        self.path(rel).unlink()
        del self.files[rel]

    def grow(self, rel: str, extra: int) -> Path:
        return self.write(rel, self.files[rel] + extra, salt=f"grown-{uuid.uuid4().hex}")

    def change_same_size(self, rel: str) -> Path:
        """New content, same size; the marker stays at the start."""
        p = self.path(rel)
        data = bytearray(p.read_bytes())
        if len(data) <= len(self.marker):
            raise ValueError(f"{rel} too small to change without touching the marker")
        i = len(self.marker) + (len(data) - len(self.marker)) // 2
        data[i] ^= 0xFF
        p.write_bytes(bytes(data))
        return p

    # -- reading back -------------------------------------------------------------------
    def digests(self) -> dict[str, tuple[int, str]]:
        """rel -> (size, md5 hex) of the files on disk now."""
        return {rel: (self.path(rel).stat().st_size, md5_file(self.path(rel))) for rel in sorted(self.files)}

    def compare_download(self, destination: str | Path) -> list[str]:
        """Differences between this snapshot and a Medusa download of it (empty: equal).

        Medusa downloads table files to <dest>/<ks>/<table-cfid>/[.idx/]<name>, and the
        manifest, schema and tokenmap to <dest>/ (these are not compared).
        """
        dest = Path(destination)
        problems = []
        for rel in sorted(self.files):
            got = dest / rel
            if not got.is_file():
                problems.append(f"missing {rel}")
            elif got.read_bytes() != self.path(rel).read_bytes():
                problems.append(
                    f"content differs: {rel} ({got.stat().st_size} bytes "
                    f"downloaded, {self.path(rel).stat().st_size} expected)"
                )
        for got in dest.rglob("*"):
            if got.is_file() and got.parent != dest:
                rel = got.relative_to(dest).as_posix()
                if rel not in self.files:
                    problems.append(f"unexpected file {rel}")
        return problems


def make_snapshot(
    root: str | Path,
    layout: dict[str, int] | None = None,
    *,
    threshold: int = 5 * MiB,
    marker: str | None = None,
    seed: int | None = None,
) -> FakeSnapshot:
    """Write a fake snapshot under root (created) and return it."""
    snap = FakeSnapshot(
        root=Path(root),
        marker=marker or f"PLAINTEXT-MARKER-{uuid.uuid4().hex[:16]}",
        seed=seed if seed is not None else random.randrange(1 << 30),
    )
    snap.root.mkdir(parents=True, exist_ok=True)
    for rel, size in (layout if layout is not None else default_layout(threshold)).items():
        snap.write(rel, size)
    return snap


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def s3_etag(data_or_path: bytes | Path, part_size: int = 5 * MiB, threshold: int = 5 * MiB) -> str:
    """The ETag S3 gives an object uploaded the way s3transfer does (no quotes)."""
    data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
    if len(data) < threshold:
        return hashlib.md5(data).hexdigest()
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


def medusa_manifest(entries: list[tuple[str, str, int]]) -> bytes:
    """A manifest (one table, ``(path, MD5, size)`` per object) serialised exactly as Medusa does
    (json.dumps of a list of sections)."""
    return json.dumps(
        [
            {
                "keyspace": "ks1",
                "columnfamily": "t-1",
                "objects": [{"path": p, "MD5": m, "size": s} for p, m, s in entries],
            }
        ]
    ).encode()


# ------------------------------------------------------------------------------------
# raw bucket inspection
# ------------------------------------------------------------------------------------


def keys_containing(client: Any, bucket: str, needle: str | bytes, prefix: str = "") -> list[str]:
    """Keys of objects in bucket whose stored bytes contain needle (read with client)."""
    raw = needle.encode() if isinstance(needle, str) else needle
    hits = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            if raw in body:
                hits.append(obj["Key"])
    return hits


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


# ------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------


class MedusaDriverError(RuntimeError):
    pass


def medusa_storage(
    endpoint_url: str, bucket: str, access_key: str, secret_key: str, **overrides: Any
) -> dict[str, Any]:
    """Medusa's [storage] settings for an http endpoint (s3_compatible, secure=False)."""
    u = urlsplit(endpoint_url)
    storage: dict[str, Any] = {
        "storage_provider": "s3_compatible",
        "host": u.hostname,
        "port": u.port,
        "secure": u.scheme == "https",
        "bucket": bucket,
        "credentials": {"access_key_id": access_key, "secret_access_key": secret_key},
        "fqdn": "node1.test",
        "multi_part_upload_threshold": "5MB",
        "multipart_chunksize": "5MB",
        "backup_grace_period_in_days": 0,
    }
    storage.update(overrides)
    return storage


def run_medusa(
    action: str,
    args: dict[str, Any],
    *,
    timeout: float = 300,
    check: bool = True,
    tmp_dir: Path | None = None,
    version: str = MEDUSA_VERSION,
) -> dict[str, Any]:
    """Run the Medusa driver with Medusa ``version`` (its own venv); return its JSON result.

    check=True raises MedusaDriverError (with Medusa's log) when the driver crashed or the
    result has ok == false.  tmp_dir becomes the driver's TMPDIR and default work_dir.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONUNBUFFERED"] = "1"
    if tmp_dir is not None:
        tmp_dir = Path(tmp_dir)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp_dir)
    cmd = [medusa_python(version), str(DRIVER), action, "-"]
    proc = subprocess.run(cmd, input=json.dumps(args), capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise MedusaDriverError(
            f"medusa driver {action} printed no JSON (exit {proc.returncode}):\n"
            f"stdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-20000:]}"
        ) from e
    result["stderr"] = proc.stderr
    result["returncode"] = proc.returncode
    if check and (proc.returncode != 0 or not result.get("ok")):
        raise MedusaDriverError(
            f"medusa driver {action} failed (exit {proc.returncode}): "
            f"{result.get('error')}\n{result.get('traceback', '')}\n"
            f"output:\n{result.get('output', '')[-5000:]}\n"
            f"stderr:\n{proc.stderr[-20000:]}"
        )
    return result
