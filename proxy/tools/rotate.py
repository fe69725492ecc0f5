"""``rotate``: move every object and manifest under a prefix to the current primary key.

Why: a retired or compromised key can only be dropped once nothing in the bucket needs it. With
format version 2 an object's chunks depend on its data key alone, so moving it to a new master
key means a new trailer (the same data key wrapped again, its MAC recomputed) after the same
stored records. For objects of 5 MiB and more of stored data that is done server side: a
multipart upload of ``UploadPartCopy`` parts of the existing object (each >= 5 MiB, guarded by
``CopySourceIfMatch`` on the ETag read) and one uploaded part holding the new trailer, so the
bytes sent are about the trailer's size. Smaller objects, version 1 and old in-Medusa (seed)
objects, and upstreams that refuse range copies are re-encrypted by streaming through the
proxy's own service in process (verified read, written as format 2 under the primary key), with
the same plaintext part layout, so their plaintext size and ETag (Medusa's view) stay the same.

Then every sealed manifest sealed by another key, or whose entries no longer match the stored
objects, is read back through the service and written again through it: the proxy's own
rewrite records the new stored sizes and ETags and seals it under the primary key.

A second run finds nothing to do; an interrupted one picks up what is left (objects already on
the primary key are skipped, manifests whose entries are stale are resealed).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.format.constants import PROVIDER_AWS_KMS, TRAILER_VERSION_ENVELOPE
from proxy.format.detect import classify
from proxy.format.errors import FormatError
from proxy.format.keys import local_data_key, unwrap_local
from proxy.format.layout import part_stored_size
from proxy.format.manifest_mac import ManifestSealError, find_seal
from proxy.format.trailer import Trailer
from proxy.manifest import SOURCE_SIZE, NotAManifest, iter_entries
from proxy.objects.encrypted import ReplyBody
from proxy.objects.service import ObjectService
from proxy.objects.views import IntegrityRefusal, ObjectChanged, complete_tail, read_range, tail_spec
from proxy.policy import Kind
from proxy.s3.api import Request
from proxy.s3.errors import S3Error
from proxy.s3.headers import INTERNAL_META_PREFIX, quote_etag
from proxy.tools.rewrite import BytesBody, client_headers, same_version, write_in_parts
from proxy.upstream import ObjectHead

MIN_PART = 5 << 20  # S3's smallest part but the last
COPY_PART_TARGET = 1 << 30  # copied parts are about this large (S3 allows up to 5 GiB)
MAX_PARTS = 10000
#: What an upstream answers when it cannot copy a byte range server side.
COPY_REFUSALS = ("NotImplemented", "InvalidRequest", "InvalidArgument", "NotSupported", "MethodNotAllowed")


def copy_ranges(data_size: int) -> list[tuple[int, int]]:
    """Byte ranges ``(first, last)`` that cut ``data_size`` stored bytes into copied parts of
    at least 5 MiB each: the trailer's part comes last, so none of them may be smaller."""
    if data_size < MIN_PART:
        raise ValueError(f"{data_size} bytes cannot be copied in parts of at least {MIN_PART}")
    count = min(data_size // MIN_PART, max(1, -(-data_size // COPY_PART_TARGET)), MAX_PARTS - 1)
    base, extra = divmod(data_size, count)
    ranges, first = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        ranges.append((first, first + size - 1))
        first += size
    return ranges


@dataclass
class Item:
    """One stored object or manifest to move to the primary key, and how."""

    key: str
    head: ObjectHead
    how: str  # "copy", "re-encryption" or "reseal"
    before: str  # what it uses now: "<key id> (format N)", "seed", "<key id> (manifest)"
    sent: int  # bytes it sends to the bucket (an estimate for a dry run's re-encryptions)
    trailer: Trailer | None = None
    view_etag: str = ""
    view_size: int = 0


@dataclass
class RotateReport:
    objects: int = 0
    manifests: int = 0
    copied: int = 0
    reencrypted: int = 0
    resealed: int = 0
    current: int = 0
    skipped_plaintext: int = 0
    bytes_sent: int = 0
    bytes_rotated: int = 0  # stored bytes of the objects rotated
    problems: list[str] = field(default_factory=list)
    keys: Counter[str] = field(default_factory=Counter)  # what each object or manifest uses, after
    seen_keys: set[str] = field(default_factory=set)  # key ids in use before

    @property
    def ok(self) -> bool:
        return not self.problems


class _Changed(Exception):
    """The object changed (or went) while it was rotated: left as it is for the next run."""


class _Rotation:
    def __init__(
        self,
        service: ObjectService,
        bucket: str,
        dry_run: bool,
        concurrency: int,
        say: Callable[[str], None],
        reencrypt: bool = False,
    ) -> None:
        self.service, self.bucket, self.dry_run, self.say = service, bucket, dry_run, say
        self.reencrypt = reencrypt
        self.views = service.views
        self.upstream = service.views.upstream
        self.keyring = service.views.keyring
        self.kms = service.views.config.encryption.kms
        self.primary_id = self.keyring.primary.key_id_hex
        self.limit = asyncio.Semaphore(max(1, concurrency))
        self.report = RotateReport()
        self.copy_refused = False
        self.listed: dict[str, tuple[int, str]] = {}  # key -> stored size, ETag (unquoted), kept current
        self.pending: set[str] = set()  # what a dry run would rotate: the manifests naming it too
        self.manifests: list[tuple[str, ObjectHead]] = []  # read again when planned: memory stays small
        self.done = 0

    # --- what is there ---------------------------------------------------------------------

    async def plan(self, listed: dict[str, Any]) -> Item | None:
        """What a listed object needs: None when it is on the primary key already (or not ours
        to rotate). The listing names the version (no HEAD); a write meanwhile is caught later."""
        key = str(listed["Key"])
        kind = self.views.policy.kind(key)
        if kind is Kind.PLAINTEXT:
            return None
        etag = str(listed.get("ETag", "")).strip('"')  # rclone lists ETags unquoted, HEAD quotes them
        head = ObjectHead(f'"{etag}"' if etag else "", int(listed["Size"]), listed["LastModified"], {})
        async with self.limit:
            try:
                if kind is Kind.MANIFEST and await self._sealed_manifest(key, head):
                    return None
                return await self._plan_object(key, head)
            except S3Error as err:  # deleted or replaced since the listing, or the bucket refusing
                self.problem(key, f"{err.code} ({err.message}); not rotated, run rotate again")
                return None

    async def _sealed_manifest(self, key: str, head: ObjectHead) -> bool:
        """Remember a sealed manifest for the manifest phase; False when it is stored as an
        object (rotated as one)."""
        limit = 4 * self.views.config.limits.max_manifest_bytes
        if head.size > limit:
            return False
        data = await self.upstream.read_range(self.bucket, key, None, head.etag, limit)
        try:
            seal = find_seal(data)
        except ManifestSealError as exc:
            self.problem(key, exc)
            return True
        if seal is None:
            if classify(data[:16], data[-16:], len(data)) == "legacy-plaintext":
                self.report.skipped_plaintext += 1  # written before the proxy: migrate's job
                return True
            return False
        self.manifests.append((key, head))
        return True

    async def _plan_object(self, key: str, head: ObjectHead) -> Item | None:
        self.report.objects += 1
        try:
            view = await self.views.inspect(self.bucket, key, head.etag, head.size, head.last_modified, follow=False)
        except ObjectChanged:
            self.problem(key, "changed while it was read; run rotate again")
            return None
        except IntegrityRefusal as exc:
            self.problem(key, f"{exc.message}: not rotated")
            return None
        if view.kind == "plaintext":
            self.report.objects -= 1
            self.report.skipped_plaintext += 1
            return None
        trailer = view.trailer
        if view.kind == "seed" or trailer is None:
            self.report.seen_keys.add("seed")
            stored = part_stored_size(view.size) + 169 + len(key.encode())
            return Item(key, head, "re-encryption", "seed", stored, None, view.etag, view.size)
        label = f"{trailer.key_id_hex} (format {trailer.version})"
        self.report.seen_keys.add(trailer.key_id_hex)
        if self._current(trailer):
            self.report.current += 1
            self.report.keys[label] += 1
            return None
        item = Item(key, head, "re-encryption", label, head.size, trailer, view.etag, view.size)
        if self._copyable(trailer):
            item.how, item.sent = "copy", len(await self._rewrapped(trailer))
        return item

    def _current(self, trailer: Trailer) -> bool:
        """Whether the object's data key is wrapped by the primary key (with a KMS configured:
        by a KMS key, whose own rotation keeps its ARN)."""
        if trailer.version != TRAILER_VERSION_ENVELOPE or trailer.wrapped is None:
            return False
        if self.kms is not None:
            return trailer.wrapped.provider == PROVIDER_AWS_KMS
        return trailer.wrapped.provider != PROVIDER_AWS_KMS and trailer.key_id_hex == self.primary_id

    def _copyable(self, trailer: Trailer) -> bool:
        return (
            trailer.version == TRAILER_VERSION_ENVELOPE
            and self.kms is None  # a KMS makes new data keys, it does not wrap ours
            and not self.copy_refused
            and not self.reencrypt  # a compromised key: its data keys must go too
            and trailer.layout.stored_size >= MIN_PART
        )

    async def _rewrapped(self, trailer: Trailer) -> bytes:
        """The trailer with its data key wrapped by the primary key (docs/FORMAT.md, Version 2)."""
        assert trailer.wrapped is not None
        data_key = await self.views.data_key(trailer)  # a KMS's; a local key's is unwrapped here
        if data_key is None:
            data_key = unwrap_local(self.keyring.get(trailer.key_id), trailer.wrapped)
        return trailer.rewrapped(local_data_key(self.keyring.primary, data_key.raw))

    # --- moving objects --------------------------------------------------------------------

    async def rotate(self, item: Item, total: int) -> None:
        async with self.limit:
            try:
                if item.how == "copy":
                    try:
                        sent = await self._by_copy(item)
                    except _CopyRefused as exc:
                        self.say(f"the bucket refuses range copies ({exc}): re-encrypting instead")
                        item.how = "re-encryption"
                if item.how == "re-encryption":
                    sent = await self._by_reencryption(item)
            except _Changed as exc:
                self.problem(item.key, f"{exc}; not rotated, run rotate again")
                self.report.keys[item.before] += 1
            except (S3Error, FormatError, ValueError) as exc:
                self.problem(item.key, f"{getattr(exc, 'message', exc)}: not rotated")
                self.report.keys[item.before] += 1
            else:
                self.report.bytes_rotated += item.head.size
                self.say(f"rotated {item.key} by {item.how}: {sent} bytes sent")
            self.done += 1
            self.say(f"progress: {self.done}/{total} objects, {self.report.bytes_sent} bytes sent")

    async def _by_copy(self, item: Item) -> int:
        trailer = item.trailer
        assert trailer is not None
        record = await self._rewrapped(trailer)
        data_size = trailer.layout.stored_size
        bucket, key, etag = self.bucket, item.key, item.head.etag
        now = await self.upstream.head(bucket, key)  # its metadata, and still the version planned
        if not same_version(now, item.head):
            raise _Changed("overwritten since it was listed")
        params = self._object_params(now)
        upload_id = (await self.upstream.create_upload(bucket, key, params)).upload_id
        try:
            parts = []
            for number, (first, last) in enumerate(copy_ranges(data_size), 1):
                try:
                    copied = await self.upstream.copy_part(
                        bucket,
                        key,
                        upload_id,
                        number,
                        (bucket, key, None),
                        {"CopySourceRange": f"bytes={first}-{last}", "CopySourceIfMatch": etag},
                    )
                except S3Error as err:
                    if err.code in ("PreconditionFailed", "NoSuchKey"):
                        raise _Changed("overwritten or deleted while it was copied") from None
                    if err.code in COPY_REFUSALS or err.status == 501:
                        self.copy_refused = True
                        raise _CopyRefused(err.code) from None
                    raise
                parts.append((number, copied.etag))
            written = await self.upstream.upload_part(bucket, key, upload_id, len(parts) + 1, record)
            self.report.bytes_sent += len(record)
            parts.append((len(parts) + 1, written.etag))
            await self._check_parts(key, upload_id, [last - first + 1 for first, last in copy_ranges(data_size)])
            if not same_version(await self.upstream.head(bucket, key), item.head):
                raise _Changed("overwritten while it was copied")
            await self.upstream.complete_upload(bucket, key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(S3Error):
                await self.upstream.abort_upload(bucket, key, upload_id)
            raise
        await self._verify_written(key, data_size + len(record))
        self.report.copied += 1
        return len(record)

    async def _check_parts(self, key: str, upload_id: str, sizes: list[int]) -> None:
        """The copied parts are the ranges asked for: an upstream that ignored the range (copied
        the whole object) must not get its upload completed."""
        page = await self.upstream.call("list_parts", Bucket=self.bucket, Key=key, UploadId=upload_id)
        found = [int(p.get("Size", -1)) for p in sorted(page.get("Parts", []), key=lambda p: p["PartNumber"])]
        if found[: len(sizes)] != sizes:
            self.copy_refused = True
            raise _CopyRefused(f"copied parts of {found[: len(sizes)]} bytes where {sizes} were asked for")

    async def _verify_written(self, key: str, size: int) -> None:
        """The new version's trailer verifies under the primary key and names the object."""
        head = await self.upstream.head(self.bucket, key)
        if head.size != size:
            raise _Changed(f"stored as {head.size} bytes where {size} were written")
        tail = await read_range(self.upstream, self.bucket, key, head.etag, tail_spec(head.size))
        trailer = Trailer.from_tail(await complete_tail(self.upstream, self.bucket, key, head.etag, tail))
        trailer.check_stored(
            self.keyring, self.views.written_as(key, trailer), head.size, await self.views.data_key(trailer)
        )
        self.listed[key] = (head.size, head.etag.strip('"'))
        self.report.keys[f"{trailer.key_id_hex} (format {trailer.version})"] += 1

    def _object_params(self, head: ObjectHead) -> dict[str, Any]:
        """The content type and user metadata of the version rotated, the format hint renewed."""
        params: dict[str, Any] = {}
        if head.headers.get("content-type"):
            params["ContentType"] = head.headers["content-type"]
        metadata = {
            k: v for k, v in head.metadata.items() if not ("x-amz-meta-" + k.lower()).startswith(INTERNAL_META_PREFIX)
        }
        params["Metadata"] = metadata
        return self.views.with_hint(params, self.keyring.primary)

    async def _by_reencryption(self, item: Item) -> int:
        """Decrypt through the service and write through it again (format 2, primary key), in
        the same plaintext parts, so the plaintext ETag stays what Medusa recorded."""
        bucket, key = self.bucket, item.key
        guard = {"if-match": quote_etag(item.view_etag)} if item.view_etag else {}
        parts = item.trailer.layout.parts() if item.trailer is not None and item.trailer.etag_parts else None
        first = await self.service.handle(Request("HeadObject", bucket, key, {}, guard))

        async def source(offset: int | None, size: int | None) -> ReplyBody:
            ranged = {**guard, "range": f"bytes={offset}-{offset + size - 1}"} if offset is not None and size else guard
            return ReplyBody(await self.service.handle(Request("GetObject", bucket, key, {}, ranged)))

        etag = await write_in_parts(
            self.service, bucket, key, client_headers(first.headers), parts, source, lambda: self._unchanged(item)
        )
        if etag != item.view_etag:
            raise S3Error("InternalError", f"re-encrypted with ETag {etag}, not {item.view_etag}", 500)
        head = await self.upstream.head(bucket, key)
        self.report.bytes_sent += head.size
        await self._verify_written(key, head.size)
        self.report.reencrypted += 1
        return head.size

    async def _unchanged(self, item: Item) -> None:
        """Still the version planned (the window before a write is as short as it can be)."""
        now = await self.upstream.head(self.bucket, item.key)
        if not same_version(now, item.head):
            raise _Changed("overwritten while it was rotated")

    # --- manifests -------------------------------------------------------------------------

    async def manifest_plan(self, key: str, head: ObjectHead) -> Item | None:
        """A sealed manifest needs resealing when another key sealed it or when an entry's
        stored size or ETag is not the object's any more (rotated by this run or an earlier one)."""
        async with self.limit:
            try:
                data = await self.upstream.read_range(self.bucket, key, None, head.etag, 2 * head.size + 1)
            except S3Error as err:
                self.problem(key, f"{err.code} ({err.message}); changed while it was read, run rotate again")
                return None
        return self._manifest_item(key, head, data)

    def _manifest_item(self, key: str, head: ObjectHead, data: bytes) -> Item | None:
        try:
            seal = find_seal(data)
        except ManifestSealError as exc:
            self.problem(key, f"{exc}: not resealed")
            return None
        if seal is None:
            return None  # replaced meanwhile by something else: the next run sees what it is
        self.report.manifests += 1
        label = f"{seal.key_id.hex()} (manifest)"
        self.report.seen_keys.add(seal.key_id.hex())
        stale = seal.key_id.hex() != self.primary_id
        if not stale:
            text = (data[: seal.body_len] + b"]").decode("utf-8", errors="replace")
            try:
                for _, _, entry in iter_entries(text):
                    path = str(entry.get("path"))
                    found = self.listed.get(path)
                    if path in self.pending or (
                        found is not None and SOURCE_SIZE in entry and found != (entry.get("size"), entry.get("MD5"))
                    ):
                        stale = True
                        break
            except NotAManifest as exc:
                self.problem(key, f"not a Medusa manifest ({exc}): not resealed")
                self.report.keys[label] += 1
                return None
        if not stale:
            self.report.keys[label] += 1
            return None
        return Item(key, head, "reseal", label, len(data))

    async def reseal(self, item: Item, total: int) -> None:
        """Read the manifest as Medusa wrote it (MAC verified) and write it through the proxy's
        own rewrite: the stored sizes and ETags of now, sealed by the primary key."""
        async with self.limit:
            try:
                got = await self.service.handle(Request("GetObject", self.bucket, item.key, {}, {}))
                text = b"".join([bytes(p) async for p in ReplyBody(got)])
                await self._unchanged(item)
                put = await self.service.handle(
                    Request("PutObject", self.bucket, item.key, {}, client_headers(got.headers), BytesBody(text))
                )
                if put.headers.get("ETag") != got.headers.get("ETag"):
                    raise S3Error("InternalError", "the manifest written back differs from the one read", 500)
                head = await self.upstream.head(self.bucket, item.key)
                self.report.bytes_sent += head.size
                found = find_seal(await self.upstream.read_range(self.bucket, item.key, None, head.etag, 2 * head.size))
                label = f"{found.key_id.hex()} (manifest)" if found else f"{self.primary_id} (manifest)"
            except _Changed as exc:
                self.problem(item.key, f"{exc}; not resealed, run rotate again")
                self.report.keys[item.before] += 1
            except (S3Error, FormatError) as exc:
                self.problem(item.key, f"{getattr(exc, 'message', exc)}: not resealed")
                self.report.keys[item.before] += 1
            else:
                self.report.resealed += 1
                self.report.keys[label] += 1
            self.done += 1
            self.say(f"progress: {self.done}/{total} manifests, {self.report.bytes_sent} bytes sent")

    def problem(self, key: str, reason: object) -> None:
        self.report.problems.append(f"{key}: {reason}")


class _CopyRefused(Exception):
    """The upstream cannot copy byte ranges server side (or did not copy the range asked)."""


async def rotate(
    service: ObjectService,
    bucket: str,
    *,
    prefix: str = "",
    dry_run: bool = False,
    concurrency: int = 4,
    reencrypt: bool = False,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    out: Callable[[str], None] = print,
) -> RotateReport:
    """Move every object and manifest under ``prefix`` to the primary key (see the module);
    ``reencrypt``: never by copy, so every object rotated gets a new data key (a compromised key
    may have exposed the old ones, which a copy keeps)."""
    run = _Rotation(service, bucket, dry_run, concurrency, say, reencrypt)
    report = run.report
    listed = await run.upstream.list_all(bucket, prefix)
    run.listed = {o["Key"]: (int(o["Size"]), str(o.get("ETag", "")).strip('"')) for o in listed}
    say(f"{bucket}/{prefix}: {len(listed)} stored objects; primary key {run.primary_id}")
    planned = [item for item in await asyncio.gather(*(run.plan(o) for o in listed)) if item is not None]
    if dry_run:
        run.pending = {item.key for item in planned}
        for item in planned:
            out(f"WOULD rotate {item.key} ({item.before}) by {item.how}: {item.sent} bytes sent")
            report.bytes_sent += item.sent
        for key, head in run.manifests:
            item_or_none = await run.manifest_plan(key, head)
            if item_or_none is not None:
                out(f"WOULD reseal manifest {key} ({item_or_none.before}): about {item_or_none.sent} bytes sent")
                report.bytes_sent += item_or_none.sent
        out(
            f"dry run: {len(planned)} object(s) to rotate, {report.current} already on the primary key; "
            f"about {report.bytes_sent} bytes would be sent"
        )
        return report
    await asyncio.gather(*(run.rotate(item, len(planned)) for item in planned))
    run.done = 0
    reseals = [m for m in await asyncio.gather(*(run.manifest_plan(*entry) for entry in run.manifests)) if m]
    await asyncio.gather(*(run.reseal(item, len(reseals)) for item in reseals))
    for problem in report.problems:
        out(f"PROBLEM {problem}")
    for label, count in sorted(report.keys.items()):
        key_id, _, what = label.partition(" ")
        noun = "manifest(s)" if what == "(manifest)" else "object(s)"
        shown = f"{key_id} {what}" if what != "(manifest)" else key_id
        out(f"KEY {shown}: {count} {noun}")
    in_use = {label.partition(" ")[0] for label in report.keys}
    if report.problems:
        # An object that could not be rotated may need any key: none is declared unused.
        out(f"{len(report.problems)} problem(s): no key can be declared unused until they are resolved")
    else:
        for key_id in sorted({k.key_id_hex for k in run.keyring.keys} | report.seen_keys):
            if key_id not in in_use:
                out(
                    "no object uses the old in-Medusa encryption's keys (encryption.seed_key_files)"
                    if key_id == "seed"
                    else f"no object uses key {key_id}"
                )
    out(
        f"rotated {report.copied} object(s) by copy, {report.reencrypted} by re-encryption, resealed "
        f"{report.resealed} manifest(s); {report.current} already on the primary key; "
        f"{len(report.problems)} problem(s); {report.bytes_sent} bytes sent for {report.bytes_rotated} stored bytes"
        + (f"; {report.skipped_plaintext} unencrypted object(s) left as they are" if report.skipped_plaintext else "")
    )
    return report
