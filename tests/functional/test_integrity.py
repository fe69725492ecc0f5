"""An attacker who can write the bucket but has no key: nothing planted is served as data.

Each test acts on the bucket directly (``raw_client``), as the attacker would, then looks at
what a client of the proxy sees: GET and HEAD refused, listings still answering with the damaged
entry marked, ``integrity_failures_total`` counting it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.functional.test_durability import metric
from tests.functional.test_objects import DATA_KEY, MIB, cutoff_after, payload, raw_bytes, wait_past
from tests.support.servers import ProxyProcess

# SeaweedFS too (tests/conftest.py): a store's differences show up here first.
pytestmark = pytest.mark.all_upstreams

OTHER_KEY = "node1/data/ks1/table-1/nb-2-big-Data.db"
DAMAGED = (-1, '"00000000000000000000000000000000-0"')


def refused(client: Any, bucket: str, key: str) -> None:
    """GET and HEAD of ``key`` fail with the integrity error, and no byte of it is served."""
    with pytest.raises(ClientError) as err:
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert err.value.response["Error"]["Code"] == "InternalError"
    with pytest.raises(ClientError) as err:
        client.head_object(Bucket=bucket, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def listed(client: Any, bucket: str) -> dict[str, tuple[int, str]]:
    return {o["Key"]: (o["Size"], o["ETag"]) for o in client.list_objects_v2(Bucket=bucket)["Contents"]}


def test_planted_plaintext_is_refused(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    """An SSTable replaced by plaintext of the attacker's choosing: refused, listed as damaged."""
    client = proxy.client()
    good = payload(MIB + 3, 1)
    client.put_object(Bucket=bucket, Key=OTHER_KEY, Body=good)
    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=payload(1000, 2))
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"attacker's table")
    refused(client, bucket, DATA_KEY)
    assert metric(proxy, "integrity_failures_total", kind="unexpected-plaintext") >= 2
    view = listed(client, bucket)
    assert view[DATA_KEY] == DAMAGED
    assert view[OTHER_KEY] == (len(good), f'"{hashlib.md5(good).hexdigest()}"')
    assert "integrity check failed for 'node1/data/ks1/table-1/nb-1-big-Data.db'" in proxy.log_text()


@pytest.mark.parametrize("where", ["first-byte-of-length", "fernet-version"])
def test_stripped_trailer_and_edited_first_record(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str, where: str
) -> None:
    """Ciphertext whose trailer was cut and whose first record no longer looks like ours is still
    refused, even with a legacy cutoff: it was written after it."""
    probe = make_proxy()
    data = payload(2 * MIB + 10, 3)
    probe.client().put_object(Bucket=bucket, Key=DATA_KEY, Body=data)
    cutoff = cutoff_after(raw_client, bucket, DATA_KEY)
    wait_past(cutoff)
    stored = bytearray(raw_bytes(raw_client, bucket, DATA_KEY)[: 2 * (MIB + 85)])
    stored[0 if where == "first-byte-of-length" else 4] ^= 0x40
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=bytes(stored))
    proxy = make_proxy(encryption={"legacy_plaintext_before": cutoff})
    refused(proxy.client(), bucket, DATA_KEY)
    assert listed(proxy.client(), bucket)[DATA_KEY] == DAMAGED


def test_cutoff_declares_only_older_objects(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str
) -> None:
    old = b"written before encryption"
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=old)
    cutoff = cutoff_after(raw_client, bucket, DATA_KEY)
    wait_past(cutoff)
    raw_client.put_object(Bucket=bucket, Key=OTHER_KEY, Body=b"planted after")
    client = make_proxy(encryption={"legacy_plaintext_before": cutoff}).client()
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == old
    refused(client, bucket, OTHER_KEY)
    view = listed(client, bucket)
    assert view == {DATA_KEY: (len(old), f'"{hashlib.md5(old).hexdigest()}"'), OTHER_KEY: DAMAGED}


def test_cached_legacy_view_obeys_todays_cutoff(
    make_proxy: Callable[..., ProxyProcess], raw_client: Any, bucket: str
) -> None:
    """A view cached while the cutoff allowed it is refused once the cutoff is removed."""
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"old")
    proxy = make_proxy(encryption={"legacy_plaintext_before": cutoff_after(raw_client, bucket, DATA_KEY)})
    assert proxy.client().head_object(Bucket=bucket, Key=DATA_KEY)["ContentLength"] == 3
    proxy.restart(encryption={**proxy.config["encryption"], "legacy_plaintext_before": None})
    refused(proxy.client(), bucket, DATA_KEY)
    assert listed(proxy.client(), bucket)[DATA_KEY] == DAMAGED


def test_empty_object_planted_over_a_table(proxy: ProxyProcess, raw_client: Any, bucket: str) -> None:
    client = proxy.client()
    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=payload(500, 4))
    raw_client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"")
    refused(client, bucket, DATA_KEY)
    client.put_object(Bucket=bucket, Key=DATA_KEY, Body=b"")  # an empty object written by the proxy is fine
    assert client.get_object(Bucket=bucket, Key=DATA_KEY)["Body"].read() == b""
