"""The guest cache behind the `cache_get`/`cache_put` host functions: bytes with a TTL, per module."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._bounded import BoundedCache

MAX_KEY = 1024  # bytes
MAX_VALUE = 1024 * 1024  # bytes
MAX_TTL_MS = 24 * 3600 * 1000
_OVERHEAD = 64  # bytes per entry charged against the byte bound besides key and value


@dataclass(frozen=True, slots=True)
class _Value:
    data: bytes
    expires: float
    size: int


@dataclass(frozen=True, slots=True)
class GuestCacheStatistics:
    hits: int
    misses: int
    stores: int
    evictions: int
    entries: int
    bytes: int


class GuestCache:
    """Shared by every module, keyed by (module, key) so one module never sees another's entries.

    Thread-safe: host functions run on whichever thread runs the guest. A cache, not a store: an
    entry can be evicted before its TTL when the entry or byte bound is reached, and nothing
    survives a restart.
    """

    def __init__(self, max_entries: int, max_bytes: int, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        self._entries: BoundedCache[tuple[str, bytes], _Value] = BoundedCache(max_entries, max_bytes, timer)
        self._lock = threading.Lock()
        self.hits = self.misses = self.stores = 0

    def get(self, namespace: str, key: bytes) -> bytes | None:
        with self._lock:
            value = self._entries.get((namespace, key))
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            return value.data

    def put(self, namespace: str, key: bytes, data: bytes, ttl_ms: int) -> bool:
        """Store `data` for `ttl_ms`; False if the entry is larger than the whole cache."""
        size = len(key) + len(data) + _OVERHEAD
        with self._lock:
            if size > self._entries.maxsize:
                return False
            self._entries[(namespace, key)] = _Value(data, self._timer() + ttl_ms / 1000, size)
            self.stores += 1
            return True

    def clear(self, namespace: str) -> int:
        """Drop every entry of one module (used when a module is deleted); returns how many."""
        with self._lock:
            keys = [key for key, _ in self._entries.scan() if key[0] == namespace]
            for key in keys:
                self._entries.pop(key, None)
            return len(keys)

    def statistics(self) -> GuestCacheStatistics:
        with self._lock:
            return GuestCacheStatistics(self.hits, self.misses, self.stores, self._entries.evictions,
                                        len(self._entries), int(self._entries.currsize))
