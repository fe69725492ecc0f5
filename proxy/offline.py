"""File-level encrypt/decrypt/inspect for disaster recovery without the daemon.

Wired into the CLI by proxy/cli.py. Decryption reads the trailer first (files are
seekable), writes to a temporary file next to the output and renames it only after the
whole object verified, so a failed run never leaves plaintext that looks complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from proxy.format.codec import ObjectDecryptor, PartEncryptor, build_trailer, new_salt
from proxy.format.constants import CHUNK_SIZE, SINGLE_PUT_PART_NUMBER, TRAILER_PROBE
from proxy.format.detect import classify
from proxy.format.errors import FormatError
from proxy.format.trailer import Trailer, parse_footer
from proxy.keys import KeyRing, derive_object_keys

__all__ = ["decrypt_file", "encrypt_file", "inspect_file", "read_trailer"]

_READ = CHUNK_SIZE * 4
PathLike = str | os.PathLike[str]


def _atomic_writer(out_path: PathLike) -> tuple[int, str]:
    out = Path(out_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent or ".")
    return fd, tmp


def encrypt_file(
    keyring: KeyRing, in_path: PathLike, out_path: PathLike, object_key: str
) -> dict[str, Any]:
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
    keyring: KeyRing, in_path: PathLike, out_path: PathLike, object_key: str | None = None
) -> Trailer:
    """Decrypt a stored object file; with `object_key`, also require it was stored under it.

    Raises a FormatError subclass (nothing is left at out_path) on any tampering.
    """
    trailer = read_trailer(in_path)
    dec = ObjectDecryptor.with_trailer(keyring, trailer, object_key)
    fd, tmp = _atomic_writer(out_path)
    try:
        with os.fdopen(fd, "wb") as out, open(in_path, "rb") as src:
            while piece := src.read(_READ):
                out.write(dec.feed(piece))
            out.write(dec.finish())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return trailer


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
                {"first_part_number": r.first_part_number, "part_count": r.part_count,
                 "part_size": r.part_size}
                for r in t.runs
            ],
            "object_key": t.object_key,
            "trailer_size": t.record_len,
            "expected_stored_size": t.object_stored_size,
            "size_consistent": t.object_stored_size == size,
        }
    )
    return info
