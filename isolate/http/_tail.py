"""`GET /v1/logs` and `isolate logs`: each edge process keeps its recent access and guest lines in a ring.

The ring is the only buffer. It holds the last `RING_SIZE` lines as their records' parts, filled
by the log writer thread, off the event loop; they become fields (`_logs.fields_of`) when read. A
follower keeps a position in it and reads from there every `POLL` seconds; a follower that reads
more slowly than lines come (a slow client: its writes wait on the socket) finds that the lines it
had not read yet left the ring, and is told how many it missed. Nothing is queued per follower, so
a stuck client costs one suspended request and the socket's buffer, and never holds up the server.
When the server stops, streams end (`stop_following`); one stuck on a client that reads nothing is
cut by the server's shutdown timeout.

Under `serve --workers` the supervisor serves the endpoint: it reads each worker's ring over the
worker's channel (`{"op": "logs", ...}`, answered by `read_local`) and merges them by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, NamedTuple, Protocol, runtime_checkable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import InvalidRequest, Overloaded
from ._logs import field_of, line_fields, timestamp

RING_SIZE = 5000
"""Recent lines kept per process (guest lines are at most `Config.log_limit` bytes per request)."""
DEFAULT_LINES = 100
POLL = 0.1  # seconds between a follower's reads while nothing was waiting
BATCH = 1000  # lines a follower reads (and writes) at once at most
MAX_FOLLOWERS = 16  # at once, per process: the admin API's connections stay free for the rest
LOGGERS = ("isolate.access", "isolate.guest")
NDJSON = "application/x-ndjson"

Lines = list[dict[str, Any]]


class _Line(NamedTuple):
    """A record's parts, kept as they are: fields are made only for lines that someone reads."""

    created: float
    level: str
    name: str
    msg: object
    args: object


class LogRing(logging.Handler):
    """The last `size` lines of the loggers it is attached to, each with a sequence number."""

    def __init__(self, size: int = RING_SIZE) -> None:
        super().__init__()
        self._lines: deque[_Line] = deque(maxlen=size)
        self._next = 0  # the sequence number of the next line
        self._guard = threading.Lock()

    @property
    def position(self) -> int:
        """The sequence number the next line will have."""
        return self._next

    def handle(self, record: logging.LogRecord) -> bool:
        # Without Handler.handle's lock and filters: on the log writer's thread, for every line, this
        # is all the ring costs (~1 µs) when nobody reads it.
        line = _Line(record.created, record.levelname, record.name, record.msg, record.args)
        with self._guard:
            self._lines.append(line)
            self._next += 1
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def read(self, since: int | None, module: str | None, limit: int) -> tuple[Lines, int, int]:
        """(lines, missed, next): with `since` None the last `limit` lines, else up to `limit` lines from
        number `since` on; `missed` counts those that had left the ring (of any module)."""
        with self._guard:
            first = self._next - len(self._lines)
            start = self._next if since is None else min(max(since, first), self._next)
            taken = list(self._lines) if since is None else list(islice(self._lines, start - first, None))
            end = self._next

        def wanted(line: _Line) -> bool:
            return module is None or field_of(line.msg, line.args, "module") == module

        if since is None:
            recent = list(islice((line for line in reversed(taken) if wanted(line)), limit))[::-1]
            return [line_fields(*line) for line in recent], 0, end
        lines: Lines = []
        position = start
        for line in taken:
            if len(lines) >= limit:
                break
            position += 1
            if wanted(line):
                lines.append(line_fields(*line))
        return lines, start - since if since < start else 0, position


_ring: LogRing | None = None  # this process's, while it serves
_stopping = False  # the server is stopping: followers' streams end


@contextlib.contextmanager
def keep_recent(size: int = RING_SIZE) -> Iterator[LogRing]:
    """Keep this process's recent access and guest lines for `GET /v1/logs`, for the duration."""
    global _ring, _stopping
    ring = LogRing(size)
    _stopping = False
    loggers = [logging.getLogger(name) for name in LOGGERS]
    for logger in loggers:
        logger.addHandler(ring)
    _ring = ring
    try:
        yield ring
    finally:
        _ring = None
        for logger in loggers:
            logger.removeHandler(ring)


def stop_following() -> None:
    """End every follower's stream: uvicorn waits for each connection to close before the server exits."""
    global _stopping
    _stopping = True


def read_local(since: int | None, module: str | None, limit: int) -> dict[str, Any]:
    """A worker's answer to the supervisor's `logs` message (no ring: nothing logged yet)."""
    lines, missed, position = _ring.read(since, module, limit) if _ring is not None else ([], 0, 0)
    return {"lines": lines, "missed": missed, "next": position, "pid": os.getpid()}


class Worker(Protocol):
    """What `read_workers` needs of a worker of `isolate.http._workers` (which imports this module)."""

    index: int

    def call(self, message: Mapping[str, Any], timeout: float) -> dict[str, Any]: ...


def read_workers(workers: Iterable[Worker], cursor: Any, module: str | None, limit: int,
                 timeout: float) -> tuple[Lines, int, Any]:
    """`LogSource.read` over workers' rings, merged by time, each line with its `worker`. A cursor maps
    a worker to (its pid, its position); a worker not in it (started since) is read from its start."""
    marks: dict[str, list[int]] = dict(cursor or {})
    lines: Lines = []
    missed = 0
    for worker in workers:
        mark = marks.get(str(worker.index))
        since = None if cursor is None else 0 if mark is None else mark[1]
        try:
            answer = worker.call({"op": "logs", "since": since, "module": module, "limit": limit}, timeout)
        except (OSError, ValueError):
            continue  # dying or being replaced: its successor is read from its start
        if mark is not None and mark[0] != answer["pid"]:  # restarted since: read its new ring from the start
            answer = worker.call({"op": "logs", "since": 0, "module": module, "limit": limit}, timeout)
        lines += [_with_worker(fields, worker.index) for fields in answer["lines"]]
        missed += int(answer["missed"])
        marks[str(worker.index)] = [int(answer["pid"]), int(answer["next"])]
    lines.sort(key=lambda fields: str(fields.get("time", "")))
    return (lines[-limit:] if cursor is None else lines), missed, marks


def _with_worker(fields: dict[str, Any], index: int) -> dict[str, Any]:
    """`fields` with `worker` where a worker's `--log-format json` line has it: after `logger`."""
    head = dict(islice(fields.items(), 3))
    return {**head, "worker": index, **fields}


@runtime_checkable
class WorkerLogs(Protocol):
    """A supervisor's telemetry that reads its workers' rings (`isolate.http._workers.Fleet`)."""

    def logs(self, cursor: Any, module: str | None, limit: int) -> tuple[Lines, int, Any]: ...


Read = Callable[[Any, str | None, int], Awaitable[tuple[Lines, int, Any]]]


def _source(telemetry: object | None) -> Read:
    if isinstance(telemetry, WorkerLogs):
        fleet = telemetry

        async def read_fleet(cursor: Any, module: str | None, limit: int) -> tuple[Lines, int, Any]:
            return await asyncio.to_thread(fleet.logs, cursor, module, limit)  # blocking channel calls

        return read_fleet

    async def read_ring(cursor: Any, module: str | None, limit: int) -> tuple[Lines, int, Any]:
        ring = _ring
        if ring is None:  # an app served in-process: nothing keeps lines
            return [], 0, 0
        if cursor is not None and cursor == ring.position:
            return [], 0, cursor  # nothing new: the usual answer to a follower, given on the loop
        return await asyncio.to_thread(ring.read, cursor, module, limit)  # up to `BATCH` lines made

    return read_ring


def _encode(lines: Lines) -> bytes:
    return b"".join(json.dumps(fields, ensure_ascii=False).encode() + b"\n" for fields in lines)


def _missed_line(count: int) -> bytes:
    notice = {"time": timestamp(time.time()), "level": "warning", "logger": "isolate.logs",
              "msg": f"{count} lines dropped: this client read more slowly than they came", "dropped": count}
    return _encode([notice])


def _query(request: Request) -> tuple[str | None, bool, int]:
    params = request.query_params
    module = params.get("module") or None
    follow = params.get("follow", "").lower() in ("1", "true", "yes")
    raw = params.get("lines", str(DEFAULT_LINES))
    if not raw.isdigit() or int(raw) > RING_SIZE:
        raise InvalidRequest(f"lines must be a whole number from 0 to {RING_SIZE}, got {raw!r}")
    return module, follow, int(raw)


def logs_endpoint(telemetry: object | None = None) -> Callable[[Request], Awaitable[Response]]:
    """`GET /v1/logs?module=&lines=&follow=`: recent lines as NDJSON (the fields of `--log-format json`);
    with `follow`, a chunked stream of lines as they come, until the client goes."""
    read = _source(telemetry)
    followers = 0

    async def logs(request: Request) -> Response:
        nonlocal followers
        module, follow, count = _query(request)
        lines, _, cursor = await read(None, module, count)
        if not follow:
            return Response(_encode(lines), media_type=NDJSON)
        if followers >= MAX_FOLLOWERS:
            raise Overloaded(f"{MAX_FOLLOWERS} clients follow the logs already")
        followers += 1

        def release() -> None:
            nonlocal followers
            followers -= 1

        async def stream() -> AsyncIterator[bytes]:
            nonlocal cursor
            yield _encode(lines)  # the response starts at once, even with no line yet
            while not _stopping:
                batch, missed, cursor = await read(cursor, module, BATCH)
                if missed:
                    yield _missed_line(missed)
                if batch:
                    yield _encode(batch)  # waits while the client's socket is full
                if len(batch) < BATCH:
                    await asyncio.sleep(POLL)

        return _Following(stream(), release)

    return logs


class _Following(StreamingResponse):
    """A follower's stream; `release` runs however it ends, also when its client went before it started
    (the stream's own code never runs then)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(content, media_type=NDJSON, headers={"cache-control": "no-store"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
