"""The host-wide memory budget: guest linear memory that concurrent isolates may reserve together."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass

from ..config import Config


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
    """

    __slots__ = ("total", "_in_use", "peak", "refused", "_lock", "_freed", "__weakref__")

    def __init__(self, total: int) -> None:
        self.total = total
        self._in_use = self.peak = self.refused = 0
        self._lock = threading.Lock()
        self._freed: deque[int] = deque()

    def reserve(self, size: int) -> bool:
        with self._lock:
            in_use = self._settle() + size
            if in_use > self.total:
                self.refused += 1
                return False
            self._in_use = in_use
            if in_use > self.peak:
                self.peak = in_use
            return True

    def release(self, size: int) -> None:
        self._freed.append(size)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._settle()

    def _settle(self) -> int:
        freed = self._freed
        while freed:
            self._in_use -= freed.popleft()
        return self._in_use

    def statistics(self) -> MemoryBudgetStatistics:
        with self._lock:
            return MemoryBudgetStatistics(self.total, self._settle(), self.peak, self.refused)


_budgets: dict[int, MemoryBudget] = {}
_lock = threading.Lock()


def budget_for(config: Config) -> MemoryBudget:
    """The one budget of `config` (by identity): every engine a Host creates from it shares it."""
    with _lock:
        budget = _budgets.get(id(config))
        if budget is None:
            budget = _budgets[id(config)] = MemoryBudget(config.memory_budget)
            weakref.finalize(config, _budgets.pop, id(config), None)
        return budget
