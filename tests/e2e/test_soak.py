"""A short soak (bench/soak.py) per upstream: 4 clients x 20 s of mixed operations, every byte checked.

Asserts no errors, no checker failures (every GET, ranged GET, HEAD and LIST answer is one the
model allows), no integrity failure in the proxy's metrics, and no leaks: client connections closed
again, file descriptors other than sockets back to the start, upstream connections within the pool,
threads bounded, RSS grown by less than a generous bound.

A read that raced a write of its key may be cut short (bench/soak.py ``cut_short``: rclone cuts
the read of a file replaced meanwhile), never answered with an error or other bytes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENTS = 4
SECONDS = 20.0
UPSTREAM_POOL = 64  # upstream.max_pool_connections (the default)
RSS_GROWTH_MB = 150.0


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = load_soak()


@pytest.mark.parametrize("upstream", ["moto", "rclone"])
def test_short_soak(upstream: str, tmp_path: Path) -> None:
    result = soak.run_soak(
        soak.SoakOptions(upstream=upstream, clients=CLIENTS, seconds=SECONDS, workdir=tmp_path, verbose=False)
    )
    print(soak.report(result))
    assert result.ops > 100, "the clients hardly ran"
    assert set(result.by_op) >= {"put_small", "get", "range", "head", "list", "delete"}
    assert result.errors == 0, result.error_samples
    assert result.checker_failures == 0, result.checker_samples
    for stats in result.proxy_stats:
        start, end = stats.start, stats.end
        assert end.client_conns <= start.client_conns, "client connections left open"
        # +3 at most: the cache's SQLite -wal and -shm files open on its first write.
        assert end.fds - end.sockets <= start.fds - start.sockets + 4, "file descriptors leaked"
        assert end.sockets <= start.sockets + end.upstream_conns + 2, "sockets leaked"
        assert end.upstream_conns <= 2 * UPSTREAM_POOL, "upstream connections beyond the pools"
        assert end.threads <= start.threads + 16, "threads leaked"
        assert end.rss_mb - start.rss_mb < RSS_GROWTH_MB, f"RSS grew {start.rss_mb:.0f} -> {end.rss_mb:.0f} MB"
    assert result.races == 0, result.race_samples
    assert result.integrity_failures == 0
    if upstream == "moto":  # it serves a GET whole from the version it began with
        assert result.cut_reads == 0
