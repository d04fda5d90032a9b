"""`GET /v1/logs` and `isolate logs`: each edge process keeps its recent access and guest lines in a ring.

The ring is the only buffer. It holds the last `RING_SIZE` lines as their records' parts, filled
by the log writer thread, off the event loop; they become fields (`_logs.fields_of`) when read. Its
memory is bounded in bytes too: each line's text is cut to `LINE_BYTES` (the server's own log keeps
whole lines), and the oldest lines leave once the ring holds `RING_BYTES`. A
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
import sys
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

_log = logging.getLogger("isolate.logs")

RING_SIZE = 5000
"""Recent lines kept per process at most (fewer when they are long: `RING_BYTES`)."""
RING_BYTES = 16 * 1024 * 1024
"""The ring's memory at most, as `LogRing.bytes` counts it: the oldest lines leave first."""
LINE_BYTES = 4096
"""A line's text kept in the ring at most (UTF-8 bytes over its message and fields); the rest is cut, and
the part cut ends with `... (N bytes cut)`. A guest line may be `Config.log_limit` (64 KiB) long, four
times that once its control characters are escaped."""
DEFAULT_LINES = 100
POLL = 0.1  # seconds between a follower's reads while nothing was waiting
BATCH = 1000  # lines a follower reads (and writes) at once at most
BATCH_BYTES = 1024 * 1024  # and their size at most (as `LogRing.bytes` counts), the first line always
_LINE_OVERHEAD = 200  # bytes of a kept line besides its strings: its tuples, its time (sys.getsizeof)
_STR_OVERHEAD = 64  # bytes of a kept string besides its characters, or of a number (sys.getsizeof: 24-57)
_NUMBERS = frozenset((int, float, bool, type(None)))  # argument types kept as they are, besides str
MAX_FOLLOWERS = 16  # at once, per process: the admin API's connections stay free for the rest
LOGGERS = ("isolate.access", "isolate.guest")
NDJSON = "application/x-ndjson"

Lines = list[dict[str, Any]]


class _Line(NamedTuple):
    """A record's parts, kept as they are: fields are made only for lines that someone reads."""

    created: float
    level: str
    name: str
    msg: str
    args: tuple[object, ...]
    size: int  # bytes it costs the ring: its strings' sys.getsizeof and `_LINE_OVERHEAD`

    def fields(self) -> dict[str, Any]:
        return line_fields(self.created, self.level, self.name, self.msg, self.args)


def _cut(text: str, budget: int) -> tuple[str, int]:
    """`text` cut to `budget` UTF-8 bytes (at a character's start), marked when cut; the budget left."""
    if text.isascii():  # O(1): the usual case, where characters are bytes
        if len(text) <= budget:
            return text, budget - len(text)
        return f"{text[:budget]}... ({len(text) - budget} bytes cut)", 0
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= budget:
        return text, budget - len(data)
    end = budget
    while end > 0 and data[end] & 0xC0 == 0x80:  # inside a character: cut before it
        end -= 1
    return f"{data[:end].decode('utf-8', 'surrogatepass')}... ({len(data) - end} bytes cut)", 0


def _message(msg: object, args: object) -> str:
    """The formatted message of a record `_kept` does not keep in parts."""
    try:
        return str(msg) % args if args else str(msg)
    except Exception:  # a malformed call: its template, as the line's message
        return str(msg)


def _kept(record: logging.LogRecord, line_bytes: int) -> _Line:
    """What the ring keeps of `record`: its parts, their text cut to `line_bytes` (the message when it has
    no arguments, else the arguments: a template, from the code, is kept whole). A record whose arguments
    are not all strings and numbers (none of the access and guest lines) or whose template is longer
    than that is kept formatted, so that the ring never holds on to other objects."""
    msg, args = record.msg, record.args
    if type(msg) is not str or type(args) is not tuple or (args and len(msg) > line_bytes):
        msg, args = _message(msg, args), ()
    # The usual line, short and ASCII, as it is (~1 µs): its size from its length, as sys.getsizeof has it.
    chars = 0 if args else len(msg)
    ascii = msg.isascii()
    for arg in args:
        if type(arg) is str:
            chars += len(arg)
            ascii = ascii and arg.isascii()
        elif type(arg) not in _NUMBERS:
            msg, args = _message(msg, args), ()
            chars, ascii = len(msg), msg.isascii()
            break
    if ascii and chars <= line_bytes:
        return _Line(record.created, record.levelname, record.name, msg, args,
                     _LINE_OVERHEAD + _STR_OVERHEAD * (1 + len(args)) + len(msg) + (chars if args else 0))
    if not args:
        msg = _cut(msg, line_bytes)[0]
        return _Line(record.created, record.levelname, record.name, msg, (), _LINE_OVERHEAD + sys.getsizeof(msg))
    # The budget shared shortest first: the short fields (request id, module) stay whole, the long ones are cut.
    kept = list(args)
    texts = sorted((len(arg), index, arg) for index, arg in enumerate(args) if isinstance(arg, str))
    budget = line_bytes
    for done, (_, index, text) in enumerate(texts):
        share = budget // (len(texts) - done)
        kept[index], left = _cut(text, share)
        budget -= share - left
    size = _LINE_OVERHEAD + sys.getsizeof(msg)
    size += sum(sys.getsizeof(arg) if type(arg) is str else _STR_OVERHEAD for arg in kept)
    return _Line(record.created, record.levelname, record.name, msg, tuple(kept), size)


class LogRing(logging.Handler):
    """The last `size` lines of the loggers it is attached to, each with a sequence number: at most
    `max_bytes` of them (`bytes`), each cut to `line_bytes`."""

    def __init__(self, size: int = RING_SIZE, max_bytes: int = RING_BYTES, line_bytes: int = LINE_BYTES) -> None:
        super().__init__()
        self._lines: deque[_Line] = deque()
        self._size = size
        self._max_bytes = max_bytes
        self._line_bytes = line_bytes
        self._bytes = 0  # the lines' `size`s
        self._next = 0  # the sequence number of the next line
        self._guard = threading.Lock()

    @property
    def position(self) -> int:
        """The sequence number the next line will have."""
        return self._next

    @property
    def bytes(self) -> int:
        """The memory the ring's lines take (their strings and a fixed amount per line), at most `max_bytes`."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._lines)

    def handle(self, record: logging.LogRecord) -> bool:
        # Without Handler.handle's lock and filters: on the log writer's thread, for every line, this
        # is all the ring costs (~1 µs) when nobody reads it.
        line = _kept(record, self._line_bytes)
        with self._guard:
            lines = self._lines
            lines.append(line)
            self._bytes += line.size
            self._next += 1
            # the oldest leave: a reader that had not read them yet is told how many it missed
            while len(lines) > self._size or (self._bytes > self._max_bytes and len(lines) > 1):
                self._bytes -= lines.popleft().size
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def read(self, since: int | None, module: str | None, limit: int) -> tuple[Lines, int, int]:
        """(lines, missed, next): with `since` None the last `limit` lines, else up to `limit` lines (and
        `BATCH_BYTES`) from number `since` on; `missed` counts those that had left the ring (of any module)."""
        lines, missed, position, _ = self.read_more(since, module, limit)
        return lines, missed, position

    def read_more(self, since: int | None, module: str | None, limit: int) -> tuple[Lines, int, int, bool]:
        """`read`, and whether lines from `since` on were left for the next read by `BATCH_BYTES`."""
        with self._guard:
            first = self._next - len(self._lines)
            start = self._next if since is None else min(max(since, first), self._next)
            taken = list(self._lines) if since is None else list(islice(self._lines, start - first, None))
            end = self._next

        def wanted(line: _Line) -> bool:
            return module is None or field_of(line.msg, line.args, "module") == module

        if since is None:  # at most the whole ring: `RING_BYTES`
            recent = list(islice((line for line in reversed(taken) if wanted(line)), limit))[::-1]
            return [line.fields() for line in recent], 0, end, False
        lines: Lines = []
        size = 0
        position = start
        more = False
        for line in taken:
            if len(lines) >= limit:
                more = True
                break
            if wanted(line):
                if lines and size + line.size > BATCH_BYTES:
                    more = True
                    break
                size += line.size
                lines.append(line.fields())
            position += 1
        return lines, start - since if since < start else 0, position, more


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
        answer = _ask(worker, since, module, limit, timeout)
        if answer is not None and mark is not None and mark[0] != answer.pid:
            answer = _ask(worker, 0, module, limit, timeout)  # restarted since: its new ring from the start
        if answer is None:
            continue  # dying or being replaced: its mark stays, and its successor is read from its start
        lines += [_with_worker(fields, worker.index) for fields in answer.lines]
        missed += answer.missed
        marks[str(worker.index)] = [answer.pid, answer.next]
    lines.sort(key=lambda fields: str(fields.get("time", "")))
    return (lines[-limit:] if cursor is None else lines), missed, marks


class _Answer(NamedTuple):
    lines: Lines
    missed: int
    pid: int
    next: int


def _ask(worker: Worker, since: int | None, module: str | None, limit: int, timeout: float) -> _Answer | None:
    """A worker's `read_local` answer; None, never an error, when it cannot give one (it is stopping,
    restarting, slow, or its answer is not one): a follower's stream outlives any worker."""
    try:
        answer = worker.call({"op": "logs", "since": since, "module": module, "limit": limit}, timeout)
        lines = answer["lines"]
        if not isinstance(lines, list) or not all(isinstance(fields, dict) for fields in lines):
            raise ValueError(f"lines not a list of objects: {type(lines).__name__}")
        return _Answer(lines, int(answer["missed"]), int(answer["pid"]), int(answer["next"]))
    except Exception as error:  # whatever it was: no lines from this worker this round
        _log.debug("worker %d: no log lines this round: %r", worker.index, error)
        return None


def _with_worker(fields: dict[str, Any], index: int) -> dict[str, Any]:
    """`fields` with `worker` where a worker's `--log-format json` line has it: after `logger`."""
    head = dict(islice(fields.items(), 3))
    return {**head, "worker": index, **fields}


@runtime_checkable
class WorkerLogs(Protocol):
    """A supervisor's telemetry that reads its workers' rings (`isolate.http._workers.Fleet`)."""

    def logs(self, cursor: Any, module: str | None, limit: int) -> tuple[Lines, int, Any]: ...


Read = Callable[[Any, str | None, int], Awaitable[tuple[Lines, int, Any, bool]]]
"""(lines, missed, cursor, more): `more` when lines that had come were left for the next read."""


def _source(telemetry: object | None) -> Read:
    if isinstance(telemetry, WorkerLogs):
        fleet = telemetry

        async def read_fleet(cursor: Any, module: str | None, limit: int) -> tuple[Lines, int, Any, bool]:
            lines, missed, cursor = await asyncio.to_thread(fleet.logs, cursor, module, limit)  # channel calls
            return lines, missed, cursor, len(lines) >= limit

        return read_fleet

    async def read_ring(cursor: Any, module: str | None, limit: int) -> tuple[Lines, int, Any, bool]:
        ring = _ring
        if ring is None:  # an app served in-process: nothing keeps lines
            return [], 0, 0, False
        if cursor is not None and cursor == ring.position:
            return [], 0, cursor, False  # nothing new: the usual answer to a follower, given on the loop
        return await asyncio.to_thread(ring.read_more, cursor, module, limit)  # up to `BATCH` lines made

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
        lines, _, cursor, _ = await read(None, module, count)
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
                batch, missed, cursor, more = await read(cursor, module, BATCH)
                if missed:
                    yield _missed_line(missed)
                if batch:
                    yield _encode(batch)  # waits while the client's socket is full
                if not more:
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
