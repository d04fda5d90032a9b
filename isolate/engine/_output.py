"""Per-request capture of guest output: `isolate.log` calls and WASI stdout/stderr, never the host's."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from ..abi import LogRecord
from . import _raw

LEVELS = ("debug", "info", "warn", "error")


class Capture:
    """The logs of one request, bounded by `limit` bytes; what does not fit is counted, not kept."""

    __slots__ = ("records", "limit", "used", "dropped", "abi_error", "key")

    def __init__(self, limit: int) -> None:
        self.records: list[LogRecord] = []
        self.limit = limit
        self.used = 0
        self.dropped = 0
        self.abi_error: str | None = None  # set by a host function that caught the guest lying
        self.key = 0

    def add(self, stream: str, level: str, data: bytes) -> None:
        if self.used + len(data) > self.limit:
            self.dropped += len(data)
            return
        self.used += len(data)
        self.records.append(LogRecord(stream, level, data.decode("utf-8", "replace")))

    def finish(self) -> tuple[LogRecord, ...]:
        if self.dropped:
            self.records.append(LogRecord("host", "warn", f"guest output truncated: {self.dropped} bytes dropped"))
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
        if capture is not None and size:
            capture.add(stream, level, ctypes.string_at(data, size))
        return size

    return _raw.OUTPUT_CALLBACK(write)


STDOUT = _output("stdout", "info")
STDERR = _output("stderr", "error")
