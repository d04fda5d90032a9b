"""The bounded LRU of pre-linked modules, keyed by module digest and stack size, with its statistics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    hits: int
    misses: int
    evictions: int
    size: int
    capacity: int


class _CountingLRU(LRUCache[str, V]):
    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evictions = 0

    def popitem(self) -> tuple[str, V]:
        self.evictions += 1
        return super().popitem()


class ModuleCache(Generic[V]):
    """Thread-safe LRU; a miss calls `load` outside the lock so one slow load blocks no hits."""

    def __init__(self, capacity: int) -> None:
        self._lru: _CountingLRU[V] = _CountingLRU(capacity)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, load: Callable[[str], V]) -> V:
        with self._lock:
            try:  # not `.get()`, which looks the key up twice (contains, then getitem)
                value = self._lru[key]
            except KeyError:
                self.misses += 1
            else:
                self.hits += 1
                return value
        value = load(key)
        with self._lock:
            self._lru[key] = value
        return value

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._lru[key] = value

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(self.hits, self.misses, self._lru.evictions, len(self._lru), int(self._lru.maxsize))
