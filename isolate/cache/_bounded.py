"""A time-aware LRU bounded both by entry count and by total bytes, on an injectable clock."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol, TypeVar

from cachetools import Cache, TLRUCache


class Sized(Protocol):
    @property
    def expires(self) -> float: ...  # absolute time on the cache's timer

    @property
    def size(self) -> int: ...  # bytes the entry accounts for


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Sized)


def _ttu(key: Any, value: Sized, now: float) -> float:
    return value.expires


class BoundedCache(TLRUCache[K, V]):
    """cachetools' TLRU with `maxsize` in bytes plus a cap on entries; counts capacity evictions.

    Expired entries vanish on access and are swept before every insert; only entries pushed out to
    make room count as evictions.
    """

    def __init__(self, max_entries: int, max_bytes: int, timer: Callable[[], float]) -> None:
        super().__init__(max_bytes, ttu=_ttu, timer=timer, getsizeof=lambda value: value.size)
        self.max_entries = max_entries
        self.evictions = 0

    def __setitem__(self, key: K, value: V) -> None:
        if key not in self:
            while len(self) >= self.max_entries:
                self.popitem()
        super().__setitem__(key, value)

    def popitem(self) -> tuple[K, V]:
        item = super().popitem()
        self.evictions += 1
        return item

    def scan(self) -> Iterator[tuple[K, V]]:
        """Every live entry, without marking it used (`items()` would: a purge would reorder the LRU)."""
        for key in list(self):
            yield key, Cache.__getitem__(self, key)
