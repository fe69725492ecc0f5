"""Re-wrapping a version 2 object's data key (what ``rotate`` writes after the copied records).

The chunks depend on the data key only, so the same stored records followed by the re-wrapped
trailer must decrypt under the new master key alone, with the same plaintext view.
"""

from __future__ import annotations

import pytest

from proxy.format.codec import decrypt_object, encrypt_object
from proxy.format.errors import TamperedError, UnknownKeyError, UnsupportedFormatError
from proxy.format.keys import MasterKey, local_data_key, unwrap_local
from proxy.format.trailer import Trailer
from tests.unit.format.helpers import RAW_B, RING, RING_AB, RING_B, pattern

KEY = "node1/data/ks/t/nb-1-big-Data.db"


@pytest.mark.parametrize("parts", [None, [(1, 3 << 20), (2, 3 << 20), (3, 12345)]])
def test_rewrapped_trailer_moves_the_object_to_the_new_key(parts: list[tuple[int, int]] | None) -> None:
    data = pattern(6 * (1 << 20) + 12345, 3)
    stored = encrypt_object(RING, KEY, data, parts=parts, data_key=local_data_key(RING.primary))
    old = Trailer.from_tail(stored)
    data_key = unwrap_local(RING.primary, old.wrapped)  # type: ignore[arg-type]
    record = old.rewrapped(local_data_key(MasterKey(RAW_B), data_key.raw))
    rotated = stored[: old.layout.stored_size] + record
    new = Trailer.from_tail(rotated)
    assert new.key_id_hex == MasterKey(RAW_B).key_id_hex != old.key_id_hex
    assert (new.plaintext_size, new.etag, new.runs, new.salt) == (old.plaintext_size, old.etag, old.runs, old.salt)
    assert bytes(decrypt_object(RING_B, rotated, KEY)) == data  # the old key is no longer needed
    assert bytes(decrypt_object(RING_AB, rotated, KEY)) == data
    with pytest.raises(UnknownKeyError):
        decrypt_object(RING, rotated, KEY)


def test_rewrapping_with_another_data_key_is_refused() -> None:
    stored = encrypt_object(RING, KEY, b"x" * 100, data_key=local_data_key(RING.primary))
    with pytest.raises(TamperedError):
        Trailer.from_tail(stored).rewrapped(local_data_key(MasterKey(RAW_B)))


def test_a_version_1_trailer_has_nothing_to_rewrap() -> None:
    stored = encrypt_object(RING, KEY, b"x" * 100)
    with pytest.raises(UnsupportedFormatError):
        Trailer.from_tail(stored).rewrapped(local_data_key(MasterKey(RAW_B)))
