"""Codec throughput vs the raw primitive ceiling and the `Fernet` class (not a test).

Usage: python bench/codec.py [MiB]   (default 1024 MiB of plaintext in 1 MiB chunks)
MB = 10^6 bytes. The machine is shared and noisy: compare ratios within one run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from proxy.format import (
    CHUNK_SIZE,
    ObjectDecryptor,
    PartEncryptor,
    Trailer,
    build_trailer,
    new_salt,
    part_stored_size,
)
from proxy.format.keys import KeyRing, MasterKey, derive_object_keys

C = CHUNK_SIZE


def rate(total: int, fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return total / (time.perf_counter() - t) / 1e6


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    ring = KeyRing([MasterKey(os.urandom(32))])
    salt = new_salt()
    keys = derive_object_keys(ring.primary, salt)
    chunk = os.urandom(C)
    total = mib * C

    scratch = bytearray(C + 64)

    def raw_enc() -> None:  # AES-128-CBC + HMAC-SHA256 alone: no framing, no allocation
        with memoryview(scratch) as out:
            for _ in range(mib):
                iv = os.urandom(16)
                e = Cipher(algorithms.AES(keys.encryption_key), modes.CBC(iv)).encryptor()
                n = e.update_into(chunk, out)
                e.finalize()
                h = hmac.HMAC(keys.signing_key, hashes.SHA256())
                h.update(out[:n])
                h.finalize()

    def ours_enc(md5: bool = True) -> Callable[[], None]:
        def run() -> None:  # output is dropped as it would be after sending it upstream
            enc = PartEncryptor(keys, 1)
            if not md5:
                enc._md5 = _NoMd5()  # type: ignore[assignment]
            for _ in range(mib):
                enc.update(chunk)
            enc.finish()

        return run

    # decryption input: a 64 MiB object (bigger than the CPU caches, like real traffic),
    # decrypted mib/64 times (keeps memory flat)
    reps = max(1, mib // 64)
    enc = PartEncryptor(keys, 1)
    stored = [enc.update(chunk) for _ in range(min(mib, 64))]
    stored.append(enc.finish())
    trailer = build_trailer(ring.primary, salt, "bench", [enc.part_info()], True)
    stored.append(bytearray(trailer))
    dec_total = reps * min(mib, 64) * C

    def raw_dec() -> None:  # HMAC + AES-CBC over the same (cache-cold) stored records
        with memoryview(scratch) as out:
            for _ in range(reps):
                for rec in stored[:-2]:
                    h = hmac.HMAC(keys.signing_key, hashes.SHA256())
                    h.update(rec)
                    h.finalize()
                    d = Cipher(algorithms.AES(keys.encryption_key), modes.CBC(bytes(16))).decryptor()
                    d.update_into(memoryview(rec)[: C + 16], out)
                    d.finalize()

    def ours_dec() -> None:
        t = Trailer.from_tail(trailer)
        for _ in range(reps):
            dec = ObjectDecryptor.with_trailer(ring, t, "bench")
            for piece in stored:
                dec.feed(piece)
            dec.finish()

    fernet = Fernet(keys.fernet_key())
    n_f = max(8, mib // 8)
    tokens: list[bytes] = []

    def fernet_enc() -> None:
        tokens.extend(fernet.encrypt(chunk) for _ in range(n_f))

    def fernet_dec() -> None:
        for tok in tokens:
            fernet.decrypt(tok)

    r_raw_e = rate(total, raw_enc)
    r_raw_d = rate(dec_total, raw_dec)
    r_enc = rate(total, ours_enc(md5=True))
    r_enc_nomd5 = rate(total, ours_enc(md5=False))
    r_dec = rate(dec_total, ours_dec)
    r_fe = rate(n_f * C, fernet_enc)
    r_fd = rate(n_f * C, fernet_dec)

    print(f"plaintext: {mib} MiB in {C} byte chunks, one thread (MB = 1e6 B/s)")
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '(default)')}")
    print(f"{'':34}{'MB/s':>8}{'vs raw':>9}{'vs Fernet':>11}")
    rows = [
        ("raw AES-CBC+HMAC encrypt (ceiling)", r_raw_e, r_raw_e, r_fe),
        ("PartEncryptor (incl. MD5 ETag)", r_enc, r_raw_e, r_fe),
        ("PartEncryptor (crypto only)", r_enc_nomd5, r_raw_e, r_fe),
        ("Fernet.encrypt + base64", r_fe, r_raw_e, r_fe),
        ("raw HMAC+AES-CBC decrypt (ceiling)", r_raw_d, r_raw_d, r_fd),
        ("ObjectDecryptor.with_trailer", r_dec, r_raw_d, r_fd),
        ("Fernet.decrypt + base64", r_fd, r_raw_d, r_fd),
    ]
    for name, r, raw, fer in rows:
        print(f"{name:34}{r:8.0f}{r / raw:9.2f}{r / fer:11.2f}")
    print("storage overhead (binary records, + one trailer of ~160 B):")
    for label, size, cs in [
        ("64 KiB chunks, 1 GiB object", 1 << 30, 64 * 1024),
        ("1 MiB chunks, 1 GiB object", 1 << 30, C),
        ("one 64 KiB object", 64 * 1024, C),
        ("one 1 MiB object", C, C),
    ]:
        over = part_stored_size(size, cs) - size + 160
        print(f"  {label:30} +{over} B = {100 * over / size:.4f}%")


class _NoMd5:
    def update(self, data: object) -> None:
        pass

    def digest(self) -> bytes:
        return bytes(16)


if __name__ == "__main__":
    main()
