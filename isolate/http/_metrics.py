"""Prometheus metrics for one server: requests, latency, instantiate time, failures, forwards, caches.

The edge records into plain dicts on the event loop thread (a few hundred nanoseconds a request)
and a custom collector turns them into metric families when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..cache import ResponseCache
from ..host import Host
from ._logs import dropped_records

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
INSTANTIATE_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.001, 0.01)


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _cache_families(cache: str, what: str, counters: tuple[tuple[str, str, int], ...],
                    gauges: tuple[tuple[str, str, int], ...]) -> Iterator[Any]:
    """`isolate_<cache>_<name>` counters and gauges, documented as "<what> <doc>"."""
    for name, doc, value in counters:
        yield CounterMetricFamily(f"isolate_{cache}_{name}", f"{what} {doc}", value=value)
    for name, doc, value in gauges:
        yield GaugeMetricFamily(f"isolate_{cache}_{name}", f"{what} {doc}", value=value)


class Metrics:
    """Per-server counters (tests run several servers in one process, so no global registry)."""

    def __init__(self, host: Host, response_cache: ResponseCache | None = None) -> None:
        self._host = host
        self._responses = response_cache
        self.requests: dict[tuple[str, int], int] = {}
        self.forwards: dict[tuple[str, int], int] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.instantiate: dict[str, _Histogram] = {}
        self.memory: dict[str, int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe(self, module: str, status: int, seconds: float, info: Any) -> None:
        key = (module, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        latency = self.latency.get(module)
        if latency is None:
            latency = self.latency[module] = _Histogram(LATENCY_BUCKETS)
        latency.observe(seconds)
        if info is not None:
            instantiate = self.instantiate.get(module)
            if instantiate is None:
                instantiate = self.instantiate[module] = _Histogram(INSTANTIATE_BUCKETS)
            instantiate.observe(info["instantiate_us"] / 1e6)
            self.memory[module] = info["memory_bytes"]

    def forwarded(self, region: str, status: int) -> None:
        self.forwards[(region, status)] = self.forwards.get((region, status), 0) + 1

    def failure(self, module: str, kind: str) -> None:
        self.failures[(module, kind)] = self.failures.get((module, kind), 0) + 1

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("isolate_requests", "Edge requests", labels=["module", "status"])
        for (module, status), count in list(self.requests.items()):
            requests.add_metric([module, str(status)], count)
        yield requests
        stats = self._host.statistics()  # once per scrape: it takes the host's lock and walks its tables
        outbound = CounterMetricFamily("isolate_outbound_requests", "Outbound HTTP calls of guests by result "
                                       "(ok or the error name)", labels=["module", "result"])
        for (module, result), count in stats.outbound.items():
            outbound.add_metric([module, result], count)
        yield outbound
        kv = CounterMetricFamily("isolate_kv_operations", "Key-value calls of guests", labels=["module"])
        for module, count in stats.kv_operations.items():
            kv.add_metric([module], count)
        yield kv
        failures = CounterMetricFamily("isolate_failures", "Failed requests by error kind", labels=["module", "kind"])
        for (module, kind), count in list(self.failures.items()):
            failures.add_metric([module, kind], count)
        yield failures
        forwards = CounterMetricFamily("isolate_forwarded_requests", "Requests forwarded to another region",
                                       labels=["region", "status"])
        for (region, status), count in list(self.forwards.items()):
            forwards.add_metric([region, str(status)], count)
        yield forwards
        for name, doc, histograms in (
            ("isolate_request_duration_seconds", "Edge request latency, end to end", self.latency),
            ("isolate_instantiate_seconds", "Store + instantiate time per request", self.instantiate),
        ):
            family = HistogramMetricFamily(name, doc, labels=["module"])
            for module, histogram in list(histograms.items()):
                family.add_metric([module], histogram.cumulative(), histogram.total)
            yield family
        memory = GaugeMetricFamily("isolate_guest_memory_bytes", "Guest linear memory at the end of its last request",
                                   labels=["module"])
        for module, value in list(self.memory.items()):
            memory.add_metric([module], value)
        yield memory
        cache = stats.module_cache
        yield CounterMetricFamily("isolate_module_cache_hits", "Pre-linked module cache hits", value=cache.hits)
        yield CounterMetricFamily("isolate_module_cache_misses", "Pre-linked module cache misses", value=cache.misses)
        yield CounterMetricFamily("isolate_module_cache_evictions", "Module cache evictions", value=cache.evictions)
        yield GaugeMetricFamily("isolate_module_cache_size", "Pre-linked modules held", value=cache.size)
        guest = stats.guest_cache
        yield from _cache_families("guest_cache", "Guest cache", counters=(
            ("hits", "cache_get hits", guest.hits), ("misses", "cache_get misses", guest.misses),
            ("stores", "cache_put calls stored", guest.stores),
            ("evictions", "entries evicted before their TTL", guest.evictions),
        ), gauges=(("entries", "entries held", guest.entries), ("bytes", "bytes held", guest.bytes)))
        if self._responses is not None:
            rc = self._responses.statistics()
            yield from _cache_families("response_cache", "Responses", counters=(
                ("hits", "served from the cache", rc.hits), ("misses", "that ran the guest", rc.misses),
                ("bypasses", "not eligible for the cache", rc.bypasses),
                ("coalesced", "that waited for a concurrent miss, then hit", rc.coalesced),
                ("stores", "stored", rc.stores), ("evictions", "evicted before expiry", rc.evictions),
                ("purged", "purged", rc.purged),
            ), gauges=(("entries", "held", rc.entries), ("bytes", "bytes held", rc.bytes)))
        yield GaugeMetricFamily("isolate_modules", "Deployed module names", value=stats.modules)
        yield CounterMetricFamily("isolate_artifact_recompiles", "Artifacts recompiled from .wasm",
                                  value=stats.artifact_recompiles)
        yield GaugeMetricFamily("isolate_engines", "Engines (one per wasm stack size)", value=stats.engines)
        yield CounterMetricFamily("isolate_log_records_dropped", "Log lines dropped because the log output was "
                                  "too slow", value=dropped_records())
        budget = stats.memory_budget
        yield GaugeMetricFamily("isolate_memory_budget_bytes", "Guest memory all running isolates may reserve",
                                value=budget.total)
        yield GaugeMetricFamily("isolate_memory_budget_in_use_bytes", "Guest memory reserved by running isolates",
                                value=budget.in_use)
        yield CounterMetricFamily("isolate_memory_budget_refused", "Requests refused for want of memory budget",
                                  value=budget.refused)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
