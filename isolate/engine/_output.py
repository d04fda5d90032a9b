"""Per-request capture of guest output: `isolate.log` calls and WASI stdout/stderr, never the host's."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

from ..abi import LogRecord
from . import _raw

LEVELS = ("debug", "info", "warn", "error")


RECORD_OVERHEAD = 32
"""Bytes each record is charged besides its text, so empty records count: each becomes a log line."""


class Capture:
    """The logs of one request, bounded by `limit` bytes and `max_records` records; what does not fit
    is counted, not kept. Once full, later output is counted without being copied out of the guest.

    For modules that import WASI (the only host calls that can wait or run long), it also carries
    the request's start and deadline (`time.perf_counter()` values) and why a host call failed the
    guest, if one did; other requests never pay for setting them. `out_of_memory`, the size of the
    first allocation the guest's allocator reported failing (`isolate.out_of_memory`), is set only
    then: read it with getattr.
    """

    __slots__ = ("records", "limit", "max_records", "used", "full", "dropped", "dropped_records", "abi_error",
                 "key", "interrupted", "started", "deadline", "out_of_memory")

    def __init__(self, limit: int, max_records: int = 256) -> None:
        self.records: list[LogRecord] = []
        self.limit = limit
        self.max_records = max_records
        self.used = self.dropped = self.dropped_records = self.key = 0
        self.full = max_records <= 0 or limit < RECORD_OVERHEAD
        self.abi_error: str | None = None  # set by a host function that caught the guest lying

    def wait_bounds(self, started: float, deadline: float) -> None:
        """Arm the fields waiting host calls read: `interrupted` ("timeout" or "shutdown") is set by
        the call a wait was cut short in."""
        self.started = started
        self.deadline = deadline
        self.interrupted: str | None = None

    def fits(self, size: int) -> bool:
        """Whether a record of `size` bytes would be kept: ask before copying it out of the guest."""
        return not self.full and self.used + size + RECORD_OVERHEAD <= self.limit

    def drop(self, size: int) -> None:
        self.dropped += size
        self.dropped_records += 1

    def add(self, stream: str, level: str, data: bytes) -> None:
        # _fastpath.c's capture_add applies this same rule to the native path's log calls.
        if not self.fits(len(data)):
            self.drop(len(data))
            return
        self.used += len(data) + RECORD_OVERHEAD
        self.records.append(LogRecord(stream, level, data.decode("utf-8", "replace")))
        if len(self.records) >= self.max_records or self.used + RECORD_OVERHEAD > self.limit:
            self.full = True

    def note(self, level: str, text: str) -> None:
        """A record from the host about this request (a refused outbound call, a missing store)."""
        self.add("host", level, text.encode("utf-8", "replace"))

    def finish(self) -> tuple[LogRecord, ...]:
        if self.dropped_records:
            self.records.append(LogRecord(
                "host", "warn",
                f"guest output truncated: {self.dropped_records} records ({self.dropped} bytes) dropped"))
            self.dropped = self.dropped_records = 0
        return tuple(self.records)


# WASI output callbacks receive an opaque key naming the capture of the request that wrote.
_captures: dict[int, Capture] = {}
_lock = threading.Lock()
_next_key = 1
current = threading.local()
"""`current.capture` is the capture of the request running on this thread, for host functions."""


def register(capture: Capture) -> int:
    global _next_key
    with _lock:
        key = _next_key
        _next_key += 1
    capture.key = key
    _captures[key] = capture
    return key


def unregister(capture: Capture) -> None:
    _captures.pop(capture.key, None)


def _output(stream: str, level: str) -> Any:
    def write(key: Any, data: Any, size: int) -> int:
        capture = _captures.get(key or 0)
        if capture is None or not size:
            return size
        # wasmtime calls this once per 4 KiB of a write, ~25 µs each: one 100 MiB fd_write would
        # hold the guest in the host for 0.7 s. Past the deadline the write fails instead (EIO to
        # the guest, whose epoch deadline stops it next).
        if time.perf_counter() > capture.deadline:
            capture.interrupted = "timeout"
            return -1
        if capture.fits(size):
            capture.add(stream, level, ctypes.string_at(data, size))
        else:
            capture.drop(size)  # counted without copying: a guest may write gigabytes
        return size

    return _raw.OUTPUT_CALLBACK(write)


STDOUT = _output("stdout", "info")
STDERR = _output("stderr", "error")
