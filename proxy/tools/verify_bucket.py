"""``verify-bucket``: check a bucket's backups against its own manifests, with or without the key.

For every indexed manifest (``index/backup_index/<backup>/manifest_<fqdn>.json``) and the node's
own copy (``<fqdn>/<backup>/meta/manifest.json``):

* With the key, the manifest's MAC is checked first: a manifest without one (unless declared
  legacy by ``encryption.legacy_plaintext_before``), with a wrong one (edited, or moved to
  another name), or under an unknown key is a problem, and its entries are not trusted further.
* Every entry's ``size``/``MD5`` (the stored object's, after the proxy's rewrite) is compared
  with what the bucket reports: a swapped or rolled-back object shows here, even without the key.
* With the key, each object of ours must have a valid trailer naming this key (or its accepted
  old name, ``encryption.accept_moved``) and the plaintext size and ETag in ``source_size``/
  ``source_MD5``. Objects of the old in-Medusa encryption must fit ``source_size``, and with
  ``encryption.seed_key_files`` they are decrypted and must match ``source_size`` and
  ``source_MD5`` (records dropped or reordered).

What it cannot see: a whole backup rolled back consistently (older manifests and their objects
together) and deleted backups that the index no longer names.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

from pydantic import ValidationError

from proxy.config import ConfigError, Encryption, Limits, _apply_env, _read_yaml
from proxy.format.detect import classify
from proxy.format.errors import FormatError, TamperedError, UnknownKeyError
from proxy.format.keys import KeyRing
from proxy.format.manifest_mac import ManifestSealError, find_seal, verify_manifest
from proxy.format.seed import SeedDecryptor, fernet_keys_from_ring, seed_plaintext_size, source_md5_hex
from proxy.format.trailer import Trailer
from proxy.keyfiles import load_key_ring
from proxy.manifest import SOURCE_MD5, SOURCE_SIZE, NotAManifest, iter_entries
from proxy.objects.views import complete_tail, read_range, tail_spec
from proxy.policy import accepted_names, written_as
from proxy.s3.errors import S3Error
from proxy.upstream import ObjectHead, Upstream

INDEX = "index/backup_index/"
BATCH = 256  # entries checked concurrently


@dataclass(frozen=True)
class Options:
    """What verify-bucket takes from the proxy's config (``encryption`` and ``limits``)."""

    seed_keys: tuple[bytes, ...] = ()
    legacy_before: datetime | None = None
    accept_moved: tuple[tuple[str, str], ...] = ()
    max_manifest_bytes: int = Limits().max_manifest_bytes


def load_options(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Options:
    """The options in a config file; a config with only an ``upstream`` section gives the defaults."""
    data = _read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(["config: the top level must be a mapping"])
    data = _apply_env(data, os.environ if environ is None else environ)
    section = data.get("encryption") or {}
    try:
        encryption = Encryption.model_validate({"enabled": False, **section} if "key_files" not in section else section)
        limits = Limits.model_validate(data.get("limits") or {})
    except ValidationError as exc:
        raise ConfigError([f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]) from None
    seed_keys = (
        tuple(fernet_keys_from_ring(load_key_ring(encryption.seed_key_files))) if encryption.seed_key_files else ()
    )
    return Options(
        seed_keys,
        encryption.legacy_plaintext_before,
        encryption.moved_prefixes,
        limits.max_manifest_bytes,
    )


@dataclass
class Report:
    manifests: int = 0
    objects: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # With the key: the key id (and format version) encrypting each object, so an operator can
    # tell when a retired key is no longer needed.
    key_of: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, key: str, reason: object) -> None:
        line = f"{key}: {reason}"
        if line not in self.problems:  # the node's and the index's copies name the same objects
            self.problems.append(line)

    def note(self, key: str, reason: object) -> None:
        self.notes.append(f"{key}: {reason}")


@dataclass
class _Run:
    upstream: Upstream
    bucket: str
    keyring: KeyRing | None
    options: Options
    report: Report
    say: Callable[[str], None]
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(16))
    checked: set[tuple[str, ...]] = field(default_factory=set)
    seed_unchecked: bool = False


def node_manifest_key(prefix: str, index_key: str) -> str | None:
    """The node's copy, ``<prefix><fqdn>/<backup>/meta/manifest.json``, of an indexed manifest
    ``<prefix>index/backup_index/<backup>/manifest_<fqdn>.json``."""
    backup, _, name = index_key[len(prefix + INDEX) :].partition("/")
    if not backup or not name.startswith("manifest_") or not name.endswith(".json"):
        return None
    return f"{prefix}{name[len('manifest_') : -len('.json')]}/{backup}/meta/manifest.json"


async def verify_bucket(
    upstream: Upstream,
    bucket: str,
    *,
    prefix: str = "",
    backup: str | None = None,
    keyring: KeyRing | None = None,
    options: Options | None = None,
    say: Callable[[str], None] = print,
) -> Report:
    """Check every indexed manifest, the node's copy of it, and every object they name."""
    report = Report()
    run = _Run(upstream, bucket, keyring, options or Options(), report, say)
    index = prefix + INDEX + (f"{backup}/" if backup else "")
    listed = [o for o in await upstream.list_all(bucket, index) if o["Key"].rsplit("/", 1)[-1].startswith("manifest_")]
    if not listed:
        report.problems.append(f"no manifest found under {index}")
    for listing in listed:
        await _verify_manifest(run, listing["Key"], required=True)
        node_key = node_manifest_key(prefix, listing["Key"])
        if node_key is not None:
            await _verify_manifest(run, node_key, required=False)
    if run.seed_unchecked:
        report.notes.append(
            "objects of the old in-Medusa encryption were checked against their stored size "
            "only: give encryption.seed_key_files to decrypt them"
        )
    for note in report.notes:
        say(f"NOTE {note}")
    for problem in report.problems:
        say(f"PROBLEM {problem}")
    for key_id, count in sorted(Counter(report.key_of.values()).items()):
        say(f"KEY {key_id}: {count} object(s)")
    say(
        f"checked {report.objects} objects in {report.manifests} manifests: "
        f"{len(report.problems)} problem(s){'' if keyring else ' (without the key)'}"
    )
    return report


async def _verify_manifest(run: _Run, key: str, *, required: bool) -> None:
    """One manifest: its MAC (with the key), then every object it names."""
    report, options = run.report, run.options
    try:
        head = await run.upstream.head(run.bucket, key)
    except S3Error as err:
        if required or err.code not in ("NoSuchKey", "NotFound", "404"):
            report.problem(key, f"{err.code} ({err.message})")
        else:
            report.note(key, "missing: only the index's copy of this manifest was checked")
        return
    limit = 4 * options.max_manifest_bytes
    if head.size > limit:
        report.problem(key, f"{head.size} bytes: too large to check (limits.max_manifest_bytes)")
        return
    data = await run.upstream.read_range(run.bucket, key, None, head.etag, limit)
    report.manifests += 1
    found = _manifest_text(run, key, head, data)
    if found is None:
        return
    text, plaintext_values = found
    try:
        count = await _check_entries(run, text.decode("utf-8"), plaintext_values)
    except (UnicodeDecodeError, NotAManifest) as exc:
        report.problem(key, f"not a Medusa manifest ({exc})")
        return
    run.say(f"{key}: {count} objects")


def _manifest_text(run: _Run, key: str, head: ObjectHead, data: bytes) -> tuple[bytes, bool] | None:
    """The manifest's JSON as Medusa's entries can be read from it, and whether those carry
    Medusa's plaintext values (a manifest stored encrypted); None when it is reported instead."""
    report, options = run.report, run.options
    try:
        seal = find_seal(data)
    except ManifestSealError as exc:
        report.problem(key, f"{exc}; its objects are not checked")
        return None
    plaintext_values = False
    if seal is not None:
        if run.keyring is not None:
            try:
                verify_manifest(run.keyring, data, accepted_names(key, options.accept_moved))
            except (ManifestSealError, UnknownKeyError) as exc:
                report.problem(key, f"{exc}; its objects are not checked")
                return None
        text = data[: seal.body_len] + b"]"
    elif classify(data[:16], data[-16:], len(data)) != "legacy-plaintext":
        # Not a manifest the proxy could rewrite, stored as an encrypted object: its entries
        # carry Medusa's plaintext values.
        if run.keyring is None:
            report.note(
                key, "stored encrypted (the proxy could not rewrite it): its objects are checked only with the key"
            )
            return None
        try:
            trailer = Trailer.from_tail(data)
            text = _decrypt(run.keyring, data, written_as(key, trailer.object_key, options.accept_moved))
        except FormatError as exc:
            report.problem(key, f"{exc}; its objects are not checked")
            return None
        plaintext_values = True
    else:
        cutoff = options.legacy_before
        modified = head.last_modified
        legacy = cutoff is not None and modified < cutoff
        if run.keyring is not None and not legacy:
            declared = (
                f"written at {modified}, after legacy_plaintext_before ({cutoff})"
                if cutoff
                else "no legacy_plaintext_before is set"
            )
            report.problem(key, f"manifest has no MAC ({declared}); its objects are not checked")
            return None
        report.note(
            key, "no MAC: written before legacy_plaintext_before" if legacy else "no MAC (checked without the key)"
        )
        text = data
    return text, plaintext_values


def _decrypt(keyring: KeyRing, data: bytes, object_key: str) -> bytes:
    from proxy.format.codec import decrypt_object

    return bytes(decrypt_object(keyring, data, object_key))


async def _check_entries(run: _Run, text: str, plaintext_values: bool) -> int:
    """Check the objects a manifest names, a batch at a time; the number of entries."""
    entries: Iterator[dict[str, Any]] = (entry for _, _, entry in iter_entries(text))
    count = 0
    while batch := list(islice(entries, BATCH)):
        count += len(batch)
        fresh = []
        for entry in batch:
            ident = (
                str(plaintext_values),
                *(str(entry.get(name)) for name in ("path", "size", "MD5", SOURCE_SIZE, SOURCE_MD5)),
            )
            if ident not in run.checked:
                run.checked.add(ident)
                fresh.append(entry)
        await asyncio.gather(*(_check(run, entry, plaintext_values) for entry in fresh))
    return count


async def _check(run: _Run, entry: dict[str, Any], plaintext_values: bool) -> None:
    path, report = entry["path"], run.report
    async with run.limit:
        report.objects += 1
        try:
            head = await run.upstream.head(run.bucket, path)
        except S3Error as err:
            report.problem(path, f"{err.code} ({err.message})")
            return
        size, etag = head.size, head.etag.strip('"')
        stale = not plaintext_values and (size != entry.get("size") or bool(etag and etag != entry.get("MD5")))
        # A later backup may have stored the same file again under the same key (Medusa's
        # differential backups share one data folder): the stored size or ETag then differ from
        # what this older manifest recorded, though the plaintext is the same. Only the key tells.
        if stale and (run.keyring is None or SOURCE_SIZE not in entry):
            report.problem(
                path,
                f"the bucket has size {size} ETag {etag}, the manifest says size "
                f"{entry.get('size')} MD5 {entry.get('MD5')}"
                + ("" if run.keyring is not None else " (stored again since? --key-file checks its plaintext)"),
            )
            return
        if run.keyring is None:
            return
        expected: tuple[Any, Any] | None = (
            (entry.get("size"), entry.get("MD5"))
            if plaintext_values
            else (entry[SOURCE_SIZE], entry.get(SOURCE_MD5))
            if SOURCE_SIZE in entry
            else None
        )
        problems = len(report.problems)
        try:
            await _check_content(run, path, etag, size, expected, plaintext_values)
        except (FormatError, S3Error) as exc:
            report.problem(path, exc)
        if stale and len(report.problems) == problems:
            report.note(path, "stored again since this manifest was written (same plaintext size and MD5)")


async def _check_content(
    run: _Run, path: str, etag: str, size: int, expected: tuple[Any, Any] | None, plaintext_values: bool
) -> None:
    """With the key: the object's own description of itself against the manifest's."""
    assert run.keyring is not None
    upstream, bucket, report = run.upstream, run.bucket, run.report
    tail = await read_range(upstream, bucket, path, etag, tail_spec(size)) if size else b""
    head = tail if size <= len(tail) else await read_range(upstream, bucket, path, etag, "bytes=0-15")
    kind = classify(head[:16], tail[-16:], size)
    if kind == "encrypted":
        await _check_encrypted(run, path, etag, size, tail, expected)
    elif kind == "seed-fernet":
        await _check_seed(run, path, etag, size, expected)
    elif kind == "tampered":
        raise TamperedError("starts like an encrypted object but has no valid trailer")
    elif plaintext_values:
        if expected is not None and (size != expected[0] or (etag and etag != expected[1])):
            report.problem(
                path, f"the bucket has size {size} ETag {etag}, the manifest says size {expected[0]} MD5 {expected[1]}"
            )
    elif expected is not None:
        report.problem(
            path, f"the manifest records {SOURCE_SIZE} (an encrypted object) but the object is not encrypted"
        )


async def _check_encrypted(
    run: _Run, path: str, etag: str, size: int, tail: bytes, expected: tuple[Any, Any] | None
) -> None:
    """An object of ours: its trailer verifies, names it, and gives the manifest's plaintext values."""
    assert run.keyring is not None
    trailer = Trailer.from_tail(await complete_tail(run.upstream, run.bucket, path, etag, tail))
    trailer.check_stored(run.keyring, written_as(path, trailer.object_key, run.options.accept_moved), size)
    run.report.key_of[path] = f"{trailer.key_id_hex} (format {trailer.version})"
    if expected is None:
        run.report.problem(path, f"an encrypted object, but the manifest records no {SOURCE_SIZE}/{SOURCE_MD5}")
    elif (trailer.plaintext_size, trailer.etag) != (expected[0], _md5_hex(expected[1])):
        run.report.problem(
            path,
            f"the bucket has plaintext size {trailer.plaintext_size} ETag {trailer.etag}, the manifest says "
            f"size {expected[0]} MD5 {expected[1]}",
        )


async def _check_seed(run: _Run, path: str, etag: str, size: int, expected: tuple[Any, Any] | None) -> None:
    """An object of the old in-Medusa encryption: its size fits, and with its keys it decrypts to
    the manifest's plaintext size and MD5."""
    if expected is None or not isinstance(expected[0], int):
        run.report.problem(
            path, f"an object of the old in-Medusa encryption, but the manifest records no {SOURCE_SIZE}/{SOURCE_MD5}"
        )
        return
    seed_plaintext_size(size, expected[0])
    if not run.options.seed_keys:
        run.seed_unchecked = True
        return
    decryptor = SeedDecryptor(list(run.options.seed_keys), expected_size=expected[0], expected_md5=expected[1])
    _, pieces = await run.upstream.open(run.bucket, path, None, f'"{etag}"' if etag else "")
    async for piece in pieces:
        decryptor.feed(piece)
    decryptor.finish()


def _md5_hex(value: Any) -> Any:
    try:
        return source_md5_hex(value)
    except (ValueError, AttributeError):
        return value
