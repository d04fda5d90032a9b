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
        d.record("m", 0.05)  # caught being slow inline: back to the pool, and 8x the proof needed
        assert not d.is_inline("m")
        for _ in range(PROMOTE_AFTER * 8 - 1):
            d.record("m", 0.0001)
        assert not d.is_inline("m")
        d.record("m", 0.0001)
        assert d.is_inline("m")
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
