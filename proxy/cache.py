"""Local state in one SQLite file: a cache of the plaintext view, and in-flight multipart uploads.

The view cache is keyed by what identifies one stored version of an object (bucket, key and the
upstream ETag, or size and Last-Modified when the upstream gives no ETag), so an entry can never
describe another version: losing the file costs lookups in the bucket, never correctness.
Multipart state lives only as long as its upload; losing it makes Complete fail with an S3 error
so the client uploads again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("proxy.cache")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS views (
    bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,
    kind TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, trailer BLOB,
    PRIMARY KEY (bucket, key, version)
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL,
    key_id BLOB NOT NULL, salt BLOB NOT NULL,
    created REAL, touched REAL, completing INTEGER NOT NULL DEFAULT 0, wrapped BLOB
);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL,
    size INTEGER NOT NULL, md5 BLOB NOT NULL, stored_size INTEGER NOT NULL,
    upstream_etag TEXT, held BLOB,
    PRIMARY KEY (upload_id, part_number)
);
CREATE TABLE IF NOT EXISTS completed (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL,
    headers TEXT NOT NULL, body BLOB NOT NULL, done REAL NOT NULL
);
"""

#: How long the answer of a completed upload is kept, for a client's retry of its Complete.
COMPLETED_SECONDS = 24 * 3600

# Columns added to ``uploads`` after its first version (a cache file from then gets them on open;
# its uploads count as created and touched at that moment).
_UPLOAD_COLUMNS = {
    "created": "REAL",
    "touched": "REAL",
    "completing": "INTEGER NOT NULL DEFAULT 0",
    "wrapped": "BLOB",
}


def _migrate(db: sqlite3.Connection) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(uploads)")}
    missing = [name for name in _UPLOAD_COLUMNS if name not in have]
    if not missing:
        return
    with db:
        db.execute("BEGIN")
        for name in missing:
            db.execute(f"ALTER TABLE uploads ADD COLUMN {name} {_UPLOAD_COLUMNS[name]}")
        now = time.time()
        db.execute("UPDATE uploads SET created=? WHERE created IS NULL", (now,))
        db.execute("UPDATE uploads SET touched=? WHERE touched IS NULL", (now,))


def version_of(etag: str | None, size: int, last_modified: object) -> str:
    """What identifies one stored version: its ETag, or size and time when there is none.

    Times are cut to whole seconds: LIST gives milliseconds, HEAD's HTTP date only seconds. Such a
    version does not name one write (see ``settled``). (``mtime:`` since the settling rule:
    ``lm:`` entries of older versions of the proxy may have been learned too soon, so they are
    never looked up again.)
    """
    etag = (etag or "").strip('"')
    if etag:
        return f"etag:{etag}:{size}"
    if isinstance(last_modified, datetime):
        last_modified = int(last_modified.timestamp())
    return f"mtime:{last_modified}:{size}"


#: A version named by size and Last-Modified (an upstream without ETags, e.g. ``rclone serve s3
#: --etag-hash ''``) is only cached when it was learned this long after its Last-Modified second
#: ended, plus the time a write of its size takes at ``SETTLE_RATE``. Last-Modified has a 1 s
#: resolution and is the time a write *began* (rclone: the PUT's start, or CreateMultipartUpload's
#: for a multipart object), so two writes of the same size begun in the same second (two proxies,
#: or two clients of one) have the same version: a view learned before the later one finished would
#: be served for it forever (the old ETag on HEAD and LIST, and every GET refused by the chunk MACs).
#: Seen once settled, an object keeps its version until it is written again, which gives it a new
#: Last-Modified, unless a write of the same size begun in that same second finishes later still:
#: slower than ``SETTLE_RATE``. The margin also absorbs the proxy's clock running ahead of the
#: upstream's by up to a few seconds.
SETTLE_SECONDS = 5.0
SETTLE_RATE = 10e6  # bytes per second


def settled(version: str, learned_at: float) -> bool:
    """Whether a view of ``version`` learned at ``learned_at`` (``time.time()``) may be cached."""
    if not version.startswith("mtime:"):
        return True  # an ETag names the stored bytes
    try:
        _, stamp, size = version.split(":")
        return learned_at >= int(stamp) + 1 + SETTLE_SECONDS + int(size) / SETTLE_RATE
    except ValueError:  # no usable time: never
        return False


@dataclass(frozen=True)
class CachedView:
    kind: str  # "encrypted" | "plaintext" | "seed"
    size: int
    etag: str
    trailer: bytes | None


@dataclass(frozen=True)
class UploadState:
    upload_id: str
    bucket: str
    key: str
    key_id: bytes
    salt: bytes
    created: float = 0.0  # time.time() of CreateMultipartUpload (0: now, when stored)
    touched: float = 0.0  # of the last thing done to it (created, a part stored, Complete begun)
    completing: bool = False  # a Complete was begun: the upstream may have completed it already
    # Format version 2: the upload's data key, wrapped (WrappedKey.to_bytes); never the key itself.
    wrapped: bytes | None = None


@dataclass(frozen=True)
class CompletedUpload:
    """The answer given to the Complete of an upload (its XML and headers)."""

    upload_id: str
    bucket: str
    key: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class PartState:
    part_number: int
    size: int
    md5: bytes
    stored_size: int
    upstream_etag: str | None
    held: bytes | None


PRIVATE_MODE = 0o600  # the cache holds object names, sizes, ETags and trailers: owner only


def _private_file(path: str) -> None:
    """Create the database file owner-only, or make an existing one so.

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's permissions, so they
    are owner-only from their first byte too.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_MODE)
    try:
        _make_private(fd, path)
    finally:
        os.close(fd)


def _make_private(file: int | str, name: str) -> None:
    """chmod 600 a file (descriptor or path) unless it is already; warn if that is not allowed."""
    try:
        mode = stat.S_IMODE(os.stat(file).st_mode)
    except FileNotFoundError:
        return
    if mode == PRIVATE_MODE:
        return
    try:
        os.chmod(file, PRIVATE_MODE)
    except PermissionError:  # not the owner: it still works, but others may read it
        log.warning("cache file %s has mode %o and cannot be made owner-only (chmod 600 it)", name, mode)


RECENT_VIEWS = 4096  # views also kept in memory: the HEAD and GETs that follow a write hit them


class StateStore:
    """SQLite behind one worker thread, so the event loop never waits on the disk.

    The most recent views are also kept in memory, and views are written behind: a request does
    not wait for the cache's disk write (losing one to a crash costs one trailer read later).
    The worker is one thread, so writes and reads reach SQLite in the order they were made.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, str], tuple[str, CachedView]] = OrderedDict()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                _private_file(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            _migrate(db)
            if self.path != ":memory:":
                # New ones get the database file's mode; ones left by an older version may not have it.
                for suffix in ("-wal", "-shm"):
                    _make_private(self.path + suffix, self.path + suffix)
            self._db = db
        return self._db

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        def call() -> T:
            with self._lock:
                return fn(self._open())

        return asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(fn)

    def _behind(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """Queue a write nobody waits for; a failure is logged (the cache only gets colder)."""

        def done(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.error("view cache write failed: %s", future.exception())

        self._submit(fn).add_done_callback(done)

    def _keep(self, bucket: str, key: str, version: str, view: CachedView) -> None:
        self._recent[(bucket, key)] = (version, view)
        self._recent.move_to_end((bucket, key))
        if len(self._recent) > RECENT_VIEWS:
            self._recent.popitem(last=False)

    async def start(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(shut)
        self._executor.shutdown(wait=True)

    # --- views ---------------------------------------------------------------------------

    async def get_views(self, bucket: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], CachedView]:
        """Cached views for (key, version) pairs; absent ones are simply missing."""
        found: dict[tuple[str, str], CachedView] = {}
        missing: list[tuple[str, str]] = []
        for key, version in keys:
            recent = self._recent.get((bucket, key))
            if recent is not None and recent[0] == version:
                found[(key, version)] = recent[1]
            else:
                missing.append((key, version))

        def query(db: sqlite3.Connection) -> dict[tuple[str, str], CachedView]:
            stored: dict[tuple[str, str], CachedView] = {}
            for key, version in missing:
                row = db.execute(
                    "SELECT kind, size, etag, trailer FROM views WHERE bucket=? AND key=? AND version=?",
                    (bucket, key, version),
                ).fetchone()
                if row is not None:
                    stored[(key, version)] = CachedView(row[0], row[1], row[2], row[3])
            return stored

        if missing:
            stored = await self._run(query)
            for (key, version), view in stored.items():
                self._keep(bucket, key, version, view)
            found.update(stored)
        return found

    async def put_view(
        self, bucket: str, key: str, version: str, view: CachedView, *, learned_at: float | None = None
    ) -> None:
        await self.put_views(bucket, [(key, version, view)], learned_at=learned_at)

    async def put_views(
        self, bucket: str, items: Iterable[tuple[str, str, CachedView]], *, learned_at: float | None = None
    ) -> None:
        """Remember views (in memory now, on disk behind, in one transaction: a cold listing
        brings a thousand at once).

        ``learned_at`` (default: now) is when the views were read from the bucket; one of a version
        that had not ``settled`` then is not kept (the key's older entry is dropped all the same).
        """
        when = time.time() if learned_at is None else learned_at
        rows: list[tuple[str, str, CachedView | None]] = []
        for key, version, view in items:
            if settled(version, when):
                self._keep(bucket, key, version, view)
                rows.append((key, version, view))
            else:
                self._recent.pop((bucket, key), None)
                rows.append((key, version, None))

        def store(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                for key, version, view in rows:
                    # One version per key is enough: an overwrite makes older entries useless.
                    db.execute("DELETE FROM views WHERE bucket=? AND key=?", (bucket, key))
                    if view is not None:
                        db.execute(
                            "INSERT INTO views VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (bucket, key, version, view.kind, view.size, view.etag, view.trailer),
                        )

        if rows:
            self._behind(store)

    async def forget_views(self, bucket: str, keys: list[str]) -> None:
        """Deleted objects: their entries could never be hit again, only take room."""
        for key in keys:
            self._recent.pop((bucket, key), None)

        def drop(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.executemany("DELETE FROM views WHERE bucket=? AND key=?", [(bucket, key) for key in keys])

        if keys:
            await self._run(drop)

    async def count_views(self) -> int:
        return await self._run(lambda db: int(db.execute("SELECT count(*) FROM views").fetchone()[0]))

    # --- multipart uploads ---------------------------------------------------------------
    # Every write here is awaited (and committed to the WAL) before the client gets its answer:
    # a part the client was told is stored is in the file even if the process is killed next.

    _UPLOAD_FIELDS = "upload_id, bucket, key, key_id, salt, created, touched, completing, wrapped"

    @staticmethod
    def _upload_row(row: Any) -> UploadState:
        upload_id, bucket, key, key_id, salt, created, touched, completing, wrapped = row
        return UploadState(
            upload_id,
            bucket,
            key,
            key_id,
            salt,
            float(created or 0.0),
            float(touched or 0.0),
            bool(completing),
            None if wrapped is None else bytes(wrapped),
        )

    async def put_upload(self, state: UploadState) -> None:
        now = time.time()
        created = state.created or now
        await self._run(
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO uploads ({self._UPLOAD_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    state.upload_id,
                    state.bucket,
                    state.key,
                    state.key_id,
                    state.salt,
                    created,
                    state.touched or created,
                    int(state.completing),
                    state.wrapped,
                ),
            )
        )

    async def get_upload(self, upload_id: str) -> UploadState | None:
        row = await self._run(
            lambda db: db.execute(
                f"SELECT {self._UPLOAD_FIELDS} FROM uploads WHERE upload_id=?", (upload_id,)
            ).fetchone()
        )
        return self._upload_row(row) if row is not None else None

    async def list_uploads(self, *, bucket: str | None = None, idle_since: float | None = None) -> list[UploadState]:
        """Uploads in the state (of ``bucket``), only those untouched since ``idle_since`` when given."""
        clauses: list[str] = []
        args: list[object] = []
        if bucket is not None:
            clauses.append("bucket=?")
            args.append(bucket)
        if idle_since is not None:
            clauses.append("touched<?")
            args.append(idle_since)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._run(
            lambda db: db.execute(f"SELECT {self._UPLOAD_FIELDS} FROM uploads{where} ORDER BY touched", args).fetchall()
        )
        return [self._upload_row(row) for row in rows]

    async def put_part(self, upload_id: str, part: PartState) -> None:
        def store(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.execute(
                    "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (upload_id, part.part_number, part.size, part.md5, part.stored_size, part.upstream_etag, part.held),
                )
                db.execute("UPDATE uploads SET touched=? WHERE upload_id=?", (time.time(), upload_id))

        await self._run(store)

    async def mark_completing(self, upload_id: str) -> None:
        """A Complete is about to reach the upstream: a retry must first look for its object."""
        await self._run(
            lambda db: db.execute(
                "UPDATE uploads SET completing=1, touched=? WHERE upload_id=?", (time.time(), upload_id)
            )
        )

    async def get_parts(self, upload_id: str) -> dict[int, PartState]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT part_number, size, md5, stored_size, upstream_etag, held FROM parts WHERE upload_id=?",
                (upload_id,),
            ).fetchall()
        )
        return {row[0]: PartState(*row) for row in rows}

    async def put_completed(self, done: CompletedUpload) -> None:
        """Keep a Complete's answer (``COMPLETED_SECONDS``): S3 answers a repeated Complete of a
        completed upload again, and clients repeat one whose answer they lost. Older ones go."""

        def store(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM completed WHERE done<?", (time.time() - COMPLETED_SECONDS,))
                db.execute(
                    "INSERT OR REPLACE INTO completed VALUES (?, ?, ?, ?, ?, ?)",
                    (done.upload_id, done.bucket, done.key, json.dumps(dict(done.headers)), done.body, time.time()),
                )

        await self._run(store)

    async def get_completed(self, upload_id: str) -> CompletedUpload | None:
        row = await self._run(
            lambda db: db.execute(
                "SELECT bucket, key, headers, body FROM completed WHERE upload_id=? AND done>=?",
                (upload_id, time.time() - COMPLETED_SECONDS),
            ).fetchone()
        )
        if row is None:
            return None
        return CompletedUpload(upload_id, row[0], row[1], json.loads(row[2]), bytes(row[3]))

    async def drop_upload(self, upload_id: str) -> None:
        def drop(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
                db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))

        await self._run(drop)
