"""The dispatcher's inline/pool policy, with recorded run times instead of real guests."""

from __future__ import annotations

import asyncio
import os
import threading

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
