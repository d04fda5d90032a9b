"""Caches: pre-linked modules, guest key/value entries and (at the edge) HTTP responses."""

from ._bounded import BoundedCache
from ._guest import GuestCache, GuestCacheStatistics
from ._modules import CacheStatistics, ModuleCache
from ._responses import Entry, ResponseCache, ResponseCacheStatistics, freshness

__all__ = ["BoundedCache", "CacheStatistics", "Entry", "GuestCache", "GuestCacheStatistics", "ModuleCache",
           "ResponseCache", "ResponseCacheStatistics", "freshness"]
