"""The KMS provider's memory of unwrapped data keys: bounded in time and count (its calls to
a real KMS are tested against moto's in tests/functional/test_kms.py)."""

from __future__ import annotations

import base64
import itertools
import logging
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


async def test_every_provider_use_is_one_audit_line_without_key_material(caplog: Any) -> None:
    """Audit: a line per data key made and per unwrap (KMS Decrypt, a local upload key), with the
    provider, operation, wrapping key id, bucket, object key and outcome; never the key bytes."""
    caplog.set_level(logging.INFO, logger="proxy.audit")
    local = LocalKeys(lambda: RING)
    made = await local.new_data_key("b", "node1/data/ks/t/nb-1-big-Data.db")
    await local.unwrap(made.key_id, made.wrapped, "node1/data/ks/t/nb-1-big-Data.db")
    kms, _ = provider()
    wrapped = (await kms.new_data_key("b", "k")).wrapped
    kms._cache.clear()
    await kms.unwrap(kms_key_id(ARN), wrapped, "k")
    await kms.unwrap(kms_key_id(ARN), wrapped, "k")  # from memory: no use of the provider
    uses = [(r.provider, r.operation, r.key_id, r.bucket, r.key, r.outcome) for r in caplog.records]  # type: ignore[attr-defined]
    primary = RING.primary.key_id_hex
    assert uses == [
        ("local", "wrap", primary, "b", "node1/data/ks/t/nb-1-big-Data.db", "ok"),
        ("local", "unwrap", primary, "", "node1/data/ks/t/nb-1-big-Data.db", "ok"),
        ("aws-kms", "GenerateDataKey", ARN, "b", "k", "ok"),
        ("aws-kms", "Decrypt", ARN, "b", "k", "ok"),
    ]
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    for secret in (made.raw, bytes([0]) * 32):
        assert secret.hex() not in text and base64.b64encode(secret).decode() not in text
