"""The daemon: aiohttp application, health endpoints, metrics, lifecycle and signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.config import Config
from proxy.logs import log_request
from proxy.metrics import Metrics
from proxy.s3.errors import S3Error
from proxy.s3.frontend import Frontend
from proxy.service import PassthroughService
from proxy.tls import server_ssl_context
from proxy.upstream import Upstream

log = logging.getLogger("proxy.server")
access_log = logging.getLogger("proxy.access")

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
READY_CACHE_SECONDS = 5.0


@dataclass
class State:
    """What the running daemon holds; rebuilt parts are swapped in on SIGHUP."""

    config: Config
    upstream: Upstream
    service: Any
    frontend: Frontend
    metrics: Metrics
    ready_at: float = 0.0
    draining: bool = False
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


def build_service(config: Config, upstream: Upstream, metrics: Metrics) -> Any:
    """Passthrough until encryption is wired in (proxy.encrypted)."""
    try:
        from proxy.encrypted import build_encrypted_service
    except ImportError:
        return PassthroughService(upstream)
    return build_encrypted_service(config, upstream, metrics)


def _observer(metrics: Metrics) -> Any:
    def observe(fields: dict[str, Any]) -> None:
        operation = str(fields.get("operation") or "Unknown")
        status = int(fields.get("status") or 0)
        metrics.observe_request(operation, status, float(fields.get("duration_ms") or 0) / 1000)
        metrics.add_client_bytes(received=int(fields.get("bytes_in") or 0),
                                 sent=int(fields.get("bytes_out") or 0))
        log_request(access_log, **fields)

    return observe


async def _upstream_ready(state: State) -> bool:
    if time.monotonic() - state.ready_at < READY_CACHE_SECONDS:
        return True
    try:
        await state.upstream.call("list_buckets")
    except S3Error as err:
        # A credential allowed to use a bucket but not to list buckets still proves the
        # endpoint answers and signs.
        if err.status != 403:
            log.warning("readiness: upstream answered %s %s", err.status, err.code)
            return False
    state.ready_at = time.monotonic()
    return True


def make_app(config: Config, upstream: Upstream | None = None) -> web.Application:
    """The aiohttp application; the upstream client starts with the app."""
    metrics = Metrics()
    upstream = upstream or Upstream(config.upstream)
    service = build_service(config, upstream, metrics)
    frontend = Frontend(
        service,
        credentials=config.client_secret,
        virtual_suffixes=config.listen.virtual_host_suffixes,
        max_skew_seconds=config.limits.max_clock_skew_seconds,
        observe=_observer(metrics),
    )
    state = State(config, upstream, service, frontend, metrics)
    app = web.Application(client_max_size=0)
    app["state"] = state
    limiter = asyncio.Semaphore(config.limits.max_concurrent_requests)

    async def dispatch(http: web.Request) -> web.StreamResponse:
        if http.path in HEALTH_PATHS and "authorization" not in http.headers and not http.query_string:
            return await _health(http, state)
        if state.draining:
            return await state.frontend._error(
                http, S3Error("ServiceUnavailable", "The proxy is shutting down", 503), "DRAINING"
            )
        if limiter.locked():
            return await state.frontend._error(
                http, S3Error("SlowDown", "Please reduce your request rate.", 503), "OVERLOADED"
            )
        async with limiter:
            metrics.request_started()
            try:
                return await state.frontend.handle(http)
            finally:
                metrics.request_finished()

    app.router.add_route("*", "/{tail:.*}", dispatch)

    async def lifecycle(app: web.Application) -> Any:
        await upstream.start()
        if hasattr(service, "start"):
            await service.start()
        metrics.set_build_info(__version__, getattr(service, "key_ids", []))
        yield
        if hasattr(service, "close"):
            await service.close()
        await upstream.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _health(http: web.Request, state: State) -> web.StreamResponse:
    if http.path == "/healthz":
        return web.Response(text="ok\n")
    if http.path == "/metrics":
        body, content_type = state.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
    if not state.draining and await _upstream_ready(state):
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain in-flight requests and exit."""
    app = make_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        auto_decompress=False,
        read_bufsize=1 << 20,
        shutdown_timeout=config.limits.drain_timeout,
    )
    await runner.setup()
    ssl_context = None
    if config.tls is not None:
        ssl_context = server_ssl_context(config.tls.cert_file, config.tls.key_file)
    site = web.TCPSite(
        runner, config.listen.host, config.listen.port, ssl_context=ssl_context,
        shutdown_timeout=config.limits.drain_timeout,
    )
    await site.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app))
    scheme = "https" if ssl_context else "http"
    server: Any = site._server
    sockets = server.sockets if server is not None else ()
    address = sockets[0].getsockname() if sockets else (config.listen.host, config.listen.port)
    log.info(
        "ready: listening on %s://%s:%d, upstream %s",
        scheme, address[0], address[1], config.upstream.endpoint_url or f"AWS S3 ({config.upstream.region})",
        extra={"event": "ready", "port": address[1]},
    )
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %.0fs)", config.limits.drain_timeout,
             extra={"event": "draining"})
    app["state"].draining = True
    await runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})


def _reload(app: web.Application) -> None:
    state: State = app["state"]
    reload = getattr(state.service, "reload", None)
    if reload is None:
        log.info("SIGHUP: nothing to reload")
        return
    with contextlib.suppress(Exception):
        reload()
