"""Background health checks of the other regions' nodes, plus what failed forwards report.

Each remote node is asked `GET /.isolate/health` every `interval` seconds and must answer 200 within
`timeout` naming the region the table puts it in (a node that claims another region is a table
mistake, and is not used). A failed check or a forward that cannot connect marks the node down at
once; the next good check brings it back. Nodes not yet checked count as healthy, so a fresh node
forwards before its first round of checks completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..routing import RegionTable

HEALTH_PATH = "/.isolate/health"
log = logging.getLogger("isolate.regions")


@dataclass(slots=True)
class NodeStatus:
    healthy: bool = True
    checked: float | None = None  # wall-clock time of the last check
    error: str | None = None
    latency_ms: float | None = None


class NodeHealth:
    def __init__(self, tables: Callable[[], RegionTable], local_region: str, interval: float, timeout: float) -> None:
        self._tables = tables
        self._local = local_region
        self.interval = interval
        self.timeout = timeout
        self._status: dict[str, NodeStatus] = {}
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def healthy(self, region: str) -> tuple[str, ...]:
        """The region's nodes that are up, rotated per call to spread requests across them."""
        table = self._tables()
        found = table.regions.get(region)
        if found is None:
            return ()
        status = self._status
        nodes = [n for n in found.nodes if n not in status or status[n].healthy]  # unchecked counts as up
        if len(nodes) > 1:
            turn = next(self._turn) % len(nodes)
            nodes = nodes[turn:] + nodes[:turn]
        return tuple(nodes)

    def mark_down(self, node: str, error: str) -> None:
        status = self._status.setdefault(node, NodeStatus())
        if status.healthy:
            log.warning("node %s is down: %s", node, error)
        status.healthy, status.error, status.checked = False, error, time.time()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {node: {"healthy": s.healthy, "checked": s.checked, "error": s.error, "latency_ms": s.latency_ms}
                for node, s in self._status.items()}

    # -- the background loop --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as client:
            while True:
                started = time.monotonic()
                try:
                    await self.check_all(client)
                except Exception:  # a bug here must not silently freeze every node's state
                    log.exception("health check round failed")
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def check_all(self, client: aiohttp.ClientSession) -> None:
        table = self._tables()
        remote = {node: region.id for region in table.regions.values() if region.id != self._local
                  for node in region.nodes}
        for node in list(self._status):
            if node not in remote:
                del self._status[node]  # gone from the table
        await asyncio.gather(*(self._check(client, node, region) for node, region in remote.items()))

    async def _check(self, client: aiohttp.ClientSession, node: str, region: str) -> None:
        started = time.perf_counter()
        try:
            async with client.get(node + HEALTH_PATH, allow_redirects=False) as response:
                body = await response.json(content_type=None) if response.status == 200 else None
            if not isinstance(body, dict):
                raise ValueError(f"health check answered {response.status}")
            if body.get("region") != region:
                raise ValueError(f"node says it serves region {body.get('region')!r}, the table says {region!r}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.mark_down(node, str(exc) or type(exc).__name__)
            return
        status = self._status.setdefault(node, NodeStatus())
        if not status.healthy:
            log.info("node %s is healthy again", node)
        status.healthy, status.error, status.checked = True, None, time.time()
        status.latency_ms = (time.perf_counter() - started) * 1000
