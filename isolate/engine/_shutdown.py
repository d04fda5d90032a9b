"""Process-wide shutdown: wakes guests waiting in host calls and interrupts the ones running wasm."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol


class Interruptible(Protocol):
    def interrupt(self) -> None: ...


stopping = False
"""True from `shutdown()` until `resume()`: new requests are refused, waits end at once."""
_wake = threading.Event()
_targets: weakref.WeakSet[Interruptible] = weakref.WeakSet()
_lock = threading.Lock()


def register(target: Interruptible) -> None:
    """Have `shutdown()` call `target.interrupt()` (each engine advances its epoch past every deadline)."""
    with _lock:
        _targets.add(target)


def shutdown() -> None:
    """Stop every guest of this process now; the server calls it on SIGTERM.

    Host calls waiting on the guest's behalf (WASI `poll_oneoff`) wake and fail their guest, guests
    running wasm are interrupted at their next epoch check, and new requests are refused as
    overloaded until `resume()`. Their diagnostic is `overloaded` with `limit: "shutdown"`.
    """
    global stopping
    stopping = True
    _wake.set()
    with _lock:
        targets = list(_targets)
    for target in targets:
        target.interrupt()


def resume() -> None:
    """Accept requests again after `shutdown()` (for embedders and tests that keep the process)."""
    global stopping
    stopping = False
    _wake.clear()


def wait(seconds: float) -> bool:
    """Sleep up to `seconds`; True if `shutdown()` ended the wait (or had already been called)."""
    return _wake.wait(seconds)


def sleep_until(due: float, deadline: float) -> str | None:
    """Sleep until `due` (a `time.perf_counter()` value), never past `deadline`: None once `due` came,
    else why the wait was cut ("shutdown", or "timeout" when `due` lies past the deadline). The one
    wait of every host call that sleeps for a guest (WASI poll_oneoff, wasi:io pollables)."""
    while True:
        remaining = min(due, deadline) - time.perf_counter()
        if remaining <= 0:
            break
        if wait(remaining):
            return "shutdown"
    return "timeout" if due > deadline else None


def is_stopping() -> bool:
    """Whether `shutdown()` was called (and not `resume()`): waits in host calls end when it is."""
    return stopping
