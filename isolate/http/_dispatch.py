"""Where a guest runs: inline on the event loop when it is known to be quick, else on a bounded pool.

A thread hop costs tens of microseconds, more than a quick guest takes. A module whose code can
wait in the host (it imports WASI `poll_oneoff` or another host function that can block) never runs
inline, whatever its past runs cost: waiting burns no CPU, so its CPU time says nothing. Any other
module runs inline once its last `needed` runs each used under `inline_threshold` of CPU (and of
wall time, when it ran inline); `needed` starts at
`PROMOTE_AFTER` (so the first runs of unknown code never touch the loop) and grows eightfold each
time a module is caught being slow, so a module that is only sometimes slow soon stays on the pool.
Slow or unknown modules run on worker threads, where wasm runs with the GIL released, at a lower
scheduling priority than the event loop, so a CPU-heavy guest never stalls other requests. When every
worker is busy and `queue_limit` more are waiting, new work is refused (`Overloaded`, 503) rather than
queued. The price of the inline path: a module that was quick and suddenly is not can hold the loop
once, for at most its own timeout, before it is sent back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import Overloaded

T = TypeVar("T")
PROMOTE_AFTER = 2
MAX_NEEDED = 4096
WORKER_NICE = 10  # guests yield the CPU to the event loop when both want it


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # per-thread nice is Linux behaviour
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


def _never_blocks(module: str) -> bool:
    return False


class Dispatcher:
    def __init__(self, workers: int, queue_limit: int, inline_threshold: float,
                 may_block: Callable[[str], bool] = _never_blocks) -> None:
        self._may_block = may_block
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="isolate-guest",
                                            initializer=_lower_priority)
        self._capacity = workers + queue_limit
        self._threshold = inline_threshold
        self._streak: dict[str, int] = {}  # module -> consecutive quick runs
        self._needed: dict[str, int] = {}  # module -> quick runs required before running inline
        self.inflight = 0

    def is_inline(self, module: str) -> bool:
        return self._streak.get(module, 0) >= self._needed.get(module, PROMOTE_AFTER) and not self._may_block(module)

    def record(self, module: str, seconds: float) -> None:
        if seconds < self._threshold:
            self._streak[module] = self._streak.get(module, 0) + 1
        else:
            if self.is_inline(module) or module not in self._needed:
                self._needed[module] = min(self._needed.get(module, PROMOTE_AFTER) * 8, MAX_NEEDED)
            self._streak[module] = 0

    async def run(self, module: str, fn: Callable[[], T]) -> tuple[T, float]:
        """Run `fn` (one guest invocation) inline or on the pool, and learn from how long it took.

        Returns its result and the seconds it waited for a worker (0 inline).
        """
        if self.is_inline(module):
            started, wall = time.thread_time(), time.perf_counter()
            try:
                return fn(), 0.0
            finally:
                # On the loop, wall time is what other requests waited: count it too.
                self.record(module, max(time.thread_time() - started, time.perf_counter() - wall))
        if self.inflight >= self._capacity:
            raise Overloaded(f"server busy: {self.inflight} guests running or queued", limit=self._capacity)
        self.inflight += 1
        took = [0.0]
        queued = [0.0]
        submitted = time.perf_counter()

        def timed() -> T:
            # CPU time of this thread: what the call would cost the event loop if run inline. Wall
            # time would also count queueing and waits for the GIL, which under load would keep
            # every module off the inline path exactly when the thread hop hurts most.
            queued[0] = time.perf_counter() - submitted
            started = time.thread_time()
            try:
                return fn()
            finally:
                took[0] = time.thread_time() - started

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, timed), queued[0]
        finally:
            self.inflight -= 1
            self.record(module, took[0] if took[0] else self._threshold)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
