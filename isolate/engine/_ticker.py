"""The epoch ticker: a thread that advances the engine's epoch so deadlines stop CPU-bound guests."""

from __future__ import annotations

import math
import threading

import wasmtime


class EpochTicker:
    """Calls `engine.increment_epoch()` every `tick` seconds until `close()`."""

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self.tick = tick
        self._engine = engine
        self._stop = threading.Event()
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
        self._stop.set()
        self._thread.join()
