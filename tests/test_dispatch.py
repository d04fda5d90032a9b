"""The dispatcher's inline/pool policy, with recorded run times instead of real guests."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from isolate.http import _dispatch as dispatch
from isolate.http._dispatch import PROMOTE_AFTER, WORKER_NICE, Dispatcher


def test_promotion_and_backoff() -> None:
    d = Dispatcher(workers=1, queue_limit=0, inline_threshold=0.001)
    try:
        assert not d.is_inline("m")
        for _ in range(PROMOTE_AFTER):
            d.record("m", 0.0001)
        assert d.is_inline("m")
        d.record("m", 0.002, inline=True)  # a little slow inline: back to the pool, 8x the proof needed
        assert not d.is_inline("m")
        for _ in range(PROMOTE_AFTER * 8):
            d.record("m", 0.0001)
        assert d.is_inline("m")
        d.record("m", 0.05, inline=True)  # caught holding the loop: on the pool for good
        for _ in range(10_000):
            d.record("m", 0.0001)
        assert not d.is_inline("m")
        d.record("slow", 0.5)  # slow from the start: needs 8x as many quick runs too
        for _ in range(PROMOTE_AFTER):
            d.record("slow", 0.0001)
        assert not d.is_inline("slow")
    finally:
        d.close()


def test_pool_threads_yield_to_the_event_loop() -> None:
    d = Dispatcher(workers=1, queue_limit=0, inline_threshold=0.001)

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        assert asyncio.run(d.run("m", nice_of_this_thread))[0] == WORKER_NICE
        assert nice_of_this_thread() == 0  # the caller (event loop) keeps normal priority
    finally:
        d.close()


def test_modules_that_may_not_run_inline_never_do() -> None:
    allowed = {"quick"}
    d = Dispatcher(workers=1, queue_limit=0, inline_threshold=0.001, may_inline=lambda m: m in allowed)
    try:
        for module in ("quick", "sleeper"):
            for _ in range(PROMOTE_AFTER * 100):
                d.record(module, 0.0)
        assert d.is_inline("quick") and not d.is_inline("sleeper")
    finally:
        d.close()


def test_inline_runs_are_judged_by_cpu_time_read_only_when_wall_time_says_slow(monkeypatch: Any) -> None:
    """Quick in wall time: quick, without a syscall for the CPU clock. Slow in wall time: the CPU
    time is bounded below by the wall time less the time off the CPU since the last CPU reading."""
    clock = {"wall": 100.0, "cpu": 5.0, "cpu_reads": 0}

    def cpu() -> float:
        clock["cpu_reads"] += 1
        return clock["cpu"]

    monkeypatch.setattr(dispatch, "_wall", lambda: clock["wall"])
    monkeypatch.setattr(dispatch, "_cpu", cpu)
    d = Dispatcher(workers=1, queue_limit=0, inline_threshold=0.001)
    seen: list[float] = []
    monkeypatch.setattr(d, "record", lambda module, seconds, inline=False: seen.append(seconds))
    d._streak["m"] = PROMOTE_AFTER  # promoted to the inline path

    def guest(wall: float, cpu: float) -> Callable[[], None]:
        def run() -> None:
            clock["wall"] += wall
            clock["cpu"] += cpu
        return run

    try:
        asyncio.run(d.run("m", guest(0.0002, 0.0002)))  # the first run reads the CPU clock once (the mark)
        reads = clock["cpu_reads"]
        asyncio.run(d.run("m", guest(0.0002, 0.0002)))  # quick by the wall clock: no CPU reading
        assert clock["cpu_reads"] == reads and seen[-1] == pytest.approx(0.0002)
        asyncio.run(d.run("m", guest(0.020, 0.0001)))  # 20 ms waiting (the GIL, a CPU): not the guest's
        assert seen[-1] < 0.001
        clock["wall"] += 0.010  # the loop idles, then the mark is refreshed and a guest burns 20 ms
        asyncio.run(d.run("m", guest(0.020, 0.020)))
        assert seen[-1] == pytest.approx(0.020)
    finally:
        d.close()


def test_guest_workers_leave_the_loop_a_cpu_while_it_is_busy(monkeypatch: Any) -> None:
    placed: list[tuple[int, frozenset[int]]] = []
    monkeypatch.setattr(dispatch.os, "sched_setaffinity", lambda tid, cpus: placed.append((tid, frozenset(cpus))))
    clock = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(dispatch, "_wall", lambda: clock["wall"])
    monkeypatch.setattr(dispatch, "_cpu", lambda: clock["cpu"])
    placement = dispatch._Placement(frozenset({1}))
    placement.every = frozenset({0, 1})
    placement.threads = [101, 102]

    async def main() -> None:
        placement.watch(lambda: True)

        def look(busy: float, late: float = 0.0) -> None:
            clock["wall"] += dispatch.BUSY_EVERY + late
            clock["cpu"] += dispatch.BUSY_EVERY * busy
            placement._look()

        look(0.05)
        assert placed == [] and not placement.confined
        look(0.9)  # the loop got busy: the workers keep off one CPU
        assert placement.confined and placed == [(101, frozenset({1})), (102, frozenset({1}))]
        look(0.2)  # between the two thresholds: as it was
        assert placement.confined and len(placed) == 2
        look(0.01)  # idle again: every CPU
        assert not placement.confined and placed[2:] == [(101, frozenset({0, 1})), (102, frozenset({0, 1}))]
        look(0.05, late=0.020)  # little CPU, but kept waiting (for the GIL, for a CPU): busy all the same
        assert placement.confined and len(placed) == 6
        look(0.05, late=dispatch.LATE)  # on time again only when freed
        assert placement.confined
        look(0.05)
        assert not placement.confined
        placement.close()

    asyncio.run(main())
    assert dispatch._Placement(None).every is None  # one CPU: nothing to place



def test_a_collection_inside_a_run_is_not_charged_to_the_guest(monkeypatch: Any) -> None:
    """Python's collector may start inside any run (a full one took 12-18 ms of a server here): that is
    not the guest holding the loop, inline or on the pool. A run that burns the CPU itself still is."""
    import gc

    clock = {"wall": 100.0, "cpu": 5.0}
    monkeypatch.setattr(dispatch, "_wall", lambda: clock["wall"])
    monkeypatch.setattr(dispatch, "_cpu", lambda: clock["cpu"])
    d = Dispatcher(workers=1, queue_limit=0, inline_threshold=0.001)
    assert dispatch._gc_phase in gc.callbacks

    def guest(seconds: float, collecting: bool, generation: int = 2) -> Callable[[], None]:
        def run() -> None:  # the collector's hook, as gc calls it, around what the run spends
            if collecting:
                dispatch._gc_phase("start", {"generation": generation})
            clock["wall"] += seconds
            clock["cpu"] += seconds
            if collecting:
                dispatch._gc_phase("stop", {"generation": generation})
        return run

    try:
        d._streak["m"] = d._streak["busy"] = PROMOTE_AFTER  # both promoted to the inline path
        asyncio.run(d.run("m", guest(0.020, collecting=True)))
        assert d.is_inline("m")
        asyncio.run(d.run("busy", guest(0.020, collecting=True, generation=0)))  # a young one is not timed
        assert not d.is_inline("busy")
        asyncio.run(d.run("pooled", guest(0.020, collecting=True)))  # on the pool: its worker's collection
        assert d._streak["pooled"] == 1
    finally:
        d.close()


def test_the_collector_hook_counts_real_collections_in_their_thread() -> None:
    import gc

    Dispatcher(workers=1, queue_limit=0, inline_threshold=0.001).close()  # installs the hook
    counts: list[float] = []
    ready, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        counts.append(dispatch._gc_seconds())
        ready.set()
        done.wait()
        counts.append(dispatch._gc_seconds())

    enabled = gc.isenabled()
    gc.disable()  # no collection but the one below, whichever thread allocates
    try:
        thread = threading.Thread(target=other_thread)
        thread.start()
        ready.wait()
        before = dispatch._gc_seconds()
        gc.collect()
        assert dispatch._gc_seconds() > before
        done.set()
        thread.join()
    finally:
        if enabled:
            gc.enable()
    assert counts[0] == counts[1]  # this thread's collection is not the other thread's


def test_a_serving_loop_freezes_what_was_built_before_it() -> None:
    """`run_loop` freezes what exists when serving starts (full collections then walk only what came
    since), and unfreezes it when serving ends."""
    import gc

    from isolate.http._server import run_loop

    seen: list[int] = []

    async def serve() -> None:
        seen.append(gc.get_freeze_count())

    run_loop(serve())
    assert seen[0] > 1000 and gc.get_freeze_count() == 0
