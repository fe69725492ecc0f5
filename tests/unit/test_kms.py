"""The KMS provider's memory of unwrapped data keys: bounded in time and count (its calls to
a real KMS are tested against moto's in tests/functional/test_kms.py)."""

from __future__ import annotations

import itertools
from typing import Any

from proxy.config import Kms
from proxy.kms import AwsKms, LocalKeys, kms_key_id
from proxy.metrics import Metrics
from tests.unit.format.helpers import RING

ARN = "arn:aws:kms:us-east-1:111122223333:key/k"


class CountingKms:
    """Answers GenerateDataKey and Decrypt like KMS (the blob names the key it wraps)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._n = itertools.count()

    async def generate_data_key(self, **params: Any) -> dict[str, Any]:
        self.calls.append("GenerateDataKey")
        n = next(self._n)
        return {"KeyId": ARN, "Plaintext": bytes([n]) * 32, "CiphertextBlob": b"blob-%d" % n}

    async def decrypt(self, CiphertextBlob: bytes, **params: Any) -> dict[str, Any]:
        self.calls.append("Decrypt")
        return {"Plaintext": bytes([int(CiphertextBlob.split(b"-")[1])]) * 32}


def provider(**cfg: Any) -> tuple[AwsKms, CountingKms]:
    kms = AwsKms(Kms(key_id=ARN, **cfg), "us-east-1", LocalKeys(lambda: RING), Metrics())
    fake = CountingKms()
    kms._client = fake
    return kms, fake


async def test_unwrapped_keys_are_kept_at_most_cache_entries() -> None:
    kms, fake = provider(cache_entries=2)
    made = [await kms.new_data_key("b", f"k{i}") for i in range(3)]  # the first is evicted
    for i, key in enumerate(made):
        got = await kms.unwrap(kms_key_id(ARN), key.wrapped, f"k{i}")
        assert got.raw == key.raw
    # k0 was evicted by k2; unwrapping it evicts k1, which then evicts k2: three Decrypts.
    assert fake.calls == ["GenerateDataKey"] * 3 + ["Decrypt"] * 3
    await kms.unwrap(kms_key_id(ARN), made[2].wrapped, "k2")  # the two most recent are kept
    await kms.unwrap(kms_key_id(ARN), made[1].wrapped, "k1")
    assert len(fake.calls) == 6


async def test_unwrapped_keys_expire_and_can_be_off() -> None:
    kms, fake = provider(cache_seconds=0)
    key = await kms.new_data_key("b", "k")
    await kms.unwrap(kms_key_id(ARN), key.wrapped, "k")
    await kms.unwrap(kms_key_id(ARN), key.wrapped, "k")
    assert fake.calls == ["GenerateDataKey", "Decrypt", "Decrypt"]
