"""One process, two listeners: uvicorn serving the edge app and the admin app on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import uvicorn

from ..cache import ResponseCache
from ..config import Config, ServerConfig
from ..errors import InvalidConfig
from ..host import Host
from ..node import Node
from ..state import ServerState
from ._admin import build_admin_app
from ._auth import load_or_create_token
from ._dispatch import Dispatcher
from ._edge import EdgeApp
from ._forward import Forwarder
from ._health import NodeHealth
from ._logs import logging_off_loop
from ._metrics import Metrics

log = logging.getLogger("isolate.server")


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

    def close(self) -> None:
        self.dispatcher.close()
        self.host.close()


def build(config: Config, server: ServerConfig, host: Host | None = None,
          timer: Callable[[], float] = time.monotonic) -> Apps:
    """Everything but the sockets: used by `serve` and by in-process tests (`timer` drives the cache)."""
    host = host or Host(config)
    if not server.node_name:
        server = replace(server, node_name=f"{socket.gethostname()}:{server.port}")
    state = ServerState(config.data_dir, server.region)
    cache = ResponseCache(server.cache_entries, server.cache_bytes, timer) if server.cache else None
    metrics = Metrics(host, cache)
    dispatcher = Dispatcher(server.workers, server.queue_limit, server.inline_threshold, host.may_block)
    token = server.admin_token or load_or_create_token(config.data_dir)
    health = NodeHealth(lambda: state.regions, server.region, server.health_interval, server.health_timeout)
    forwarder = Forwarder(server.node_name, health, server.max_body_size, config.max_timeout + 5)
    edge = EdgeApp(host, state, server, metrics, dispatcher, cache, forwarder)
    node = Node(host, state, cache)
    admin = build_admin_app(node, metrics, token, health)
    return Apps(host, state, edge, admin, dispatcher, token, cache, health, forwarder, node)


def uvicorn_server(app: Any, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server with the edge's settings (the benchmark's Starlette peer uses the same)."""
    return _Server(_uvicorn_config(app, host, port))


def _uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,  # the edge writes its own structured access log
        log_level="warning",
        server_header=False,
        h11_max_incomplete_event_size=64 * 1024,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before any server starts so a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidConfig(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def serve_apps(apps: Apps, server: ServerConfig, edge_sock: socket.socket, admin_sock: socket.socket) -> None:
    edge = uvicorn_server(apps.edge, server.host, server.port)
    admin = uvicorn_server(apps.admin, server.admin_host, server.admin_port)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        edge.should_exit = admin.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    apps.state.check_regions(apps.state.regions)
    apps.health.start()
    tasks = [asyncio.create_task(edge.serve(sockets=[edge_sock])),
             asyncio.create_task(admin.serve(sockets=[admin_sock]))]
    while not (edge.started and admin.started):
        if any(t.done() for t in tasks):
            stop()
            break
        await asyncio.sleep(0.01)
    else:
        apps.state.ready = True
        log.info("isolate ready: edge http://%s:%d  admin http://%s:%d  region %s  (%d modules, %d routes)",
                    server.host, edge_sock.getsockname()[1], server.admin_host, admin_sock.getsockname()[1],
                    server.region, len(apps.host.modules()), len(apps.state.routes.routes))
    try:
        await asyncio.gather(*tasks)
    finally:
        await apps.health.stop()
        await apps.forwarder.close()


def run(apps: Apps, server: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when available."""
    try:
        edge_sock = bind(server.host, server.port)
        admin_sock = bind(server.admin_host, server.admin_port)
    except BaseException:
        apps.close()
        raise
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop on Linux
        runner = asyncio.Runner()
    try:
        with runner, logging_off_loop():
            runner.run(serve_apps(apps, server, edge_sock, admin_sock))
    finally:
        edge_sock.close()
        admin_sock.close()
        apps.close()
