import pytest

from proxy.format import TamperedError, WrongObjectError, decrypt_object
from proxy.tools.files import decrypt_file, encrypt_file, inspect_file
from tests.unit.format.helpers import RING, RING_AB, pattern


@pytest.mark.parametrize("size", [0, 5, (1 << 20) * 4 + 3])
def test_encrypt_decrypt_inspect(tmp_path, size: int) -> None:
    data = pattern(size, 2)
    src, enc, dec = tmp_path / "in", tmp_path / "enc", tmp_path / "out"
    src.write_bytes(data)
    info = encrypt_file(RING, src, enc, "node/ks/t/Data.db")
    stored = enc.read_bytes()
    assert info["stored_size"] == len(stored) and info["plaintext_size"] == size
    assert decrypt_object(RING, stored, "node/ks/t/Data.db") == data
    t = decrypt_file(RING_AB, enc, dec, "node/ks/t/Data.db")
    assert dec.read_bytes() == data and t.etag == info["etag"]
    meta = inspect_file(enc)
    assert meta["classification"] == "encrypted" and meta["size_consistent"]
    assert meta["plaintext_size"] == size and meta["key_id"] == RING.primary.key_id_hex
    assert meta["object_key"] == "node/ks/t/Data.db" and meta["etag"] == info["etag"]
    assert inspect_file(src)["classification"] in ("legacy-plaintext", "tampered")


def test_decrypt_failure_leaves_no_output(tmp_path) -> None:
    src, enc, out = tmp_path / "in", tmp_path / "enc", tmp_path / "out"
    src.write_bytes(pattern(3 << 20))
    encrypt_file(RING, src, enc, "k")
    with pytest.raises(WrongObjectError):
        decrypt_file(RING, enc, out, "other")
    bad = bytearray(enc.read_bytes())
    bad[(2 << 20) + 500] ^= 1
    enc.write_bytes(bad)
    with pytest.raises(TamperedError):
        decrypt_file(RING, enc, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "in"]
