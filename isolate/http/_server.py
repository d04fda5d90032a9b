"""One process, two listeners: uvicorn serving the edge app and the admin app on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any

import uvicorn

from .. import tracing
from ..backends import join_cluster, leave_cluster
from ..cache import ResponseCache
from ..config import (
    DEFAULT_ADMIN_MAX_CONNECTIONS,
    DEFAULT_FD_RESERVE,
    DEFAULT_MAX_CONNECTIONS,
    Config,
    ServerConfig,
)
from ..errors import InvalidConfig
from ..host import Host
from ..node import Node
from ..state import ServerState
from ._admin import Telemetry, build_admin_app
from ._auth import load_or_create_cluster_secret, load_or_create_token
from ._dispatch import Dispatcher, guest_cpus
from ._edge import EdgeApp
from ._forward import Forwarder
from ._health import NodeHealth
from ._hops import HopSigner
from ._logs import logging_off_loop
from ._metrics import Metrics
from ._protocol import Listener
from ._tail import keep_recent, stop_following

log = logging.getLogger("isolate.server")
SHUTDOWN_GRACE = 0.5  # seconds requests in flight have after SIGTERM/SIGINT before their guests are stopped
# Seconds connections have to finish after a stop, after which the server exits all the same: a
# client that reads nothing (a stuck `isolate logs --follow`) would otherwise hold it forever.
SHUTDOWN_TIMEOUT = 5


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve`, which stops both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Apps:
    host: Host
    state: ServerState
    edge: EdgeApp
    admin: Any
    dispatcher: Dispatcher
    token: str
    cache: ResponseCache | None
    health: NodeHealth
    forwarder: Forwarder
    node: Node
    metrics: Metrics

    def rebuild_admin(self, telemetry: Telemetry) -> Any:
        """The admin app of a supervisor: figures from its workers (`serve --workers`)."""
        return build_admin_app(self.node, self.metrics, self.token, self.health, telemetry)

    def close(self) -> None:
        leave_cluster(self.node)
        self.dispatcher.close()
        self.host.close()
        tracing.shutdown()  # after the guests: their last spans go too


def build(config: Config, server: ServerConfig, host: Host | None = None,
          timer: Callable[[], float] = time.monotonic) -> Apps:
    """Everything but the sockets: used by `serve` and by in-process tests (`timer` drives the cache)."""
    host = host or Host(config)
    if not server.node_name:
        server = replace(server, node_name=f"{socket.gethostname()}:{server.port}")
    state = ServerState(config.data_dir, server.region)
    cache = ResponseCache(server.cache_entries, server.cache_bytes, timer) if server.cache else None
    metrics = Metrics(host, cache)

    def may_inline(module: str) -> bool:
        timeout = host.timeout_of(module)
        return timeout is not None and timeout <= server.inline_max_timeout and not host.may_block(module)

    dispatcher = Dispatcher(server.threads, server.queue_limit, server.inline_threshold, may_inline,
                            host.waits, server.io_threads, guest_cpus())
    token = server.admin_token or load_or_create_token(config.data_dir)
    health = NodeHealth(lambda: state.regions, server.region, server.health_interval, server.health_timeout)
    forwarder = Forwarder(server.node_name, health, server.max_body_size, config.max_timeout + 5,
                          HopSigner(server.cluster_secret or load_or_create_cluster_secret(config.data_dir)))
    # Before the edge, which reads once whether traces are on; the process's environment is where
    # OpenTelemetry's standard variables live (OTEL_*: see isolate.tracing.enabled_by).
    tracing.setup(os.environ, region=server.region, node=server.node_name)
    edge = EdgeApp(host, state, server, metrics, dispatcher, cache, forwarder)
    node = Node(host, state, cache)
    if server.cluster:  # connected and caught up (or degraded) before the manifest and the listeners
        join_cluster(node, server.cluster, server.node_name)
    admin = build_admin_app(node, metrics, token, health)
    return Apps(host, state, edge, admin, dispatcher, token, cache, health, forwarder, node, metrics)


def uvicorn_server(app: Any, host: str, port: int, listener: Listener | None = None) -> uvicorn.Server:
    """A uvicorn server with the edge's settings (the benchmark's Starlette peer uses the same).

    `listener` carries the bounds and the connection count; by default ServerConfig's defaults.
    """
    return _Server(_uvicorn_config(app, host, port, listener))


def _uvicorn_config(app: Any, host: str, port: int, listener: Listener | None = None) -> uvicorn.Config:
    if listener is None:
        listener = listeners(ServerConfig(), DEFAULT_MAX_CONNECTIONS, DEFAULT_ADMIN_MAX_CONNECTIONS)[0]
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=listener.protocol,  # httptools, with the bounds of `_protocol`
        ws="none",  # no app speaks WebSocket; an upgrade is answered as plain HTTP, then closed
        lifespan="off",
        access_log=False,  # the edge writes its own structured access log
        log_level="warning",
        log_config=None,  # its few lines go through the root logger: the host's format, written off the loop
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
        server_header=False,
        # X-Forwarded-For from loopback would let a local client pick the address regions are
        # resolved from; the edge reads the real peer address.
        proxy_headers=False,
    )


def listeners(server: ServerConfig, edge_cap: int, admin_cap: int) -> tuple[Listener, Listener]:
    """The edge and admin listeners' bounds: the same head limits, separate connection caps."""

    def listener(name: str, cap: int) -> Listener:
        return Listener(name, max_connections=cap, max_header_size=server.max_header_size,
                        max_url_length=server.max_url_length, head_timeout=server.head_timeout)

    return listener("edge", edge_cap), listener("admin", admin_cap)


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return DEFAULT_MAX_CONNECTIONS * 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    target = hard if hard != unlimited else max(soft, 1 << 20)  # macOS: "unlimited" is not settable
    if soft == unlimited or soft >= target:
        return target if soft == unlimited else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def connection_caps(server: ServerConfig, fd_limit: int, hot_modules: int) -> tuple[int, int]:
    """(edge, admin) connection caps: as configured, or the edge's sized so both fit the open-file limit.

    Beside client connections the process keeps a reserve of descriptors (data directory, logs, the
    event loop, forwards and health checks) plus one per pre-linked module, whose artifact stays open.
    """
    admin = server.admin_max_connections
    # A module cache larger than the limit allows cannot keep all its artifacts open anyway: a quarter
    # of the descriptors for them, and at least a quarter for edge clients.
    hot_modules = min(hot_modules, fd_limit // 4)
    free = max(fd_limit - DEFAULT_FD_RESERVE - hot_modules - admin, fd_limit // 4)
    if server.max_connections is not None:
        if server.max_connections > free:
            log.warning("max_connections %d plus admin_max_connections %d and a reserve of %d exceed the "
                        "open-file limit %d: a full listener may fail with EMFILE", server.max_connections,
                        admin, DEFAULT_FD_RESERVE + hot_modules, fd_limit)
        return server.max_connections, admin
    if free < DEFAULT_MAX_CONNECTIONS:
        log.warning("open-file limit %d: edge connections capped at %d (raise the hard limit, `ulimit -Hn`, "
                    "for more)", fd_limit, max(1, free))
    return max(1, min(DEFAULT_MAX_CONNECTIONS, free)), admin


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket, bound before any server starts so a busy port is one clear error.

    `reuse_port`: one of the worker processes' sockets sharing the port (SO_REUSEPORT), among which
    the kernel spreads new connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidConfig(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def serve_apps(apps: Apps, server: ServerConfig, edge_sock: socket.socket, admin_sock: socket.socket | None,
                     control: Callable[[Callable[[], None]], Coroutine[Any, Any, None]] | None = None) -> None:
    """Serve both listeners (a worker of `serve --workers`: the edge only, no `admin_sock`) until stopped.

    `control(stop)`: a worker's channel to its supervisor, run beside the listeners once they started."""
    edge_cap, admin_cap = connection_caps(server, raise_fd_limit(), apps.host.config.module_cache_size)
    edge_listener, admin_listener = listeners(server, edge_cap, admin_cap)
    servers = [uvicorn_server(apps.edge, server.host, server.port, edge_listener)]
    if admin_sock is not None:
        servers.append(uvicorn_server(apps.admin, server.admin_host, server.admin_port, admin_listener))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for each in servers:
            each.should_exit = True
        stop_following()  # the server waits for every connection to close, log followers' too
        # Requests in flight get a moment to finish; then guests still sleeping in host calls or
        # running wasm are stopped, so a server with sleeping guests exits promptly.
        loop.call_later(SHUTDOWN_GRACE, apps.host.stop_guests)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    apps.state.check_regions(apps.state.regions)
    apps.health.start()
    sockets = [edge_sock] if admin_sock is None else [edge_sock, admin_sock]
    tasks = [asyncio.create_task(each.serve(sockets=[sock])) for each, sock in zip(servers, sockets, strict=True)]
    while not all(each.started for each in servers):
        if any(t.done() for t in tasks):
            stop()
            break
        await asyncio.sleep(0.01)
    else:
        apps.state.ready = True
        admin = f"admin http://{server.admin_host}:{admin_sock.getsockname()[1]}" if admin_sock else "a worker"
        log.info("isolate ready: edge http://%s:%d  %s  region %s  (%d modules, %d routes)", server.host,
                 edge_sock.getsockname()[1], admin, server.region, len(apps.host.modules()),
                 len(apps.state.routes.routes))
        log.info("connection caps: edge %d, admin %d; request heads up to %d bytes of URL and %d of header "
                 "fields, within %g s", edge_cap, admin_cap, server.max_url_length, server.max_header_size,
                 server.head_timeout)
        if control is not None:
            tasks.append(asyncio.create_task(control(stop)))
    try:
        await asyncio.gather(*tasks)
    finally:
        await apps.health.stop()
        await apps.forwarder.close()
        apps.host.resume_guests()  # the process may serve again (in-process embedders and tests)


def run(apps: Apps, server: ServerConfig, before_close: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when available.

    `before_close`: called once serving ended (or failed to start), before the apps close: what else
    uses them (`isolate dev`'s watcher) stops there."""
    try:
        edge_sock = bind(server.host, server.port)
        admin_sock = bind(server.admin_host, server.admin_port)
    except BaseException:
        _close(apps, before_close)
        raise
    try:
        run_loop(serve_apps(apps, server, edge_sock, admin_sock))
    finally:
        edge_sock.close()
        admin_sock.close()
        _close(apps, before_close)


def _close(apps: Apps, before_close: Callable[[], None] | None) -> None:
    try:
        if before_close is not None:
            before_close()
    finally:
        apps.close()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when available, with log output written off the loop and recent lines kept
    for `GET /v1/logs`."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop on Linux
        runner = asyncio.Runner()
    # What is built by now (imports, modules, routes, registries) lives as long as the server: frozen,
    # a full collection walks only what serving made since (it took 12-18 ms of a started server here).
    gc.collect()
    gc.freeze()
    try:
        with runner, logging_off_loop(), keep_recent():
            runner.run(main)
    finally:
        gc.unfreeze()  # the process may go on (in-process embedders and tests): all collectable again
