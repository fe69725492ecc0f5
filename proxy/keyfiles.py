"""Key files: Fernet master keys read from and written to files (mode 0600).

The keys themselves, and all derivation, are ``proxy.format.keys``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cryptography.fernet import Fernet

from proxy.format.keys import InvalidKeyError, KeyRing, MasterKey, parse_fernet_key

__all__ = ["KeyFileError", "generate_key_file", "load_key_file", "load_key_ring"]

log = logging.getLogger(__name__)

# (path, mode) of the loose key files warned about: a file is read several times (check-config's
# preflight, then its key listing; every SIGHUP), its warning is given once.
_WARNED: set[tuple[str, int]] = set()


class KeyFileError(ValueError):
    """A key file is missing, unreadable or does not hold a Fernet key (no key material shown)."""


def load_key_file(path: str | os.PathLike[str]) -> MasterKey:
    """Read one Fernet key file; warn (once, without key material) if group/other can read it."""
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {p}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and (str(p), st.st_mode) not in _WARNED:
        _WARNED.add((str(p), st.st_mode))
        log.warning(
            "key file %s is accessible by group/other (mode %o); chmod 600 it",
            p,
            stat.S_IMODE(st.st_mode),
        )
    try:
        return parse_fernet_key(data)
    except InvalidKeyError as e:
        raise KeyFileError(f"key file {p}: {e}") from None


def generate_key_file(path: str | os.PathLike[str]) -> str:
    """Write a new random Fernet key with mode 0600, refusing to overwrite; return its key id."""
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key + b"\n")
    finally:
        os.close(fd)
    return parse_fernet_key(key).key_id_hex


def load_key_ring(paths: Iterable[str | os.PathLike[str]]) -> KeyRing:
    """Load key files in order; the first becomes the primary (encrypting) key."""
    return KeyRing([load_key_file(p) for p in paths])
