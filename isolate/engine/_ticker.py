"""The epoch ticker: a thread that advances the engine's epoch so deadlines stop CPU-bound guests."""

from __future__ import annotations

import math
import threading
from typing import Any

import wasmtime


class EpochTicker:
    """Calls `engine.increment_epoch()` every `tick` seconds until `close()`.

    With the native path (`fastpath`, the `_fastpath` extension) the thread is a native one that never
    takes the GIL; otherwise a Python thread, which takes it on every tick.
    """

    def __init__(self, engine: wasmtime.Engine, tick: float, fastpath: Any = None, engine_ptr: int = 0) -> None:
        self.tick = tick
        # Set before `_engine`: attributes are released in the order they were first set, so a ticker
        # dropped without close() stops its native thread before the engine it ticks can go.
        self._native: Any = None
        self._engine = engine
        self._fastpath = fastpath
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if fastpath is not None:
            self._native = fastpath.ticker_start(engine_ptr, tick)
        else:
            self._thread = threading.Thread(target=self._run, name="isolate-epoch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._engine.increment_epoch()

    def ticks_for(self, seconds: float) -> int:
        """Epoch ticks that guarantee at least `seconds` before the deadline fires.

        The epoch may advance right after the deadline is set, so one tick is added; a timeout thus
        fires between `seconds` and `seconds + tick` after it was armed.
        """
        return math.ceil(seconds / self.tick) + 1

    def close(self) -> None:
        if self._native is not None:
            self._fastpath.ticker_stop(self._native)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
