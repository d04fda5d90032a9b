"""`isolate serve --workers N`: one supervisor with the control plane, N edge processes on one port.

Python runs one thread of Python at a time per process, so the edge uses more than one core only
as several processes. The supervisor holds the data-directory lock, applies the manifest and runs
the admin API over the one `Node`; it owns no edge listener. Each worker is an `isolate serve`
edge of its own (Host, tables, response cache, guest threads) bound to the same port with
SO_REUSEPORT, so the kernel spreads connections among them.

Each worker is joined to the supervisor by a socket pair carrying one JSON line per message:

    supervisor -> worker   {"id": n, "op": "change", "change": {...}}   replay a Node change from disk
                           {"id": n, "op": "resync"}                    re-read everything (on joining)
                           {"id": n, "op": "metrics" | "stats"}         its /metrics text, its /v1/stats
                           {"id": n, "op": "usage"}                     its usage since the last ask (`isolate.usage`)
                           {"id": n, "op": "logs", "since": ...}        its recent log lines (`_tail`)
    worker -> supervisor   {"id": n, "ok": true, ...} or {"id": n, "ok": false, "error": "..."}

A change reaches every worker before the admin call that made it answers: the Node announces it
under its control lock and the supervisor waits for each worker's acknowledgement. A worker that
does not acknowledge in time is killed (a stale worker must not go on serving), and like any
worker that dies, started again; it reads the data directory afresh when it starts. The first
message on the channel, before any of the above, is the configuration (it holds secrets, so it
never travels on a command line or in the environment). A worker whose channel closes (its
supervisor died) stops. Ctrl-C or SIGTERM stops the supervisor, which stops every worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..config import Config, Limits, ServerConfig, default_memory_budget
from ..errors import InvalidConfig, IsolateError
from ..host import Host
from ..node import Change
from ..registry._lock import DataDirLock
from ..usage import Usage
from ._logs import log_formatter
from ._metrics import UsageMetrics
from ._server import Apps, bind, build, run_loop, serve_apps
from ._tail import read_local, read_workers, stop_following

log = logging.getLogger("isolate.server")

CHANGE_TIMEOUT = 5.0  # seconds a worker has to acknowledge a change before it is replaced
QUERY_TIMEOUT = 5.0  # seconds for /metrics and /v1/stats answers
START_TIMEOUT = 120.0  # seconds a worker has from spawn to serving (imports, engines)
RESTART_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # back-off for a worker that keeps dying at start
STOP_TIMEOUT = 10.0
# Gauges every worker reports the same view of: the fleet's value is the largest, not the sum.
SHARED_GAUGES = frozenset({"isolate_modules", "isolate_engines", "isolate_guest_memory_bytes",
                           "isolate_guest_memory_peak_bytes", "isolate_module_active_version",
                           "process_start_time_seconds", "process_max_fds"})
SHARED_STATS = frozenset({"modules", "engines"})
SUPERVISOR_POOL = 4  # isolate slots of the supervisor's engines: it compiles, and runs no guest


# -- the supervisor -----------------------------------------------------------------------------


class _Worker:
    """The supervisor's handle on one worker process and its channel."""

    def __init__(self, index: int, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self.index = index
        self.process = process
        self.channel = channel
        self.started = time.monotonic()
        self.joined = False  # caught up and receiving changes
        self.serving = False  # listening on the edge port
        self.ping: int | None = None  # the message being waited for while it starts (join, then serving)
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._ids = 0

    def send(self, message: Mapping[str, Any]) -> int:
        with self._lock:
            return self._send(message)

    def _send(self, message: Mapping[str, Any]) -> int:
        self._ids += 1
        self.channel.settimeout(CHANGE_TIMEOUT)
        self.channel.sendall(json.dumps({**message, "id": self._ids}).encode() + b"\n")
        return self._ids

    def receive(self, ident: int, timeout: float) -> dict[str, Any]:
        """The answer to message `ident`; TimeoutError, or OSError/ValueError when the worker cannot answer."""
        with self._lock:
            return self._receive(ident, timeout)

    def _receive(self, ident: int, timeout: float) -> dict[str, Any]:
        """The answer to message `ident` (the caller holds the lock); earlier answers given up on are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"worker {self.index} did not answer in {timeout:g} s")
                self.channel.settimeout(left)
                chunk = self.channel.recv(65536)
                if not chunk:
                    raise ConnectionError(f"worker {self.index} closed its channel")
                self._buffer += chunk
                continue
            answer = json.loads(self._buffer[:end])
            del self._buffer[:end + 1]
            if answer.get("id") != ident:
                continue  # the late answer to a message given up on
            if not answer.get("ok"):
                raise ValueError(f"worker {self.index}: {answer.get('error')}")
            return dict(answer)

    def call(self, message: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Send and wait for the answer under one hold of the lock: callers on other threads (a change,
        a /metrics scrape) never read, and so never drop, each other's answers."""
        with self._lock:
            return self._receive(self._send(message), timeout)

    def stop(self) -> None:
        self.joined = self.serving = False
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


class Fleet:
    """The worker processes of one node: started, watched, restarted, told of changes, asked for figures."""

    def __init__(self, apps: Apps, config: Config, server: ServerConfig, lock: DataDirLock, count: int) -> None:
        self._apps = apps
        self._config = config
        self._server = server
        self._lock = lock
        self._count = count
        self._workers: list[_Worker | None] = [None] * count
        self._failures = [0] * count
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="isolate-fleet", daemon=True)
        apps.node.subscribe(self.changed)
        # The workers' usage is folded into the supervisor's, which alone writes the usage files.
        apps.host.usage.add_source(self.usage)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self._count):
            self._spawn(index)
        self._watcher.start()

    def ready(self) -> bool:
        return all(w is not None and w.joined and w.serving for w in self._workers)

    def stop(self) -> None:
        """Stop every worker: SIGTERM, then SIGKILL for any still running after STOP_TIMEOUT."""
        with contextlib.suppress(Exception):  # their usage so far (what runs after this is lost)
            self._apps.host.usage.fold()
        self._stopping.set()
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in %g s: killed", worker.index, worker.process.pid,
                          STOP_TIMEOUT)
                worker.process.kill()
                worker.process.wait()

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "isolate.http._workers", "--channel", str(theirs.fileno()),
                   "--lock", str(self._lock.fd), "--index", str(index)]
        # Its own process group: Ctrl-C in a terminal signals the supervisor alone, which stops the
        # workers itself (else they would exit first, and be taken for crashed and started again).
        process = subprocess.Popen(command, pass_fds=(theirs.fileno(), self._lock.fd), process_group=0)
        theirs.close()
        worker = _Worker(index, process, ours)
        ours.sendall(json.dumps(_settings(self._config, self._server, self._count)).encode() + b"\n")
        self._workers[index] = worker
        log.info("worker %d started (pid %d)", index, process.pid)

    def _watch(self) -> None:
        """Join workers once they serve; start again any that died."""
        while not self._stopping.wait(0.05):
            for index, worker in enumerate(self._workers):
                if worker is None:
                    continue
                if worker.process.poll() is not None:
                    self._replace(index, worker, f"exited with status {worker.process.returncode}")
                elif not worker.serving:
                    self._join(index, worker)

    def _join(self, index: int, worker: _Worker) -> None:
        """A starting worker, step by step: it answers `join` once its state is built, then catches up
        and joins, all before it listens (so it never serves what it missed); then `ping` once it serves."""
        try:
            if not worker.joined:
                if worker.ping is None:
                    worker.ping = worker.send({"op": "join"})
                worker.receive(worker.ping, timeout=0.05)
                # Under the control lock, so that no change slips in between its catching up and joining.
                with self._apps.node.control():
                    worker.call({"op": "resync"}, CHANGE_TIMEOUT)
                    worker.joined = True
                worker.ping = worker.send({"op": "ping"})  # answered once its event loop serves
            assert worker.ping is not None
            worker.receive(worker.ping, timeout=0.05)
            worker.serving = True
        except TimeoutError:
            if time.monotonic() - worker.started > START_TIMEOUT:
                self._replace(index, worker, f"not serving after {START_TIMEOUT:g} s")
            return
        except (OSError, ValueError) as exc:
            self._replace(index, worker, f"failed to start: {exc}")
            return
        self._failures[index] = 0
        log.info("worker %d (pid %d) serving", index, worker.process.pid)

    def _replace(self, index: int, worker: _Worker, why: str) -> None:
        worker.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=STOP_TIMEOUT)
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
        if self._stopping.is_set():
            return
        lived = time.monotonic() - worker.started
        delay = RESTART_DELAYS[min(self._failures[index], len(RESTART_DELAYS) - 1)] if lived < 10 else 0.0
        self._failures[index] = self._failures[index] + 1 if lived < 10 else 0
        log.error("worker %d (pid %d) %s; starting it again%s", index, worker.process.pid, why,
                  f" in {delay:g} s" if delay else "")
        if self._stopping.wait(delay):
            return
        self._spawn(index)

    # -- what the admin API needs ---------------------------------------------------------------

    def changed(self, change: Change) -> int:
        """The Node's subscriber: every joined worker replays the change before this returns."""
        purged = 0
        message = {"op": "change", "change": change.to_dict()}
        for worker in self._joined():
            try:
                purged += int(worker.call(message, CHANGE_TIMEOUT).get("purged", 0))
            except (OSError, ValueError) as exc:
                # It may be serving what this change replaced: it must not go on doing so.
                log.error("worker %d did not take a change (%s): replacing it", worker.index, exc)
                worker.stop()
        return purged

    def metrics(self) -> bytes:
        texts = [answer["text"] for answer in self._ask({"op": "metrics"})]
        return merge_metrics([*texts, UsageMetrics(self._apps.host).render().decode()])

    def usage(self) -> list[dict[str, list[int]]]:
        """Each worker's usage since the last ask (`Usage.drain`); an answer lost on the way is lost."""
        return [answer["usage"] for answer in self._ask({"op": "usage"}) if isinstance(answer.get("usage"), dict)]

    def stats(self) -> dict[str, Any]:
        answers = [answer["stats"] for answer in self._ask({"op": "stats"})]
        merged: dict[str, Any] = _sum_json(answers) if answers else {}
        for key in SHARED_STATS & set(merged):
            merged[key] = max(answer[key] for answer in answers)
        merged["workers"] = {"configured": self._count, "serving": len(answers)}
        return merged

    def logs(self, cursor: Any, module: str | None, limit: int) -> tuple[list[dict[str, Any]], int, Any]:
        """`GET /v1/logs` of the supervisor: the workers' recent lines (`_tail.read_workers`)."""
        return read_workers(self._joined(), cursor, module, limit, QUERY_TIMEOUT)

    def _ask(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        answers = []
        for worker in self._joined():
            try:
                answers.append(worker.call(message, QUERY_TIMEOUT))
            except (OSError, ValueError) as exc:
                log.warning("worker %d did not answer %s: %s", worker.index, message.get("op"), exc)
        return answers

    def _joined(self) -> list[_Worker]:
        return [w for w in self._workers if w is not None and w.joined]


def _settings(config: Config, server: ServerConfig, workers: int) -> dict[str, Any]:
    budget = config.memory_budget
    if budget == default_memory_budget():
        budget = max(1, budget // workers)  # the machine's default budget is shared, not multiplied
    host = {f.name: getattr(config, f.name) for f in fields(config)}
    host.update(data_dir=str(config.data_dir), limits=config.limits.as_dict(), memory_budget=budget)
    return {"config": host, "server": asdict(server), "log_level": logging.getLogger().getEffectiveLevel()}


def _config_of(raw: Mapping[str, Any]) -> tuple[Config, ServerConfig]:
    host = dict(raw["config"])
    host.update(data_dir=Path(host["data_dir"]), limits=Limits(**host["limits"]))
    return Config(**host), ServerConfig(**raw["server"])


def _sum_json(items: list[Any]) -> Any:
    """Numbers summed, maps merged key by key, lists joined; other values (names) taken from the first."""
    first = items[0]
    if isinstance(first, bool) or not isinstance(first, (int, float, dict, list)):
        return first
    if isinstance(first, (int, float)):
        return sum(item for item in items if isinstance(item, (int, float)))
    if isinstance(first, dict):
        keys = dict.fromkeys(k for item in items if isinstance(item, dict) for k in item)
        return {k: _sum_json([item[k] for item in items if isinstance(item, dict) and k in item]) for k in keys}
    return [entry for item in items if isinstance(item, list) for entry in item]


def merge_metrics(texts: Iterable[str]) -> bytes:
    """Several processes' Prometheus texts as one: samples with the same name and labels summed
    (counters, histograms, most gauges); `SHARED_GAUGES` take the largest."""
    from prometheus_client.core import Metric
    from prometheus_client.exposition import generate_latest
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            table = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in table and family.name in SHARED_GAUGES:
                    table[key] = max(table[key], sample.value)
                else:
                    table[key] = table.get(key, 0.0) + sample.value

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            for name, family in families.items():
                family.samples = [Sample(sample, dict(labels), value)
                                  for (sample, labels), value in values[name].items()]
                yield family

    return bytes(generate_latest(_Merged()))


def serve_workers(apps: Apps, config: Config, server: ServerConfig, lock: DataDirLock) -> None:
    """The supervisor: the admin API here, `server.workers` edge processes on the edge port."""
    try:
        # The edge port is taken here first, alone, so a busy port fails as clearly as with one process.
        probe = bind(server.host, server.port)
        port = probe.getsockname()[1]
        probe.close()
        # Then held, bound but not listening, with SO_REUSEPORT: the workers join it, and no server
        # started later can take the port in between.
        reserve = bind(server.host, port, reuse_port=True)
        admin_sock = bind(server.admin_host, server.admin_port)
    except BaseException:
        apps.close()
        raise
    server = replace(server, port=port)
    fleet = Fleet(apps, config, server, lock, server.workers)
    apps.admin = apps.rebuild_admin(fleet)
    try:
        run_loop(_supervise(apps, server, fleet, admin_sock))
    finally:
        fleet.stop()
        reserve.close()
        admin_sock.close()
        apps.close()


async def _supervise(apps: Apps, server: ServerConfig, fleet: Fleet, admin_sock: socket.socket) -> None:
    from ._server import listeners, uvicorn_server

    admin = uvicorn_server(apps.admin, server.admin_host, server.admin_port,
                           listeners(server, 1, server.admin_max_connections)[1])
    loop = asyncio.get_running_loop()

    def stop() -> None:
        admin.should_exit = True
        stop_following()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    await asyncio.to_thread(fleet.start)
    apps.health.start()
    task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
    announced = False
    while not task.done():
        ready = fleet.ready() and admin.started
        apps.state.ready = ready  # /readyz: every worker serving
        if ready and not announced:
            announced = True
            log.info("isolate ready: edge http://%s:%d (%d workers)  admin http://%s:%d  region %s  (%d modules, "
                     "%d routes)", server.host, server.port, server.workers, server.admin_host,
                     admin_sock.getsockname()[1], server.region, len(apps.host.modules()),
                     len(apps.state.routes.routes))
        await asyncio.sleep(0.05)
    try:
        await task
    finally:
        apps.state.ready = False
        await apps.health.stop()
        await asyncio.to_thread(fleet.stop)


# -- a worker ---------------------------------------------------------------------------------


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isolate worker", description="an edge worker of `isolate serve --workers`")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--lock", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    channel = socket.socket(fileno=args.channel)
    settings = json.loads(_first_line(channel))
    config, server = _config_of(settings)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(log_formatter(server.log_format, f"[worker {args.index}] ", {"worker": args.index}))
    logging.basicConfig(level=settings.get("log_level", logging.INFO), handlers=[stderr])
    try:
        lock = DataDirLock.inherited(args.lock, config.data_dir)
        # The supervisor is the node's cluster member and relays its changes; a worker reaches the
        # cluster only for the guest key-value stores, which live there.
        apps = build(config, replace(server, cluster=""), host=Host(config, usage=Usage(None)))
        if server.cluster:
            from ..backends import use_cluster_key_value

            use_cluster_key_value(apps.host, server.cluster, f"{server.node_name or 'isolate'}#worker{args.index}")
        edge_sock = bind(server.host, server.port, reuse_port=True)
    except IsolateError as exc:
        log.error("worker %d cannot start: %s: %s", args.index, exc.kind, exc.detail)
        return 1
    try:
        _join_supervisor(apps, channel)
        run_loop(serve_apps(apps, server, edge_sock, None, lambda stop: _answer(apps, channel, stop)))
    finally:
        edge_sock.close()
        apps.close()
        lock.close()
    return 0


def _join_supervisor(apps: Apps, channel: socket.socket) -> None:
    """Before listening: say the state is built (`join`), then catch up (`resync`) under the supervisor's
    control lock, after which every change comes on the channel, handled once the loop runs."""
    while True:
        message = json.loads(_first_line(channel))
        if message.get("op") == "resync":
            apps.node.resync()
        channel.sendall(json.dumps({"ok": True, "id": message.get("id")}).encode() + b"\n")
        if message.get("op") == "resync":
            return


def _first_line(channel: socket.socket) -> bytes:
    """One line, read a byte at a time: nothing after it may be taken from the channel (the event loop
    reads the rest). Only for the few small messages before the loop runs."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = channel.recv(1)
        if not byte:
            raise SystemExit("the supervisor closed the channel before sending the configuration")
        line += byte
    return bytes(line)


async def _answer(apps: Apps, channel: socket.socket, stop: Callable[[], None]) -> None:
    """Answer the supervisor until it goes away; then stop serving."""
    reader, writer = await asyncio.open_connection(sock=channel, limit=1 << 24)
    try:
        while line := await reader.readline():
            message = json.loads(line)
            try:
                answer = await _handle(apps, message)
            except (IsolateError, ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": str(getattr(exc, "detail", exc))}
            writer.write(json.dumps({**answer, "id": message.get("id")}).encode() + b"\n")
            await writer.drain()
    except (OSError, ValueError):
        pass
    finally:
        writer.close()
    log.info("the supervisor is gone: stopping")
    stop()


async def _handle(apps: Apps, message: Mapping[str, Any]) -> dict[str, Any]:
    from ._admin import stats_body

    op = message.get("op")
    if op == "ping":
        return {"ok": True}
    if op == "change":
        purged = await asyncio.to_thread(apps.node.replay, Change.from_dict(message["change"]))
        return {"ok": True, "purged": purged}
    if op == "resync":
        await asyncio.to_thread(apps.node.resync)
        return {"ok": True}
    if op == "metrics":
        return {"ok": True, "text": apps.metrics.render().decode()}
    if op == "stats":
        return {"ok": True, "stats": stats_body(apps.node, apps.metrics)}
    if op == "usage":
        return {"ok": True, "usage": apps.host.usage.drain()}
    if op == "logs":
        lines = await asyncio.to_thread(read_local, message.get("since"), message.get("module"), int(message["limit"]))
        return {"ok": True, **lines}
    raise InvalidConfig(f"unknown message {op!r}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_worker_main())
