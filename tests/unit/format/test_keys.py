import base64
import hashlib
import logging
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.format.errors import FormatError
from proxy.format.keys import (
    InvalidKeyError,
    KeyRing,
    MasterKey,
    UnknownKeyError,
    derive_object_keys,
    key_id,
    parse_fernet_key,
)
from proxy.keyfiles import KeyFileError, generate_key_file, load_key_file, load_key_ring

RAW = bytes(range(32))


def test_key_id_definition() -> None:
    want = hashlib.sha256(b"medusa-crypt-proxy/key-id/v1" + RAW).digest()[:8]
    assert key_id(RAW) == want
    assert MasterKey(RAW).key_id_hex == want.hex() == "ffcc433b7b144e31"


def test_hkdf_split() -> None:
    salt = bytes(16)
    okm = HKDF(hashes.SHA256(), 64, salt, b"medusa-crypt-proxy/object/v1").derive(RAW)
    k = derive_object_keys(RAW, salt)
    assert (k.signing_key, k.encryption_key, k.mac_key) == (okm[:16], okm[16:32], okm[32:])
    assert derive_object_keys(MasterKey(RAW), salt) == k
    assert k.fernet_key() == base64.urlsafe_b64encode(okm[:32])
    assert derive_object_keys(RAW, bytes([1]) + bytes(15)).signing_key != k.signing_key


def test_no_key_material_in_reprs() -> None:
    mk = MasterKey(RAW)
    k = derive_object_keys(mk, bytes(16))
    ring = KeyRing([mk])
    for text in (repr(mk), repr(k), repr(ring), str(mk)):
        for secret in (RAW, k.signing_key, k.encryption_key, k.mac_key):
            assert secret.hex() not in text
            assert base64.urlsafe_b64encode(secret).decode()[:10] not in text


def test_parse_and_files(tmp_path, caplog) -> None:
    key = base64.urlsafe_b64encode(RAW)
    assert parse_fernet_key(b"  " + key + b"\n\n").raw == RAW
    with pytest.raises(InvalidKeyError) as ei:
        parse_fernet_key(key[:-4])
    assert key[:-4].decode() not in str(ei.value)
    with pytest.raises(InvalidKeyError):
        parse_fernet_key("not base64 at all!!")
    p = tmp_path / "k1"
    kid = generate_key_file(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(kid) == 16 and load_key_file(p).key_id_hex == kid
    with pytest.raises(FileExistsError):
        generate_key_file(p)
    loose = tmp_path / "loose"
    loose.write_bytes(key)
    os.chmod(loose, 0o644)
    with caplog.at_level(logging.WARNING):
        assert load_key_file(loose).raw == RAW
    assert len(caplog.records) == 1 and "loose" in caplog.records[0].getMessage()
    assert key.decode() not in caplog.text
    with pytest.raises(KeyFileError):
        load_key_file(tmp_path / "missing")


def test_ring_rotation_and_unknown() -> None:
    a, b = MasterKey(RAW), MasterKey(bytes(32))
    ring = KeyRing([b, a])
    assert ring.primary is b and ring.get(a.key_id) is a and a.key_id in ring
    with pytest.raises(UnknownKeyError) as ei:
        KeyRing([a]).get(b.key_id)
    assert b.key_id_hex in str(ei.value) and isinstance(ei.value, FormatError)
    with pytest.raises(ValueError):
        KeyRing([])


def test_from_files(tmp_path) -> None:
    paths = []
    for i in range(2):
        p = tmp_path / f"k{i}"
        generate_key_file(p)
        paths.append(p)
    ring = load_key_ring(paths)
    assert ring.primary == load_key_file(paths[0]) and len(ring) == 2


@pytest.mark.parametrize("first", ["proxy.keyfiles", "proxy.format.keys", "proxy.format", "proxy.format.trailer"])
def test_import_order(first: str) -> None:
    code = f"import {first}; import proxy.keyfiles, proxy.format.keys, proxy.format; proxy.format.ObjectDecryptor"
    subprocess.run([sys.executable, "-c", code], check=True)
