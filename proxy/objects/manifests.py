"""Medusa manifests through the proxy: rewritten, authenticated, read back exactly as written.

PUT rewrites the entries of encrypted objects (``proxy.manifest``) and seals the result with a
MAC under a key derived from the master key (``proxy.format.manifest_mac``). GET, HEAD and LIST
verify the MAC before anything of the manifest is used; an unauthenticated manifest is served
only when it is declared legacy (written before ``encryption.legacy_plaintext_before``).

A body named like a manifest that is not one within the limits (not UTF-8, not a JSON list of
sections, nested too deeply, too large, or not restorable byte for byte) is stored as an
ordinary encrypted object: stored unauthenticated it would be refused after the cutoff. Reads
recognise such an object by its format and serve it through the encrypted path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from proxy.cache import CachedView, version_of
from proxy.conditions import ByteRange, check_conditions, parse_range
from proxy.format.detect import classify
from proxy.format.errors import UnknownKeyError
from proxy.format.manifest_mac import ManifestSealError, find_seal, seal_in_place, verify_manifest
from proxy.format.trailer import Trailer
from proxy.manifest import (
    PIECE,
    NotAManifest,
    Stored,
    iter_paths,
    restore,
    restore_pieces,
    restored_digest,
    rewrite_into,
)
from proxy.objects.encrypted import EncryptedObjects, head_reply
from proxy.objects.passthrough import request_body, visible_headers
from proxy.objects.views import IntegrityRefusal, View, Views, cached_view, integrity_error, mark_damaged
from proxy.policy import accepted_names
from proxy.s3.api import Chunk, Reply, Request, close_pieces
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    object_params,
    quote_etag,
)
from proxy.upstream import write_headers

log = logging.getLogger("proxy.objects")

#: Cached view kinds of a manifest: authenticated, or unauthenticated and declared legacy.
MANIFEST_KIND = "manifest"
LEGACY_KIND = "plaintext"
PAGES_IN_FLIGHT = 8  # listing pages fetched or being resolved at once, for a manifest's stored objects
_BODY_PIECE = 1 << 20


@dataclass
class LoadedManifest:
    """A stored manifest read and checked: the text to restore (authenticated), or the bytes to
    serve as they are (legacy, restored already)."""

    text: str | None = None
    raw: bytes | bytearray | None = None

    def pieces(self) -> Iterator[bytes | bytearray]:
        if self.text is not None:
            yield from restore_pieces(self.text)
        elif self.raw is not None:
            for at in range(0, len(self.raw), PIECE):
                yield self.raw[at : at + PIECE]


async def _pieces_of(data: bytes) -> AsyncIterator[Chunk]:
    for at in range(0, len(data), _BODY_PIECE):
        yield data[at : at + _BODY_PIECE]


class ManifestObjects:
    """HEAD, GET, PUT and the listing view of Medusa's manifests; a body named like a manifest
    that cannot be one goes to ``encrypted``."""

    def __init__(self, views: Views, encrypted: EncryptedObjects) -> None:
        self.views = views
        self.encrypted = encrypted
        self.upstream = views.upstream
        self.config = views.config
        self.store = views.store
        self.metrics = views.metrics
        self.policy = views.policy

    # --- writes --------------------------------------------------------------------------

    async def put_object(self, request: Request) -> Reply:
        """Store a manifest whose entries describe the stored (encrypted) objects, sealed."""
        bucket, key = request.bucket or "", request.key or ""
        source = request_body(request)
        params = object_params(request.headers)
        limit = self.config.limits.max_manifest_bytes
        if source.length is not None and source.length > limit:
            return await self._put_as_object(
                bucket, key, source, source.length, params, f"it is larger than limits.max_manifest_bytes ({limit})"
            )
        body = await source.read_all(limit)
        length, etag = len(body), hashlib.md5(body, usedforsecurity=False).hexdigest()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return await self._put_as_object(bucket, key, _pieces_of(body), length, params, "it is not UTF-8")
        del body  # the text is enough (and encodes back to the same bytes)
        try:
            wanted = await asyncio.to_thread(self._encrypted_paths, text)
        except NotAManifest as exc:
            return await self._put_as_object(
                bucket, key, _pieces_of(text.encode()), length, params, f"it is not a Medusa manifest ({exc})"
            )
        stored = await self._stored_objects(bucket, wanted)
        del wanted
        out = bytearray()
        try:
            await asyncio.to_thread(self._rewrite_and_seal, key, text, stored, out)
        except (NotAManifest, ValueError) as exc:
            return await self._put_as_object(
                bucket,
                key,
                _pieces_of(text.encode()),
                length,
                params,
                f"it cannot be stored for a byte-exact read ({exc})",
            )
        del text, stored
        written = await self.upstream.put(bucket, key, out, params)
        await self.views.remember_written(bucket, key, written.etag, len(out), View(MANIFEST_KIND, length, etag))
        return Reply(200, {"ETag": quote_etag(etag), **write_headers(written.headers)})

    def _encrypted_paths(self, text: str) -> dict[str, str]:
        """The encrypted paths a manifest names (each mapped to itself: the string is reused as
        the key of the result, rather than a copy made by every listing page)."""
        return {path: path for path in iter_paths(text) if self.policy.encrypts(path)}

    def _rewrite_and_seal(self, key: str, text: str, stored: dict[str, Stored], out: bytearray) -> None:
        rewrite_into(text, stored, out)
        seal_in_place(self.views.keyring.primary, key, out)

    async def _put_as_object(
        self, bucket: str, key: str, source: AsyncIterable[Chunk], length: int, params: dict[str, Any], reason: str
    ) -> Reply:
        """A body named like a manifest that cannot be one: stored encrypted, read back as written."""
        log.warning(
            "%r is named like a manifest but %s: stored encrypted, as any other object",
            key,
            reason,
            extra={"event": "manifest_stored_encrypted"},
        )
        written = await self.encrypted.put_stream(bucket, key, source, length, params)
        return Reply(200, {"ETag": quote_etag(written.etag), **write_headers(written.headers)})

    async def _stored_objects(self, bucket: str, wanted: dict[str, str]) -> dict[str, Stored]:
        """Stored size and upstream ETag of the objects of ours among ``wanted`` (which is left
        holding the paths missing from the bucket).

        One listing per directory, a page at a time: the views of a page are looked up in one
        cache query and its misses resolved concurrently, so memory follows the page, not the
        manifest.
        """
        result: dict[str, Stored] = {}
        missing = wanted  # found keys are taken out as the listings find them
        pages = asyncio.Semaphore(PAGES_IN_FLIGHT)

        async def directory(prefix: str) -> None:
            token: str | None = None
            while True:
                async with pages:  # a page is held until resolved: at most PAGES_IN_FLIGHT alive
                    page = await self._list_page(bucket, prefix, token)
                    found = [(missing.pop(o["Key"]), o) for o in page.get("Contents", []) if o["Key"] in missing]
                    token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
                    del page
                    await self._ours_among(bucket, found, result)
                    del found
                if not token:
                    return

        prefixes = {path.rpartition("/")[0] + "/" if "/" in path else "" for path in wanted}
        await asyncio.gather(*(directory(prefix) for prefix in sorted(prefixes)))
        if missing:
            log.warning("manifest names %d object(s) missing from the bucket, e.g. %r", len(missing), min(missing))
        return result

    async def _list_page(self, bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
        query = [("prefix", prefix), ("delimiter", "/"), ("max-keys", "1000")]
        if token:
            query.append(("continuation-token", token))
        return await self.upstream.list_page(bucket, query, True)

    async def _ours_among(
        self, bucket: str, found: list[tuple[str, dict[str, Any]]], result: dict[str, Stored]
    ) -> None:
        """Add the listed objects that verify as ours (or of the old in-Medusa format) to ``result``."""
        if not found:
            return

        def version(entry: dict[str, Any]) -> str:
            return version_of(entry.get("ETag"), int(entry.get("Size", 0)), entry.get("LastModified"))

        def keep(path: str, entry: dict[str, Any], view: CachedView) -> None:
            if view.kind in ("encrypted", "seed"):
                result[path] = Stored(int(entry["Size"]), str(entry.get("ETag", "")).strip('"'))

        cached = await self.store.get_views(bucket, [(e["Key"], version(e)) for _, e in found])
        misses = []
        for path, entry in found:
            hit = cached.get((entry["Key"], version(entry)))
            self.metrics.cache_lookup(hit=hit is not None)
            if hit is None:
                misses.append((path, entry))
            else:
                keep(path, entry, hit)
        del cached
        learned: list[tuple[str, str, CachedView]] = []

        async def resolve(path: str, entry: dict[str, Any]) -> None:
            try:
                view = await self.views.inspect(
                    bucket, entry["Key"], entry.get("ETag", ""), int(entry["Size"]), entry.get("LastModified")
                )
            except IntegrityRefusal:
                log.warning(
                    "the manifest keeps Medusa's values for %r, which fails verification",
                    entry["Key"],
                    extra={"event": "manifest_entry_refused"},
                )
                return
            learned.append((entry["Key"], version(entry), cached_view(view)))
            keep(path, entry, learned[-1][2])

        await asyncio.gather(*(resolve(path, entry) for path, entry in misses))
        await self.store.put_views(bucket, learned)

    # --- the view ------------------------------------------------------------------------

    async def adjust_listing(self, bucket: str, entries: list[dict[str, Any]]) -> None:
        """The plaintext view of the manifests of a listing page (see ``Views.adjust_listing``)."""
        for entry in entries:
            try:
                view, _ = await self._manifest_view(
                    bucket, entry["Key"], entry.get("ETag", ""), int(entry.get("Size", 0)), entry.get("LastModified")
                )
            except IntegrityRefusal:
                mark_damaged(entry)
                continue
            entry["Size"], entry["ETag"] = view.size, quote_etag(view.etag)

    async def _manifest_view(
        self, bucket: str, key: str, etag: str, size: int, last_modified: object
    ) -> tuple[View, LoadedManifest | None]:
        """The view of a stored manifest (and the manifest, when it had to be read for it).

        A cache hit reads nothing. A stored object in our encrypted format gets the view of any
        encrypted object (its trailer), and the caller serves it that way.
        """
        version = version_of(etag, size, last_modified)
        cached = (await self.store.get_views(bucket, [(key, version)])).get((key, version))
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is not None:
            if cached.kind == LEGACY_KIND:
                self._require_legacy_manifest(key, last_modified)
            elif cached.kind != MANIFEST_KIND:
                self.views.recheck_legacy(key, cached.kind, last_modified)
            trailer = Trailer.parse(cached.trailer) if cached.trailer else None
            return View(cached.kind, cached.size, cached.etag, trailer), None
        loaded = None
        if size <= self.config.limits.max_manifest_bytes:
            loaded = await self._load_manifest(bucket, key, etag, size, last_modified)
        if loaded is None:
            view = await self.views.inspect(bucket, key, etag, size, last_modified)
        elif loaded.text is not None:
            try:
                view = View(MANIFEST_KIND, *await asyncio.to_thread(restored_digest, loaded.text))
            except NotAManifest as exc:
                raise self._manifest_refused(key, f"an authenticated manifest that does not parse ({exc})") from None
        else:
            assert loaded.raw is not None
            view = View(LEGACY_KIND, len(loaded.raw), hashlib.md5(loaded.raw, usedforsecurity=False).hexdigest())
        await self.views.remember(bucket, key, version, view)
        return view, loaded

    async def _load_manifest(
        self, bucket: str, key: str, etag: str, size: int, last_modified: object
    ) -> LoadedManifest | None:
        """Read a stored manifest and verify it; None when it is an object in our encrypted format."""
        data = await self._read_whole(bucket, key, etag, size)
        try:
            seal = find_seal(data)
        except ManifestSealError as exc:
            raise self._manifest_refused(key, exc) from None
        if seal is None:
            if classify(bytes(data[:16]), bytes(data[-16:]), len(data)) != "legacy-plaintext":
                return None
            self._require_legacy_manifest(key, last_modified)
            return LoadedManifest(raw=await asyncio.to_thread(restore, data))  # type: ignore[arg-type]
        try:
            await asyncio.to_thread(
                verify_manifest, self.views.keyring, data, accepted_names(key, self.config.encryption.moved_prefixes)
            )
        except UnknownKeyError as exc:
            raise self.views.integrity(key, exc) from None
        except ManifestSealError as exc:
            raise self._manifest_refused(key, exc) from None
        del data[seal.body_len :]
        data += b"]"
        try:
            return LoadedManifest(text=data.decode("utf-8"))
        except UnicodeDecodeError:
            raise self._manifest_refused(key, "an authenticated manifest that is not UTF-8") from None

    async def _read_whole(self, bucket: str, key: str, etag: str, size: int) -> bytearray:
        """One stored version, read into a single buffer of its size."""
        buf = bytearray(size)
        _, pieces = await self.upstream.open(bucket, key, None, quote_etag(etag), PIECE)
        pos = 0
        try:
            async for piece in pieces:
                if pos + len(piece) > size:
                    pos = -1
                    break
                buf[pos : pos + len(piece)] = piece
                pos += len(piece)
        finally:
            await close_pieces(pieces)
        if pos != size:
            raise S3Error("InternalError", f"{key!r} changed while it was read", 500)
        return buf

    def _require_legacy_manifest(self, key: str, last_modified: object) -> None:
        """Refuse a manifest without a MAC unless it is declared legacy."""
        if self.views.legacy_allowed(last_modified):
            return
        cutoff = self.config.encryption.legacy_plaintext_before
        declared = (
            f"was written at {last_modified}, after legacy_plaintext_before ({cutoff.isoformat()})"
            if cutoff
            else "no legacy_plaintext_before is set"
        )
        raise self._manifest_refused(key, f"manifest has no MAC and {declared}")

    def _manifest_refused(self, key: str, reason: object) -> IntegrityRefusal:
        self.metrics.integrity_failure("manifest")
        log.error(
            "integrity check failed for %r: %s", key, reason, extra={"event": "integrity_failure", "kind": "manifest"}
        )
        return integrity_error(key, reason)

    # --- reads ---------------------------------------------------------------------------

    async def head_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        head = await self.upstream.head(bucket, key)
        view, _ = await self._manifest_view(bucket, key, head.etag, head.size, head.last_modified)
        return head_reply(request, head, view)

    async def get_object(self, request: Request) -> Reply | None:
        """GET of a manifest as Medusa wrote it; None when it is stored as an encrypted object
        (the caller then serves it as one)."""
        bucket, key = request.bucket or "", request.key or ""
        head = await self.upstream.head(bucket, key)
        etag, size = head.etag, head.size
        if not etag.strip('"'):
            self.views.heads_lack_etags = True
        view, loaded = await self._manifest_view(bucket, key, etag, size, head.last_modified)
        if view.kind not in (MANIFEST_KIND, LEGACY_KIND):
            return None
        check_conditions(request.headers, view.etag, head.last_modified)
        if loaded is None:
            loaded = await self._load_manifest(bucket, key, etag, size, head.last_modified)
            if loaded is None:
                return None
        if loaded.raw is not None:
            actual = View(LEGACY_KIND, len(loaded.raw), hashlib.md5(loaded.raw, usedforsecurity=False).hexdigest())
            if actual != view:  # cached by another version of the proxy: the bytes decide
                view = actual
                await self.views.remember(bucket, key, version_of(etag, size, head.last_modified), view)
                check_conditions(request.headers, view.etag, head.last_modified)
        wanted = parse_range(request.headers.get("range"), view.size)
        headers = visible_headers(head)
        headers["ETag"] = quote_etag(view.etag)
        headers["Accept-Ranges"] = "bytes"
        body = self._manifest_body(bucket, key, loaded, view, wanted)
        if wanted is None:
            return Reply(200, headers, body, view.size)
        headers["Content-Range"] = wanted.content_range(view.size)
        return Reply(206, headers, body, wanted.length)

    async def _manifest_body(
        self, bucket: str, key: str, loaded: LoadedManifest, view: View, wanted: ByteRange | None
    ) -> AsyncIterator[Chunk]:
        """The restored manifest, restored as it is sent. A whole read holds its last piece back
        until length and MD5 match the view the headers announced (else the reply is cut)."""
        first, last = (0, view.size - 1) if wanted is None else (wanted.first, wanted.last)
        md5 = hashlib.md5(usedforsecurity=False) if wanted is None else None
        held: bytes | bytearray | None = None
        offset = 0
        pieces = loaded.pieces()
        while True:
            try:
                piece = next(pieces, None)
            except NotAManifest as exc:
                raise self._manifest_refused(key, f"an authenticated manifest that does not parse ({exc})") from None
            if piece is None:
                break
            start, offset = offset, offset + len(piece)
            if offset > view.size:
                break
            if md5 is not None:
                md5.update(piece)
            if offset <= first:
                continue
            if start > last:
                break
            if held is not None:
                yield held
            held = piece[max(0, first - start) : last - start + 1]
        if md5 is not None and (offset != view.size or md5.hexdigest() != view.etag):
            await self.views.forget(bucket, [key])
            raise self._manifest_refused(
                key,
                f"the restored manifest ({offset} bytes) differs from the "
                f"view announced ({view.size} bytes, ETag {view.etag})",
            )
        if held is not None:
            yield held
