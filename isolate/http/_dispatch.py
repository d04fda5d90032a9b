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
`inline_max_timeout`. An inline run is timed by the wall clock and, only when that says it was
slow, by the loop thread's CPU clock (`_cpu_bound`): reading the CPU clock is a syscall. Neither
counts the time Python's collector ran meanwhile (`_gc_seconds`): a full collection of a server's
objects takes 12-18 ms here, and one that began inside a quick guest's run put that module on the
pool for good, at a third of its throughput (a bench round of 20,085 req/s, then 6,300).

Everything else runs on worker threads, where wasm runs with the GIL released, at a lower
scheduling priority (nice) than the event loop, so that a CPU-heavy guest never stalls other
requests. Priority alone does not do that: the scheduler (EEVDF) still hands a lower-priority
thread the CPU for a whole tick now and then, and the loop then waits 4 ms. So while the loop is
busy, guest workers keep to every CPU of the process but one (`guest_cpus`, `_Placement`), which
the loop, not pinned itself, finds free of them; an idle loop gives that CPU back to the guests.
(SCHED_IDLE workers did no better for the loop and can be starved outright: a thread of theirs
holding the GIL then holds up the loop.) Modules that can wait in the host (outbound HTTP,
key-value stores, WASI sleeps) run on a second, larger pool (`io_threads`, threads made on demand,
nice, not confined: they take the GIL for every host call): a hundred guests waiting on a slow
origin hold a hundred mostly sleeping threads there, not the workers other guests need. When every
thread of a pool is busy and `queue_limit` more are waiting, new work is refused (`Overloaded`,
503) rather than queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import Overloaded

T = TypeVar("T")
_cpu = time.thread_time
_wall = time.perf_counter


class _GcTime(threading.local):
    """Per thread: the collector runs in the thread whose allocation set it off. Class-level defaults,
    so that a thread the collector never ran in reads 0 without the AttributeError a plain
    `threading.local` raises inside `getattr(..., default)` (0.35 µs, twice per inline run)."""

    seconds = 0.0
    started: float | None = None


_gc = _GcTime()


def _gc_phase(phase: str, info: dict[str, int]) -> None:
    """gc.callbacks hook: add each older-generation collection's CPU time to its thread's `_gc_seconds`.

    CPU time, as the runs it is taken from are measured (a collection may lose the CPU, or the GIL to
    a finalizer's ctypes call, and that time is not in a CPU measure to begin with). Young collections
    take microseconds, far under any threshold here: not worth two reads of the CPU clock each.
    """
    if info.get("generation", 2) == 0:
        return
    if phase == "start":
        _gc.started = _cpu()
    else:
        started = _gc.started
        if started is not None:
            _gc.seconds += _cpu() - started
            _gc.started = None


def _gc_seconds() -> float:
    """CPU seconds Python's collector has used in this thread (while the hook is installed)."""
    return _gc.seconds


PROMOTE_AFTER = 2
MAX_NEEDED = 4096
HELD_LOOP = 0.010  # seconds of CPU on the loop that count as holding it: the module stays on the pool
NEVER = 1 << 62  # quick runs needed by a module caught being slow while inline: it stays on the pool
CPU_MARK_EVERY = 0.001  # seconds: the most an inline run's CPU time may be underestimated (`_cpu_bound`)
WORKER_NICE = 10  # guests yield the CPU to the event loop when both want it
BUSY_EVERY = 0.02  # seconds between looks at how busy the loop is, while guests run on the pool
BUSY_CONFINE = 0.25  # the loop's CPU share above which guest workers leave it a CPU (`_Placement`)
BUSY_RELEASE = 0.10  # and below which they may use every CPU again
LATE = 0.003  # seconds a look at the loop may come late before the loop counts as busy whatever its CPU


def guest_cpus() -> frozenset[int] | None:
    """The CPUs guest workers keep to while the event loop is busy: all this process may use but
    one, which the loop then has to itself; None with a single CPU (or where affinity is not Linux's)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return frozenset(cpus[1:]) if len(cpus) > 1 else None


def _lower_priority() -> None:
    """Run this (pool) thread below the event loop when both want a CPU."""
    with contextlib.suppress(OSError, AttributeError):  # per-thread nice is Linux behaviour
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)


class _Placement:
    """The CPUs guest workers may use: every CPU, or all but one (`cpus`) while the loop is busy.

    Watched from the loop while guests run on the pool, every `BUSY_EVERY` seconds: the workers are
    confined when the loop thread used over `BUSY_CONFINE` of a CPU since the last look, or when
    that look came over `LATE` late (a loop kept waiting for the GIL or a CPU uses little CPU, and
    must not be taken for an idle one), and freed when it used under `BUSY_RELEASE` and came on
    time. A busy edge so has a CPU no guest competes for, and an idle one leaves every CPU to
    CPU-bound guests.
    """

    def __init__(self, cpus: frozenset[int] | None) -> None:
        self.cpus = cpus
        self.every: frozenset[int] | None = frozenset(os.sched_getaffinity(0)) if cpus is not None else None
        self.threads: list[int] = []  # native ids of the guest workers
        self.confined = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy: Callable[[], bool] = _never_busy
        self._wall = self._cpu = 0.0

    def joined(self) -> None:
        """In each new guest worker (`_guest_worker`)."""
        self.threads.append(threading.get_native_id())
        if self.confined and self.cpus is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self.cpus)

    def watch(self, busy: Callable[[], bool]) -> None:
        """On the loop: look at it every `BUSY_EVERY` seconds from now, for as long as `busy()`."""
        if self.cpus is None:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._loop is loop:
            return
        self._loop, self._busy = loop, busy
        self._wall, self._cpu = _wall(), _cpu()
        self._timer = loop.call_later(BUSY_EVERY, self._look)

    def _look(self) -> None:
        wall, cpu = _wall(), _cpu()
        late = wall - self._wall - BUSY_EVERY
        share = (cpu - self._cpu) / max(wall - self._wall, 1e-9)
        self._wall, self._cpu = wall, cpu
        if (share > BUSY_CONFINE or late > LATE) and not self.confined:
            self._place(True)
        elif share < BUSY_RELEASE and late < LATE / 2 and self.confined:
            self._place(False)
        assert self._loop is not None
        self._timer = self._loop.call_later(BUSY_EVERY, self._look) if self._busy() else None

    def _place(self, confined: bool) -> None:
        self.confined = confined
        mask = self.cpus if confined else self.every
        assert mask is not None
        for tid in self.threads:
            with contextlib.suppress(OSError):  # a thread gone at shutdown
                os.sched_setaffinity(tid, mask)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _guest_worker(placement: _Placement) -> None:
    _lower_priority()
    placement.joined()


def _never_busy() -> bool:
    return False


def _always(module: str) -> bool:
    return True


def _never(module: str) -> bool:
    return False


class _Pool:
    """Worker threads with an admission bound: at most `threads + queue_limit` guests running or queued."""

    def __init__(self, threads: int, queue_limit: int, prefix: str, what: str,
                 initializer: Callable[[], None] = _lower_priority) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=prefix, initializer=initializer)
        self.capacity = threads + queue_limit
        self.inflight = 0
        self._what = what

    async def run(self, fn: Callable[..., T], args: tuple[Any, ...] = (),
                  after: Callable[[], None] | None = None) -> tuple[T, float]:
        """`fn(*args)` and the seconds it waited for a thread; `Overloaded` when the bound is reached.
        Once admitted, `after()` runs however the call ends (a result, an error, a cancellation)."""
        if self.inflight >= self.capacity:
            raise Overloaded(f"server busy: {self.inflight} {self._what} running or queued", limit=self.capacity)
        self.inflight += 1
        queued = [0.0]
        submitted = time.perf_counter()

        def timed() -> T:
            queued[0] = time.perf_counter() - submitted
            return fn(*args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, timed), queued[0]
        finally:
            self.inflight -= 1
            if after is not None:
                after()


class Dispatcher:
    def __init__(self, workers: int, queue_limit: int, inline_threshold: float,
                 may_inline: Callable[[str], bool] = _always, may_wait: Callable[[str], bool] = _never,
                 io_threads: int = 256, cpus: frozenset[int] | None = None) -> None:
        """`may_inline(module)` says whether a module's code could ever run on the loop: not if it
        can wait in the host, nor if its timeout exceeds the inline ceiling (see the module doc);
        `may_wait(module)` whether it can wait in the host (it then runs on the I/O pool); `cpus`
        the CPUs guest workers keep to while the loop is busy (`guest_cpus()`; None: any, always)."""
        self._may_inline = may_inline
        self._may_wait = may_wait
        self._placement = _Placement(cpus)
        self._workers = _Pool(workers, queue_limit, "isolate-guest", "guests",
                              functools.partial(_guest_worker, self._placement))
        self._io = _Pool(io_threads, queue_limit, "isolate-io", "waiting guests")
        self._threshold = inline_threshold
        self._streak: dict[str, int] = {}  # module -> consecutive quick runs
        self._needed: dict[str, int] = {}  # module -> quick runs required before running inline
        # The loop thread's CPU clock at its last reading, and the wall clock then (see `_cpu_bound`).
        self._mark_cpu = 0.0
        self._mark_wall = -1.0
        self._mark_thread = 0
        if _gc_phase not in gc.callbacks:  # one hook per process, whatever the number of servers in it
            gc.callbacks.append(_gc_phase)

    def is_inline(self, module: str) -> bool:
        return self._streak.get(module, 0) >= self._needed.get(module, PROMOTE_AFTER) and self._may_inline(module)

    def _mark(self, now: float) -> None:
        self._mark_cpu = _cpu()
        self._mark_wall = now
        self._mark_thread = threading.get_ident()

    def _cpu_bound(self, started: float) -> float:
        """A lower bound of the CPU time the loop thread spent since `started` (an inline run).

        CPU time, not wall time, judges an inline run: waiting for the GIL or for a CPU is not the
        guest's doing. But the thread's CPU clock is a syscall (several µs on a busy VM, more than a
        quick guest takes), its wall clock is not, and CPU time never exceeds wall time: a run under
        the threshold in wall time is quick without reading the CPU clock. Only a longer one reads
        it, and counts its wall time less the time the thread was off the CPU since the last
        reading, which was taken at most `CPU_MARK_EVERY` before the run began (`run`).
        """
        ended = _wall()
        wall = ended - started
        if wall < self._threshold:
            return wall
        cpu = _cpu()
        off_cpu = (ended - self._mark_wall) - (cpu - self._mark_cpu)
        self._mark_cpu, self._mark_wall = cpu, ended
        return max(0.0, wall - max(0.0, off_cpu))

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

    def run_inline(self, module: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the loop, for a module `is_inline` allows, and learn from how long it took."""
        started = _wall()
        if started - self._mark_wall > CPU_MARK_EVERY or self._mark_thread != threading.get_ident():
            self._mark(started)
        collected = _gc_seconds()
        try:
            return fn(*args)
        finally:
            self.record(module, max(0.0, self._cpu_bound(started) - (_gc_seconds() - collected)), inline=True)

    async def run(self, module: str, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """Run `fn(*args)` (one guest invocation) inline or on the pool, and learn from how long it took.

        Returns its result and the seconds it waited for a worker (0 inline).
        """
        if self._streak.get(module, 0) >= self._needed.get(module, PROMOTE_AFTER) and self._may_inline(module):
            return self.run_inline(module, fn, *args), 0.0
        if self._may_wait(module):
            return await self._io.run(fn, args)  # such modules never run inline: nothing to learn
        took: list[float | None] = [None]  # None: it never ran (cancelled while queued)

        def timed() -> T:
            # CPU time of this thread: what the call would cost the event loop if run inline. Wall
            # time would also count queueing and waits for the GIL, which under load would keep
            # every module off the inline path exactly when the thread hop hurts most.
            started = _cpu()
            collected = _gc_seconds()
            try:
                return fn(*args)
            finally:
                took[0] = max(0.0, _cpu() - started - (_gc_seconds() - collected))

        self._placement.watch(self._pool_busy)
        return await self._workers.run(
            timed, (), lambda: self.record(module, self._threshold if took[0] is None else took[0]))

    def _pool_busy(self) -> bool:
        return self._workers.inflight > 0

    def close(self) -> None:
        self._placement.close()
        self._workers.executor.shutdown(wait=True, cancel_futures=True)
        self._io.executor.shutdown(wait=True, cancel_futures=True)
