"""The host-wide memory budget: guest linear memory that concurrent isolates may reserve together."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import Config
from . import _hostcalls


@dataclass(frozen=True, slots=True)
class MemoryBudgetStatistics:
    """Bytes of the budget, reserved now and at most so far; requests refused for want of it."""

    total: int
    in_use: int
    peak: int
    refused: int


class MemoryBudget:
    """A thread-safe count of reserved bytes that never exceeds `total`.

    Each request reserves its memory limit (the most its guest can touch) before instantiation and
    releases it when its store is gone, so guests together never hold more than `total`. Releases
    are appended to a deque (atomic, no lock) and settled by the next reservation, which takes the
    lock: one lock round trip per request instead of two.

    With `fastpath` (the `_fastpath` extension), the count is its native one (`native`), which
    `_fastpath.invoke` reserves and releases itself, without a Python call.
    """

    __slots__ = ("total", "_in_use", "_peak", "_refused", "_lock", "_freed", "native", "_fastpath", "__weakref__")

    def __init__(self, total: int, fastpath: Any = None) -> None:
        self.total = total
        self._in_use = self._peak = self._refused = 0
        self._lock = threading.Lock()
        self._freed: deque[int] = deque()
        self._fastpath = fastpath
        self.native: Any = fastpath.budget_new(total) if fastpath is not None else None
        """The native counter `_fastpath.invoke` takes, or None."""

    @property
    def peak(self) -> int:
        return self.statistics().peak

    @property
    def refused(self) -> int:
        return self.statistics().refused

    def reserve(self, size: int) -> bool:
        if self.native is not None:
            return bool(self._fastpath.budget_reserve(self.native, size))
        with self._lock:
            freed = self._freed  # _settle(), inlined: every request reserves
            while freed:
                self._in_use -= freed.popleft()
            in_use = self._in_use + size
            if in_use > self.total:
                self._refused += 1
                return False
            self._in_use = in_use
            if in_use > self._peak:
                self._peak = in_use
            return True

    def release(self, size: int) -> None:
        if self.native is not None:
            self._fastpath.budget_release(self.native, size)
            return
        self._freed.append(size)

    @property
    def in_use(self) -> int:
        return self.statistics().in_use

    def _settle(self) -> int:
        freed = self._freed
        while freed:
            self._in_use -= freed.popleft()
        return self._in_use

    def statistics(self) -> MemoryBudgetStatistics:
        if self.native is not None:
            return MemoryBudgetStatistics(*self._fastpath.budget_stats(self.native))
        with self._lock:
            return MemoryBudgetStatistics(self.total, self._settle(), self._peak, self._refused)


_budgets: dict[int, MemoryBudget] = {}
_lock = threading.Lock()


def budget_for(config: Config) -> MemoryBudget:
    """The one budget of `config` (by identity): every engine a Host creates from it shares it."""
    with _lock:
        budget = _budgets.get(id(config))
        if budget is None:
            fastpath = _hostcalls.FASTPATH if config.native else None
            budget = _budgets[id(config)] = MemoryBudget(config.memory_budget, fastpath)
            weakref.finalize(config, _budgets.pop, id(config), None)
        return budget
