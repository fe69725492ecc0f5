"""The view cache: memory in front, SQLite behind, one version per key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxy import cache
from proxy.cache import CachedView, CompletedUpload, StateStore

VIEW = CachedView("encrypted", 10, "0" * 32, b"trailer")


async def test_written_views_are_on_disk_after_close(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "c.sqlite"))
    await store.start()
    await store.put_views("b", [("k1", "v1", VIEW), ("k2", "v2", VIEW)])
    await store.put_view("b", "k1", "v3", VIEW)  # an overwrite replaces the older version
    await store.close()

    again = StateStore(str(tmp_path / "c.sqlite"))
    await again.start()
    try:
        assert await again.get_views("b", [("k1", "v1"), ("k1", "v3"), ("k2", "v2"), ("k3", "v1")]) == {
            ("k1", "v3"): VIEW,
            ("k2", "v2"): VIEW,
        }
        assert await again.count_views() == 2
    finally:
        await again.close()


async def test_recent_views_are_answered_from_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RECENT_VIEWS", 2)
    store = StateStore(str(tmp_path / "c.sqlite"))
    await store.start()
    try:
        await store.put_views("b", [(f"k{i}", "v", VIEW) for i in range(3)])
        disk_reads = 0
        real_run = store._run

        async def counting(fn):  # type: ignore[no-untyped-def]
            nonlocal disk_reads
            disk_reads += 1
            return await real_run(fn)

        monkeypatch.setattr(store, "_run", counting)
        assert await store.get_views("b", [("k1", "v"), ("k2", "v")]) == {("k1", "v"): VIEW, ("k2", "v"): VIEW}
        assert disk_reads == 0
        assert await store.get_views("b", [("k0", "v")]) == {("k0", "v"): VIEW}  # evicted: from disk
        assert disk_reads == 1
        assert await store.get_views("b", [("k2", "other-version")]) == {}
        await store.forget_views("b", ["k2"])
        assert await store.get_views("b", [("k2", "v")]) == {}
    finally:
        await store.close()


async def test_completed_uploads_are_answered_again_for_a_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(str(tmp_path / "c.sqlite"))
    await store.start()
    done = CompletedUpload("u1", "b", "k", {"Content-Type": "application/xml"}, b"<CompleteMultipartUploadResult/>")
    try:
        await store.put_completed(done)
        assert await store.get_completed("u1") == done
        assert await store.get_completed("u2") is None
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + cache.COMPLETED_SECONDS + 1)
        assert await store.get_completed("u1") is None  # too old to be a retry
        await store.put_completed(CompletedUpload("u2", "b", "k", {}, b""))  # and swept on the next write
        monkeypatch.undo()
        assert await store.get_completed("u1") is None
        assert await store.get_completed("u2") is not None
    finally:
        await store.close()
