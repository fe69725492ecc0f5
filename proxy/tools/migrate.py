"""``migrate``: encrypt, in place, the unencrypted backups a bucket held before the proxy.

Why: backups made before encryption was switched on stay plaintext in the bucket, readable under
the legacy cutoff (``encryption.legacy_plaintext_before``) until they are purged. Only what the
proxy would serve as legacy is migrated: an unencrypted object under an encrypted key written
before the cutoff (the operator's declaration). One written after it is refused as possible
tampering, and is never turned into an authenticated object here.

Each such object is
1. staged: copied server side to ``STAGING_PREFIX + key``, with the original's ETag recorded;
2. encrypted: the staged copy is read and written through the proxy's own service under the
   original key, in the original's plaintext parts, so the size and ETag Medusa recorded are
   what it sees afterwards; before the write becomes visible, the bytes read must give the
   original's ETag (the same bytes, cut in the same parts);
3. verified: the new object is an encrypted object of ours and a full decrypting read gives the
   original's ETag again;
4. unstaged: only then is the plaintext copy deleted.
Then every unencrypted manifest is rewritten through the service (entries get the stored sizes
and ETags, Medusa's values move to ``source_size``/``source_MD5``, the MAC seals it), staged and
verified likewise (read back byte for byte); so is every sealed manifest naming an object that is
encrypted now under Medusa's values. Last, the cutoff is narrowed to what still needs it, or
removed (``proxy.tools.cutoff``).

An interrupted run leaves at worst a staged copy beside an object still plaintext (done again)
or encrypted already (verified against the recorded ETag, then unstaged): the next run finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.format.detect import classify
from proxy.format.errors import FormatError
from proxy.format.manifest_mac import ManifestSealError, find_seal
from proxy.manifest import SOURCE_SIZE, NotAManifest, iter_entries
from proxy.objects.encrypted import ReplyBody
from proxy.objects.service import ObjectService
from proxy.objects.views import IntegrityRefusal, ObjectChanged, integrity_error
from proxy.policy import Kind
from proxy.s3.api import Body, Reply, Request
from proxy.s3.errors import S3Error
from proxy.s3.headers import quote_etag
from proxy.tools.cutoff import CutoffEditError, edit_config, narrowed, rfc3339
from proxy.tools.rewrite import (
    BytesBody,
    LayoutETag,
    Parts,
    client_headers,
    etag_of_reply,
    same_version,
    write_in_parts,
)
from proxy.tools.rotate import copy_ranges
from proxy.upstream import ObjectHead

#: Where plaintext originals are kept while their encrypted replacement is written and verified.
STAGING_PREFIX = "medusa-crypt-proxy-migration/"
#: User metadata of a staged copy: the ETag of the original it was copied from.
STAGED_ETAG = "mcp-migrated-etag"
COPY_OBJECT_LIMIT = 5 << 30  # S3's largest CopyObject; larger originals are staged in copied parts
#: Part sizes tried, in order, for a multipart original whose first part the bucket does not
#: report (HEAD with partNumber): boto3's default (Medusa's), then other common ones.
PART_SIZES_MIB = (8, 5, 16, 32, 50, 64, 100, 128, 256, 512, 1024)


@dataclass
class Item:
    """One unencrypted object or manifest to migrate (or a sealed manifest to write again)."""

    key: str
    head: ObjectHead  # the version listed
    manifest: bool = False
    sealed: bool = False  # a sealed manifest naming objects migrated: written again, not staged


@dataclass
class MigrateReport:
    objects: int = 0  # unencrypted objects found under the prefix
    migrated: int = 0
    manifests: int = 0  # manifests rewritten
    finished: int = 0  # staged copies of an earlier run verified and removed
    bytes_read: int = 0  # from the bucket, staged copies and verifying reads
    bytes_sent: int = 0  # to the bucket, encrypted objects and manifests
    plaintext_bytes: int = 0  # of the objects migrated
    seed: int = 0  # objects of the old in-Medusa encryption (rotate's job): they keep the cutoff
    still_legacy: list[tuple[str, datetime]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class MigrateError(Exception):
    """Migration cannot start (the reason says why, in one line)."""


class _Changed(Exception):
    """The original changed (or went) while it was migrated: left as it is for the next run."""


class _NotVerified(Exception):
    """What was written does not read back as the original (or is not ours): the original's
    plaintext stays staged."""


class _WrongLayout(Exception):
    """The bytes read, cut in the parts tried, do not give the original's ETag."""


class _Hashed:
    """A body that feeds what it hands out to ``etag`` (proxy.s3.api.Body)."""

    def __init__(self, body: Body, etag: LayoutETag) -> None:
        self.length, self._body, self._etag = body.length, body, etag

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._body:
            self._etag.feed(piece)
            yield piece

    async def read_all(self, limit: int) -> bytes:
        data = await self._body.read_all(limit)
        self._etag.feed(data)
        return data


def same_etag(a: str, b: str) -> bool:
    return a.strip('"') == b.strip('"')


def part_layouts(size: int, etag: str, first_part: int) -> list[Parts]:
    """The part layouts an object of ``size`` bytes with this ETag may have been uploaded in:
    None (one PutObject) for a plain MD5; else equal parts but the last, the size the bucket
    reported for part 1 first (0: not reported), then ``PART_SIZES_MIB``."""
    count = etag.strip('"').rpartition("-")[2]
    if "-" not in etag or not count.isdigit() or int(count) < 1:
        return [None]
    parts = int(count)
    layouts: list[Parts] = []
    for part in (first_part, *(mib << 20 for mib in PART_SIZES_MIB)):
        if part > 0 and -(-size // part) == parts and (parts == 1 or part < size):
            layout = [(n, part) for n in range(1, parts)] + [(parts, size - (parts - 1) * part)]
            if layout not in layouts:
                layouts.append(layout)
    return layouts


class _Migration:
    def __init__(
        self,
        service: ObjectService,
        bucket: str,
        prefix: str,
        concurrency: int,
        say: Callable[[str], None],
    ) -> None:
        self.service, self.bucket, self.prefix, self.say = service, bucket, prefix, say
        self.views = service.views
        self.upstream = service.views.upstream
        self.policy = service.views.policy
        self.manifest_limit = 4 * service.views.config.limits.max_manifest_bytes
        self.limit = asyncio.Semaphore(max(1, concurrency))
        self.report = MigrateReport()
        self.listed: dict[str, tuple[int, str]] = {}  # key -> stored size, ETag (unquoted), kept current
        self.sealed: list[tuple[str, ObjectHead]] = []  # sealed manifests under the prefix
        self.failed: set[str] = set()  # keys with a problem
        self.done = 0

    # --- what is there ---------------------------------------------------------------------

    async def keeps_versions(self) -> bool:
        """Whether the bucket has (or had) versioning on: an overwrite then keeps the old bytes."""
        try:
            answer = await self.upstream.call("get_bucket_versioning", Bucket=self.bucket)
        except S3Error:
            return False  # an upstream without versioning
        return answer.get("Status") in ("Enabled", "Suspended")

    async def plan(self, listed: dict[str, Any]) -> Item | None:
        """An unencrypted object or manifest under the prefix written before the cutoff: an Item.
        Outside the prefix it is counted as still needing the cutoff."""
        key = str(listed["Key"])
        kind = self.policy.kind(key)
        etag = str(listed.get("ETag", "")).strip('"')  # rclone lists ETags unquoted
        head = ObjectHead(f'"{etag}"' if etag else "", int(listed["Size"]), listed["LastModified"], {})
        legacy = self.views.legacy_allowed(head.last_modified)
        if kind is Kind.PLAINTEXT or (kind is Kind.ENCRYPTED and not legacy):
            return None  # stored as it is by design; or written after the cutoff: ours, or refused
        async with self.limit:
            try:
                state = await self._state(key, kind, head)
            except IntegrityRefusal as exc:
                self.problem(key, f"{exc.message}: not migrated")
                return None
            except S3Error as exc:  # changed since the listing (ObjectChanged), or the bucket refusing
                self.problem(key, f"{exc.code} ({exc.message}); not migrated, run migrate again")
                return None
        in_prefix = key.startswith(self.prefix)
        if state == "sealed" and in_prefix:
            self.sealed.append((key, head))
        elif state == "seed":
            self.report.seed += 1
            self.report.still_legacy.append((key, head.last_modified))
        elif state == "plaintext" and not legacy:
            if in_prefix:
                self.problem(key, "an unauthenticated manifest written after the cutoff (refused): not migrated")
        elif state == "plaintext" and in_prefix:
            self.report.objects += kind is not Kind.MANIFEST
            return Item(key, head, manifest=kind is Kind.MANIFEST)
        elif state == "plaintext":
            self.report.still_legacy.append((key, head.last_modified))
        return None

    async def _state(self, key: str, kind: Kind, head: ObjectHead) -> str:
        """ "plaintext", "seed", "sealed" (a manifest of ours) or "ours" (an encrypted object)."""
        if kind is Kind.MANIFEST and head.size <= self.manifest_limit:
            data = await self.upstream.read_range(self.bucket, key, None, head.etag, self.manifest_limit)
            try:
                if find_seal(data) is not None:
                    return "sealed"
            except ManifestSealError as exc:
                raise integrity_error(key, exc) from None
            if classify(data[:16], data[-16:], len(data)) == "legacy-plaintext":
                return "plaintext"
        view = await self.views.inspect(self.bucket, key, head.etag, head.size, head.last_modified, follow=False)
        return {"plaintext": "plaintext", "seed": "seed"}.get(view.kind, "ours")

    # --- objects ---------------------------------------------------------------------------

    async def migrate_object(self, item: Item, total: int) -> None:
        async with self.limit:
            try:
                await self._encrypt(item)
            except _Changed as exc:
                self.problem(item.key, f"{exc}; not migrated, run migrate again")
            except (S3Error, FormatError, _NotVerified, _WrongLayout, ValueError) as exc:
                self.problem(item.key, f"{getattr(exc, 'message', exc)}: not migrated")
            else:
                self.report.migrated += 1
                self.report.plaintext_bytes += item.head.size
            self.done += 1
            self.say(
                f"progress: {self.done}/{total} objects, {self.report.bytes_read} bytes read, "
                f"{self.report.bytes_sent} sent"
            )

    async def _encrypt(self, item: Item) -> None:
        bucket, key, original = self.bucket, item.key, item.head.etag.strip('"')
        now = await self._unchanged(item)
        staged = await self._stage(item)
        layouts = part_layouts(item.head.size, original, await self._first_part(item))
        if not layouts:
            raise _WrongLayout(f"no part layout of {item.head.size} bytes gives its ETag {original}")
        try:
            for attempt, parts in enumerate(layouts, 1):
                try:
                    written, read = await self._write(item, now, staged, parts)
                    break
                except _WrongLayout:
                    if attempt == len(layouts):
                        raise
        except (_WrongLayout, _Changed):  # stopped before the write became visible: the original is there
            with contextlib.suppress(S3Error):
                await self.upstream.delete(bucket, STAGING_PREFIX + key)
            raise
        if written != original or read != original:
            raise _NotVerified(
                f"encrypted with ETag {written} from bytes giving {read} where the original's is "
                f"{original}; its plaintext is kept at {STAGING_PREFIX + key}"
            )
        stored = await self._verify(key, original)  # (not `+= await`: that reads the sum before awaiting)
        self.report.bytes_sent += stored
        await self.upstream.delete(bucket, STAGING_PREFIX + key)

    async def _write(self, item: Item, now: ObjectHead, staged: ObjectHead, parts: Parts) -> tuple[str, str]:
        """Write the staged bytes, encrypted, under the original key in ``parts``: the ETag the
        service answered and the ETag of the bytes read. A multipart upload is completed only
        when the bytes give the original's ETag (_WrongLayout)."""
        bucket, key, original = self.bucket, item.key, item.head.etag.strip('"')
        etag = LayoutETag(parts)

        async def source(offset: int | None, size: int | None) -> Body:
            spec = None if offset is None or size is None else f"bytes={offset}-{offset + size - 1}"
            opened, pieces = await self.upstream.open(bucket, STAGING_PREFIX + key, spec, staged.etag)
            self.report.bytes_read += opened.length or 0
            return _Hashed(ReplyBody(Reply(200, {}, pieces, opened.length)), etag)

        async def before_commit() -> None:
            if parts is not None and etag.hexdigest() != original:  # one PutObject: checked after it
                raise _WrongLayout(f"its bytes in parts of {parts[0][1]} bytes give {etag.hexdigest()}")
            await self._unchanged(item)

        written = await write_in_parts(
            self.service, bucket, key, client_headers(now.headers), parts, source, before_commit
        )
        return written, etag.hexdigest()

    async def _first_part(self, item: Item) -> int:
        """The size of part 1 of a multipart original, as the bucket reports it (0: it does not)."""
        if "-" not in item.head.etag:
            return 0
        try:
            part = await self.upstream.head(self.bucket, item.key, {"PartNumber": 1, "IfMatch": item.head.etag})
        except S3Error:
            return 0
        size = part.size
        return size if size < item.head.size else 0

    async def _stage(self, item: Item) -> ObjectHead:
        """Copy the original, server side, to ``STAGING_PREFIX + key``, its ETag recorded; the
        staged version as the copy named it (its reads are guarded by that ETag).

        A plain MD5 original must be copied with the same ETag: its bytes are then the original's,
        and reading them under If-Match keeps a bucket writer from swapping the copy for other
        bytes before they are encrypted (its one PutObject is checked only once written)."""
        bucket, key, size = self.bucket, item.key, item.head.size
        original = item.head.etag.strip('"')
        staged_key = STAGING_PREFIX + key
        meta = {STAGED_ETAG: original}
        guard = {"CopySourceIfMatch": item.head.etag} if item.head.etag else {}
        try:
            if size <= COPY_OBJECT_LIMIT:
                params = {**guard, "MetadataDirective": "REPLACE", "Metadata": meta}
                etag = (await self.upstream.copy(bucket, staged_key, (bucket, key, None), params)).etag
            else:
                etag = await self._stage_in_parts(item, staged_key, meta, guard)
        except S3Error as err:
            if err.code in ("PreconditionFailed", "NoSuchKey"):
                raise _Changed("overwritten or deleted while it was staged") from None
            raise
        staged = await self.upstream.head(bucket, staged_key)
        if "-" not in original and etag.strip('"') != original:
            with contextlib.suppress(S3Error):
                await self.upstream.delete(bucket, staged_key)
            raise _NotVerified(f"the bucket copied it with ETag {etag}, not its MD5 {original}")
        if staged.size != size or staged.metadata.get(STAGED_ETAG) != original or not same_etag(staged.etag, etag):
            raise _Changed(f"staged as {staged.size} bytes ({staged.etag}) where the copy made {size} ({etag})")
        return ObjectHead(etag, staged.size, staged.last_modified, staged.headers)

    async def _stage_in_parts(self, item: Item, staged_key: str, meta: dict[str, str], guard: dict[str, str]) -> str:
        bucket, key = self.bucket, item.key
        upload_id = (await self.upstream.create_upload(bucket, staged_key, {"Metadata": meta})).upload_id
        try:
            parts = []
            for number, (first, last) in enumerate(copy_ranges(item.head.size), 1):
                range_of = {**guard, "CopySourceRange": f"bytes={first}-{last}"}
                copied = await self.upstream.copy_part(
                    bucket, staged_key, upload_id, number, (bucket, key, None), range_of
                )
                parts.append((number, copied.etag))
            return (await self.upstream.complete_upload(bucket, staged_key, upload_id, parts)).etag
        except BaseException:
            with contextlib.suppress(S3Error):
                await self.upstream.abort_upload(bucket, staged_key, upload_id)
            raise

    async def _unchanged(self, item: Item) -> ObjectHead:
        """Still the version planned (the window before a write is as short as it can be)."""
        try:
            now = await self.upstream.head(self.bucket, item.key)
        except S3Error as err:
            if err.code == "NoSuchKey":
                raise _Changed("deleted while it was migrated") from None
            raise
        if not same_version(now, item.head):
            raise _Changed("overwritten while it was migrated")
        return now

    async def _verify(self, key: str, original: str) -> int:
        """``key`` is an encrypted object of ours whose full decrypting read gives ``original``;
        its stored size."""
        head = await self.upstream.head(self.bucket, key)
        view = await self.views.inspect(self.bucket, key, head.etag, head.size, head.last_modified, follow=False)
        if view.kind != "encrypted" or view.trailer is None or view.etag != original:
            raise _NotVerified(f"stored as {view.kind} with ETag {view.etag} where {original} was written")
        got = await self.service.handle(Request("GetObject", self.bucket, key, {}, {"if-match": quote_etag(view.etag)}))
        parts = view.trailer.layout.parts() if view.trailer.etag_parts else None
        etag, length = await etag_of_reply(got, parts)
        self.report.bytes_read += head.size
        if etag != original or length != view.size:
            raise _NotVerified(f"reads back as {length} bytes with ETag {etag} where {original} was written")
        self.listed[key] = (head.size, head.etag.strip('"'))
        return head.size

    # --- what an earlier run left -----------------------------------------------------------

    async def finish_staged(self, key: str) -> None:
        """A staged copy whose original is no longer plaintext: verified, then removed."""
        async with self.limit:
            staged_key = STAGING_PREFIX + key
            try:
                staged = await self.upstream.head(self.bucket, staged_key)
                original = staged.metadata.get(STAGED_ETAG)
                if not original:
                    self.problem(staged_key, f"not a staged copy of migrate (no {STAGED_ETAG} metadata): left as it is")
                    return
                try:
                    await self.upstream.head(self.bucket, key)
                except S3Error as err:
                    if err.code != "NoSuchKey":
                        raise
                    self.problem(key, f"gone; its plaintext is kept at {staged_key} (delete it if it was purged)")
                    return
                if self.policy.kind(key) is Kind.MANIFEST:
                    got = await self.service.handle(Request("HeadObject", self.bucket, key, {}, {}))
                    if got.headers.get("ETag", "").strip('"') != original:
                        raise _NotVerified(f"reads back with ETag {got.headers.get('ETag')}, not {original}")
                else:
                    await self._verify(key, original)
                await self.upstream.delete(self.bucket, staged_key)
                self.report.finished += 1
                self.say(f"finished {key} (an earlier run's): its staged plaintext removed")
            except (S3Error, FormatError, _NotVerified) as exc:
                self.problem(key, f"{getattr(exc, 'message', exc)}; its plaintext is kept at {staged_key}")

    # --- manifests -------------------------------------------------------------------------

    async def stale_manifest(self, key: str, head: ObjectHead) -> Item | None:
        """A sealed manifest with an entry under Medusa's values for an object encrypted now."""
        async with self.limit:
            try:
                data = await self.upstream.read_range(self.bucket, key, None, head.etag, self.manifest_limit)
                seal = find_seal(data)
                if seal is None:
                    return None
                text = (data[: seal.body_len] + b"]").decode("utf-8", errors="replace")
                for _, _, entry in iter_entries(text):
                    path = str(entry.get("path"))
                    found = self.listed.get(path)
                    if (
                        SOURCE_SIZE not in entry
                        and found is not None
                        and found != (entry.get("size"), entry.get("MD5"))
                        and self.policy.encrypts(path)
                        and await self._ours(path)
                    ):
                        return Item(key, head, manifest=True, sealed=True)
            except (S3Error, ManifestSealError, NotAManifest) as exc:
                self.problem(key, f"{getattr(exc, 'message', exc)}: not rewritten")
        return None

    async def _ours(self, key: str) -> bool:
        head = await self.upstream.head(self.bucket, key)
        try:
            view = await self.views.inspect(self.bucket, key, head.etag, head.size, head.last_modified, follow=False)
        except (IntegrityRefusal, ObjectChanged):
            return False
        return view.kind in ("encrypted", "seed")

    async def migrate_manifest(self, item: Item) -> None:
        """Write the manifest again through the service (rewritten and sealed) and read it back."""
        async with self.limit:
            try:
                now = await self._unchanged(item)
                if item.sealed:
                    got = await self.service.handle(Request("GetObject", self.bucket, item.key, {}, {}))
                    original = b"".join([bytes(p) async for p in ReplyBody(got)])
                else:
                    staged = await self._stage(item)
                    original = await self.upstream.read_range(
                        self.bucket, STAGING_PREFIX + item.key, None, staged.etag, self.manifest_limit
                    )
                    self.report.bytes_read += len(original)
                    if "-" not in item.head.etag and hashlib.md5(original).hexdigest() != item.head.etag.strip('"'):
                        raise _NotVerified("its staged copy differs from the original")
                await self._unchanged(item)
                await self.service.handle(
                    Request("PutObject", self.bucket, item.key, {}, client_headers(now.headers), BytesBody(original))
                )
                got = await self.service.handle(Request("GetObject", self.bucket, item.key, {}, {}))
                if b"".join([bytes(p) async for p in ReplyBody(got)]) != original:
                    raise _NotVerified("the manifest written reads back differently")
                stored = await self.upstream.head(self.bucket, item.key)
                self.report.bytes_sent += stored.size
                if not item.sealed:
                    await self.upstream.delete(self.bucket, STAGING_PREFIX + item.key)
            except _Changed as exc:  # before the write: the original is there, its copy can go
                if not item.sealed:
                    with contextlib.suppress(S3Error):
                        await self.upstream.delete(self.bucket, STAGING_PREFIX + item.key)
                self.problem(item.key, f"{exc}; not rewritten, run migrate again")
            except (S3Error, FormatError, _NotVerified) as exc:
                self.problem(item.key, f"{getattr(exc, 'message', exc)}: not rewritten")
            else:
                self.report.manifests += 1
                self.say(f"rewrote manifest {item.key}")

    def problem(self, key: str, reason: object) -> None:
        self.report.problems.append(f"{key}: {reason}")
        self.failed.add(key)


async def migrate(
    service: ObjectService,
    bucket: str,
    *,
    prefix: str = "",
    dry_run: bool = False,
    concurrency: int = 4,
    config_path: str | None = None,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    out: Callable[[str], None] = print,
) -> MigrateReport:
    """Encrypt the unencrypted backups under ``prefix`` in place (see the module), then narrow or
    remove the cutoff in ``config_path`` when no other bucket can need it."""
    config = service.views.config
    cutoff = config.encryption.legacy_plaintext_before
    if cutoff is None:
        raise MigrateError(
            "encryption.legacy_plaintext_before is not set, so no unencrypted object is served and none is "
            "migrated: set it to the time encryption was switched on (docs/SECURITY.md)"
        )
    run = _Migration(service, bucket, prefix, concurrency, say)
    report = run.report
    if await run.keeps_versions():
        out(
            f"warning: {bucket} keeps versions: each plaintext original (and its staged copy) stays in it as a "
            "noncurrent version until a lifecycle rule expires it or it is deleted (docs/OPERATIONS.md)"
        )
    listed = await run.upstream.list_all(bucket)  # all of it: what is outside the prefix may keep the cutoff
    staged = {str(o["Key"])[len(STAGING_PREFIX) :] for o in listed if str(o["Key"]).startswith(STAGING_PREFIX)}
    listed = [o for o in listed if not str(o["Key"]).startswith(STAGING_PREFIX)]
    run.listed = {o["Key"]: (int(o["Size"]), str(o.get("ETag", "")).strip('"')) for o in listed}
    say(f"{bucket}/{prefix}: {len(listed)} stored objects; unencrypted ones served if written before {rfc3339(cutoff)}")
    planned = [item for item in await asyncio.gather(*(run.plan(o) for o in listed)) if item is not None]
    objects = [item for item in planned if not item.manifest]
    manifests = [item for item in planned if item.manifest]
    if dry_run:
        for item in planned:
            out(f"WOULD encrypt {item.key} ({item.head.size} bytes, written {item.head.last_modified})")
        for key in sorted({key for key in staged if key.startswith(prefix)} - {item.key for item in planned}):
            out(f"WOULD finish {key}: verify it and remove its staged plaintext {STAGING_PREFIX + key}")
        out(f"dry run: {len(objects)} object(s) and {len(manifests)} manifest(s) to encrypt")
        _cutoff_step(report, config, bucket, cutoff, None, out)
        return report
    await asyncio.gather(*(run.migrate_object(item, len(objects)) for item in objects))
    leftovers = {key for key in staged if key.startswith(prefix)} - {item.key for item in planned}
    await asyncio.gather(*(run.finish_staged(key) for key in sorted(leftovers)))
    stale = await asyncio.gather(*(run.stale_manifest(key, head) for key, head in run.sealed))
    await asyncio.gather(*(run.migrate_manifest(item) for item in [*manifests, *(m for m in stale if m)]))
    report.still_legacy += [(item.key, item.head.last_modified) for item in planned if item.key in run.failed]
    for problem in report.problems:
        out(f"PROBLEM {problem}")
    out(
        f"encrypted {report.migrated} of {report.objects} unencrypted object(s) "
        f"({report.plaintext_bytes} bytes), rewrote {report.manifests} manifest(s), finished {report.finished} "
        f"left by an earlier run; {report.bytes_read} bytes read, {report.bytes_sent} sent; "
        f"{len(report.problems)} problem(s)"
        + (f"; {report.seed} object(s) of the old in-Medusa encryption left for rotate" if report.seed else "")
    )
    _cutoff_step(report, config, bucket, cutoff, config_path, out)
    return report


def _cutoff_step(
    report: MigrateReport,
    config: Any,
    bucket: str,
    cutoff: datetime,
    config_path: str | None,
    out: Callable[[str], None],
) -> None:
    """Say (and with ``config_path``, do) what becomes of the cutoff."""
    if report.problems:
        out(f"encryption.legacy_plaintext_before stays {rfc3339(cutoff)}: resolve the problems and run migrate again")
        return
    new = narrowed(cutoff, (moment for _, moment in report.still_legacy))
    if new == cutoff:
        newest = max(report.still_legacy, key=lambda item: item[1])[0]
        out(f"encryption.legacy_plaintext_before stays {rfc3339(cutoff)}: {newest} still needs it")
        return
    left = f"{len(report.still_legacy)} unencrypted object(s) left in {bucket}" if new else f"nothing left in {bucket}"
    wanted = f'legacy_plaintext_before: "{rfc3339(new)}"' if new else "no legacy_plaintext_before"
    others = [c.access_key_id for c in config.clients if c.buckets != [bucket]]
    if config_path is None:
        out(f"encryption.legacy_plaintext_before can be {rfc3339(new) if new else 'removed'} ({left})")
    elif others:
        out(
            f"the cutoff was not edited: client(s) {', '.join(others)} of this config may reach other buckets, "
            f"which may hold unencrypted backups; once they are migrated too, set {wanted} ({left})"
        )
    else:
        try:
            edit_config(config_path, new, left)
        except (CutoffEditError, OSError) as exc:
            out(f"the cutoff was not edited ({exc}): set {wanted} in every proxy's config ({left})")
            return
        out(f"{config_path}: {wanted} ({left}); restart the proxies that read it (SIGHUP does not reload it)")
