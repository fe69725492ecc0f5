"""``verify-bucket``: check a bucket's backups against its own manifests, with or without the key.

Without the key, every manifest entry's ``size``/``MD5`` (the stored object's, after the proxy's
rewrite) is compared with what the bucket reports. With the key, each encrypted object's trailer
is also verified and its plaintext size and ETag compared with ``source_size``/``source_MD5``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.format.errors import FormatError
from proxy.keys import KeyRing
from proxy.manifest import SOURCE_MD5, SOURCE_SIZE, stored_entries
from proxy.objects import read_trailer
from proxy.s3.errors import S3Error
from proxy.upstream import Upstream

INDEX = "index/backup_index/"


@dataclass
class Report:
    manifests: int = 0
    objects: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _list(upstream: Upstream, bucket: str, prefix: str) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = await upstream.call("list_objects_v2", **params)
        contents.extend(page.get("Contents", []))
        if not page.get("IsTruncated"):
            return contents
        params["ContinuationToken"] = page["NextContinuationToken"]


async def verify_bucket(upstream: Upstream, bucket: str, *, prefix: str = "", backup: str | None = None,
                        keyring: KeyRing | None = None, say: Callable[[str], None] = print) -> Report:
    """Check every indexed manifest (``index/backup_index/<backup>/manifest_<node>.json``)."""
    report = Report()
    index = prefix + INDEX + (f"{backup}/" if backup else "")
    manifests = [o["Key"] for o in await _list(upstream, bucket, index)
                 if o["Key"].rsplit("/", 1)[-1].startswith("manifest_")]
    if not manifests:
        report.problems.append(f"no manifest found under {index}")
    checked: set[str] = set()
    limit = asyncio.Semaphore(16)
    for manifest_key in manifests:
        report.manifests += 1
        entries = stored_entries(await upstream.read(Bucket=bucket, Key=manifest_key))
        say(f"{manifest_key}: {len(entries)} objects")
        await asyncio.gather(*(
            _check(upstream, bucket, entry, keyring, report, limit)
            for entry in entries if entry["path"] not in checked
        ))
        checked.update(entry["path"] for entry in entries)
    for problem in report.problems:
        say(f"PROBLEM {problem}")
    say(f"checked {report.objects} objects in {report.manifests} manifests: "
        f"{len(report.problems)} problem(s){'' if keyring else ' (without the key)'}")
    return report


async def _check(upstream: Upstream, bucket: str, entry: dict[str, Any], keyring: KeyRing | None,
                 report: Report, limit: asyncio.Semaphore) -> None:
    path = entry["path"]
    async with limit:
        report.objects += 1
        try:
            head = await upstream.call("head_object", Bucket=bucket, Key=path)
        except S3Error as err:
            report.problems.append(f"{path}: {err.code} ({err.message})")
            return
        size, etag = int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
        if size != entry.get("size") or (etag and etag != entry.get("MD5")):
            report.problems.append(f"{path}: the bucket has size {size} ETag {etag}, the manifest says "
                                   f"size {entry.get('size')} MD5 {entry.get('MD5')}")
            return
        if keyring is None or SOURCE_SIZE not in entry:
            return
        try:
            trailer = await read_trailer(upstream, bucket, path, etag, size)
            trailer.verify(keyring)
            trailer.check_object_key(path)
        except (FormatError, S3Error) as exc:
            report.problems.append(f"{path}: {exc}")
            return
        if (trailer.plaintext_size, trailer.etag) != (entry[SOURCE_SIZE], entry[SOURCE_MD5]):
            report.problems.append(f"{path}: plaintext size {trailer.plaintext_size} ETag {trailer.etag}, the "
                                   f"manifest says {entry[SOURCE_SIZE]} {entry[SOURCE_MD5]}")
