"""Where a guest runs: inline on the event loop when it is known to be quick, else on a bounded pool.

A thread hop costs tens of microseconds, more than a quick guest takes. Whether a module may ever
run inline is decided by what it can do (`may_inline`): never if its code can wait in the host (it
imports WASI `poll_oneoff`; waiting burns no CPU, so its CPU time says nothing), nor if its timeout
is above `inline_max_timeout` (100 ms by default), nor before it has run once. Such a module runs
inline once its last `needed` runs each used under `inline_threshold` of CPU; `needed` starts at
`PROMOTE_AFTER` (so the first runs of unknown code never touch the loop) and is eight times that for
a module slow from the start, and grows eightfold (to 4,096) each time an inline run takes over
`inline_threshold`. A module caught holding the loop (`HELD_LOOP`, 10 ms of CPU) stays on the pool
for good: the price of the inline path is one hold of the loop per module, for at most
`inline_max_timeout`. Everything else runs on worker threads, where wasm runs with the GIL released,
at a lower scheduling priority than the event loop, so a CPU-heavy guest never stalls other
requests. Modules that can wait in the host (outbound HTTP, key-value stores, WASI sleeps) run on a
second, larger pool (`io_threads`, threads made on demand): a hundred guests waiting on a slow origin
hold a hundred mostly sleeping threads there, not the workers other guests need. When every thread
of a pool is busy and `queue_limit` more are waiting, new work is refused (`Overloaded`, 503) rather
than queued.
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
HELD_LOOP = 0.010  # seconds of CPU on the loop that count as holding it: the module stays on the pool
NEVER = 1 << 62  # quick runs needed by a module caught being slow while inline: it stays on the pool
WORKER_NICE = 10  # guests yield the CPU to the event loop when both want it


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # per-thread nice is Linux behaviour
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


def _always(module: str) -> bool:
    return True


def _never(module: str) -> bool:
    return False


class _Pool:
    """Worker threads with an admission bound: at most `threads + queue_limit` guests running or queued."""

    def __init__(self, threads: int, queue_limit: int, prefix: str, what: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=prefix, initializer=_lower_priority)
        self.capacity = threads + queue_limit
        self.inflight = 0
        self._what = what

    async def run(self, fn: Callable[[], T], after: Callable[[], None] | None = None) -> tuple[T, float]:
        """`fn`'s result and the seconds it waited for a thread; `Overloaded` when the bound is reached.
        Once admitted, `after()` runs however the call ends (a result, an error, a cancellation)."""
        if self.inflight >= self.capacity:
            raise Overloaded(f"server busy: {self.inflight} {self._what} running or queued", limit=self.capacity)
        self.inflight += 1
        queued = [0.0]
        submitted = time.perf_counter()

        def timed() -> T:
            queued[0] = time.perf_counter() - submitted
            return fn()

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, timed), queued[0]
        finally:
            self.inflight -= 1
            if after is not None:
                after()


class Dispatcher:
    def __init__(self, workers: int, queue_limit: int, inline_threshold: float,
                 may_inline: Callable[[str], bool] = _always, may_wait: Callable[[str], bool] = _never,
                 io_threads: int = 256) -> None:
        """`may_inline(module)` says whether a module's code could ever run on the loop: not if it
        can wait in the host, nor if its timeout exceeds the inline ceiling (see the module doc);
        `may_wait(module)` whether it can wait in the host (it then runs on the I/O pool)."""
        self._may_inline = may_inline
        self._may_wait = may_wait
        self._workers = _Pool(workers, queue_limit, "isolate-guest", "guests")
        self._io = _Pool(io_threads, queue_limit, "isolate-io", "waiting guests")
        self._threshold = inline_threshold
        self._streak: dict[str, int] = {}  # module -> consecutive quick runs
        self._needed: dict[str, int] = {}  # module -> quick runs required before running inline

    def is_inline(self, module: str) -> bool:
        return self._streak.get(module, 0) >= self._needed.get(module, PROMOTE_AFTER) and self._may_inline(module)

    def record(self, module: str, seconds: float, inline: bool = False) -> None:
        if seconds < self._threshold:
            self._streak[module] = self._streak.get(module, 0) + 1
        else:
            if inline and seconds >= HELD_LOOP:
                # Caught holding the loop: never again (a module that is quick, then slow on purpose,
                # would otherwise freeze the loop once per promotion).
                self._needed[module] = NEVER
            elif inline or module not in self._needed:
                # A little over the threshold (a page fault, a cold cache): eight times the proof.
                self._needed[module] = min(self._needed.get(module, PROMOTE_AFTER) * 8, MAX_NEEDED)
            self._streak[module] = 0

    async def run(self, module: str, fn: Callable[[], T]) -> tuple[T, float]:
        """Run `fn` (one guest invocation) inline or on the pool, and learn from how long it took.

        Returns its result and the seconds it waited for a worker (0 inline).
        """
        if self.is_inline(module):
            started = time.thread_time()
            try:
                return fn(), 0.0
            finally:
                # CPU time, not wall time: waiting for the GIL (other threads) is not the guest's doing,
                # and code that could wait in the host never gets here.
                self.record(module, time.thread_time() - started, inline=True)
        if self._may_wait(module):
            return await self._io.run(fn)  # such modules never run inline: nothing to learn
        took = [0.0]

        def timed() -> T:
            # CPU time of this thread: what the call would cost the event loop if run inline. Wall
            # time would also count queueing and waits for the GIL, which under load would keep
            # every module off the inline path exactly when the thread hop hurts most.
            started = time.thread_time()
            try:
                return fn()
            finally:
                took[0] = time.thread_time() - started

        return await self._workers.run(timed, lambda: self.record(module, took[0] if took[0] else self._threshold))

    def close(self) -> None:
        self._workers.executor.shutdown(wait=True, cancel_futures=True)
        self._io.executor.shutdown(wait=True, cancel_futures=True)
