"""Log output leaves the event loop: a bounded queue feeds one writer thread that formats and writes.

A guest can produce hundreds of log lines per request; building, formatting and writing them on
the loop would stall every other request behind them, and an unread pipe would stall it forever.
While `logging_off_loop()` is active the loop only enqueues: a record as it was logged (formatted
later, so log calls must pass immutable arguments), or a request's guest lines as one item that
the writer expands. When the queue is full, records are dropped and counted, never waited for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ..abi import LogRecord as GuestRecord

MAX_QUEUED = 10_000
"""Lines that may wait for the writer: a guest batch counts one per record (each at most
`Config.log_limit` bytes per request)."""

STOP_TIMEOUT = 1.5
"""Seconds `logging_off_loop()` waits on exit for the writer to write out what is queued."""

GUEST_FORMAT = "request_id=%s module=%s stream=%s %s"
GUEST_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_TOP_GUEST_LEVEL = max(GUEST_LEVELS.values())
_BOTTOM_GUEST_LEVEL = min(GUEST_LEVELS.values())
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}
_REPORT_EVERY = 1.0  # seconds between drop reports while the writer is still behind
# A thread waiting for the GIL forces a switch only after sys.getswitchinterval() (5 ms), and a
# writer that releases it around each write takes it straight back: with a client looping on a
# guest logging 232 lines, another route's p99 was 7-11 ms, 3-4 ms with these pauses.
_SLICE = 0.0005  # seconds the writer works before pausing
_PAUSE = 0.0001  # seconds it then leaves the GIL to the loop
# Woken by each record put into an empty queue, the writer would take the GIL from the loop once per
# request (an access line each); once caught up it sleeps this long first, so a steady stream of
# records wakes it about once per _LINGER, and a line reaches the output at most that much later.
_LINGER = 0.002

# A structured line is a template of `key=%<conversion>` tokens, guest lines ending in a bare `%s` (the
# message): its fields are read from the template and the record's arguments, never parsed back out
# of the formatted text, which a guest's message could forge.
_FIELD = re.compile(r"(\w+)=(%[-#0-9.]*[sdfr])")

_pipe: _Pipe | None = None  # the active route off the loop, if any
_dropped = 0  # by every pipe this process ran, for `dropped_records()`


def clean(text: str) -> str:
    """Escape control characters so guest output can never drive a terminal or forge log lines."""
    return text.translate(_CONTROL)


def dropped_records() -> int:
    """Log records dropped in this process because the log output could not keep up (a counter)."""
    return _dropped


class _Deferred(NamedTuple):
    """A log call whose record the writer builds."""

    logger: logging.Logger
    level: int
    created: float  # time.time() of the call
    msg: str
    args: tuple[object, ...]


def defer_log(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """`logger.log(level, msg, *args)`, with the record built and formatted by the writer when logging
    is off the loop (building one costs the caller ~5 µs); `args` must be immutable."""
    pipe = _pipe
    if pipe is None:
        logger.log(level, msg, *args, stacklevel=2)
    else:
        pipe.put(_Deferred(logger, level, time.time(), msg, args), 1)


def _write_deferred(call: _Deferred) -> None:
    call.logger.handle(_record(call.logger, call.level, call.created, call.msg, call.args))


class _GuestLines(NamedTuple):
    """One request's guest output, waiting to become `logger` lines."""

    logger: logging.Logger
    created: float  # time.time() when the request logged them
    request_id: str
    module: str
    records: Sequence[GuestRecord]


def guest_lines(logger: logging.Logger, request_id: str, module: str, records: Sequence[GuestRecord]) -> None:
    """Log a request's guest records as `logger` lines: one queue item when logging is off the loop,
    directly otherwise (in-process apps, `Host` users, tests capturing logs)."""
    if not records or not logger.isEnabledFor(_TOP_GUEST_LEVEL):
        return
    if not logger.isEnabledFor(_BOTTOM_GUEST_LEVEL):
        # None of them may be written (a guest's info lines beside a WARNING logger): nothing is
        # queued, where each item would wake the writer thread, which then takes the GIL. A loop over
        # isEnabledFor (a cached answer): no generator, no walk up the logger tree (~0.9 -> 0.2 µs).
        enabled = logger.isEnabledFor
        for record in records:
            if enabled(GUEST_LEVELS.get(record.level, logging.INFO)):
                break
        else:
            return
    batch = _GuestLines(logger, time.time(), request_id, module, records)
    pipe = _pipe
    if pipe is None:
        _write_guest_lines(batch)
    else:
        pipe.put(batch, len(records))


def _write_guest_lines(batch: _GuestLines, pace: Callable[[], None] | None = None) -> None:
    logger = batch.logger
    first: dict[str, object] | None = None
    for record in batch.records:
        level = GUEST_LEVELS.get(record.level, logging.INFO)
        if not logger.isEnabledFor(level):
            continue
        args = (batch.request_id, batch.module, record.stream, clean(record.message.rstrip("\n")))
        if first is None:
            line = _record(logger, level, batch.created, GUEST_FORMAT, args)
            first = dict(line.__dict__)
        else:
            # a copy of the first line's record skips LogRecord.__init__ (pid, thread and file-name
            # lookups): a quarter of the writer's time per line
            line = type(line).__new__(type(line))
            line.__dict__.update(first)
            line.levelno, line.levelname, line.args = level, logging.getLevelName(level), args
        logger.handle(line)
        if pace is not None:
            pace()


def _record(logger: logging.Logger, level: int, created: float, msg: str,
            args: tuple[object, ...]) -> logging.LogRecord:
    """A record as `logger.log` would have made it at `created`, not when the writer got to it."""
    record = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None, "(unknown function)")
    record.relativeCreated -= (record.created - created) * 1000
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    return record


_STOP = object()


class _Pipe:
    """A bounded queue (counted in lines) and the daemon thread that hands its items to `handlers`."""

    def __init__(self, handlers: Sequence[logging.Handler], capacity: int) -> None:
        self.handlers = tuple(handlers)
        self.capacity = capacity
        self.dropped = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # lines queued or being written
        self._open = True
        self._abandoned = False
        self._reported = 0
        self._slice_start = 0.0
        self._thread = threading.Thread(target=self._run, name="isolate-log-writer", daemon=True)

    @property
    def writer(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def put(self, item: object, lines: int) -> None:
        """Enqueue `item` (worth `lines` lines), or drop and count it if the queue is full: never wait."""
        global _dropped
        with self._lock:
            if not self._open or self._pending + lines > self.capacity:
                self.dropped += lines
                _dropped += lines
                return
            self._pending += lines
        self._queue.put(item)

    def stop(self, timeout: float) -> bool:
        """Write out what is queued, waiting at most `timeout` seconds; False if the writer is stuck."""
        with self._lock:
            self._open = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self._abandoned = True
        # The stuck writer holds its handlers' locks, and logging.shutdown() at exit takes each
        # handler's lock: fresh ones let the process exit instead of waiting on an unread pipe.
        for handler in self.handlers:
            handler.createLock()
        return False

    def hand(self, record: logging.LogRecord) -> None:
        """Give `record` to the handlers (on the writer thread), as the root logger would have."""
        for handler in self.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    def _pace(self) -> None:
        if time.perf_counter() - self._slice_start >= _SLICE:
            time.sleep(_PAUSE)
            self._slice_start = time.perf_counter()

    def _run(self) -> None:
        last_report = time.monotonic()
        lingered = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if not lingered:  # caught up: let the next records gather before waiting for one
                    lingered = True
                    time.sleep(_LINGER)
                    continue
                item = self._queue.get()
                self._slice_start = time.perf_counter()
            lingered = False
            if item is _STOP:
                return
            lines = len(item.records) if isinstance(item, _GuestLines) else 1
            try:
                if isinstance(item, _GuestLines):
                    _write_guest_lines(item, self._pace)
                elif isinstance(item, _Deferred):
                    _write_deferred(item)
                else:
                    assert isinstance(item, logging.LogRecord)
                    self.hand(item)
            except Exception:
                if self._abandoned:
                    return  # unblocked after stop() gave up: its handlers are no longer ours
                # A bug outside the handlers' own error handling: say so, and keep writing.
                traceback.print_exc(file=sys.stderr)
            with self._lock:
                self._pending -= lines
                caught_up = self._pending == 0
                unreported = self.dropped - self._reported
            if unreported and (caught_up or time.monotonic() - last_report >= _REPORT_EVERY):
                self._reported += unreported
                last_report = time.monotonic()
                logging.getLogger("isolate.logs").warning(
                    "%d log records dropped: the log output is too slow", unreported)
            self._pace()


class _Forwarder(logging.Handler):
    """The root logger's only handler while logging is off the loop: enqueue, never format."""

    def __init__(self, pipe: _Pipe) -> None:
        super().__init__()
        self.pipe = pipe

    def handle(self, record: logging.LogRecord) -> bool:
        # Without Handler.handle's lock: `put` is thread-safe, and the records the writer builds pass
        # through here while it writes them; the loop must never wait behind that.
        result: object = self.filter(record)
        if isinstance(result, logging.LogRecord):  # Python 3.12+: a filter may hand back a new record
            record = result
        if result:
            self.emit(record)
        return bool(result)

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() == self.pipe.writer.ident:
            self.pipe.hand(record)  # logged by the writer itself: guest lines, drop reports
        else:
            self.pipe.put(record, 1)


@contextlib.contextmanager
def logging_off_loop(capacity: int = MAX_QUEUED, stop_timeout: float = STOP_TIMEOUT) -> Iterator[None]:
    """Route the root logger's output through a bounded queue and one writer thread, for the duration.

    On exit the writer gets `stop_timeout` seconds to write out what is queued. If it is stuck (an
    output nobody reads), it is left behind and the root logger keeps dropping records, so that
    the process can still exit.
    """
    global _pipe
    root = logging.getLogger()
    handlers = list(root.handlers)
    if not handlers or any(isinstance(h, (_Forwarder, logging.handlers.QueueHandler)) for h in handlers):
        yield
        return
    pipe = _Pipe(handlers, capacity)
    forwarder = _Forwarder(pipe)
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(forwarder)
    pipe.start()
    _pipe = pipe
    try:
        yield
    finally:
        _pipe = None
        if pipe.stop(stop_timeout):
            root.removeHandler(forwarder)
            for handler in handlers:
                root.addHandler(handler)


# -- lines as fields: the JSON format, the ring of recent lines (`_tail`) and `isolate logs` ----------


@functools.lru_cache(maxsize=256)
def _template(msg: str) -> tuple[tuple[str, str], ...] | None:
    """The (field, conversion) pairs of a structured message; None for any other message."""
    tokens = msg.split(" ")
    fields: list[tuple[str, str]] = []
    for index, token in enumerate(tokens):
        match = _FIELD.fullmatch(token)
        if match is not None:
            fields.append((match[1], match[2]))
        elif token == "%s" and index == len(tokens) - 1:
            fields.append(("msg", "%s"))
        else:
            return None
    return tuple(fields)


def _value(conversion: str, arg: object) -> object:
    """A field's value as JSON should carry it: a number for %d and %f (rounded as formatted)."""
    kind = conversion[-1]
    if arg is None or isinstance(arg, bool):
        return arg
    if kind == "s":
        return arg if type(arg) is str else str(arg)
    if kind == "d":
        return arg if type(arg) is int else int(conversion % (arg,))
    return float(conversion % (arg,)) if kind == "f" else conversion % (arg,)


def timestamp(created: float) -> str:
    """UTC, fixed width (microseconds), so that lines from several processes sort as text."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fields_of(record: logging.LogRecord, static: Mapping[str, object] | None = None) -> dict[str, Any]:
    """A record as fields: `time`, `level`, `logger`, `static` (worker, region), then the `key=value`
    fields of an access or guest line, or `msg` for any other line (with `exc`, a traceback)."""
    fields = line_fields(record.created, record.levelname, record.name, record.msg, record.args, static)
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


def line_fields(created: float, level: str, name: str, msg: object, args: object,
                static: Mapping[str, object] | None = None) -> dict[str, Any]:
    """`fields_of` from a record's parts (what the ring of recent lines keeps)."""
    fields: dict[str, Any] = {"time": timestamp(created), "level": level.lower(), "logger": name}
    if static:
        fields.update(static)
    template = _template(msg) if isinstance(msg, str) and isinstance(args, tuple) else None
    try:
        if template is None or not isinstance(args, tuple) or len(template) != len(args):
            raise ValueError
        fields.update((key, _value(conversion, arg)) for (key, conversion), arg in zip(template, args, strict=True))
    except (ValueError, TypeError):
        fields["msg"] = str(msg) % args if args else str(msg)
    return fields


def field_of(msg: object, args: object, key: str) -> object:
    """One field of a structured line (its module, say) without making the others; None if it has none."""
    template = _template(msg) if isinstance(msg, str) and isinstance(args, tuple) else None
    if template is None or not isinstance(args, tuple) or len(template) != len(args):
        return None
    for (name, _), arg in zip(template, args, strict=True):
        if name == key:
            return arg
    return None


class JsonFormatter(logging.Formatter):
    """`--log-format json`: each line one JSON object, the fields of `fields_of`."""

    def __init__(self, static: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields_of(record, self.static), ensure_ascii=False, default=str)


def log_formatter(log_format: str, prefix: str = "", static: Mapping[str, object] | None = None) -> logging.Formatter:
    """The formatter of `isolate serve`'s lines: logfmt after `prefix` (`[worker 1] `), or JSON with `static`."""
    if log_format == "json":
        return JsonFormatter(static)
    return logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s %(message)s")


def logfmt_line(fields: Mapping[str, Any]) -> str:
    """A line of `isolate logs` (as JSON `fields`) the way `isolate serve` writes it in logfmt."""
    head = [str(fields.get("time", "")), str(fields.get("level", "")).upper(), str(fields.get("logger", ""))]
    if "worker" in fields:
        head.insert(1, f"[worker {fields['worker']}]")
    parts = [f"{key}={_logfmt_value(value)}" for key, value in fields.items()
             if key not in ("time", "level", "logger", "worker", "msg", "exc")]
    if "msg" in fields:
        parts.append(clean(str(fields["msg"])))
    line = " ".join(head + parts)
    return f"{line}\n{fields['exc']}" if "exc" in fields else line


def _logfmt_value(value: object) -> str:
    text = clean(str(value))
    return json.dumps(text) if not text or any(c in text for c in ' "=') else text
