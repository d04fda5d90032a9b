"""Usage metering: what each module costs (invocations, CPU, wall time, memory × time, I/O), kept per hour on disk.

A request's figures are added to its thread's running sums on the request path (no lock), and
folded into per-module totals and hourly buckets by a flusher thread every `flush_interval`
seconds, which also writes the current hour's file. So a request lands in the hour of the fold that took it
(at most `flush_interval` late), and a killed process loses at most the last `flush_interval` of
figures; `close()` folds and writes everything.

On disk (`<data-dir>/usage/<YYYY-MM-DDTHH>.json`, UTC, written atomically like every file of the
data directory): one file per hour with that hour's figures per module and the running totals as
of the write; the totals of the most recently written file are the totals. Hours older than
`retention` are dropped. One process writes them: the server, or the supervisor of
`serve --workers`, which folds in what its workers `drain()` (their `Usage` has no directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .registry._files import atomic_write, loads_json, remove_temporaries

log = logging.getLogger("isolate.usage")

FLUSH_INTERVAL = 5.0  # seconds between folds and writes: what a kill can lose at most
RETENTION_HOURS = 31 * 24  # hourly buckets kept for `?since=`; totals are kept for ever
# Runs at least this long read the thread's CPU clock (two syscalls, ~1.2 µs here) on the next
# request of their module; shorter runs count their wall time as CPU time (see Host.invoke).
CPU_CLOCK_FROM_US = 500.0

# Field order of a figures list, in the files and in drain() answers.
FIELDS = ("invocations", "cpu_ns", "wall_ns", "memory_byte_ns", "outbound_requests", "outbound_bytes",
          "kv_operations")
_WIDTH = len(FIELDS)
_HOUR = 3600
# The largest figure a file may hold: far above any real total (memory × time passes 2**63 after
# ~100 requests of 100 MiB × 1 s, so not that), far below where float() of it overflows (ModuleUsage.of).
_MAX_FIGURE = 1 << 127
_SINCE_SPAN = 100 * 366 * 86400  # `since` further than this from now is a mistake, not a question


@dataclass(frozen=True, slots=True)
class ModuleUsage:
    """One module's usage over a period."""

    invocations: int = 0
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    memory_mib_s: float = 0.0  # peak linear memory (MiB) × duration (s), summed over requests
    outbound_requests: int = 0
    outbound_bytes: int = 0  # request and answer envelopes exchanged with the guest
    kv_operations: int = 0

    @staticmethod
    def of(figures: list[int]) -> ModuleUsage:
        calls, cpu, wall, memory, out, out_bytes, kv = figures
        return ModuleUsage(calls, cpu / 1e6, wall / 1e6, memory / (1 << 20) / 1e9, out, out_bytes, kv)


def parse_since(text: str) -> float:
    """`since` as a unix time: seconds since the epoch, or ISO 8601 (UTC unless it names a zone).

    ValueError when it is neither, or not within about a hundred years of now (inf and nan included)."""
    text = text.strip()
    try:
        when = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            when = stamp.timestamp()
        except (ArithmeticError, OSError) as exc:  # ValueError passes through as it is
            raise ValueError(str(exc)) from None
    if not (math.isfinite(when) and abs(when - time.time()) <= _SINCE_SPAN):
        raise ValueError(f"{text[:64]!r} is not within a hundred years of now")
    return when


def _hour_name(hour: int) -> str:
    return datetime.fromtimestamp(hour * _HOUR, UTC).strftime("%Y-%m-%dT%H")


def _figure(value: Any) -> int:
    """A count read from a file: an integer (a float only if whole), 0 <= value < _MAX_FIGURE."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value < _MAX_FIGURE:
        raise ValueError(f"not a count: {str(value)[:32]}")
    return value


def _rows(table: Any) -> dict[str, list[int]]:
    if not isinstance(table, dict):
        raise ValueError("not an object of rows")
    rows = {}
    for module, row in table.items():
        if not isinstance(row, list) or len(row) != _WIDTH:
            raise ValueError(f"row of {str(module)[:64]!r} is not {_WIDTH} figures")
        rows[str(module)] = [_figure(v) for v in row]
    return rows


def _valid_row(row: Any) -> bool:
    return (isinstance(row, list) and len(row) == _WIDTH
            and all(type(v) is int and 0 <= v < _MAX_FIGURE for v in row))


def _add(into: dict[str, list[int]], module: str, figures: Iterable[int]) -> None:
    row = into.get(module)
    if row is None:
        row = into[module] = [0] * _WIDTH
    for i, value in enumerate(figures):
        row[i] += value


class Usage:
    """Per-module usage of one process; persisted when given a directory. Thread-safe."""

    def __init__(self, directory: Path | None, *, flush_interval: float = FLUSH_INTERVAL,
                 retention_hours: int = RETENTION_HOURS, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._retention = retention_hours
        self._local = threading.local()  # .rows: this thread's running sums per module (record)
        self._lock = threading.Lock()  # the tables below; never taken on the request path, nor held on disk
        self._write_lock = threading.Lock()  # one flush writes at a time: a later snapshot lands last
        self._threads: list[tuple[threading.Thread, dict[str, list[int]]]] = []  # every thread's sums
        self._seen: dict[int, dict[str, list[int]]] = {}  # id(sums) -> their values at the last fold
        self._totals: dict[str, list[int]] = {}
        self._hours: dict[int, dict[str, list[int]]] = {}
        self._drained: dict[str, list[int]] = {}  # folded but not yet drained (a worker's Usage)
        self._dirty: set[int] = set()
        self._expired: set[str] = set()  # names of files of expired hours, removed once the totals are written
        self._sequence = 0  # written into each file: the newest write's totals are the totals
        self._failed = ""  # the last write error, logged once until a write succeeds
        self.timed: set[str] = set()  # modules whose next run reads the CPU clock (CPU_CLOCK_FROM_US)
        # Other processes' figures, pulled at each fold (the supervisor of `serve --workers` drains its workers).
        self._sources: list[Callable[[], Iterable[Mapping[str, list[int]]]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if directory is not None:
            self._load(directory)
            self._thread = threading.Thread(target=self._flusher, args=(flush_interval,), name="isolate-usage",
                                            daemon=True)
            self._thread.start()

    # -- the request path -----------------------------------------------------------------------

    def record(self, module: str, cpu_ns: int, wall_ns: int, memory_bytes: int, outbound_requests: int = 0,
               outbound_bytes: int = 0, kv_operations: int = 0) -> None:
        """One request's figures, in nanoseconds (a quick request takes a few µs: µs would round away a
        tenth of it), added to this thread's own running sums: no lock on the request path (a lock
        round trip alone measured 0.3 µs here, this whole call 0.25 µs)."""
        try:
            rows: dict[str, list[int]] = self._local.rows
        except AttributeError:
            rows = self._local.rows = {}
            with self._lock:
                self._threads.append((threading.current_thread(), rows))
        row = rows.get(module)
        if row is None:
            rows[module] = [1, cpu_ns, wall_ns, memory_bytes * wall_ns, outbound_requests, outbound_bytes,
                            kv_operations]
            return
        row[0] += 1
        row[1] += cpu_ns
        row[2] += wall_ns
        row[3] += memory_bytes * wall_ns
        if outbound_requests or kv_operations:
            row[4] += outbound_requests
            row[5] += outbound_bytes
            row[6] += kv_operations

    # -- folding, reading -------------------------------------------------------------------------

    def add_source(self, source: Callable[[], Iterable[Mapping[str, list[int]]]]) -> None:
        """Pull `source()` (drained figures of other processes) into this Usage at every fold."""
        self._sources.append(source)

    def fold(self) -> None:
        """Move what every thread recorded since the last fold, and what the sources give, into the
        totals and the current hour (sources may block: not to be called on an event loop).

        A thread's sums only grow, and are never reset (its owner may be adding to them right now):
        what is new is their value less the value seen at the last fold. A row read in the middle
        of an update gives the rest of that update to the next fold; nothing is lost or counted twice.
        """
        for source in self._sources:
            for figures in source():
                self.merge(figures)
        with self._lock:
            new: dict[str, list[int]] = {}
            threads = []
            for thread, rows in self._threads:
                ended = not thread.is_alive()  # before reading: an ended thread's sums are final
                seen = self._seen.setdefault(id(rows), {})
                for module, row in list(rows.items()):  # copies are atomic; iterating `rows` would not be
                    values = list(row)
                    last = seen.get(module)
                    seen[module] = values
                    delta = values if last is None else [v - w for v, w in zip(values, last, strict=True)]
                    if any(delta):
                        _add(new, module, delta)
                if ended:
                    del self._seen[id(rows)]
                else:
                    threads.append((thread, rows))
            self._threads = threads
            if not new:
                return
            hour = int(self._clock()) // _HOUR
            # A worker's figures go to its supervisor (drain), which keeps the hours.
            bucket = self._hours.setdefault(hour, {}) if self.directory is not None else self._drained
            for module, row in new.items():
                _add(self._totals, module, row)
                _add(bucket, module, row)
            self._dirty.add(hour)

    def drain(self) -> dict[str, list[int]]:
        """Figures recorded since the last drain, per module (`FIELDS` order), then forgotten: what a
        worker hands its supervisor."""
        self.fold()
        with self._lock:
            drained, self._drained = self._drained, {}
        return drained

    def merge(self, figures: Mapping[str, list[int]]) -> None:
        """Add figures drained from another process (a worker) as if recorded here now."""
        with self._lock:
            hour = int(self._clock()) // _HOUR
            bucket = self._hours.setdefault(hour, {})
            for module, row in figures.items():
                if _valid_row(row):
                    _add(self._totals, module, row)
                    _add(bucket, module, row)
            self._dirty.add(hour)

    def totals(self) -> dict[str, ModuleUsage]:
        """Every module's usage since metering began, deleted modules included."""
        self.fold()
        with self._lock:
            return {module: ModuleUsage.of(row) for module, row in sorted(self._totals.items())}

    def since(self, when: float) -> tuple[float, dict[str, ModuleUsage]]:
        """Usage in the hours from the one holding `when` on, and when that hour began (the figures
        are hourly, so they may start up to an hour before `when`). Hours older than the retention
        are gone: the answer then starts at the oldest hour kept."""
        self.fold()
        first = int(when) // _HOUR
        out: dict[str, list[int]] = {}
        with self._lock:
            kept = [hour for hour in self._hours if hour >= first]
            for hour in kept:
                for module, row in self._hours[hour].items():
                    _add(out, module, row)
            oldest = min(self._hours, default=first)
        start = max(first, oldest) if kept else first
        return start * _HOUR, {module: ModuleUsage.of(row) for module, row in sorted(out.items())}

    # -- persistence ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Fold, then write the hours that changed (each file with the totals as of now).

        The tables are copied under the lock and written outside it: readers (totals() for /metrics,
        on the event loop) never wait on the disk. Flushes write one at a time, each taking its copy
        once the one before has written, so the newest totals are always written last."""
        if self.directory is None:
            return
        self.fold()
        with self._write_lock:
            with self._lock:
                now_hour = int(self._clock()) // _HOUR
                for hour in [h for h in self._hours if h < now_hour - self._retention]:
                    del self._hours[hour]
                    self._dirty.discard(hour)
                    with contextlib.suppress(ArithmeticError, ValueError, OSError):
                        self._expired.add(f"{_hour_name(hour)}.json")
                if self._expired and not self._dirty:
                    # The expired files may hold the only copy of the totals: write them in this hour's first.
                    self._hours.setdefault(now_hour, {})
                    self._dirty.add(now_hour)
                writes = []
                for hour in sorted(self._dirty):
                    if hour not in self._hours:
                        continue
                    try:
                        name = f"{_hour_name(hour)}.json"
                    except (ArithmeticError, ValueError, OSError) as exc:  # one bad hour never blocks the rest
                        log.error("usage: dropping hour %r: %s", hour, exc)
                        del self._hours[hour]
                        continue
                    self._sequence += 1
                    writes.append((hour, name, json.dumps({
                        "hour": hour * _HOUR, "sequence": self._sequence, "fields": FIELDS,
                        "modules": self._hours[hour], "totals": self._totals,
                    }, separators=(",", ":")).encode()))
                self._dirty.clear()
                expired = set(self._expired)
            try:
                self.directory.mkdir(exist_ok=True)  # not its parents: a data directory that went away stays away
                for _, name, data in writes:
                    atomic_write(self.directory / name, data)
            except OSError as exc:
                with self._lock:
                    self._dirty.update(hour for hour, _, _ in writes)  # tried again at the next flush
                if str(exc) != self._failed:
                    log.error("usage: cannot write %s: %s", self.directory, exc)
                self._failed = str(exc)
                return
            self._failed = ""
            written = {name for _, name, _ in writes}
            for name in expired - written:
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
            with self._lock:
                self._expired -= expired

    def close(self) -> None:
        """Stop the flusher and write everything (a clean stop loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _flusher(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except Exception:  # a bug must not end metering for the life of the process
                log.exception("usage: flush failed")

    def _load(self, directory: Path) -> None:
        """Read the hours kept. A damaged file (bad JSON, a figure that is no count, an hour that is not
        its name's or is not within the retention of now) is logged and skipped: it loses that
        hour, never the process (the totals come from another file). Files of hours past the
        retention give their totals, and are removed at the first flush."""
        if directory.is_dir():
            remove_temporaries(directory)  # a write a crash interrupted
        now_hour = int(self._clock()) // _HOUR
        newest = -1
        for path in sorted(directory.glob("*.json")):
            try:
                data: Any = loads_json(path.read_bytes())
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                stamp = _figure(data["hour"])
                hour = stamp // _HOUR
                if stamp % _HOUR or f"{_hour_name(hour)}.json" != path.name:
                    raise ValueError(f"hour {stamp} is not the hour of the file's name")
                if hour > now_hour + self._retention:
                    raise ValueError(f"hour {path.stem} is further ahead of now than the retention")
                modules = _rows(data["modules"])
                totals = _rows(data["totals"])
                sequence = _figure(data["sequence"])
            except (OSError, ArithmeticError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # A damaged hour loses that hour, never the process (its totals come from another file).
                log.error("usage: skipping %s: %s", path, exc)
                continue
            if hour < now_hour - self._retention:
                self._expired.add(path.name)
            else:
                self._hours[hour] = modules
            if sequence > newest:
                newest, self._totals = sequence, totals
        self._sequence = max(newest, 0)
