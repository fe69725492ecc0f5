"""The daemon: aiohttp application, health endpoints, metrics, lifecycle and signals."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError

from proxy import __version__
from proxy.config import ClientCredential, Config, ConfigError, load_config
from proxy.daemon.tls import server_ssl_context
from proxy.logs import log_request
from proxy.metrics import Metrics
from proxy.objects import build_service
from proxy.s3.body import PIECE
from proxy.s3.errors import S3Error
from proxy.s3.frontend import Frontend
from proxy.s3.routing import ClientScope, bucket_and_key, route
from proxy.upstream import Upstream

log = logging.getLogger("proxy.daemon.server")
access_log = logging.getLogger("proxy.access")

HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# A successful readiness check is reused this long (probes may come every second); a failed
# one is never reused. The upstream check itself gives up after READY_TIMEOUT_SECONDS.
READY_CACHE_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 5.0
# A scrape of /metrics runs the readiness check itself when none ran for this long (no probe
# calls /readyz under systemd), so that ``medusa_crypt_proxy_ready`` is never older than this.
READY_STALE_SECONDS = 15.0
# After the drain, requests still running get this long before they are cancelled.
CUT_TIMEOUT_SECONDS = 1.0


# glibc malloc, tuned from inside the daemon so every way of running it (systemd, the container,
# Kubernetes, ``python -m proxy`` by hand) gets the same memory behaviour. Large buffers (1 MiB
# records, 128 KiB body pieces) are allocated in the crypto and hash threads and freed in the event
# loop's: with glibc's default of up to 8 arenas per core each thread's arena keeps its own free
# memory, and none of it goes back to the system after a burst, so the next burst starts from the
# last one's peak. Two arenas and a trim whenever the daemon goes idle with much memory free keep
# the peak at what is in flight (``bench/run.py --only rss``), at the same throughput; fixing the
# mmap threshold instead (MALLOC_MMAP_THRESHOLD_) cost ~15% of PUT throughput in page faults.
M_ARENA_MAX = -8
MALLOC_ARENAS = 2
TRIM_FREE_BYTES = 16 << 20  # trim when the arenas hold more free memory than this


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class Allocator:
    """glibc's malloc: arena limit at start, and giving free memory back when idle (no-ops elsewhere)."""

    def __init__(self) -> None:
        self._libc: Any = None
        try:
            glibc = os.confstr("CS_GNU_LIBC_VERSION")
        except (ValueError, OSError):
            glibc = None
        if glibc:
            libc = ctypes.CDLL(None)
            if all(hasattr(libc, name) for name in ("mallopt", "malloc_trim", "mallinfo2")):
                libc.mallinfo2.restype = _MallInfo2
                self._libc = libc

    def limit_arenas(self, arenas: int = MALLOC_ARENAS) -> bool:
        """Cap the number of malloc arenas (call before the worker threads start)."""
        return self._libc is not None and bool(self._libc.mallopt(M_ARENA_MAX, arenas))

    def free_bytes(self) -> int:
        """Memory malloc holds free (not given back to the system), 0 when unknown."""
        return int(self._libc.mallinfo2().fordblks) if self._libc is not None else 0

    def trim(self, threshold: int = TRIM_FREE_BYTES) -> bool:
        """Give free memory back to the system if malloc holds more than ``threshold`` of it."""
        if self._libc is None or self.free_bytes() <= threshold:
            return False
        return bool(self._libc.malloc_trim(0))


ALLOCATOR = Allocator()


@dataclass
class State:
    """What the running daemon holds; rebuilt parts are swapped in on SIGHUP."""

    config: Config
    upstream: Upstream
    service: Any
    frontend: Frontend
    metrics: Metrics
    observe: Any = None
    ready_at: float = 0.0
    ready_checked_at: float = 0.0  # when the readiness check last ran (monotonic), 0: never
    cache_counted_at: float = 0.0
    draining: bool = False
    active: int = 0  # requests being handled (health checks included)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()
            ALLOCATOR.trim()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if ``timeout`` ran out first."""
        if self.active == 0:
            return True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return self.active == 0
        return True


def _observer(metrics: Metrics) -> Any:
    def observe(fields: dict[str, Any]) -> None:
        # A request refused before routing (bad signature, unknown sub-resource) has no
        # operation yet; every access line still carries the field.
        operation = str(fields.get("operation") or "Unknown")
        fields["operation"] = operation
        status = int(fields.get("status") or 0)
        if fields.get("error") == "RequestTimeout":  # only proxy.s3.body raises it: the client's body stalled
            metrics.timeout("client_body")
        metrics.observe_request(operation, status, float(fields.get("duration_ms") or 0) / 1000)
        metrics.add_client_bytes(received=int(fields.get("bytes_in") or 0), sent=int(fields.get("bytes_out") or 0))
        log_request(access_log, **fields)

    return observe


async def _upstream_ready(state: State) -> bool:
    if state.ready_at and time.monotonic() - state.ready_at < READY_CACHE_SECONDS:
        return True
    try:
        await asyncio.wait_for(state.upstream.call("list_buckets"), READY_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("readiness: upstream did not answer within %.0fs", READY_TIMEOUT_SECONDS)
        state.ready_at = 0.0
        return False
    except S3Error as err:
        # A credential allowed to use a bucket but not to list buckets still proves the
        # endpoint answers and signs.
        if err.status != 403:
            # The message tells a bucket's answer from the proxy's own failure to reach it (no
            # credentials, connection refused), which are 503s too.
            log.warning("readiness: upstream not ready: %s %s: %s", err.status, err.code, err.message)
            state.ready_at = 0.0
            return False
    state.ready_at = time.monotonic()
    return True


def _operation_of(http: web.Request, state: State) -> tuple[str, str | None, str | None]:
    """Operation, bucket and key of a request that is refused before it is handled."""
    try:
        bucket, key = bucket_and_key(http.raw_path, http.host, state.config.listen.virtual_host_suffixes)
        return route(http.method, bucket, key, http.query, http.headers).operation, bucket, key
    except Exception:
        return "Unknown", None, None


async def _reject(http: web.Request, state: State, err: S3Error) -> web.StreamResponse:
    """Answer ``err`` (503 while draining or overloaded) at once; counted and logged as usual."""
    started = time.monotonic()
    request_id = secrets.token_hex(8).upper()
    response = await Frontend.error_response(http, err, request_id)
    if state.draining:
        response.force_close()  # send the client elsewhere (or to the restarted proxy)
    operation, bucket, key = _operation_of(http, state)
    if state.observe is not None:
        state.observe(
            {
                "request_id": request_id,
                "method": http.method,
                "operation": operation,
                "bucket": bucket,
                "key": key,
                "status": response.status,
                "error": err.code,
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
            }
        )
    return response


def client_scopes(clients: list[ClientCredential]) -> Callable[[str], ClientScope | None]:
    """Access key id -> that client's scope (None for a client that may touch everything)."""
    scopes = {c.access_key_id: ClientScope(frozenset(c.buckets), c.prefix) for c in clients if c.buckets or c.prefix}
    return scopes.get


def make_app(config: Config, upstream: Upstream | None = None) -> web.Application:
    """The aiohttp application; the upstream client starts with the app."""
    metrics = Metrics()
    if upstream is None:
        upstream = Upstream(config.upstream, metrics)
    elif upstream.metrics is None:
        upstream.metrics = metrics
    service = build_service(config, upstream, metrics)
    observe = _observer(metrics)
    frontend = Frontend(
        service,
        credentials=config.client_secret,  # replaced on SIGHUP (see _reload), as are the scopes
        scopes=client_scopes(config.clients),
        virtual_suffixes=config.listen.virtual_host_suffixes,
        max_skew_seconds=config.limits.max_clock_skew_seconds,
        observe=observe,
        body_timeout=config.limits.body_timeout,
    )
    state = State(config, upstream, service, frontend, metrics, observe)
    app = web.Application(client_max_size=0)
    app["state"] = state
    limiter = asyncio.Semaphore(config.limits.max_concurrent_requests)

    async def dispatch(http: web.Request) -> web.StreamResponse:
        state.enter()
        try:
            return await _dispatch(http)
        finally:
            state.leave()

    async def _dispatch(http: web.Request) -> web.StreamResponse:
        if http.path in HEALTH_PATHS and "authorization" not in http.headers and not http.query_string:
            return await _health(http, state)
        if state.draining:
            metrics.request_rejected("draining")
            return await _reject(
                http,
                state,
                S3Error("ServiceUnavailable", "The proxy is shutting down; retry against a running proxy.", 503),
            )
        if limiter.locked():
            metrics.request_rejected("overload")
            return await _reject(http, state, S3Error("SlowDown", "Please reduce your request rate.", 503))
        async with limiter:
            metrics.request_started()
            try:
                return await state.frontend.handle(http)
            finally:
                metrics.request_finished()

    async def expect(http: web.Request) -> web.StreamResponse | None:
        return await state.frontend.expect_continue(http)

    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=expect)

    async def lifecycle(app: web.Application) -> Any:
        await upstream.start()
        await service.start()
        metrics.set_build_info(__version__, service.key_ids)
        yield
        await service.close()
        await upstream.close()

    app.cleanup_ctx.append(lifecycle)
    return app


@dataclass(frozen=True)
class ClientTimeouts:
    """What ``ClientConnection`` enforces beyond aiohttp's own keep-alive timeout."""

    header: float  # a request head complete within this of its first byte
    send: float  # a response not read by its client for this long: the connection is cut
    metrics: Metrics | None = None


class ClientConnection(web_protocol.RequestHandler):
    """aiohttp's connection handler with the client-side bounds aiohttp has no option for.

    aiohttp closes a connection idle for ``keepalive_timeout`` (from its start, and after each
    response); that stays aiohttp's (only counted here). Added:

    - header timeout: a request head still incomplete ``header`` seconds after its first byte
      closes the connection (a client trickling its head holds a connection, not a slot);
    - send timeout: a client that reads nothing of its response for ``send`` seconds (the
      transport's buffer stays full) gets its connection cut, so the request ends and frees its
      concurrency slot;
    - a bad chunk in the body of the request being read: aiohttp's C parser queues the error as a
      new message instead of failing that body, whose read would wait until the client went
      away; it is handed to the request (which answers 400 IncompleteBody) and the connection is
      closed after the answer.

    Timers are moved lazily (each fires at most once per timeout to look again), so reads and
    writes only note the time. This leans on aiohttp internals (``_waiter``, ``_messages``,
    ``_current_request``, ``_process_keepalive``); tests/functional/test_timeouts.py pins each behaviour.
    """

    __slots__ = ("_head_timer", "_limits", "_send_since", "_send_timer")

    def __init__(self, manager: web.Server, limits: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._send_since: float | None = None

    def _count(self, kind: Any) -> None:
        if self._limits.metrics is not None:
            self._limits.metrics.timeout(kind)

    # --- the request head --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._waiter
        if self._messages or self._current_request is not None:
            self._stop_head_timer()
            if self._current_request is not None and self._messages:
                self._hand_over_parse_error()
        elif (
            data
            and self._head_timer is None
            and ((waiter is not None and not waiter.done()) or self._request_count == 0)
        ):
            # Bytes of a request head, not all of it yet: the head's clock starts.
            self._head_timer = self._loop.call_later(self._limits.header, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close or self._messages or self._current_request is not None:
            return
        self._count("client_header")
        self.force_close()

    def _process_keepalive(self) -> None:
        open_before = self.transport is not None and not self._force_close
        super()._process_keepalive()
        if open_before and self._force_close:
            self._count("client_header" if self._head_timer is not None else "client_idle")
            self._stop_head_timer()

    def _hand_over_parse_error(self) -> None:
        """A parse error queued while the current request's body is unfinished is that body's."""
        request = self._current_request
        if request is None or request.content.is_eof():
            return
        for index, (message, _) in enumerate(self._messages):
            exc = getattr(message, "exc", None)  # aiohttp's _ErrInfo; a request has no .exc
            if isinstance(exc, HttpProcessingError):
                del self._messages[index]
                request.content.set_exception(exc)
                request.content.feed_eof()  # nothing left to linger over
                self.close()  # after the answer: the rest of the bytes cannot be parsed
                return

    # --- the response ------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._send_since = now = self._loop.time()
        if self._send_timer is None:
            self._send_timer = self._loop.call_at(now + self._limits.send, self._check_send)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._send_since = None

    def _check_send(self) -> None:
        self._send_timer = None
        since = self._send_since
        if since is None or self.transport is None:
            return
        due = since + self._limits.send
        if self._loop.time() < due:
            self._send_timer = self._loop.call_at(due, self._check_send)
            return
        self._count("client_send")
        self.transport.abort()  # the buffered response cannot be flushed: no graceful close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)


class _Server(web.Server):
    """aiohttp's low-level server, making ``ClientConnection`` handlers."""

    def __init__(self, *args: Any, limits: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits

    def __call__(self) -> ClientConnection:
        return ClientConnection(self, self.limits, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``ClientConnection``s."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, *, limits: ClientTimeouts, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts and freezes the app
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=self._limits,
            **server._kwargs,
        )


CACHE_COUNT_SECONDS = 1.0


async def _refresh_cache_entries(state: State) -> None:
    """Keep ``cache_entries`` current at scrape time (counted at most once a second)."""
    store = getattr(state.service, "store", None)
    count = getattr(store, "count_views", None)
    now = time.monotonic()
    if count is None or now - state.cache_counted_at < CACHE_COUNT_SECONDS:
        return
    state.cache_counted_at = now
    try:
        state.metrics.set_cache_entries(await count())
    except Exception as exc:  # a metric must never fail the scrape
        log.warning("metrics: cannot count cache entries: %s", exc)


async def _health(http: web.Request, state: State) -> web.StreamResponse:
    if http.path == "/healthz":
        return web.Response(text="ok\n")
    if http.path == "/metrics":
        await _refresh_cache_entries(state)
        if time.monotonic() - state.ready_checked_at >= READY_STALE_SECONDS:
            await _ready(state)
        body, content_type = state.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
    if await _ready(state):
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def _ready(state: State) -> bool:
    """The readiness check (not draining, the upstream answers), kept in ``medusa_crypt_proxy_ready``."""
    ready = not state.draining and await _upstream_ready(state)
    state.ready_checked_at = time.monotonic()
    state.metrics.set_ready(ready)
    return ready


async def serve(
    config: Config,
    stop: asyncio.Event | None = None,
    config_path: str | os.PathLike[str] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain in-flight requests and exit.

    SIGHUP re-reads ``config_path`` (the file the daemon was started with) and applies its
    client credentials and key files; see ``_reload``. ``on_ready`` runs once the port is bound.
    """
    ALLOCATOR.limit_arenas()
    app = make_app(config)
    limits = config.limits
    runner = _Runner(
        app,
        limits=ClientTimeouts(limits.header_timeout, limits.body_timeout, app["state"].metrics),
        handle_signals=False,
        access_log=None,
        auto_decompress=False,
        # Request bodies are buffered up to twice this (aiohttp's high-water mark) per request, and
        # read in pieces this large (proxy.s3.body.PIECE): 128 KiB keeps 32 parts in flight within
        # the memory target at the same throughput (see the commit that set it; 1 MiB reads gave
        # 277 MiB for 4 clients x (PUT+GET), 256 KiB 174-186 MiB).
        read_bufsize=PIECE,
        # An idle connection (before its first request, between requests) is closed after this;
        # ClientConnection adds the header and send timeouts aiohttp has no option for.
        keepalive_timeout=limits.keepalive_timeout,
        # Requests are drained before runner.cleanup() (see below); what is left then is cut.
        shutdown_timeout=CUT_TIMEOUT_SECONDS,
    )
    await runner.setup()
    try:
        ssl_context = None
        if config.tls is not None:
            ssl_context = server_ssl_context(config.tls.cert_file, config.tls.key_file)
        site = web.TCPSite(runner, config.listen.host, config.listen.port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()  # the upstream clients close too: a port in use is one clean error line
        raise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(app, config_path))
    scheme = "https" if ssl_context else "http"
    server: Any = site._server
    sockets = server.sockets if server is not None else ()
    address = sockets[0].getsockname() if sockets else (config.listen.host, config.listen.port)
    log.info(
        "ready: listening on %s://%s:%d, upstream %s",
        scheme,
        address[0],
        address[1],
        config.upstream.endpoint_url or f"AWS S3 ({config.upstream.region})",
        extra={"event": "ready", "port": address[1]},
    )
    if not app["state"].upstream.has_credentials():
        log.warning(
            "no upstream credentials: the AWS credential chain found none and the config names none; "
            "every request to the bucket will fail (see upstream.access_key_id)",
            extra={"event": "no_upstream_credentials"},
        )
    if on_ready is not None:
        on_ready()
    await stop.wait()
    state: State = app["state"]
    state.draining = True
    state.metrics.set_ready(False)
    log.info(
        "shutting down: draining in-flight requests (up to %.0fs)",
        config.limits.drain_timeout,
        extra={"event": "draining"},
    )
    # Drain ourselves before runner.cleanup(): aiohttp's shutdown stops reading from every
    # connection at once, which would starve a request whose body is still arriving (an
    # UploadPart) until the timeout. So: stop listening, let requests in flight finish (new
    # requests on open connections get 503 and Connection: close), then clean up.
    await site.stop()
    if not await state.wait_idle(config.limits.drain_timeout):
        log.warning(
            "drain timeout: cutting %d request(s) still in flight", state.active, extra={"event": "drain_timeout"}
        )
    await runner.cleanup()
    log.info("stopped", extra={"event": "stopped"})


# Settings SIGHUP applies; a change anywhere else needs a restart.
_RELOADED = frozenset({"clients", "encryption.key_files"})


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the daemon's coroutine to its end, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        asyncio.run(main)
    else:
        uvloop.run(main)


def _needs_restart(old: Config, new: Config) -> list[str]:
    """Dotted names of changed settings that a reload does not apply."""
    changed: list[str] = []
    old_dump, new_dump = old.model_dump(), new.model_dump()
    for section, value in new_dump.items():
        before = old_dump.get(section)
        if section in _RELOADED or value == before:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            changed += [
                f"{section}.{k}" for k, v in value.items() if f"{section}.{k}" not in _RELOADED and before.get(k) != v
            ]
        else:
            changed.append(section)
    return changed


def _reload(app: web.Application, config_path: str | os.PathLike[str] | None) -> bool:
    """SIGHUP: re-read the config file; apply its client credentials and key files.

    All or nothing: a config that does not load or a key file that does not read keeps the
    running credentials and keys, with one error line saying why. Connections and in-flight
    requests are untouched (an upload keeps the key it started with).
    """
    state: State = app["state"]
    if config_path is None:
        log.warning(
            "SIGHUP: no config file to reload (not started with --config); ignored", extra={"event": "reload_failed"}
        )
        return False
    try:
        new = load_config(config_path)
    except ConfigError as err:
        log.error(
            "SIGHUP: reload failed, keeping the running credentials and keys: %s",
            "; ".join(err.problems),
            extra={"event": "reload_failed"},
        )
        return False
    reload = getattr(state.service, "reload", None)
    if reload is not None and new.encryption.enabled:
        try:
            reload(new.encryption.key_files)
        except Exception as exc:
            log.error(
                "SIGHUP: reload failed, keeping the running credentials and keys: %s",
                exc,
                extra={"event": "reload_failed"},
            )
            return False
    ignored = _needs_restart(state.config, new)
    # The running config with the reloaded parts swapped in: what is in effect, so a later
    # reload still reports settings that were never applied.
    applied = state.config.model_copy(
        update={
            "clients": new.clients,
            "encryption": state.config.encryption.model_copy(update={"key_files": new.encryption.key_files}),
        }
    )
    state.frontend.credentials = applied.client_secret
    state.frontend.scopes = client_scopes(applied.clients)
    state.config = applied
    key_ids = list(getattr(state.service, "key_ids", []))
    state.metrics.set_build_info(__version__, key_ids)
    if ignored:
        log.warning(
            "SIGHUP: changed settings that need a restart were not applied: %s",
            ", ".join(ignored),
            extra={"event": "reload"},
        )
    log.info(
        "reloaded %s: %d client credential(s), keys %s",
        os.fspath(config_path),
        len(applied.clients),
        ", ".join(key_ids) or "none (passthrough)",
        extra={"event": "reloaded", "key_ids": ",".join(key_ids)},
    )
    return True
