"""Encrypted objects: the operations that turn plaintext into the stored format and back.

Everything here keeps the client's view plaintext: sizes, ETags, ranges and conditions are those
of the plaintext; the stored format is ``proxy.format``'s, and its trailer is the durable source of
that view. ``StateStore`` caches the view and holds in-flight multipart state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from proxy.cache import CachedView, PartState, StateStore, UploadState, version_of
from proxy.conditions import check_conditions, parse_range
from proxy.config import Config
from proxy.format.codec import (
    ObjectDecryptor,
    PartEncryptor,
    PartInfo,
    RangeDecryptor,
    build_trailer,
    new_salt,
)
from proxy.format.constants import TRAILER_PROBE
from proxy.format.detect import classify
from proxy.format.errors import FormatError, TamperedError, UnknownKeyError
from proxy.format.layout import part_stored_size
from proxy.format.seed import (
    SeedDecryptor,
    SeedRangeDecryptor,
    fernet_keys_from_ring,
    seed_last_record_plaintext_size,
    seed_last_record_range,
    seed_stored_range,
)
from proxy.format.trailer import Trailer, parse_footer
from proxy.keys import KeyRing, MasterKey, derive_object_keys
from proxy.manifest import Stored, is_manifest_key, object_paths, restore, rewrite
from proxy.metrics import Metrics
from proxy.policy import Policy
from proxy.s3 import xml
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    INTERNAL_META_PREFIX,
    object_params,
    quote_etag,
    reject_sse_c,
    response_override_params,
)
from proxy.service import (
    SMALL_BODY,
    Chunk,
    PassthroughService,
    Reply,
    Request,
    parse_copy_source,
    part_number,
    visible_headers,
)
from proxy.upstream import Upstream

log = logging.getLogger("proxy.encrypted")

T = TypeVar("T")

MIN_PART = 5 << 20  # S3 refuses smaller parts except the last one
MAX_PARTS = 10000
INLINE_CRYPTO = 128 << 10  # smaller pieces are not worth a thread hop
COLD_LOOKUPS = 32  # trailer reads in flight while resolving one listing
FORMAT_HINT = {"mcp-format": "1"}
MAX_MANIFEST = 256 << 20  # manifests are rewritten in memory; Medusa's hold ~200 B per SSTable


@dataclass(frozen=True)
class View:
    """What a client sees of one stored object."""

    kind: str  # "encrypted" or "plaintext"
    size: int
    etag: str  # unquoted
    trailer: Trailer | None = None


def if_match(etag: str) -> dict[str, Any]:
    """Guard a read of one stored version (an empty ETag, as some servers give, guards nothing)."""
    return {"IfMatch": quote_etag(etag)} if etag.strip('"') else {}


async def read_range(upstream: Upstream, bucket: str, key: str, etag: str, spec: str) -> bytes:
    """A small ranged read of one stored version (If-Match guards against a concurrent overwrite)."""
    return await upstream.read(Bucket=bucket, Key=key, Range=spec, **if_match(etag))


async def read_trailer(upstream: Upstream, bucket: str, key: str, etag: str, size: int) -> Trailer:
    """The trailer of a stored object, not yet verified; FormatError when it has none."""
    tail = await read_range(upstream, bucket, key, etag, f"bytes=-{min(TRAILER_PROBE, size)}")
    record_len = parse_footer(tail)
    if record_len > len(tail):
        tail = await read_range(upstream, bucket, key, etag, f"bytes=-{record_len}")
    return Trailer.from_tail(tail)


def cached_view(view: View) -> CachedView:
    return CachedView(view.kind, view.size, view.etag, view.trailer.record if view.trailer is not None else None)


def integrity_error(key: str, exc: Exception) -> S3Error:
    return S3Error("InternalError", f"the stored object {key!r} failed its integrity check: {exc}", 500)


class EncryptedService(PassthroughService):
    def __init__(self, config: Config, upstream: Upstream, metrics: Metrics, keyring: KeyRing,
                 store: StateStore) -> None:
        super().__init__(upstream)
        self.config = config
        self.metrics = metrics
        self.keyring = keyring
        self.store = store
        self.policy = Policy(config.encryption.encrypted_patterns, config.encryption.plaintext_patterns)
        seed_files = config.encryption.seed_key_files
        self.seed_keys = fernet_keys_from_ring(KeyRing.from_files(seed_files)) if seed_files else []
        self._pool = ThreadPoolExecutor(config.limits.crypto_threads, thread_name_prefix="crypto")
        self._lookups = asyncio.Semaphore(COLD_LOOKUPS)

    @property
    def key_ids(self) -> list[str]:
        return [key.key_id_hex for key in self.keyring.keys]

    async def start(self) -> None:
        await self.store.start()
        self.metrics.set_cache_entries(await self.store.count_views())

    async def close(self) -> None:
        await self.store.close()
        self._pool.shutdown(wait=False)

    def reload(self, key_files: list[str] | None = None) -> None:
        """SIGHUP: load ``key_files`` (default: the configured ones) and swap the key ring in.

        Raises if any key file does not load; the running ring is then kept. Uploads in flight
        keep the key they started with (looked up by id), objects stay readable with theirs.
        """
        files = list(self.config.encryption.key_files if key_files is None else key_files)
        ring = KeyRing.from_files(files)  # raises: the caller logs and keeps the old ring
        self.keyring = ring
        from proxy import __version__

        self.metrics.set_build_info(__version__, self.key_ids)
        log.info("keys reloaded: primary %s, %d key(s)", ring.primary.key_id_hex, len(ring),
                 extra={"event": "keys_reloaded", "primary_key_id": ring.primary.key_id_hex})

    async def _crypt(self, fn: Callable[..., T], *args: Any) -> T:
        """Run crypto on large buffers in the pool (it releases the GIL), small ones inline."""
        size = sum(len(a) for a in args if isinstance(a, (bytes, bytearray, memoryview)))
        if size < INLINE_CRYPTO:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the plaintext view --------------------------------------------------------------

    async def view_of(self, bucket: str, key: str, etag: str, size: int, last_modified: object) -> View:
        """The plaintext view of one stored version: cache first, else the bucket itself."""
        version = version_of(etag, size, last_modified)
        found = await self.store.get_views(bucket, [(key, version)])
        cached = found.get((key, version))
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is not None:
            trailer = Trailer.parse(cached.trailer) if cached.trailer else None
            return View(cached.kind, cached.size, cached.etag, trailer)
        view = await self._inspect(bucket, key, etag, size)
        await self._remember(bucket, key, version, view)
        return view

    async def _remember(self, bucket: str, key: str, version: str, view: View) -> None:
        await self.store.put_view(bucket, key, version, cached_view(view))

    async def _inspect(self, bucket: str, key: str, etag: str, size: int) -> View:
        """Read the trailer (one suffix range) and decide: ours, legacy plaintext, or tampered."""
        if size == 0:
            return self._legacy(key, size, etag)
        async with self._lookups:
            tail = await read_range(self.upstream, bucket, key, etag, f"bytes=-{min(TRAILER_PROBE, size)}")
            try:
                record_len = parse_footer(tail)
            except TamperedError as exc:
                raise self._integrity(key, exc) from None
            except FormatError:
                head = tail if size <= len(tail) else await read_range(self.upstream, bucket, key, etag, "bytes=0-15")
                kind = classify(head[:16], tail[-16:])
                if kind == "legacy-plaintext":
                    return self._legacy(key, size, etag)
                if kind == "seed-fernet" and self.seed_keys:
                    return await self._seed_view(bucket, key, etag, size)
                raise self._integrity(key, FormatError(f"stored object looks {kind} but has no valid trailer")) \
                    from None
            if record_len > len(tail):
                tail = await read_range(self.upstream, bucket, key, etag, f"bytes=-{record_len}")
        try:
            trailer = Trailer.from_tail(tail)
            trailer.verify(self.keyring)
            trailer.check_object_key(self.written_as(key, trailer))
            if trailer.object_stored_size != size:
                raise TamperedError(f"stored size {size} differs from the trailer's {trailer.object_stored_size}")
        except FormatError as exc:
            raise self._integrity(key, exc) from None
        return View("encrypted", trailer.plaintext_size, trailer.etag, trailer)

    async def _seed_view(self, bucket: str, key: str, etag: str, size: int) -> View:
        """An object of the old in-Medusa encryption: its exact size and plaintext MD5.

        The format records neither, so the last record is decrypted for the size and the whole
        object once for the MD5 (then cached); seed backups are only read, for restores.
        """
        try:
            first, last = seed_last_record_range(size) or (0, -1)
            record = await read_range(self.upstream, bucket, key, etag, f"bytes={first}-{last}")
            plaintext_size = seed_last_record_plaintext_size(size, record, self.seed_keys)
            decryptor = SeedDecryptor(self.seed_keys, expected_size=plaintext_size)
            _, pieces = await self.upstream.get_stream(Bucket=bucket, Key=key, **if_match(etag))
            async for piece in pieces:
                await self._crypt(decryptor.feed, piece)
            decryptor.finish()
        except FormatError as exc:
            raise self._integrity(key, exc) from None
        return View("seed", plaintext_size, decryptor.md5_hex)

    def written_as(self, key: str, trailer: Trailer) -> str:
        """The name the object must have been written under: ``key``, or its accepted old name."""
        for moved in self.config.encryption.accept_moved:
            if key.startswith(moved.to_prefix):
                old = moved.from_prefix + key[len(moved.to_prefix):]
                if trailer.object_key == old:
                    return old
        return key

    def _legacy(self, key: str, size: int, etag: str) -> View:
        if not self.config.encryption.serve_legacy_plaintext:
            raise S3Error("AccessDenied", f"{key!r} is not encrypted and serve_legacy_plaintext is off", 403)
        return View("plaintext", size, etag.strip('"'))

    def _integrity(self, key: str, exc: Exception) -> S3Error:
        kind = "unknown-key" if isinstance(exc, UnknownKeyError) else type(exc).__name__
        self.metrics.integrity_failure(kind)
        log.error("integrity check failed for %r: %s", key, exc)
        return integrity_error(key, exc)

    async def adjust_listing(self, bucket: str, contents: list[dict[str, Any]]) -> None:
        """Replace stored sizes and ETags with the plaintext view, resolving misses concurrently."""
        manifests = [entry for entry in contents if is_manifest_key(entry["Key"])]
        wanted = [entry for entry in contents if self.policy.encrypts(entry["Key"])]
        for entry in manifests:
            view, _ = await self._manifest_view(bucket, entry["Key"], entry.get("ETag", ""),
                                                int(entry.get("Size", 0)), entry.get("LastModified"))
            entry["Size"], entry["ETag"] = view.size, quote_etag(view.etag)
        if not wanted:
            return

        def version(entry: dict[str, Any]) -> str:
            return version_of(entry.get("ETag"), int(entry.get("Size", 0)), entry.get("LastModified"))

        cached = await self.store.get_views(bucket, [(e["Key"], version(e)) for e in wanted])
        learned: list[tuple[str, str, CachedView]] = []

        async def resolve(entry: dict[str, Any]) -> None:
            hit = cached.get((entry["Key"], version(entry)))
            self.metrics.cache_lookup(hit=hit is not None)
            if hit is None:
                view = await self._inspect(bucket, entry["Key"], entry.get("ETag", ""), int(entry.get("Size", 0)))
                hit = cached_view(view)
                learned.append((entry["Key"], version(entry), hit))
            entry["Size"], entry["ETag"] = hit.size, quote_etag(hit.etag)

        await asyncio.gather(*(resolve(entry) for entry in wanted))
        await self.store.put_views(bucket, learned)

    async def _head(self, bucket: str, key: str) -> tuple[dict[str, Any], View]:
        reply = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        view = await self.view_of(bucket, key, reply.get("ETag", ""), int(reply.get("ContentLength", 0)),
                                  reply.get("LastModified"))
        return reply, view

    # --- reads ---------------------------------------------------------------------------

    async def head_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        if is_manifest_key(key):
            reply = await self.upstream.call("head_object", Bucket=bucket, Key=key)
            view, _ = await self._manifest_view(bucket, key, reply.get("ETag", ""),
                                                int(reply.get("ContentLength", 0)), reply.get("LastModified"))
        elif not self.policy.encrypts(key):
            return await super().head_object(request)
        else:
            reply, view = await self._head(bucket, key)
        check_conditions(request.headers, view.etag, reply["LastModified"])
        headers = visible_headers(reply)
        headers["ETag"] = quote_etag(view.etag)
        headers["Content-Length"] = str(view.size)
        headers["Accept-Ranges"] = "bytes"
        headers.pop("x-amz-mp-parts-count", None)
        return Reply(200, headers, b"", view.size)

    async def get_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        if is_manifest_key(key):
            return await self._get_manifest(request, bucket, key)
        if not self.policy.encrypts(key):
            return await super().get_object(request)
        if request.query.get("partNumber"):
            raise S3Error("NotImplemented", "GET by partNumber is not supported for encrypted objects", 501)
        head, view = await self._head(bucket, key)
        check_conditions(request.headers, view.etag, head["LastModified"])
        wanted = parse_range(request.headers.get("range"), view.size)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, **if_match(head.get("ETag", ""))}
        params.update(response_override_params(request.query))
        if view.kind == "plaintext":
            if wanted is not None:
                params["Range"] = f"bytes={wanted.first}-{wanted.last}"
            reply, pieces = await self.upstream.get_stream(**params)
            return self._get_reply(reply, view, wanted, pieces)
        decryptor: Any
        if wanted is None:
            decryptor = self._whole_decryptor(key, view)
        elif view.kind == "seed":
            seed_range = seed_stored_range(wanted.first, wanted.last, int(head["ContentLength"]))
            params["Range"] = seed_range.http_range
            decryptor = SeedRangeDecryptor(self.seed_keys, seed_range)
        else:
            assert view.trailer is not None
            stored = view.trailer.layout.stored_range(wanted.first, wanted.last)
            params["Range"] = stored.http_range
            decryptor = RangeDecryptor(self.keyring, view.trailer, stored, self.written_as(key, view.trailer))
        reply, pieces = await self.upstream.get_stream(**params)
        return self._get_reply(reply, view, wanted, self._decrypting(key, pieces, decryptor))

    def _whole_decryptor(self, key: str, view: View) -> ObjectDecryptor | SeedDecryptor:
        if view.kind == "seed":
            return SeedDecryptor(self.seed_keys, expected_size=view.size, expected_md5=view.etag)
        assert view.trailer is not None
        return ObjectDecryptor.with_trailer(self.keyring, view.trailer, self.written_as(key, view.trailer))

    @staticmethod
    def _get_reply(reply: dict[str, Any], view: View, wanted: Any, pieces: AsyncIterator[Chunk]) -> Reply:
        headers = visible_headers(reply)
        headers["ETag"] = quote_etag(view.etag)
        headers["Accept-Ranges"] = "bytes"
        headers.pop("x-amz-mp-parts-count", None)
        if wanted is None:
            return Reply(200, headers, pieces, view.size)
        headers["Content-Range"] = wanted.content_range(view.size)
        return Reply(206, headers, pieces, wanted.length)

    async def _decrypting(self, key: str, pieces: AsyncIterator[bytes], decryptor: Any) -> AsyncIterator[Chunk]:
        try:
            async for piece in pieces:
                out = await self._crypt(decryptor.feed, piece)
                if out:
                    self.metrics.add_decrypted(len(out))
                    yield out
            out = decryptor.finish()
            if out:
                self.metrics.add_decrypted(len(out))
                yield out
        except FormatError as exc:
            raise self._integrity(key, exc) from None

    # --- writes --------------------------------------------------------------------------

    async def put_object(self, request: Request) -> Reply:
        key = request.key or ""
        if is_manifest_key(key) and not self.policy.encrypts(key):
            return await self._put_manifest(request, request.bucket or "", key)
        if not self.policy.encrypts(key):
            return await super().put_object(request)
        reject_sse_c(request.headers)
        body = self._body(request)
        if body.length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        etag = await self._put_encrypted(request.bucket or "", key, body, body.length,
                                         object_params(request.headers))
        return Reply(200, {"ETag": quote_etag(etag)})

    async def _put_encrypted(self, bucket: str, key: str, source: AsyncIterable[Chunk], length: int,
                             params: dict[str, Any]) -> str:
        """Encrypt ``length`` plaintext bytes from ``source`` into ``key``; the plaintext ETag."""
        master = self.keyring.primary
        salt = new_salt()
        encryptor = PartEncryptor(derive_object_keys(master, salt), 1)
        trailer_len = len(build_trailer(master, salt, key, [PartInfo(1, length, bytes(16))], single_put=True))
        stored_size = part_stored_size(length) + trailer_len

        async def stored() -> AsyncIterator[Chunk]:
            async for records in self._encrypting(encryptor, source):
                yield records
            last = encryptor.finish()
            trailer = build_trailer(master, salt, key,
                                    [PartInfo(1, encryptor.plaintext_size, encryptor.md5)], single_put=True)
            yield last + trailer

        params = self._with_hint(params, master)
        if length <= SMALL_BODY:
            payload = b"".join([piece async for piece in stored()])
            reply = await self.upstream.call("put_object", Bucket=bucket, Key=key, Body=payload, **params)
        else:
            reply = await self.upstream.send_stream("put_object", stored(), stored_size, Bucket=bucket, Key=key,
                                                    **params)
        etag = encryptor.md5.hex()
        upstream_etag = reply.get("ETag", "")
        if upstream_etag.strip('"'):
            trailer_bytes = build_trailer(master, salt, key, [PartInfo(1, length, encryptor.md5)], single_put=True)
            view = View("encrypted", length, etag, Trailer.from_tail(trailer_bytes))
            await self._remember(bucket, key, version_of(upstream_etag, stored_size, None), view)
        return etag

    async def _encrypting(self, encryptor: PartEncryptor, source: AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
        """The complete records of ``source``'s plaintext (the caller adds ``finish()``)."""
        async for piece in source:
            out = await self._crypt(encryptor.update, piece)
            self.metrics.add_encrypted(len(piece))
            if out:
                yield out

    @staticmethod
    def _with_hint(params: dict[str, Any], master: MasterKey) -> dict[str, Any]:
        """Add the format hint to user metadata (a hint only: some servers drop metadata)."""
        metadata = dict(params.get("Metadata", {}))
        metadata.update(FORMAT_HINT)
        metadata["mcp-key-id"] = master.key_id_hex
        return {**params, "Metadata": metadata}

    async def copy_object(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        src_bucket, src_key = parse_copy_source(request.headers["x-amz-copy-source"])
        if not self.policy.encrypts(key) and not self.policy.encrypts(src_key):
            return await super().copy_object(request)
        reject_sse_c(request.headers)
        head, view = ((await self._head(src_bucket, src_key)) if self.policy.encrypts(src_key)
                      else await self._plain_head(src_bucket, src_key))
        conditions = {name[len("x-amz-copy-source-"):]: value for name, value in request.headers.items()
                      if name.lower().startswith("x-amz-copy-source-if-")}
        check_conditions({k.lower(): v for k, v in conditions.items()}, view.etag, head["LastModified"])
        if request.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE":
            params = object_params(request.headers)
        else:
            params = self._copied_params(head)
            if request.headers.get("x-amz-storage-class"):
                params["StorageClass"] = request.headers["x-amz-storage-class"]
        plaintext = await self._plaintext_stream(src_bucket, src_key, head, view)
        if self.policy.encrypts(key):
            etag = await self._put_encrypted(bucket, key, plaintext, view.size, params)
        else:
            reply = await self.upstream.send_stream("put_object", plaintext, view.size, Bucket=bucket, Key=key,
                                                    **params)
            etag = reply.get("ETag", "")
        done = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        return Reply.xml(xml.copy_object_result(quote_etag(etag), done["LastModified"]))

    async def _plain_head(self, bucket: str, key: str) -> tuple[dict[str, Any], View]:
        reply = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        return reply, View("plaintext", int(reply["ContentLength"]), reply.get("ETag", "").strip('"'))

    @staticmethod
    def _copied_params(head: Mapping[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name in ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding",
                     "ContentLanguage", "Expires", "StorageClass"):
            if head.get(name):
                params[name] = head[name]
        metadata = {k: v for k, v in head.get("Metadata", {}).items()
                    if not ("x-amz-meta-" + k.lower()).startswith(INTERNAL_META_PREFIX)}
        if metadata:
            params["Metadata"] = metadata
        return params

    async def _plaintext_stream(self, bucket: str, key: str, head: Mapping[str, Any],
                                view: View) -> AsyncIterator[Chunk]:
        _, pieces = await self.upstream.get_stream(Bucket=bucket, Key=key, **if_match(str(head.get("ETag", ""))))
        if view.kind == "plaintext":
            return pieces
        return self._decrypting(key, pieces, self._whole_decryptor(key, view))

    # --- manifests -----------------------------------------------------------------------

    async def _put_manifest(self, request: Request, bucket: str, key: str) -> Reply:
        """Store a manifest whose entries describe the stored (encrypted) objects."""
        body = await self._body(request).read_all(MAX_MANIFEST)
        paths = object_paths(body)
        stored_body = body
        if paths is None:
            log.warning("%r is named like a manifest but is not one; stored unchanged", key)
        else:
            stored = await self._stored_objects(bucket, paths)
            stored_body = rewrite(body, stored) or body
            if stored_body is body and stored:
                log.warning("manifest %r could not be rewritten byte-exactly; stored unchanged", key)
        params = object_params(request.headers)
        reply = await self.upstream.call("put_object", Bucket=bucket, Key=key, Body=stored_body, **params)
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if reply.get("ETag", "").strip('"'):
            version = version_of(reply["ETag"], len(stored_body), None)
            await self._remember(bucket, key, version, View("plaintext", len(body), etag))
        return Reply(200, {"ETag": quote_etag(etag)})

    async def _stored_objects(self, bucket: str, paths: list[str]) -> dict[str, Stored]:
        """Stored size and upstream ETag of the encrypted objects among ``paths``."""
        wanted = {path for path in paths if self.policy.encrypts(path)}
        found: dict[str, dict[str, Any]] = {}
        for prefix in sorted({path.rpartition("/")[0] + "/" for path in wanted}):
            token: str | None = None
            while True:
                params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
                if token:
                    params["ContinuationToken"] = token
                page = await self.upstream.call("list_objects_v2", **params)
                found.update({o["Key"]: o for o in page.get("Contents", []) if o["Key"] in wanted})
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
        missing = wanted - found.keys()
        if missing:
            log.warning("manifest names %d object(s) missing from the bucket, e.g. %r", len(missing),
                        sorted(missing)[0])

        async def encrypted(entry: dict[str, Any]) -> bool:
            view = await self.view_of(bucket, entry["Key"], entry.get("ETag", ""), int(entry["Size"]),
                                      entry.get("LastModified"))
            return view.kind == "encrypted"

        entries = list(found.values())
        kinds = await asyncio.gather(*(encrypted(entry) for entry in entries))
        return {entry["Key"]: Stored(int(entry["Size"]), str(entry.get("ETag", "")).strip('"'))
                for entry, is_encrypted in zip(entries, kinds, strict=True) if is_encrypted}

    async def _manifest_view(self, bucket: str, key: str, etag: str, size: int,
                             last_modified: object) -> tuple[View, bytes | None]:
        """Size and ETag of the manifest as Medusa wrote it (and its bytes, when they were read)."""
        version = version_of(etag, size, last_modified)
        cached = (await self.store.get_views(bucket, [(key, version)])).get((key, version))
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is not None:
            return View(cached.kind, cached.size, cached.etag), None
        original = await self._read_manifest(bucket, key, etag)
        view = View("plaintext", len(original), hashlib.md5(original, usedforsecurity=False).hexdigest())
        await self._remember(bucket, key, version, view)
        return view, original

    async def _read_manifest(self, bucket: str, key: str, etag: str) -> bytes:
        return restore(await self.upstream.read(limit=MAX_MANIFEST, Bucket=bucket, Key=key, **if_match(etag)))

    async def _get_manifest(self, request: Request, bucket: str, key: str) -> Reply:
        head = await self.upstream.call("head_object", Bucket=bucket, Key=key)
        view, original = await self._manifest_view(bucket, key, head.get("ETag", ""),
                                                   int(head.get("ContentLength", 0)), head.get("LastModified"))
        check_conditions(request.headers, view.etag, head["LastModified"])
        if original is None:
            original = await self._read_manifest(bucket, key, head.get("ETag", ""))
        wanted = parse_range(request.headers.get("range"), len(original))
        headers = visible_headers(head)
        headers["ETag"] = quote_etag(view.etag)
        headers["Accept-Ranges"] = "bytes"
        if wanted is None:
            return Reply(200, headers, original, len(original))
        headers["Content-Range"] = wanted.content_range(len(original))
        part = original[wanted.first:wanted.last + 1]
        return Reply(206, headers, part, len(part))

    # --- multipart -----------------------------------------------------------------------

    async def create_multipart_upload(self, request: Request) -> Reply:
        bucket, key = request.bucket or "", request.key or ""
        if not self.policy.encrypts(key):
            return await super().create_multipart_upload(request)
        reject_sse_c(request.headers)
        master = self.keyring.primary
        params = self._with_hint(object_params(request.headers), master)
        reply = await self.upstream.call("create_multipart_upload", Bucket=bucket, Key=key, **params)
        upload_id = reply["UploadId"]
        await self.store.put_upload(UploadState(upload_id, bucket, key, master.key_id, new_salt()))
        self.metrics.multipart_started()
        return Reply.xml(xml.initiate_multipart(bucket, key, upload_id))

    async def _upload(self, request: Request) -> UploadState | None:
        """The proxy's state for an encrypted upload; None for a passthrough key."""
        if not self.policy.encrypts(request.key or ""):
            return None
        state = await self.store.get_upload(request.query["uploadId"])
        if state is None or state.bucket != request.bucket or state.key != request.key:
            raise S3Error("NoSuchUpload", "The specified upload does not exist or its state was lost by "
                          "the proxy (restarted without its cache); start the upload again.", 404)
        return state

    async def upload_part(self, request: Request) -> Reply:
        state = await self._upload(request)
        if state is None:
            return await super().upload_part(request)
        number = part_number(request.query)
        body = self._body(request)
        if body.length is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
        master = self.keyring.get(state.key_id)
        encryptor = PartEncryptor(derive_object_keys(master, state.salt), number)
        stored_size = part_stored_size(body.length)

        async def stored() -> AsyncIterator[Chunk]:
            async for records in self._encrypting(encryptor, body):
                yield records
            yield encryptor.finish()

        if body.length < MIN_PART:
            # It can only be the last part: keep it until Complete sends it with the trailer.
            held = b"".join([piece async for piece in stored()])
            part = PartState(number, body.length, encryptor.md5, len(held), None, held)
        else:
            reply = await self.upstream.send_stream(
                "upload_part", stored(), stored_size, Bucket=state.bucket, Key=state.key,
                UploadId=state.upload_id, PartNumber=number,
            )
            part = PartState(number, body.length, encryptor.md5, stored_size, reply.get("ETag", ""), None)
        await self.store.put_part(state.upload_id, part)
        return Reply(200, {"ETag": quote_etag(part.md5.hex())})

    async def upload_part_copy(self, request: Request) -> Reply:
        if self.policy.encrypts(request.key or ""):
            raise S3Error("NotImplemented", "UploadPartCopy into an encrypted object is not supported; "
                          "copy with CopyObject or upload the part", 501)
        return await super().upload_part_copy(request)

    async def complete_multipart_upload(self, request: Request) -> Reply:
        state = await self._upload(request)
        if state is None:
            return await super().complete_multipart_upload(request)
        listed = await self._completed_parts(request)
        known = await self.store.get_parts(state.upload_id)
        parts: list[PartState] = []
        for entry in listed:
            part = known.get(entry.part_number)
            if part is None or entry.etag.strip('"') != part.md5.hex():
                raise S3Error("InvalidPart", "One or more of the specified parts could not be found. The part "
                              "may not have been uploaded, or the specified entity tag may not match the "
                              "part's entity tag.", 400)
            parts.append(part)
        for part in parts[:-1]:
            if part.size < MIN_PART:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed "
                              "object size.", 400)
        master = self.keyring.get(state.key_id)
        infos = [PartInfo(p.part_number, p.size, p.md5) for p in parts]
        trailer = build_trailer(master, state.salt, state.key, infos, single_put=False)
        upstream_parts = [{"PartNumber": p.part_number, "ETag": p.upstream_etag} for p in parts[:-1]]
        last = parts[-1]
        if last.held is not None:
            final_number, final_body = last.part_number, last.held + trailer
        else:
            upstream_parts.append({"PartNumber": last.part_number, "ETag": last.upstream_etag})
            final_number, final_body = last.part_number + 1, trailer
            if final_number > MAX_PARTS:
                raise S3Error("InvalidArgument", "the proxy needs one more part for its trailer; "
                              "use at most 9999 parts", 400)
        reply = await self.upstream.call("upload_part", Bucket=state.bucket, Key=state.key,
                                         UploadId=state.upload_id, PartNumber=final_number, Body=final_body)
        upstream_parts.append({"PartNumber": final_number, "ETag": reply["ETag"]})
        done = await self.upstream.call(
            "complete_multipart_upload", Bucket=state.bucket, Key=state.key, UploadId=state.upload_id,
            MultipartUpload={"Parts": upstream_parts},
        )
        await self.store.drop_upload(state.upload_id)
        self.metrics.multipart_finished()
        parsed = Trailer.from_tail(trailer)
        stored_size = sum(p.stored_size for p in parts) + len(trailer)
        if done.get("ETag", "").strip('"'):
            view = View("encrypted", parsed.plaintext_size, parsed.etag, parsed)
            await self._remember(state.bucket, state.key, version_of(done["ETag"], stored_size, None), view)
        return Reply.xml(xml.complete_multipart(done.get("Location", ""), state.bucket, state.key,
                                                quote_etag(parsed.etag)))

    async def abort_multipart_upload(self, request: Request) -> Reply:
        reply = await super().abort_multipart_upload(request)
        if self.policy.encrypts(request.key or "") and await self.store.get_upload(request.query["uploadId"]):
            await self.store.drop_upload(request.query["uploadId"])
            self.metrics.multipart_finished()
        return reply

    async def list_parts(self, request: Request) -> Reply:
        state = await self._upload(request)
        if state is None:
            return await super().list_parts(request)
        reply = await self.upstream.call("list_parts", Bucket=state.bucket, Key=state.key,
                                         UploadId=state.upload_id)
        known = await self.store.get_parts(state.upload_id)
        uploaded = {p["PartNumber"]: p for p in reply.get("Parts", [])}
        parts = []
        for number, part in sorted(known.items()):
            upstream = uploaded.get(number)
            if part.held is None and upstream is None:
                continue
            parts.append({"PartNumber": number, "Size": part.size, "ETag": quote_etag(part.md5.hex()),
                          "LastModified": (upstream or {}).get("LastModified") or datetime.now().astimezone()})
        reply.update(Parts=parts, IsTruncated=False)
        reply.pop("NextPartNumberMarker", None)
        return Reply.xml(xml.list_parts(reply))


def build_encrypted_service(config: Config, upstream: Upstream, metrics: Metrics) -> PassthroughService:
    if not config.encryption.enabled:
        return PassthroughService(upstream)
    keyring = KeyRing.from_files(config.encryption.key_files)
    return EncryptedService(config, upstream, metrics, keyring, StateStore(config.cache.path))
