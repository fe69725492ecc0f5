"""Stored objects altered behind the proxy's back: GET fails, it never returns other bytes."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.functional.test_objects import MIB, payload, raw_bytes

KEY = "node1/data/ks1/t-1/nb-1-big-Data.db"
OTHER = "node1/data/ks1/t-1/nb-2-big-Data.db"


def read_through(client: Any, bucket: str, key: str, **kwargs: Any) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()
    return data


def assert_refused(client: Any, bucket: str, key: str, original: bytes, **kwargs: Any) -> None:
    """The read fails (an S3 error before the body, or a cut connection): no substitute bytes."""
    try:
        got = read_through(client, bucket, key, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError):
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        return
    pytest.fail(f"tampered object was served ({len(got)} bytes, original {len(original)})")


def put_pair(client: Any, raw_client: Any, bucket: str) -> tuple[bytes, bytes]:
    data = payload(3 * MIB + 100, 1)
    client.put_object(Bucket=bucket, Key=KEY, Body=data)
    client.put_object(Bucket=bucket, Key=OTHER, Body=payload(3 * MIB + 100, 2))
    return data, raw_bytes(raw_client, bucket, KEY)


@pytest.mark.parametrize("offset", [10, 2 * MIB, -200, -5])
def test_bit_flip(proxy_client: Any, raw_client: Any, bucket: str, offset: int) -> None:
    data, stored = put_pair(proxy_client, raw_client, bucket)
    tampered = bytearray(stored)
    tampered[offset] ^= 0x01
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=bytes(tampered))
    assert_refused(proxy_client, bucket, KEY, data)
    # A range read checks only the chunks it covers (and the trailer): it fails, or returns
    # authentic bytes when the flipped bit lies in another chunk.
    try:
        got = read_through(proxy_client, bucket, KEY, Range="bytes=2097152-2097200")
    except (ClientError, BotoCoreError):
        return
    assert got == data[2097152:2097201]


@pytest.mark.parametrize("cut", [1, 12, 100, MIB])
def test_truncation(proxy_client: Any, raw_client: Any, bucket: str, cut: int) -> None:
    data, stored = put_pair(proxy_client, raw_client, bucket)
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=stored[:-cut])
    assert_refused(proxy_client, bucket, KEY, data)


def test_chunk_swapped_from_another_object(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data, stored = put_pair(proxy_client, raw_client, bucket)
    other = raw_bytes(raw_client, bucket, OTHER)
    record = MIB + 85  # the first record of both objects has the same size
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=other[:record] + stored[record:])
    assert_refused(proxy_client, bucket, KEY, data)


def test_object_replaced_by_another_encrypted_object(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data, _ = put_pair(proxy_client, raw_client, bucket)
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=raw_bytes(raw_client, bucket, OTHER))
    assert_refused(proxy_client, bucket, KEY, data)
    with pytest.raises(ClientError) as err:
        proxy_client.head_object(Bucket=bucket, Key=KEY)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_stripped_trailer_is_not_served_as_plaintext(proxy_client: Any, raw_client: Any, bucket: str) -> None:
    data, stored = put_pair(proxy_client, raw_client, bucket)
    first_records = stored[: 2 * (MIB + 85)]
    raw_client.put_object(Bucket=bucket, Key=KEY, Body=first_records)
    assert_refused(proxy_client, bucket, KEY, data)
    # The listing still answers; the entry shows a size and ETag no object can have.
    listed = proxy_client.list_objects_v2(Bucket=bucket, Prefix=KEY)["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [(KEY, -1, '"00000000000000000000000000000000-0"')]


def test_moved_backup_needs_accept_moved(make_proxy: Any, raw_client: Any, bucket: str) -> None:
    """A prefix moved outside the proxy is refused, unless the operator names the move."""
    first = make_proxy()
    data = payload(MIB + 5, 4)
    first.client().put_object(Bucket=bucket, Key="old/node1/data/ks/t/f-Data.db", Body=data)
    raw_client.copy_object(
        Bucket=bucket,
        Key="new/node1/data/ks/t/f-Data.db",
        CopySource={"Bucket": bucket, "Key": "old/node1/data/ks/t/f-Data.db"},
    )
    assert_refused(first.client(), bucket, "new/node1/data/ks/t/f-Data.db", data)
    moved = make_proxy(encryption={"accept_moved": [{"from_prefix": "old/", "to_prefix": "new/"}]})
    assert read_through(moved.client(), bucket, "new/node1/data/ks/t/f-Data.db") == data
    got = read_through(moved.client(), bucket, "new/node1/data/ks/t/f-Data.db", Range="bytes=5-10")
    assert got == data[5:11]
