"""Prometheus metrics for one server: requests, latency, instantiate time, failures, forwards, caches, usage.

The edge records into plain dicts on the event loop thread (a few hundred nanoseconds a request)
and a custom collector turns them into metric families when /metrics is scraped. Labels stay
bounded: `route` is a route's pattern (never the raw path), `method` one of `METHODS` or "other",
`region` one of the region table's, `version` a module's deployed versions. A scrape first drops
the series of modules that are no longer deployed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..cache import ResponseCache
from ..host import Host
from ._logs import dropped_records

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
INSTANTIATE_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.001, 0.01)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NO_MODULE = "-"  # what the edge records for a request no route took
_CACHE_RESULTS = {b"HIT": "hit", b"MISS": "miss", b"BYPASS": "bypass"}  # x-cache -> label, without a decode


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class _Module:
    """What one module's guest runs saw: their instantiate times, and their memory at the end of the
    last one and at most; its series hold it, so a request finds it without a lookup of its own."""

    __slots__ = ("instantiate", "memory", "peak_memory")

    def __init__(self) -> None:
        self.instantiate = _Histogram(INSTANTIATE_BUCKETS)
        self.memory: int | None = None  # None: no guest of it has run (a hit or a failure only)
        self.peak_memory = 0


class _Series:
    """What one (module, route, method, region) saw: its latency, its requests by (version, status),
    and its x-cache results; one lookup per request finds all three, and the module's `_Module`."""

    __slots__ = ("latency", "requests", "cache", "module")

    def __init__(self, module: _Module) -> None:
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.requests: dict[tuple[int | None, int], int] = {}
        self.cache: dict[bytes, int] = {}
        self.module = module


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
        self.series: dict[tuple[str, str, str, str], _Series] = {}  # (module, route, method, region)
        self.forwards: dict[tuple[str, int], int] = {}
        self.failures: dict[tuple[str, str], int] = {}
        self.modules: dict[str, _Module] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # process_* (CPU, memory, open files, start time)

    def observe(self, module: str, status: int, seconds: float, info: Any, route: str = "none", method: str = "",
                region: str = "", cache: bytes = b"") -> None:
        # Written out rather than through `_Histogram.observe`: this runs for every request.
        if method not in METHODS:
            method = "other"
        series = self.series.get((module, route, method, region))
        if series is None:
            series = self._series(module, route, method, region)
        latency = series.latency
        latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds
        requests = series.requests
        if info is not None:
            key = (info["version"], status)
            requests[key] = requests.get(key, 0) + 1
            figures = series.module
            instantiate = figures.instantiate
            value = info["instantiate_us"] / 1e6
            instantiate.counts[bisect_left(INSTANTIATE_BUCKETS, value)] += 1
            instantiate.total += value
            memory = figures.memory = info["memory_bytes"]
            if memory > figures.peak_memory:
                figures.peak_memory = memory
        else:  # a cache hit or a failure: the version serving now
            key = (self._host.active_version(module) if module != NO_MODULE else None, status)
            requests[key] = requests.get(key, 0) + 1
        if cache:
            series.cache[cache] = series.cache.get(cache, 0) + 1

    def _series(self, module: str, route: str, method: str, region: str) -> _Series:
        figures = self.modules.get(module)
        if figures is None:
            figures = self.modules[module] = _Module()
        series = self.series[(module, route, method, region)] = _Series(figures)
        return series

    def forwarded(self, region: str, status: int) -> None:
        self.forwards[(region, status)] = self.forwards.get((region, status), 0) + 1

    def failure(self, module: str, kind: str) -> None:
        self.failures[(module, kind)] = self.failures.get((module, kind), 0) + 1

    def _prune(self, deployed: set[str]) -> None:
        """Forget the series of modules no longer deployed (a deleted module's series go away)."""
        tables: tuple[dict[Any, Any], ...] = (self.series, self.failures)
        for table in tables:
            for key in [k for k in list(table) if k[0] not in deployed and k[0] != NO_MODULE]:
                table.pop(key, None)
        for name in [m for m in list(self.modules) if m not in deployed and m != NO_MODULE]:
            self.modules.pop(name, None)

    def collect(self) -> Iterator[Any]:
        deployed = set(self._host.module_names())
        self._prune(deployed)
        requests = CounterMetricFamily("isolate_requests", "Edge requests",
                                       labels=["module", "version", "route", "method", "region", "status"])
        results: dict[tuple[str, str], int] = {}
        latency = HistogramMetricFamily("isolate_request_duration_seconds", "Edge request latency, end to end",
                                        labels=["module", "route", "method", "region"])
        for (module, route, method, region), series in list(self.series.items()):
            for (version, status), count in list(series.requests.items()):
                requests.add_metric([module, "" if version is None else str(version), route, method, region,
                                     str(status)], count)
            latency.add_metric([module, route, method, region], series.latency.cumulative(), series.latency.total)
            for x_cache, count in list(series.cache.items()):
                labels = (module, _CACHE_RESULTS.get(x_cache) or x_cache.decode().lower())
                results[labels] = results.get(labels, 0) + count
        yield requests
        versions = GaugeMetricFamily("isolate_module_active_version", "The version each module serves",
                                     labels=["module"])
        for module in sorted(deployed):
            active = self._host.active_version(module)
            if active is not None:
                versions.add_metric([module], active)
        yield versions
        cached = CounterMetricFamily("isolate_response_cache_requests", "Edge requests by response cache result "
                                     "(hit, miss, bypass)", labels=["module", "result"])
        for (module, result), count in results.items():
            cached.add_metric([module, result], count)
        yield cached
        stats = self._host.statistics()  # once per scrape: it takes the host's lock and walks its tables
        outbound = CounterMetricFamily("isolate_outbound_requests", "Outbound HTTP calls of guests by result "
                                       "(ok or the error name)", labels=["module", "result"])
        for (module, result), count in stats.outbound.items():
            if module in deployed:
                outbound.add_metric([module, result], count)
        yield outbound
        kv = CounterMetricFamily("isolate_kv_operations", "Key-value calls of guests", labels=["module"])
        for module, count in stats.kv_operations.items():
            if module in deployed:
                kv.add_metric([module], count)
        yield kv
        guest_entries = GaugeMetricFamily("isolate_guest_cache_module_entries", "Guest cache entries a module "
                                          "holds", labels=["module"])
        guest_bytes = GaugeMetricFamily("isolate_guest_cache_module_bytes", "Guest cache bytes a module holds",
                                        labels=["module"])
        for module in sorted(deployed):
            entries, held = self._host.guest_cache.usage(module)
            if entries:
                guest_entries.add_metric([module], entries)
                guest_bytes.add_metric([module], held)
        yield guest_entries
        yield guest_bytes
        lookups = CounterMetricFamily("isolate_guest_cache_module_requests", "Guest cache gets of a module, by "
                                      "result", labels=["module", "result"])
        for module, (hits, misses) in sorted(self._host.guest_cache.lookups().items()):
            if module in deployed:
                lookups.add_metric([module, "hit"], hits)
                lookups.add_metric([module, "miss"], misses)
        yield lookups
        if self._host.usage.directory is not None:  # else a worker's: its supervisor reports them
            yield from usage_families(self._host)
        failures = CounterMetricFamily("isolate_failures", "Failed requests by error kind", labels=["module", "kind"])
        for (module, kind), count in list(self.failures.items()):
            failures.add_metric([module, kind], count)
        yield failures
        forwards = CounterMetricFamily("isolate_forwarded_requests", "Requests forwarded to another region",
                                       labels=["region", "status"])
        for (region, status), count in list(self.forwards.items()):
            forwards.add_metric([region, str(status)], count)
        yield forwards
        yield latency
        instantiate = HistogramMetricFamily("isolate_instantiate_seconds", "Store + instantiate time per request",
                                            labels=["module"])
        ran = [(module, figures, figures.memory) for module, figures in list(self.modules.items())
               if figures.memory is not None]
        for module, figures, _ in ran:
            instantiate.add_metric([module], figures.instantiate.cumulative(), figures.instantiate.total)
        yield instantiate
        memory = GaugeMetricFamily("isolate_guest_memory_bytes", "Guest linear memory at the end of its last request",
                                   labels=["module"])
        peak = GaugeMetricFamily("isolate_guest_memory_peak_bytes",
                                 "Largest guest linear memory of any request since start", labels=["module"])
        for module, figures, last in ran:
            memory.add_metric([module], last)
            peak.add_metric([module], figures.peak_memory)
        yield memory
        yield peak
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


def usage_families(host: Host) -> Iterator[Any]:
    """Per-module usage since metering began (persisted, so these counters survive restarts) and the
    bytes of module code each keeps stored; deployed modules only."""
    stored = host.stored_bytes()
    totals = host.usage_totals()
    families = [
        (CounterMetricFamily("isolate_usage_invocations", "Guest invocations (usage)", labels=["module"]),
         "invocations", 1.0),
        (CounterMetricFamily("isolate_usage_cpu_seconds", "Guest thread CPU time (usage)", labels=["module"]),
         "cpu_ms", 1e-3),
        (CounterMetricFamily("isolate_usage_wall_seconds", "Guest invocation wall time (usage)", labels=["module"]),
         "wall_ms", 1e-3),
        (CounterMetricFamily("isolate_usage_memory_mib_seconds", "Peak guest memory × duration (usage)",
                             labels=["module"]), "memory_mib_s", 1.0),
        (CounterMetricFamily("isolate_usage_outbound_requests", "Outbound HTTP calls (usage)", labels=["module"]),
         "outbound_requests", 1.0),
        (CounterMetricFamily("isolate_usage_outbound_bytes", "Outbound request and answer bytes (usage)",
                             labels=["module"]), "outbound_bytes", 1.0),
        (CounterMetricFamily("isolate_usage_kv_operations", "Key-value calls (usage)", labels=["module"]),
         "kv_operations", 1.0),
    ]
    for module in sorted(stored):
        usage = totals.get(module)
        if usage is not None:
            for family, field, scale in families:
                family.add_metric([module], getattr(usage, field) * scale)
    yield from (family for family, _, _ in families)
    stored_family = GaugeMetricFamily("isolate_usage_stored_bytes", "Bytes of module code stored (usage)",
                                      labels=["module"])
    for module, size in sorted(stored.items()):
        stored_family.add_metric([module], size)
    yield stored_family


class UsageMetrics:
    """The usage families alone: what the supervisor of `serve --workers` adds to its workers' metrics."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def collect(self) -> Iterator[Any]:
        return usage_families(self._host)

    def render(self) -> bytes:
        return bytes(generate_latest(self))
