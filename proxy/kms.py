"""Who makes and unwraps data keys (format version 2): the local key files, or AWS KMS.

A provider answers two questions, both async since a KMS is a network service: a fresh data key
for a new object or upload (``new_data_key``), and the data key a stored trailer holds wrapped
(``unwrap``). Another service (Vault Transit, GCP KMS, KMIP) plugs in as one more class with
these two methods and a provider number of its own in the trailer (docs/FORMAT.md, "Version 2";
docs/OPERATIONS.md, "Keys in a KMS").

AWS KMS: one ``GenerateDataKey`` per object or upload, one ``Decrypt`` per data key not in
memory, never one per chunk. The encryption context names the bucket and the object key (as the
trailer records it), so KMS's own audit log says which object a key was for. Unwrapped keys stay
in memory for ``cache_seconds``, at most ``cache_entries`` of them. Failures are S3 errors: a
busy or unreachable KMS is 503 ServiceUnavailable (the client retries); a refusal (key disabled,
access denied) 500 with the KMS's reason; a wrapped key KMS calls invalid is an integrity failure.

Audit: one log line (logger ``proxy.audit``, event ``key_use``) per use of a provider: each data key
made, each KMS Decrypt and each unwrap of an upload's local data key, with the provider, the
operation, the wrapping key's id, the bucket, the object key and the outcome; never key material.
A data key served from memory is no use of the provider (``data_key_cache_lookups_total`` counts
it), and a local key's data key in a trailer is unwrapped by the format itself on each read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import aiobotocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from proxy.format.constants import KEY_ID_CONTEXT, KEY_ID_SIZE, PROVIDER_AWS_KMS, PROVIDER_LOCAL
from proxy.format.errors import TamperedError, UnsupportedFormatError
from proxy.format.keys import DataKey, KeyRing, WrappedKey, local_data_key, unwrap_local
from proxy.s3.errors import S3Error

if TYPE_CHECKING:
    from proxy.config import Kms
    from proxy.metrics import Metrics

audit = logging.getLogger("proxy.audit")

#: The encryption context's names (KMS requires the same context to decrypt).
CONTEXT_BUCKET = "medusa-crypt-proxy:bucket"
CONTEXT_KEY = "medusa-crypt-proxy:key"


class KeyProvider(Protocol):
    async def new_data_key(self, bucket: str, key: str) -> DataKey: ...

    async def unwrap(self, key_id: bytes, wrapped: WrappedKey, key: str) -> DataKey: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def kms_key_id(key_ref: str) -> bytes:
    """The 8-byte id a trailer names a KMS key by (as a local key's id, from its name)."""
    return hashlib.sha256(KEY_ID_CONTEXT + key_ref.encode("utf-8")).digest()[:KEY_ID_SIZE]


class LocalKeys:
    """Data keys wrapped by the primary key of the local key files (AES key wrap)."""

    def __init__(self, keyring: Callable[[], KeyRing]) -> None:
        self._keyring = keyring  # a callable: SIGHUP swaps the ring

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def new_data_key(self, bucket: str, key: str) -> DataKey:
        primary = self._keyring().primary
        data_key = local_data_key(primary)
        audit_key_use("local", "wrap", primary.key_id_hex, bucket, key, "ok")
        return data_key

    async def unwrap(self, key_id: bytes, wrapped: WrappedKey, key: str) -> DataKey:
        if wrapped.provider != PROVIDER_LOCAL:
            raise UnsupportedFormatError(
                f"{key!r}: its data key was wrapped by a key service (provider {wrapped.provider}); "
                "configure encryption.kms to read it"
            )
        try:
            data_key = unwrap_local(self._keyring().get(key_id), wrapped)
        except Exception:
            audit_key_use("local", "unwrap", key_id.hex(), wrapped.context_bucket, key, "error")
            raise
        audit_key_use("local", "unwrap", key_id.hex(), wrapped.context_bucket, key, "ok")
        return data_key


class AwsKms:
    """Data keys from AWS KMS; objects whose keys are local keys' stay readable (``local``)."""

    def __init__(self, cfg: Kms, region: str, local: LocalKeys, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self._region = cfg.region or region
        self._local = local
        self._metrics = metrics
        self._cache: OrderedDict[bytes, tuple[float, DataKey]] = OrderedDict()
        self._stack: Any = None
        self._client: Any = None

    async def start(self) -> None:
        session = aiobotocore.session.get_session()
        credentials = (
            {"aws_access_key_id": self.cfg.access_key_id, "aws_secret_access_key": self.cfg.secret_access_key}
            if self.cfg.access_key_id
            else {}
        )
        config = BotoConfig(
            connect_timeout=self.cfg.request_timeout,
            read_timeout=self.cfg.request_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        creator = session.create_client(
            "kms", region_name=self._region, endpoint_url=self.cfg.endpoint_url, config=config, **credentials
        )
        self._client = await creator.__aenter__()
        self._stack = creator

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.__aexit__(None, None, None)
            self._stack = self._client = None

    async def new_data_key(self, bucket: str, key: str) -> DataKey:
        reply = await self._call(
            "GenerateDataKey",
            (bucket, key),
            KeyId=self.cfg.key_id,
            KeySpec="AES_256",
            EncryptionContext={CONTEXT_BUCKET: bucket, CONTEXT_KEY: key},
        )
        key_ref = str(reply["KeyId"])  # the key's ARN, whatever name key_id gave
        wrapped = WrappedKey(PROVIDER_AWS_KMS, key_ref, bytes(reply["CiphertextBlob"]), bucket)
        data_key = DataKey(bytes(reply["Plaintext"]), wrapped, kms_key_id(key_ref))
        self._remember(data_key)
        return data_key

    async def unwrap(self, key_id: bytes, wrapped: WrappedKey, key: str) -> DataKey:
        if wrapped.provider != PROVIDER_AWS_KMS:
            return await self._local.unwrap(key_id, wrapped, key)
        if key_id != kms_key_id(wrapped.key_ref):
            raise TamperedError("the trailer's key id does not name its KMS key")
        cached = self._cache.get(wrapped.blob)
        if cached is not None and cached[0] > time.monotonic():
            self._cache.move_to_end(wrapped.blob)
            self._lookup(True)
            return cached[1]
        self._lookup(False)
        try:
            reply = await self._call(
                "Decrypt",
                (wrapped.context_bucket, key),
                CiphertextBlob=wrapped.blob,
                KeyId=wrapped.key_ref,
                EncryptionContext={CONTEXT_BUCKET: wrapped.context_bucket, CONTEXT_KEY: key},
            )
        except _Invalid as exc:
            raise TamperedError(f"KMS refuses the trailer's wrapped data key ({exc})") from None
        data_key = DataKey(bytes(reply["Plaintext"]), wrapped, key_id)
        self._remember(data_key)
        return data_key

    def _lookup(self, hit: bool) -> None:
        if self._metrics is not None:
            self._metrics.data_key_lookup(hit)

    def _remember(self, data_key: DataKey) -> None:
        if self.cfg.cache_entries == 0 or self.cfg.cache_seconds == 0:
            return
        self._cache[data_key.wrapped.blob] = (time.monotonic() + self.cfg.cache_seconds, data_key)
        self._cache.move_to_end(data_key.wrapped.blob)
        while len(self._cache) > self.cfg.cache_entries:
            self._cache.popitem(last=False)

    async def _call(self, operation: str, target: tuple[str, str], **params: Any) -> dict[str, Any]:
        """One KMS call for the object ``target`` (bucket, key): metrics and the audit line."""
        method = "generate_data_key" if operation == "GenerateDataKey" else "decrypt"
        try:
            reply: dict[str, Any] = await asyncio.wait_for(
                getattr(self._client, method)(**params), 3 * self.cfg.request_timeout
            )
        except ClientError as exc:
            self._observe(operation, "error", target)
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise _Invalid(f"{code}: {message}") from None
            if code in ("ThrottlingException", "KMSInternalException", "DependencyTimeoutException"):
                raise S3Error("ServiceUnavailable", f"key service busy ({code}); retry", 503) from None
            raise S3Error("InternalError", f"key service refused {operation}: {code}: {message}", 500) from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            self._observe(operation, "error", target)
            raise S3Error("ServiceUnavailable", f"key service unreachable: {exc or 'timed out'}", 503) from None
        self._observe(operation, "ok", target)
        return reply

    def _observe(self, operation: str, outcome: str, target: tuple[str, str]) -> None:
        if self._metrics is not None:
            self._metrics.observe_kms(operation, outcome)
        audit_key_use("aws-kms", operation, self.cfg.key_id, target[0], target[1], outcome)


def audit_key_use(provider: str, operation: str, key_id: str, bucket: str, key: str, outcome: str) -> None:
    """The audit line of one use of a key provider (never key material: ids and names only)."""
    audit.info(
        "key use: %s %s under %s for %s/%s: %s",
        provider,
        operation,
        key_id,
        bucket,
        key,
        outcome,
        extra={
            "event": "key_use",
            "provider": provider,
            "operation": operation,
            "key_id": key_id,
            "bucket": bucket,
            "key": key,
            "outcome": outcome,
        },
    )


class _Invalid(Exception):
    """KMS calls the wrapped data key invalid (an integrity failure, not an outage)."""


def build_provider(keyring: Callable[[], KeyRing], kms: Kms | None, region: str, metrics: Metrics) -> KeyProvider:
    local = LocalKeys(keyring)
    return local if kms is None else AwsKms(kms, region, local, metrics)
