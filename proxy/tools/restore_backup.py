"""``restore-backup``: download one node's backup, decrypted and verified, without a daemon.

The disaster-recovery path for when no proxy can run where Medusa runs: the backup's files are
read through the proxy's own service in process (the same manifest verification, decryption,
integrity checks and legacy rules as a Medusa restore through the daemon) and written laid out as
``medusa download`` lays them out: ``<destination>/<keyspace>/<table>/<file>`` (secondary index
files in their ``.<index>`` folder) and the backup's ``manifest.json``, ``schema.cql`` and
``tokenmap.json`` at the top.

Every file is checked against its manifest entry (size, and MD5 or the multipart ETag the trailer
authenticates) before it takes its final name; a file that fails is removed and reported, the
others go on. A run that was interrupted resumes: a file recorded as restored in
``<destination>/.restore-backup-state`` with the same size and MD5, and present with that size,
is not read again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from proxy.format.seed import source_md5_hex
from proxy.s3.api import Reply, Request
from proxy.s3.errors import S3Error

STATE_FILE = ".restore-backup-state"
META_FILES = ("manifest.json", "schema.cql", "tokenmap.json")


class Service(Protocol):
    async def handle(self, request: Request) -> Reply: ...


@dataclass(frozen=True)
class BackupFile:
    """One file of the backup: its key in the bucket, where it goes, and what the manifest says."""

    key: str
    target: Path
    size: int
    md5: str  # hex, or a multipart ETag "<hex>-<parts>"

    @property
    def record(self) -> str:
        return f"{self.key}\t{self.size}\t{self.md5}"


@dataclass
class RestoreReport:
    files: int = 0
    restored: int = 0
    skipped: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class RestoreError(Exception):
    """The backup cannot be restored at all (no manifest, or one that cannot be read)."""


def _md5_of(value: Any) -> str:
    text = str(value or "").strip().strip('"')
    if "-" in text:
        return text.lower()
    try:
        return source_md5_hex(text)
    except (ValueError, AttributeError):
        return text.lower()


def backup_files(manifest: Sequence[dict[str, Any]], destination: Path, tables: Iterable[str] = ()) -> list[BackupFile]:
    """The files a Medusa manifest names, where ``medusa download`` would put them; ``tables``
    (``keyspace`` or ``keyspace.table``) restricts them."""
    wanted = set(tables)
    files = []
    for section in manifest:
        keyspace, table = str(section["keyspace"]), str(section["columnfamily"])
        if wanted and keyspace not in wanted and f"{keyspace}.{table}" not in wanted:
            continue
        folder = destination / keyspace / table
        for entry in section.get("objects") or []:
            path = Path(str(entry["path"]))
            target = folder / path.parent.name / path.name if path.parent.name.startswith(".") else folder / path.name
            files.append(BackupFile(str(entry["path"]), target, int(entry["size"]), _md5_of(entry.get("MD5"))))
    return files


async def _get(service: Service, bucket: str, key: str) -> Reply:
    reply = await service.handle(Request("GetObject", bucket, key, {}, {}))
    if reply.status != 200:
        raise S3Error("InternalError", f"GET answered {reply.status}", reply.status)
    return reply


async def _pieces(reply: Reply) -> AsyncIterator[bytes | bytearray | memoryview]:
    if isinstance(reply.body, bytes | bytearray):
        yield reply.body
    else:
        async for piece in reply.body:
            yield piece


async def _read_all(service: Service, bucket: str, key: str) -> bytes:
    reply = await _get(service, bucket, key)
    return b"".join([bytes(piece) async for piece in _pieces(reply)])


def _done(destination: Path) -> set[str]:
    try:
        return set((destination / STATE_FILE).read_text("utf-8").splitlines())
    except FileNotFoundError:
        return set()


class _Restore:
    def __init__(self, service: Service, bucket: str, destination: Path, say: Callable[[str], None]) -> None:
        self.service, self.bucket, self.destination, self.say = service, bucket, destination, say
        self.report = RestoreReport()
        self.state = open(destination / STATE_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def close(self) -> None:
        self.state.close()

    async def one(self, file: BackupFile) -> None:
        partial = file.target.with_name(file.target.name + ".partial")
        try:
            got = await self._download(file, partial)
        except Exception as exc:  # any failure fails this file only; the others go on
            partial.unlink(missing_ok=True)
            message = exc.message if isinstance(exc, S3Error) else str(exc)
            self.report.problems.append(f"{file.key}: {message}")
            self.say(f"FAILED {file.key}: {message}")
            return
        os.replace(partial, file.target)
        self.state.write(file.record + "\n")
        self.state.flush()
        self.report.restored += 1
        self.report.bytes += got
        self.say(f"restored {file.key} ({got} bytes)")

    async def _download(self, file: BackupFile, partial: Path) -> int:
        reply = await _get(self.service, self.bucket, file.key)
        file.target.parent.mkdir(parents=True, exist_ok=True)
        md5, size = hashlib.md5(usedforsecurity=False), 0
        with open(partial, "wb") as out:
            async for piece in _pieces(reply):
                md5.update(piece)
                size += len(piece)
                await asyncio.to_thread(out.write, piece)
            await asyncio.to_thread(out.flush)
            await asyncio.to_thread(os.fsync, out.fileno())
        if size != file.size:
            raise ValueError(f"{size} bytes where the manifest says {file.size}")
        # A multipart ETag is the trailer's (authenticated with the bytes); else the bytes' MD5.
        found = reply.headers.get("ETag", "").strip('"') if "-" in file.md5 else md5.hexdigest()
        if file.md5 and found != file.md5:
            raise ValueError(f"MD5 {found} where the manifest says {file.md5}")
        return size


async def restore_backup(
    service: Service,
    bucket: str,
    fqdn: str,
    backup: str,
    destination: Path,
    *,
    prefix: str = "",
    tables: Iterable[str] = (),
    concurrency: int = 4,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> RestoreReport:
    """Restore ``backup`` of node ``fqdn`` into ``destination`` (created if missing)."""
    meta = f"{prefix}{fqdn}/{backup}/meta/"
    try:
        manifest_text = await _read_all(service, bucket, meta + "manifest.json")
        manifest = json.loads(manifest_text)
    except S3Error as err:
        raise RestoreError(f"{meta}manifest.json: {err.code} ({err.message})") from None
    except ValueError as exc:
        raise RestoreError(f"{meta}manifest.json is not JSON ({exc})") from None
    destination.mkdir(parents=True, exist_ok=True)
    files = backup_files(manifest, destination, tables)
    done = _done(destination)
    run = _Restore(service, bucket, destination, say)
    report = run.report
    report.files = len(files)
    todo = []
    for file in files:
        if file.record in done and file.target.is_file() and file.target.stat().st_size == file.size:
            report.skipped += 1
        else:
            todo.append(file)
    say(f"{backup} of {fqdn}: {len(files)} files, {report.skipped} already restored, {len(todo)} to go")
    limit = asyncio.Semaphore(max(1, concurrency))

    async def bounded(file: BackupFile) -> None:
        async with limit:
            await run.one(file)
            say(f"progress: {report.restored + report.skipped}/{report.files} files, {report.bytes} bytes")

    try:
        await asyncio.gather(*(bounded(file) for file in todo))
    finally:
        run.close()
    (destination / "manifest.json").write_bytes(manifest_text)
    for name in META_FILES[1:]:
        try:
            (destination / name).write_bytes(await _read_all(service, bucket, meta + name))
        except S3Error as err:
            report.problems.append(f"{meta}{name}: {err.code} ({err.message})")
    return report
