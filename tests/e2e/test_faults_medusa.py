"""Unmodified Medusa 0.31 through the proxy while the bucket misbehaves.

The proxy's upstream is a ``tests.support.faults.FaultInjector`` in front of moto or ``rclone serve s3``
that resets one upstream connection in ten (before the request reaches the bucket) and answers an
occasional 503 SlowDown, at random with a fixed seed.  Medusa's own retries (botocore's, in its S3
driver; tenacity's are off, see tests/support/medusa_driver.py) and the proxy's must carry a full backup
and its restore through it, and the restored files must be byte-identical to the snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_medusa_e2e import FQDN, backup, download, verify
from tests.functional.test_faults import LOST_ANSWER, assert_clean_log, proxy_through
from tests.support.faults import FaultInjector
from tests.support.medusa_helpers import FakeSnapshot, MedusaDriverError, medusa_storage
from tests.support.servers import ProxyProcess, S3Server


@pytest.fixture
def injector(upstream: S3Server) -> Iterator[FaultInjector]:
    with FaultInjector(upstream.endpoint_url) as inj:
        yield inj


RESETS = {
    # the request never reaches the bucket
    "before": ["reset_before"] * 3,
    # half of them after the bucket did the work: the answer is lost
    "after": ["reset_before", "reset_after", "reset_after"],
}


@pytest.mark.parametrize("reset", sorted(RESETS))
def test_backup_and_restore_through_resets_and_503s(
    reset: str,
    make_proxy: Callable[..., ProxyProcess],
    injector: FaultInjector,
    upstream: S3Server,
    bucket: str,
    snapshot: FakeSnapshot,
    tmp_path: Path,
    raw_client: Any,
    request: pytest.FixtureRequest,
) -> None:
    if reset == "after" and upstream.name == "rclone":
        request.applymarker(pytest.mark.xfail(reason=LOST_ANSWER, raises=MedusaDriverError, strict=True))
    proxy = proxy_through(make_proxy, injector)
    storage = medusa_storage(proxy.endpoint_url, bucket, proxy.access_key, proxy.secret_key)
    # 13% of the requests faulted: three resets for one 503 (about 1 in 10, and 1 in 30).
    injector.chaos(0.13, [*RESETS[reset], "error503"], seed=20261202)
    if reset == "after":  # and surely one part the bucket stored whose answer was lost
        injector.add("reset_after", method="PUT", query="partNumber=1")
    tmp = tmp_path / "t"
    result = backup(storage, "faulty", snapshot, tmp)
    assert sorted(result["uploaded_files"]) == sorted(snapshot.files)
    restored = download(storage, "faulty", tmp_path / "restore", tmp)
    assert snapshot.compare_download(restored["destination"]) == []
    checked = verify(storage, "faulty", tmp, md5=True)
    assert checked["errors"] == [], checked["output"]
    faulted = injector.faulted()
    slowdowns = len(injector.faulted("error503"))
    resets = len(faulted) - slowdowns
    print(f"\n{len(injector.events)} upstream requests, {resets} reset, {slowdowns} answered 503")
    assert resets >= 5 and slowdowns >= 1, faulted
    # what is stored is whole: every data object of the backup reads back through the proxy
    injector.clear()
    keys = [
        o["Key"]
        for page in raw_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{FQDN}/faulty/data/")
        for o in page.get("Contents", [])
    ]
    assert len(keys) == len(snapshot.files)
    assert_clean_log(proxy)
