"""File-level encrypt/decrypt/inspect for disaster recovery without the daemon.

Wired into the CLI by proxy/cli.py. Decryption reads the trailer first (files are
seekable), writes to a temporary file next to the output and renames it only after the
whole object verified, so a failed run never leaves plaintext that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.format.codec import ObjectDecryptor, PartEncryptor, build_trailer, new_salt
from proxy.format.constants import CHUNK_SIZE, PROVIDER_AWS_KMS, PROVIDER_LOCAL, SINGLE_PUT_PART_NUMBER, TRAILER_PROBE
from proxy.format.detect import classify
from proxy.format.errors import FormatError
from proxy.format.keys import KeyRing, derive_object_keys
from proxy.format.seed import (
    SeedDecryptor,
    SeedObjectInfo,
    fernet_keys_from_ring,
    seed_plaintext_size_bounds,
)
from proxy.format.trailer import Trailer, parse_footer

__all__ = ["decrypt_file", "encrypt_file", "inspect_file", "read_trailer"]

_READ = CHUNK_SIZE * 4
PathLike = str | os.PathLike[str]


def _atomic_writer(out_path: PathLike) -> tuple[int, str]:
    out = Path(out_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent or ".")
    return fd, tmp


def encrypt_file(keyring: KeyRing, in_path: PathLike, out_path: PathLike, object_key: str) -> dict[str, Any]:
    """Encrypt a file exactly as the proxy stores a single-PUT object under `object_key`.

    Returns {"plaintext_size", "stored_size", "etag", "key_id"}.
    """
    salt = new_salt()
    master = keyring.primary
    enc = PartEncryptor(derive_object_keys(master, salt), SINGLE_PUT_PART_NUMBER)
    fd, tmp = _atomic_writer(out_path)
    try:
        with os.fdopen(fd, "wb") as out, open(in_path, "rb") as src:
            while piece := src.read(_READ):
                out.write(enc.update(piece))
            out.write(enc.finish())
            trailer = build_trailer(master, salt, object_key, [enc.part_info()], True)
            out.write(trailer)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {
        "plaintext_size": enc.plaintext_size,
        "stored_size": enc.stored_size + len(trailer),
        "etag": enc.md5.hex(),
        "key_id": master.key_id_hex,
    }


def read_trailer(path: PathLike) -> Trailer:
    """Parse (without verifying) the trailer of a stored object file."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TRAILER_PROBE))
        tail = f.read()
        n = parse_footer(tail)
        if n > len(tail):
            if n > size:
                raise FormatError(f"trailer length {n} exceeds the file size {size}")
            f.seek(size - n)
            tail = f.read()
    return Trailer.from_tail(tail)


def decrypt_file(
    keyring: KeyRing,
    in_path: PathLike,
    out_path: PathLike,
    object_key: str | None = None,
    *,
    seed_keys: KeyRing | Sequence[bytes | str] | None = None,
) -> Trailer | SeedObjectInfo:
    """Decrypt a stored object file; with `object_key`, also require it was stored under it.

    Objects of the seed's old in-Medusa encryption (classified "seed-fernet") are decrypted
    with `seed_keys` and then the keyring's keys tried as Fernet keys (a seed key file has
    our key file format, so `decrypt --key-file seed.key` works); they carry no object key,
    so `object_key` is not checked for them, and a SeedObjectInfo is returned. An empty
    file is an empty seed object when `seed_keys` is given.

    Raises a FormatError subclass (nothing is left at out_path) on any tampering.
    """
    size = Path(in_path).stat().st_size
    if size == 0 and seed_keys is not None:
        _write_atomic(out_path, in_path, None)
        return SeedObjectInfo(0, hashlib.md5(b"").hexdigest(), 0)
    with open(in_path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - 16))
        tail = f.read()
    if classify(head, tail, size) == "seed-fernet":
        keys: list[bytes | str] = []
        if isinstance(seed_keys, KeyRing):
            keys += fernet_keys_from_ring(seed_keys)
        elif seed_keys is not None:
            keys += seed_keys
        keys += fernet_keys_from_ring(keyring)
        seed = SeedDecryptor(keys)
        _write_atomic(out_path, in_path, seed)
        return seed.info()
    trailer = read_trailer(in_path)
    _write_atomic(out_path, in_path, ObjectDecryptor.with_trailer(keyring, trailer, object_key))
    return trailer


def _write_atomic(out_path: PathLike, in_path: PathLike, dec: ObjectDecryptor | SeedDecryptor | None) -> None:
    """Stream in_path through `dec` (None: copy) into out_path, renamed only on success."""
    fd, tmp = _atomic_writer(out_path)
    try:
        with os.fdopen(fd, "wb") as out, open(in_path, "rb") as src:
            while piece := src.read(_READ):
                out.write(piece if dec is None else dec.feed(piece))
            if dec is not None:
                out.write(dec.finish())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def inspect_file(path: PathLike) -> dict[str, Any]:
    """Describe a stored object without any key: classification and trailer fields.

    Nothing here is verified (that needs the key); "trailer_error" explains a bad trailer.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - 16))
        tail = f.read()
    info: dict[str, Any] = {"path": str(p), "stored_size": size}
    kind = classify(head, tail, size)
    info["classification"] = kind
    if kind == "seed-fernet":
        # The seed format's plaintext size is known from the stored size only to 16 bytes.
        try:
            lo, hi = seed_plaintext_size_bounds(size)
            info.update({"plaintext_size_min": lo, "plaintext_size_max": hi})
        except FormatError as e:
            info["seed_layout_error"] = str(e)
        return info
    if kind != "encrypted":
        return info
    try:
        t = read_trailer(p)
    except FormatError as e:
        info["trailer_error"] = str(e)
        return info
    info.update(
        {
            "format_version": t.version,
            "key_id": t.key_id_hex,
            "salt": t.salt.hex(),
            "chunk_size": t.chunk_size,
            "plaintext_size": t.plaintext_size,
            "etag": t.etag,
            "chunk_count": t.chunk_count,
            "part_count": t.layout.part_count,
            "runs": [
                {"first_part_number": r.first_part_number, "part_count": r.part_count, "part_size": r.part_size}
                for r in t.runs
            ],
            "object_key": t.object_key,
            "trailer_size": t.record_len,
            "expected_stored_size": t.object_stored_size,
            "size_consistent": t.object_stored_size == size,
        }
    )
    if t.wrapped is not None:  # version 2: who wrapped the data key (the key id names the key)
        info["key_provider"] = _PROVIDERS.get(t.wrapped.provider, f"unknown ({t.wrapped.provider})")
        if t.wrapped.key_ref:
            info["key_ref"] = t.wrapped.key_ref
    return info


_PROVIDERS = {PROVIDER_LOCAL: "local", PROVIDER_AWS_KMS: "aws-kms"}
