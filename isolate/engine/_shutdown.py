"""Process-wide shutdown: wakes guests waiting in host calls and interrupts the ones running wasm."""

from __future__ import annotations

import threading
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


def is_stopping() -> bool:
    """Whether `shutdown()` was called (and not `resume()`): waits in host calls end when it is."""
    return stopping
