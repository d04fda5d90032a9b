"""The NATS connection of a cluster node: its own asyncio loop in a daemon thread, callable from sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats

from ..errors import ClusterUnavailable

log = logging.getLogger("isolate.cluster")
T = TypeVar("T")

CONNECT_TIMEOUT = 2.0  # seconds one connection attempt may take
RETRY_EVERY = 0.5  # seconds between connection attempts while nats-server is unreachable


def show_url(url: str) -> str:
    """`url` as it may be displayed (logs, errors, /readyz): without the user, password or token a
    NATS URL may carry (`nats://user:password@host:4222`), for each server of a comma-separated list."""
    return re.sub(r"(^|,|://)[^/,]*@", r"\1", url)


class Connection:
    """One NATS client on a loop of its own: `call` runs a coroutine there from any other thread.

    The node keeps trying to connect in the background until `close()`; once connected, the client
    reconnects by itself. `on_connect` callbacks run (on the loop) after the first connection and after
    every reconnection, `on_disconnect` callbacks when the link drops.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url = url  # connected to, never displayed: `shown` is
        self.shown = show_url(url)
        self.name = name
        self.client: Any = None  # nats.aio.client.Client once connected
        self.js: Any = None  # its JetStream context
        self.on_connect: list[Callable[[], Awaitable[None]]] = []
        self.on_disconnect: list[Callable[[], None]] = []
        self.last_error: str | None = None
        self.attempted = threading.Event()  # set once the first connection attempt ended, either way
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="isolate-nats", daemon=True)
        self._thread.start()
        self._task: concurrent.futures.Future[None] | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        client = self.client
        return client is not None and bool(client.is_connected)

    def start(self) -> None:
        """Begin connecting (in the background, retried until it works)."""
        if self._task is None:
            self._task = asyncio.run_coroutine_threadsafe(self._connect_forever(), self._loop)

    def call(self, work: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `work` on the connection's loop and wait at most `timeout` seconds for it.

        ClusterUnavailable when it takes longer or the link is down; other errors pass through."""
        if threading.current_thread() is self._thread:
            work.close()
            raise RuntimeError("Connection.call from the connection's own loop would wait for itself")
        if self._closed:
            work.close()
            raise ClusterUnavailable(f"the connection to {self.shown} is closed")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(max(timeout, 0.001))
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            future.cancel()
            if isinstance(exc, concurrent.futures.TimeoutError) or not self.connected:
                raise ClusterUnavailable(f"NATS at {self.shown} did not answer within {timeout:.3g} s",
                                         cluster=self.shown) from None
            raise
        except nats.errors.Error as exc:
            if not self.connected or isinstance(exc, (nats.errors.ConnectionClosedError,
                                                      nats.errors.ConnectionReconnectingError,
                                                      nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                raise ClusterUnavailable(f"NATS at {self.shown} is unavailable: {type(exc).__name__}",
                                         cluster=self.shown) from None
            raise

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on the loop without waiting for it."""
        asyncio.run_coroutine_threadsafe(work, self._loop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            if self._task is not None:
                self._task.cancel()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # watchers first: closing the client under them would wake them with errors
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.client.close(), 2)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # what the client left (its flusher, ping and JetStream checks)
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the loop ----------------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        warned = False
        while not self._closed:
            try:
                client = await asyncio.wait_for(nats.connect(
                    self.url, name=self.name, connect_timeout=int(CONNECT_TIMEOUT), allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=int(RETRY_EVERY * 2) or 1,
                    ping_interval=2, max_outstanding_pings=2,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected, error_cb=self._error),
                    CONNECT_TIMEOUT * 2)
            except Exception as exc:  # nats-server not there (yet): keep serving, keep trying
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.attempted.set()
                if not warned:
                    log.warning("cluster: cannot reach NATS at %s (%s); serving what this node has and retrying",
                                self.shown, self.last_error)
                    warned = True
                await asyncio.sleep(RETRY_EVERY)
                continue
            self.client, self.js = client, client.jetstream(timeout=CONNECT_TIMEOUT)
            self.last_error = None
            log.info("cluster: connected to NATS at %s", self.shown)
            self.attempted.set()
            await self._connected()
            return

    async def _connected(self) -> None:
        for callback in self.on_connect:
            try:
                await callback()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cluster: catching up with %s failed (%s); trying again", self.shown, self.last_error)
                if not self._closed:
                    self._loop.call_later(2 * RETRY_EVERY, lambda: self._loop.create_task(self._connected()))
                return

    async def _disconnected(self) -> None:
        if self._closed:
            return
        log.warning("cluster: lost NATS at %s; serving what this node has, changes refused until it is back",
                    self.shown)
        for callback in self.on_disconnect:
            callback()

    async def _reconnected(self) -> None:
        log.info("cluster: reconnected to NATS at %s; catching up", self.shown)
        await self._connected()

    async def _error(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.debug("cluster: NATS error: %s", self.last_error)
