"""The guest cache behind the `cache_get`/`cache_put` host functions: bytes with a TTL, per module."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import Cache

from ._bounded import BoundedCache

MAX_KEY = 1024  # bytes
MAX_VALUE = 1024 * 1024  # bytes
MAX_TTL_MS = 24 * 3600 * 1000
_OVERHEAD = 64  # bytes per entry charged against the byte bound besides key and value

_Key = tuple[str, bytes]  # (namespace, key)


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
    evictions: int  # all entries pushed out to make room, share_evictions included
    entries: int
    bytes: int
    share_evictions: int = 0  # entries a module pushed out of its own share
    namespaces: int = 0  # modules holding entries


class _Space:
    """One namespace's entries, least recently used first, and the bytes they account for."""

    __slots__ = ("order", "bytes")

    def __init__(self) -> None:
        self.order: OrderedDict[bytes, int] = OrderedDict()  # key -> size
        self.bytes = 0


class _Entries(BoundedCache[_Key, _Value]):
    """The shared LRU, reporting every entry it drops (expired, evicted or deleted) to `removed`."""

    def __init__(self, max_entries: int, max_bytes: int, timer: Callable[[], float],
                 removed: Callable[[_Key, _Value], None]) -> None:
        super().__init__(max_entries, max_bytes, timer)
        self._removed = removed

    def __delitem__(self, key: _Key) -> None:
        value = Cache.__getitem__(self, key)  # no LRU update; KeyError when absent, as `del` must
        try:
            super().__delitem__(key)
        finally:
            self._removed(key, value)

    def expire(self, time: Any = None) -> Any:
        expired = super().expire(time)
        for key, value in expired:
            self._removed(key, value)
        return expired


class GuestCache:
    """Shared by every module, keyed by (module, key) so one module never sees another's entries.

    Each module may hold at most `module_share` of each bound (entries and bytes): a module over its
    share evicts its own least recently used entries, never another module's. Only when the whole
    cache is full does an insert evict the least recently used entry of any module.

    Thread-safe: host functions run on whichever thread runs the guest. A cache, not a store: an
    entry can be evicted before its TTL when a bound is reached, and nothing survives a restart.
    """

    def __init__(self, max_entries: int, max_bytes: int, timer: Callable[[], float] = time.monotonic,
                 module_share: float = 1.0) -> None:
        if not 0 < module_share <= 1:
            raise ValueError(f"module_share must be within (0, 1], got {module_share!r}")
        self._timer = timer
        self._entries = _Entries(max_entries, max_bytes, timer, self._removed)
        self._spaces: dict[str, _Space] = {}
        self.share_entries = max(1, int(max_entries * module_share))
        self.share_bytes = max(1, int(max_bytes * module_share))
        self._lock = threading.Lock()
        self.hits = self.misses = self.stores = self.share_evictions = 0
        self._lookups: dict[str, list[int]] = {}  # module -> [hits, misses], for per-module metrics

    def _removed(self, key: _Key, value: _Value) -> None:
        space = self._spaces.get(key[0])
        if space is not None and space.order.pop(key[1], None) is not None:
            space.bytes -= value.size
            if not space.order:
                del self._spaces[key[0]]

    def get(self, namespace: str, key: bytes) -> bytes | None:
        with self._lock:
            try:  # not `.get()`: cachetools' get reads the clock twice (contains, then getitem)
                value = self._entries[(namespace, key)]
            except KeyError:  # absent or expired
                self.misses += 1
                self._lookups.setdefault(namespace, [0, 0])[1] += 1
                return None
            self.hits += 1
            self._lookups.setdefault(namespace, [0, 0])[0] += 1
            self._spaces[namespace].order.move_to_end(key)
            return value.data

    def put(self, namespace: str, key: bytes, data: bytes, ttl_ms: int) -> bool:
        """Store `data` for `ttl_ms`; False if the entry is larger than a module's share of the cache."""
        size = len(key) + len(data) + _OVERHEAD
        with self._lock:
            if size > self.share_bytes or size > self._entries.maxsize:
                return False
            self._entries.expire()
            self._entries.pop((namespace, key), None)  # a replaced value leaves its share first
            space = self._spaces.get(namespace)
            while space is not None and (space.bytes + size > self.share_bytes
                                         or len(space.order) >= self.share_entries):
                del self._entries[(namespace, next(iter(space.order)))]
                self.share_evictions += 1
                space = self._spaces.get(namespace)
            self._entries[(namespace, key)] = _Value(data, self._timer() + ttl_ms / 1000, size)
            space = self._spaces.setdefault(namespace, _Space())
            space.order[key] = size
            space.bytes += size
            self.stores += 1
            return True

    def clear(self, namespace: str) -> int:
        """Drop every entry of one module (used when a module is deleted); returns how many."""
        with self._lock:
            self._lookups.pop(namespace, None)
            self._entries.expire()
            space = self._spaces.get(namespace)
            keys = list(space.order) if space is not None else []
            for key in keys:
                self._entries.pop((namespace, key), None)
            return len(keys)

    def lookups(self) -> dict[str, tuple[int, int]]:
        """(hits, misses) of each module's gets since it was first looked up (or last cleared)."""
        with self._lock:
            return {namespace: (hits, misses) for namespace, (hits, misses) in self._lookups.items()}

    def usage(self, namespace: str) -> tuple[int, int]:
        """(entries, bytes) one module holds, expired entries not yet swept included."""
        with self._lock:
            space = self._spaces.get(namespace)
            return (len(space.order), space.bytes) if space is not None else (0, 0)

    def statistics(self) -> GuestCacheStatistics:
        with self._lock:
            return GuestCacheStatistics(
                self.hits, self.misses, self.stores, self._entries.evictions + self.share_evictions,
                len(self._entries), int(self._entries.currsize), self.share_evictions, len(self._spaces))
