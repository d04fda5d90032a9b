"""Prometheus metrics for one server: requests, latency, instantiate time, failures, module cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..host import Host

_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_INSTANTIATE_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.00025, 0.001, 0.01)


class _HostCollector:
    """Reads the host's own counters at scrape time, so the request path pays nothing for them."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def collect(self) -> Iterator[Any]:
        stats = self._host.statistics()
        cache = stats.module_cache
        yield CounterMetricFamily("isolate_module_cache_hits", "Pre-linked module cache hits", value=cache.hits)
        yield CounterMetricFamily("isolate_module_cache_misses", "Pre-linked module cache misses", value=cache.misses)
        yield CounterMetricFamily("isolate_module_cache_evictions", "Module cache evictions", value=cache.evictions)
        yield GaugeMetricFamily("isolate_module_cache_size", "Pre-linked modules held", value=cache.size)
        yield GaugeMetricFamily("isolate_modules", "Deployed module names", value=stats.modules)
        yield CounterMetricFamily("isolate_artifact_recompiles", "Artifacts recompiled from .wasm",
                                  value=stats.artifact_recompiles)
        yield GaugeMetricFamily("isolate_engines", "Engines (one per wasm stack size)", value=stats.engines)


class Metrics:
    """A private registry per server (tests run several servers in one process)."""

    def __init__(self, host: Host) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("isolate_requests", "Edge requests", ["module", "status"], registry=r)
        self.latency = Histogram("isolate_request_duration_seconds", "Edge request latency, end to end",
                                 ["module"], buckets=_LATENCY_BUCKETS, registry=r)
        self.instantiate = Histogram("isolate_instantiate_seconds", "Store + instantiate time per request",
                                     ["module"], buckets=_INSTANTIATE_BUCKETS, registry=r)
        self.failures = Counter("isolate_failures", "Failed requests by error kind", ["module", "kind"], registry=r)
        self.memory = Gauge("isolate_guest_memory_bytes", "Guest linear memory at the end of its last request",
                            ["module"], registry=r)
        r.register(_HostCollector(host))
        self._children: dict[tuple[str, int], Any] = {}
        self._per_module: dict[str, tuple[Any, Any, Any]] = {}

    def observe(self, module: str, status: int, seconds: float, info: dict[str, Any] | None) -> None:
        child = self._children.get((module, status))
        if child is None:
            child = self._children[(module, status)] = self.requests.labels(module, str(status))
        child.inc()
        per = self._per_module.get(module)
        if per is None:
            per = self._per_module[module] = (
                self.latency.labels(module), self.instantiate.labels(module), self.memory.labels(module))
        per[0].observe(seconds)
        if info is not None:
            per[1].observe(info["instantiate_us"] / 1e6)
            per[2].set(info["memory_bytes"])

    def failure(self, module: str, kind: str) -> None:
        self.failures.labels(module, kind).inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
