"""The core of encrypted objects: keys, crypto threads, and the plaintext view of a stored object.

The view (plaintext size and ETag) comes from the cache, else from the object itself (its trailer),
so it is durable in the bucket. The operations build on it in the modules beside this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from proxy.cache import CachedView, StateStore, UploadState, settled, version_of
from proxy.config import Config
from proxy.format.codec import (
    ObjectDecryptor,
    PartEncryptor,
)
from proxy.format.constants import PROVIDER_LOCAL, TRAILER_PROBE
from proxy.format.detect import classify
from proxy.format.errors import FormatError, TamperedError, TruncatedError, UnknownKeyError, WrongObjectError
from proxy.format.keys import DataKey, KeyRing, MasterKey, WrappedKey
from proxy.format.seed import (
    SeedDecryptor,
    fernet_keys_from_ring,
    seed_last_record_plaintext_size,
    seed_last_record_range,
)
from proxy.format.trailer import Trailer, parse_footer
from proxy.keyfiles import load_key_ring
from proxy.kms import build_provider
from proxy.metrics import IntegrityKind, Metrics
from proxy.policy import Kind, Policy, written_as
from proxy.s3.api import Chunk, close_pieces
from proxy.s3.errors import S3Error
from proxy.s3.headers import (
    quote_etag,
)
from proxy.upstream import ObjectHead, Upstream

log = logging.getLogger("proxy.objects")

T = TypeVar("T")

WHOLE_READ = 4 * TRAILER_PROBE  # objects up to this size are read whole to find their trailer
INLINE_CRYPTO = 128 << 10  # smaller pieces are not worth a thread hop
COLD_LOOKUPS = 64  # trailer reads in flight while resolving one listing (upstream pool: 64)
FORMAT_HINT = {"mcp-format": "1"}


@dataclass(frozen=True)
class View:
    """What a client sees of one stored object."""

    kind: str  # "encrypted" or "plaintext"
    size: int
    etag: str  # unquoted
    trailer: Trailer | None = None


async def read_range(upstream: Upstream, bucket: str, key: str, etag: str, spec: str | None) -> bytes:
    """A small ranged read of one stored version (If-Match guards against a concurrent overwrite);
    ``spec`` None reads the whole object."""
    return await upstream.read_range(bucket, key, spec, quote_etag(etag))


def tail_spec(size: int) -> str | None:
    """The read that finds a trailer: a suffix range, or the whole object when it is small.

    Reading 16 KiB costs a server no more than 4 KiB, and a whole object is a plain GET with
    no seek: ``rclone serve s3`` waits 20 ms before it seeks less than 4 KiB into a file, and
    refuses a suffix as long as the object.
    """
    return f"bytes=-{TRAILER_PROBE}" if size > WHOLE_READ else None


async def complete_tail(upstream: Upstream, bucket: str, key: str, etag: str, tail: bytes) -> bytes:
    """``tail`` (the ``tail_spec`` read of a stored version), read again longer when the trailer
    its footer announces is longer: what ``Trailer.from_tail`` parses. FormatError (no footer)
    or TamperedError (an impossible length) from the footer."""
    record_len = parse_footer(tail)
    if record_len > len(tail):
        tail = await read_range(upstream, bucket, key, etag, f"bytes=-{record_len}")
    return tail


def cached_view(view: View) -> CachedView:
    return CachedView(view.kind, view.size, view.etag, view.trailer.record if view.trailer is not None else None)


class IntegrityRefusal(S3Error):
    """A stored object refused because it is not a verified object of ours (nor declared legacy)."""


class ObjectChanged(S3Error):
    """The stored object was overwritten or deleted between the HEAD (or listing) that named its
    version and the read of its trailer: retryable, and no integrity failure."""

    def __init__(self, key: str) -> None:
        super().__init__("InternalError", f"the stored object {key!r} changed while it was read; please try again", 500)


#: Times a HEAD (or a listing's lookup) starts again on an object that changed under it.
CHANGE_ATTEMPTS = 3


def integrity_error(key: str, reason: object) -> IntegrityRefusal:
    return IntegrityRefusal("InternalError", f"the stored object {key!r} failed its integrity check: {reason}", 500)


#: How a listing shows an object that failed verification: no object has a negative size, and
#: no S3 or Medusa ETag has zero parts, so neither can match what Medusa recorded.
DAMAGED_SIZE = -1
DAMAGED_ETAG = '"00000000000000000000000000000000-0"'


def mark_damaged(entry: dict[str, Any]) -> None:
    """Show a listing entry that failed verification as damaged (see ``DAMAGED_SIZE``)."""
    log.warning("listing shows %r as damaged (size %d)", entry["Key"], DAMAGED_SIZE, extra={"event": "listed_damaged"})
    entry["Size"], entry["ETag"] = DAMAGED_SIZE, DAMAGED_ETAG


def integrity_kind(exc: Exception) -> IntegrityKind:
    """The ``kind`` label of ``integrity_failures_total`` for a refused object."""
    if isinstance(exc, UnknownKeyError):
        return "unknown-key"
    if isinstance(exc, WrongObjectError):
        return "wrong-object"
    if isinstance(exc, TruncatedError):
        return "truncated"
    return "tampered"


class Views:
    """The plaintext view of stored objects, and what reading and writing them needs: the keys,
    the crypto threads, the view cache. Shared by the code of each kind of key."""

    def __init__(
        self, config: Config, upstream: Upstream, metrics: Metrics, keyring: KeyRing, store: StateStore
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.metrics = metrics
        self.keyring = keyring
        self.store = store
        self.policy = Policy(config.encryption.encrypted_patterns, config.encryption.plaintext_patterns)
        seed_files = config.encryption.seed_key_files
        self.seed_keys = fernet_keys_from_ring(load_key_ring(seed_files)) if seed_files else []
        self._pool = ThreadPoolExecutor(config.limits.crypto_threads, thread_name_prefix="crypto")
        self._lookups = asyncio.Semaphore(COLD_LOOKUPS)
        self.heads_lack_etags = False  # see _remember_written
        self.keys = build_provider(lambda: self.keyring, config.encryption.kms, config.upstream.region, metrics)

    def stores_encrypted(self, key: str) -> bool:
        """Whether a body written to ``key`` by multipart or copy is stored in our format: all but
        plaintext keys, since a manifest's MAC needs its whole body in one PUT."""
        return self.policy.kind(key) is not Kind.PLAINTEXT

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys in use (``build_info``): the key files', and ``kms:<key_id>`` of
        the KMS key that makes the data keys when one is configured."""
        kms = self.config.encryption.kms
        return [key.key_id_hex for key in self.keyring.keys] + ([f"kms:{kms.key_id}"] if kms else [])

    async def start(self) -> None:
        await self.keys.start()
        await self.store.start()
        self.metrics.set_cache_entries(await self.store.count_views())

    async def close(self) -> None:
        await self.keys.close()
        await self.store.close()
        self._pool.shutdown(wait=False)

    def reload(self, key_files: list[str] | None = None) -> None:
        """SIGHUP: load ``key_files`` (default: the configured ones) and swap the key ring in.

        Raises if any key file does not load; the running ring is then kept. Uploads in flight
        keep the key they started with (looked up by id), objects stay readable with theirs.
        """
        files = list(self.config.encryption.key_files if key_files is None else key_files)
        ring = load_key_ring(files)  # raises: the caller logs and keeps the old ring
        self.keyring = ring
        from proxy import __version__

        self.metrics.set_build_info(__version__, self.key_ids)
        log.info(
            "keys reloaded: primary %s, %d key(s)",
            ring.primary.key_id_hex,
            len(ring),
            extra={"event": "keys_reloaded", "primary_key_id": ring.primary.key_id_hex},
        )

    async def crypt(self, fn: Callable[..., T], *args: Any) -> T:
        """Run crypto on large buffers in the pool (it releases the GIL), small ones inline."""
        size = sum(len(a) for a in args if isinstance(a, (bytes, bytearray, memoryview)))
        if size < INLINE_CRYPTO:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the plaintext view --------------------------------------------------------------

    async def view_of(self, bucket: str, key: str, etag: str, size: int, last_modified: object) -> View:
        """The plaintext view of one stored version: cache first, else the bucket itself.

        ObjectChanged when the object is no longer that version (the caller HEADs it again).
        """
        version = version_of(etag, size, last_modified)
        found = await self.store.get_views(bucket, [(key, version)])
        cached = found.get((key, version))
        self.metrics.cache_lookup(hit=cached is not None)
        if cached is not None:
            self.recheck_legacy(key, cached.kind, last_modified)
            trailer = Trailer.parse(cached.trailer) if cached.trailer else None
            return View(cached.kind, cached.size, cached.etag, trailer)
        learned_at = time.time()  # before the read: what it finds is at least this recent
        view = await self.inspect(bucket, key, etag, size, last_modified, follow=False)
        await self.remember(bucket, key, version, view, learned_at=learned_at)
        return view

    async def adjust_listing(self, bucket: str, entries: list[dict[str, Any]]) -> None:
        """Replace the stored sizes and ETags of a listing page's encrypted objects with their
        plaintext view, resolving cache misses concurrently.

        An entry that fails verification does not fail the page: it is listed as damaged
        (``mark_damaged``: a size and ETag no object can have), so Medusa's verify names it and a
        differential backup uploads the file again; GET and HEAD of it stay refused.
        """
        if not entries:
            return

        def version(entry: dict[str, Any]) -> str:
            return version_of(entry.get("ETag"), int(entry.get("Size", 0)), entry.get("LastModified"))

        cached = await self.store.get_views(bucket, [(e["Key"], version(e)) for e in entries])
        learned: list[tuple[str, str, CachedView]] = []

        async def resolve(entry: dict[str, Any]) -> None:
            hit = cached.get((entry["Key"], version(entry)))
            self.metrics.cache_lookup(hit=hit is not None)
            try:
                if hit is not None:
                    self.recheck_legacy(entry["Key"], hit.kind, entry.get("LastModified"))
                else:
                    view = await self.inspect(
                        bucket,
                        entry["Key"],
                        entry.get("ETag", ""),
                        int(entry.get("Size", 0)),
                        entry.get("LastModified"),
                    )
                    hit = cached_view(view)
                    learned.append((entry["Key"], version(entry), hit))
            except IntegrityRefusal:
                mark_damaged(entry)
                return
            entry["Size"], entry["ETag"] = hit.size, quote_etag(hit.etag)

        await asyncio.gather(*(resolve(entry) for entry in entries))
        await self.store.put_views(bucket, learned)

    async def forget(self, bucket: str, keys: list[str]) -> None:
        await self.store.forget_views(bucket, keys)

    async def remember(
        self, bucket: str, key: str, version: str, view: View, *, learned_at: float | None = None
    ) -> None:
        """Cache a view (one of a size + Last-Modified version only once settled: ``proxy.cache.settled``)."""
        await self.store.put_view(bucket, key, version, cached_view(view), learned_at=learned_at)

    async def remember_written(self, bucket: str, key: str, upstream_etag: str, stored_size: int, view: View) -> None:
        """Cache what was just written, so the HEAD every client makes next costs no trailer read.

        The cache key must be the one the next HEAD will compute: the upstream's ETag. An upstream
        that gives no ETag, or gives one on PUT but none on HEAD (``rclone serve s3 --etag-hash
        ''``: seen once, it is remembered), names versions by size and Last-Modified, and a view
        learned as the write ends has not settled (``proxy.cache.settled``: another write of the
        same size begun in the same second may end later), so nothing is cached: the next lookup
        reads the trailer. (A HEAD here used to learn that version; it also made the PUT fail with
        NoSuchKey or a size mismatch when another client deleted or overwrote the key meanwhile.)
        """
        if upstream_etag.strip('"') and not self.heads_lack_etags:
            await self.remember(bucket, key, version_of(upstream_etag, stored_size, None), view)

    async def inspect(
        self, bucket: str, key: str, etag: str, size: int, last_modified: object, *, follow: bool = True
    ) -> View:
        """Read the trailer (one suffix range) and decide: ours and verified, declared legacy, or refused.

        Anything that is not a verified object of ours is served only when the operator declared
        it older than encryption (``legacy_plaintext_before``); no byte pattern decides that.

        Another client or proxy may overwrite or delete the object between the HEAD or listing
        that named this version and the trailer read: with an ETag the read is guarded (412; but
        ``rclone serve s3`` ignores If-Match), else it meets another object's trailer (another size)
        or none, or is cut off. A HEAD then tells a change from damage: a change is no integrity
        failure.
        With ``follow`` (a listing's lookup) the view of what is stored now is returned (ObjectChanged
        if it is gone: the client lists again); without, ObjectChanged (the caller HEADs again).
        """
        for _ in range(CHANGE_ATTEMPTS):
            try:
                return await self._inspect_version(bucket, key, etag, size, last_modified)
            except ObjectChanged:
                if not follow:
                    raise
            except S3Error as err:
                if follow and err.code == "NoSuchKey":
                    raise ObjectChanged(key) from None
                raise
            try:
                head = await self.upstream.head(bucket, key)
            except S3Error as err:
                if err.code == "NoSuchKey":
                    raise ObjectChanged(key) from None
                raise
            etag, size, last_modified = head.etag, head.size, head.last_modified
        raise ObjectChanged(key)

    async def _inspect_version(self, bucket: str, key: str, etag: str, size: int, last_modified: object) -> View:
        """``_inspect`` of the version named; ObjectChanged when the object is no longer it."""
        if size == 0:
            return self._unverified(key, size, etag, last_modified, "an empty object")
        try:
            async with self._lookups:
                probe = await read_range(self.upstream, bucket, key, etag, tail_spec(size))
                try:
                    tail = await complete_tail(self.upstream, bucket, key, etag, probe)
                except TamperedError as exc:
                    raise await self.refusal(bucket, key, etag, size, last_modified, exc) from None
                except FormatError:
                    return await self._without_trailer(bucket, key, etag, size, last_modified, probe)
        except Exception as exc:
            failure = await self._read_failure(bucket, key, etag, size, last_modified, exc)
            if failure is exc:
                raise
            raise failure from None
        try:
            trailer = Trailer.from_tail(tail)
            trailer.check_stored(self.keyring, self.written_as(key, trailer), size, await self.data_key(trailer))
        except FormatError as exc:
            raise await self.refusal(bucket, key, etag, size, last_modified, exc) from None
        return View("encrypted", trailer.plaintext_size, trailer.etag, trailer)

    async def _read_failure(
        self, bucket: str, key: str, etag: str, size: int, last_modified: object, exc: Exception
    ) -> Exception:
        """What a failed read of a version's trailer means: ObjectChanged when the object changed
        meanwhile, else ``exc`` itself."""
        if isinstance(exc, ObjectChanged | IntegrityRefusal):
            return exc
        if isinstance(exc, S3Error):
            if etag.strip('"') and (exc.code == "PreconditionFailed" or exc.status == 412):
                return ObjectChanged(key)
            if exc.code != "InvalidRange":  # rclone refuses a suffix as long as the (new) object
                return exc
        elif isinstance(exc, TimeoutError):
            return exc  # at once: no more waiting
        # A read cut off (rclone cuts a GET of a file deleted or replaced meanwhile), a range
        # refused: a change is retried, anything else goes on as it was.
        if await self._changed(bucket, key, etag, size, last_modified):
            return ObjectChanged(key)
        return exc

    async def _changed(self, bucket: str, key: str, etag: str, size: int, last_modified: object) -> bool:
        """Whether the stored object may no longer be the version named: its HEAD names another, or
        none, or names it by size and Last-Modified before that has settled (``proxy.cache.settled``:
        other writes of that size may have begun in that second, one may have replaced it and
        another brought the size back)."""
        try:
            head = await self.upstream.head(bucket, key)
        except S3Error as err:
            if err.code == "NoSuchKey":
                return True
            raise
        now = version_of(head.etag, head.size, head.last_modified)
        return now != version_of(etag, size, last_modified) or not settled(now, time.time())

    async def refusal(
        self, bucket: str, key: str, etag: str, size: int, last_modified: object, exc: Exception
    ) -> S3Error:
        """The integrity failure ``exc``, unless the read met another version (ObjectChanged)."""
        if await self._changed(bucket, key, etag, size, last_modified):
            return ObjectChanged(key)
        return self.integrity(key, exc)

    async def _without_trailer(
        self, bucket: str, key: str, etag: str, size: int, last_modified: object, tail: bytes
    ) -> View:
        """An object with no trailer of ours: the seed's old format or plaintext, both only when
        declared legacy; one that starts like our records lost its trailer and is refused. (Unless
        the reads met another version than the one named: ObjectChanged, see ``_inspect``.)"""
        head = tail if size <= len(tail) else await read_range(self.upstream, bucket, key, etag, "bytes=0-15")
        kind = classify(head[:16], tail[-16:])
        if kind == "tampered":
            raise await self.refusal(
                bucket,
                key,
                etag,
                size,
                last_modified,
                TamperedError("stored object starts like an encrypted one but has no valid trailer"),
            )
        if kind == "seed-fernet" and self.seed_keys:
            self.require_legacy(key, last_modified, "an object of the old in-Medusa encryption")
            return await self._seed_view(bucket, key, etag, size)
        if not self.legacy_allowed(last_modified) and await self._changed(bucket, key, etag, size, last_modified):
            raise ObjectChanged(key)
        return self._unverified(key, size, etag, last_modified, "not encrypted")

    def legacy_allowed(self, last_modified: object) -> bool:
        """True when the upstream says the object was written before ``legacy_plaintext_before``.

        The upstream sets Last-Modified itself on every write, so a bucket writer cannot backdate
        what it plants; an object with no usable time is not legacy.
        """
        cutoff = self.config.encryption.legacy_plaintext_before
        if cutoff is None:
            return False
        if isinstance(last_modified, str):
            try:
                last_modified = datetime.fromisoformat(last_modified)
            except ValueError:
                return False
        if not isinstance(last_modified, datetime) or last_modified.tzinfo is None:
            return False
        return last_modified < cutoff

    def require_legacy(self, key: str, last_modified: object, what: str) -> None:
        """Refuse (unexpected-plaintext) an object that is not ours unless it is declared legacy."""
        if self.legacy_allowed(last_modified):
            return
        cutoff = self.config.encryption.legacy_plaintext_before
        declared = f"was written at {last_modified}, after" if cutoff else "and no"
        reason = f"{what} {declared} legacy_plaintext_before{f' ({cutoff.isoformat()})' if cutoff else ''}"
        self.metrics.integrity_failure("unexpected-plaintext")
        log.error(
            "integrity check failed for %r: %s",
            key,
            reason,
            extra={"event": "integrity_failure", "kind": "unexpected-plaintext"},
        )
        raise integrity_error(key, reason)

    def recheck_legacy(self, key: str, kind: str, last_modified: object) -> None:
        """A cached view of an object that is not ours obeys today's cutoff, not the one it was cached under."""
        if kind != "encrypted":
            self.require_legacy(key, last_modified, "not encrypted")

    def _unverified(self, key: str, size: int, etag: str, last_modified: object, what: str) -> View:
        self.require_legacy(key, last_modified, what)
        return View("plaintext", size, etag.strip('"'))

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
            _, pieces = await self.upstream.open(bucket, key, None, quote_etag(etag))
            async for piece in pieces:
                await self.crypt(decryptor.feed, piece)
            decryptor.finish()
        except FormatError as exc:
            raise self.integrity(key, exc) from None
        return View("seed", plaintext_size, decryptor.md5_hex)

    def written_as(self, key: str, trailer: Trailer) -> str:
        """The name the object must have been written under: ``key``, or its accepted old name."""
        return written_as(key, trailer.object_key, self.config.encryption.moved_prefixes)

    def integrity(self, key: str, exc: Exception) -> IntegrityRefusal:
        kind = integrity_kind(exc)
        self.metrics.integrity_failure(kind)
        log.error("integrity check failed for %r: %s", key, exc, extra={"event": "integrity_failure", "kind": kind})
        return integrity_error(key, exc)

    def current_etags(self, bucket: str, key: str) -> Callable[[], Awaitable[tuple[str, str] | None]]:
        """What a conditional write compares (``passthrough.write_conditions``): the plaintext
        ETag of the object at ``key`` and the bucket's ETag of that version; None if there is none."""

        async def current() -> tuple[str, str] | None:
            try:
                head, view = await self.head(bucket, key)
            except S3Error as err:
                if err.status == 404:
                    return None
                raise
            return view.etag, head.etag

        return current

    async def head(self, bucket: str, key: str) -> tuple[ObjectHead, View]:
        """The stored object's HEAD and its view (of the version that HEAD names)."""
        for attempt in range(1, CHANGE_ATTEMPTS + 1):
            reply = await self.upstream.head(bucket, key)
            if not reply.etag.strip('"'):
                self.heads_lack_etags = True
            try:
                view = await self.view_of(bucket, key, reply.etag, reply.size, reply.last_modified)
            except ObjectChanged:
                if attempt == CHANGE_ATTEMPTS:
                    raise
                continue  # overwritten or deleted meanwhile: the HEAD says what is there now
            return reply, view
        raise AssertionError("unreachable")

    async def encrypting(self, encryptor: PartEncryptor, source: AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
        """The complete records of ``source``'s plaintext (the caller adds ``finish()``)."""
        async for piece in source:
            out = await self.crypt(encryptor.update, piece)
            self.metrics.add_encrypted(len(piece))
            del piece  # a reference held across the yield keeps ~1 MiB per transfer alive
            if out:
                yield out
            del out

    async def new_object_key(self, bucket: str, key: str) -> MasterKey | DataKey:
        """What a new object (or upload) is encrypted with: the primary master key (format
        version 1), or a fresh data key (version 2) from the key provider (the local primary key
        wraps it, or a KMS makes it), as ``format_version`` says."""
        if self.config.encryption.format_version == 2:
            return await self.keys.new_data_key(bucket, key)
        return self.keyring.primary

    async def upload_key(self, state: UploadState) -> MasterKey | DataKey:
        """The key an upload's parts and trailer are encrypted with: its master key, or the
        data key its state keeps wrapped (unwrapped again for each step; a KMS's is cached)."""
        if state.wrapped is None:
            return self.keyring.get(state.key_id)
        return await self.keys.unwrap(state.key_id, WrappedKey.from_bytes(state.wrapped), state.key)

    async def data_key(self, trailer: Trailer) -> DataKey | None:
        """A version 2 trailer's data key when a key service wrapped it (the format unwraps a
        local key's itself); None else."""
        wrapped = trailer.wrapped
        if wrapped is None or wrapped.provider == PROVIDER_LOCAL:
            return None
        return await self.keys.unwrap(trailer.key_id, wrapped, trailer.object_key)

    @staticmethod
    def with_hint(params: dict[str, Any], master: MasterKey | DataKey) -> dict[str, Any]:
        """Add the format hint to user metadata (a hint only: some servers drop metadata)."""
        metadata = dict(params.get("Metadata", {}))
        metadata.update(FORMAT_HINT)
        metadata["mcp-key-id"] = master.key_id.hex()
        return {**params, "Metadata": metadata}

    async def whole_decryptor(self, key: str, view: View) -> ObjectDecryptor | SeedDecryptor:
        if view.kind == "seed":
            return SeedDecryptor(self.seed_keys, expected_size=view.size, expected_md5=view.etag)
        assert view.trailer is not None
        data_key = await self.data_key(view.trailer)
        return ObjectDecryptor.with_trailer(
            self.keyring, view.trailer, self.written_as(key, view.trailer), data_key=data_key
        )

    async def _received(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``pieces`` of a stored body; one that breaks off (cut short, reset) is counted in
        ``upstream_errors_total`` as IncompleteBody and is a 503 (a short read, once the client has
        the headers)."""
        try:
            while True:
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    return
                except S3Error:
                    raise  # counted where it was raised (a timeout: proxy.upstream)
                except Exception as exc:
                    self.metrics.upstream_errors.labels(code="IncompleteBody").inc()
                    raise S3Error("ServiceUnavailable", "The upstream bucket's answer broke off.", 503) from exc
                yield piece
                del piece
        finally:
            await close_pieces(pieces)

    async def decrypting(
        self, bucket: str, key: str, head: ObjectHead, pieces: AsyncIterator[bytes], decryptor: Any
    ) -> AsyncGenerator[Chunk, None]:
        """The plaintext of ``pieces``, the stored body of the version ``head`` named. A body that fails
        its check is an integrity failure unless that version was replaced meanwhile (ObjectChanged:
        a write raced the read; the client, whose body is cut short, retries)."""
        try:
            async for piece in self._received(pieces):
                out = await self.crypt(decryptor.feed, piece)
                del piece
                if out:
                    self.metrics.add_decrypted(len(out))
                    yield out
                del out
            out = decryptor.finish()
            if out:
                self.metrics.add_decrypted(len(out))
                yield out
        except FormatError as exc:
            raise await self.refusal(bucket, key, head.etag, head.size, head.last_modified, exc) from None
