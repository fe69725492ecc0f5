"""``abort-stale-uploads``: find and abort the multipart uploads nobody will finish.

An upload abandoned upstream (its client and proxy gone before Complete or Abort, a proxy killed
while s3transfer tried to abort, a cache file lost with its state) keeps its parts, and costs
storage, until someone aborts it. This lists the bucket's uploads (ListMultipartUploads, every
page) and aborts those idle for at least ``--older-than``. Several proxies and tools may share the
bucket, so an upload counts as idle only when *nothing* says it is recent: its initiation time, the
time of its newest part (ListParts), and this node's proxy state (the last part stored or Complete
begun through it) must all be older than the threshold. The proxy's own state of the uploads
aborted here (or found gone) is dropped from the cache file.

The proxy itself sweeps its own state at start and hourly (``MultipartObjects.abort_idle_uploads``);
this command covers the whole bucket, whoever started the uploads.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.cache import StateStore, UploadState
    from proxy.upstream import Upstream

DEFAULT_OLDER_THAN = "24h"
FORCE_BELOW_SECONDS = 3600  # shorter thresholds may abort uploads of backups running now: --force
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w``, combinations (``1d12h``) or bare seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pieces = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text)
    if not pieces or "".join(n + u for n, u in pieces) != text:
        raise ValueError(f"not a duration: {text!r} (use for example 90s, 30m, 24h, 7d)")
    return sum(float(number) * _UNITS[unit] for number, unit in pieces)


def _age(seconds: float) -> str:
    """``3d4h``, ``5h12m``, ``7m30s``, ``12s``."""
    seconds = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for i, (unit, size) in enumerate(units[:-1]):
        if seconds >= size:
            small, small_size = units[i + 1]
            return f"{seconds // size}{unit}{(seconds % size) // small_size}{small}"
    return f"{seconds}s"


def _stamp(value: object) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


@dataclass
class Found:
    key: str
    upload_id: str
    initiated: float | None
    last_part: float | None
    local: float | None  # this node's proxy state: last part stored or Complete begun
    parts: int
    action: str = ""  # "abort", "aborted", "keep", "gone", "failed"

    @property
    def last_activity(self) -> float:
        return max(t for t in (self.initiated, self.last_part, self.local, 0.0) if t is not None)


@dataclass
class Report:
    found: list[Found] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)  # local state only, the upload gone upstream

    def count(self, action: str) -> int:
        return sum(1 for f in self.found if f.action == action)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


async def _uploads(upstream: Upstream, bucket: str, prefix: str) -> list[dict[str, Any]]:
    from proxy.s3.errors import S3Error

    uploads: list[dict[str, Any]] = []
    markers: dict[str, str] = {}
    while True:
        params: dict[str, Any] = {"Bucket": bucket, **markers}
        if prefix:
            params["Prefix"] = prefix
        try:
            page = await upstream.call("list_multipart_uploads", **params)
        except S3Error as err:
            if err.code == "NoSuchUpload" and not uploads:  # rclone's answer when there are none
                return []
            raise
        uploads.extend(page.get("Uploads") or [])
        key_marker, id_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
        if not page.get("IsTruncated") or not (key_marker or id_marker):
            return uploads
        markers = {"KeyMarker": key_marker or "", "UploadIdMarker": id_marker or ""}


async def _parts(upstream: Upstream, bucket: str, key: str, upload_id: str) -> list[dict[str, Any]] | None:
    """Every part of an upload, None when it is gone."""
    from proxy.s3.errors import S3Error

    parts: list[dict[str, Any]] = []
    marker = 0
    while True:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        if marker:
            params["PartNumberMarker"] = marker
        try:
            page = await upstream.call("list_parts", **params)
        except S3Error as err:
            if err.code == "NoSuchUpload":
                return None
            raise
        parts.extend(page.get("Parts") or [])
        following = int(page.get("NextPartNumberMarker") or 0)
        if not page.get("IsTruncated") or following <= marker:
            return parts
        marker = following


async def abort_stale_uploads(
    upstream: Upstream,
    bucket: str,
    *,
    older_than: float,
    prefix: str = "",
    dry_run: bool = False,
    store: StateStore | None = None,
    now: Callable[[], float] = time.time,
    say: Callable[[str], None] = print,
) -> Report:
    """Abort (or with ``dry_run`` only name) the uploads of ``bucket`` idle for ``older_than`` seconds."""
    from proxy.s3.errors import S3Error

    report = Report()
    local: dict[str, UploadState] = {}
    if store is not None:
        local = {s.upload_id: s for s in await store.list_uploads(bucket=bucket) if s.key.startswith(prefix)}
    listed = await _uploads(upstream, bucket, prefix)
    for upload in listed:
        key, upload_id = upload["Key"], upload["UploadId"]
        parts = await _parts(upstream, bucket, key, upload_id)
        state = local.get(upload_id)
        found = Found(
            key,
            upload_id,
            _stamp(upload.get("Initiated")),
            max((t for p in parts or () if (t := _stamp(p.get("LastModified"))) is not None), default=None),
            state.touched if state is not None else None,
            len(parts or ()),
        )
        report.found.append(found)
        idle = now() - found.last_activity
        what = f"{key} {upload_id} ({found.parts} part(s), idle {_age(idle)})"
        if parts is None:
            found.action = "gone"
        elif idle < older_than:
            found.action = "keep"
            say(f"keep   {what}")
            continue
        elif dry_run:
            found.action = "abort"
            say(f"would abort {what}")
            continue
        else:
            try:
                await upstream.abort_upload(bucket, key, upload_id)
                found.action = "aborted"
                say(f"aborted {what}")
            except S3Error as err:
                if err.code != "NoSuchUpload":
                    found.action = "failed"
                    say(f"FAILED to abort {what}: {err.code} {err.message}")
                    continue
                found.action = "gone"
        if store is not None and state is not None:
            await store.drop_upload(upload_id)
    # This node's state of uploads the bucket no longer has (completed or aborted elsewhere), idle as long.
    upstream_ids = {u["UploadId"] for u in listed}
    for upload_id, state in local.items():
        if upload_id not in upstream_ids and now() - state.touched >= older_than:
            report.forgotten.append(upload_id)
            if store is not None and not dry_run:
                await store.drop_upload(upload_id)
    return report


def _cache_path(args: argparse.Namespace) -> str | None:
    """The cache file whose upload state is updated: --cache, else the config's, when it loads."""
    if args.cache:
        return str(args.cache)
    from proxy.config import ConfigError, load_config

    try:
        return load_config(args.config).cache.path
    except ConfigError:
        return None


def cmd_abort_stale_uploads(args: argparse.Namespace) -> int:
    from proxy.cache import StateStore
    from proxy.config import ConfigError, load_upstream_config
    from proxy.upstream import Upstream

    try:
        older_than = parse_duration(args.older_than)
    except ValueError as exc:
        print(f"medusa-crypt-proxy: --older-than: {exc}", file=sys.stderr)
        return 2
    if older_than < FORCE_BELOW_SECONDS and not args.force and not args.dry_run:
        print(
            f"medusa-crypt-proxy: --older-than {args.older_than} is under 1h: uploads of backups running now "
            "(through any proxy sharing the bucket) could be aborted. Add --force if that is what you "
            "want, or --dry-run to look first.",
            file=sys.stderr,
        )
        return 2
    try:
        upstream_config = load_upstream_config(args.config)
    except ConfigError as err:
        for problem in err.problems:
            print(f"medusa-crypt-proxy: config error: {problem}", file=sys.stderr)
        return 2
    cache = _cache_path(args)
    if cache is None or not Path(cache).exists():
        print(
            "note: no proxy cache file found here; only the bucket is cleaned (proxies drop their own "
            "state of aborted uploads by themselves)",
            file=sys.stderr,
        )
        cache = None

    async def run() -> Report:
        upstream = Upstream(upstream_config)
        store = StateStore(cache) if cache is not None else None
        await upstream.start()
        try:
            if store is not None:
                await store.start()
            return await abort_stale_uploads(
                upstream, args.bucket, older_than=older_than, prefix=args.prefix, dry_run=args.dry_run, store=store
            )
        finally:
            if store is not None:
                await store.close()
            await upstream.close()

    report = asyncio.run(run())
    verb = "would abort" if args.dry_run else "aborted"
    print(
        f"{report.count('abort' if args.dry_run else 'aborted')} upload(s) {verb}, {report.count('keep')} kept "
        f"(active within {args.older_than}), {report.count('gone')} already gone, "
        f"{report.count('failed')} failed; {len(report.forgotten)} local state entries of vanished uploads "
        f"{'to drop' if args.dry_run else 'dropped'}"
    )
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "abort-stale-uploads",
        help="abort multipart uploads abandoned in the bucket (idle for --older-than; docs/OPERATIONS.md)",
        description="Abort the multipart uploads of a bucket that are idle by every measure (initiated, "
        "newest part, this node's proxy state) for at least --older-than, and drop the proxy's state of "
        "uploads gone from the bucket.",
    )
    p.add_argument("--config", required=True, help="the proxy's config file (its upstream section, its cache)")
    p.add_argument("--bucket", required=True, help="the bucket whose uploads are listed")
    p.add_argument("--prefix", default="", help="only uploads of keys under this prefix")
    p.add_argument(
        "--older-than",
        default=DEFAULT_OLDER_THAN,
        help="abort only uploads with no activity (initiated, a part uploaded) for this long: "
        "90s, 30m, 24h, 7d (default 24h; under 1h needs --force)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be aborted, abort nothing")
    p.add_argument("--force", action="store_true", help="allow --older-than under 1h")
    p.add_argument("--cache", help="the proxy's cache file (default: the config's cache.path)")
    p.set_defaults(func=cmd_abort_stale_uploads)
