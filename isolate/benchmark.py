"""In-process measurement of a module: isolate creation and full invocations, as medians and p99.

Used by `bench/` and by `isolate bench FILE`. Measures; never asserts.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .abi import Request
from .config import Config
from .engine import instantiate_once
from .host import Host


@dataclass(frozen=True)
class Timing:
    median_us: float
    p99_us: float
    min_us: float
    iterations: int


def measure(fn: Callable[[], object], iterations: int, warmup: int = 1000) -> Timing:
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(iterations):
        started = clock()
        fn()
        samples.append(clock() - started)
    samples.sort()
    return Timing(statistics.median(samples) / 1000, samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
                  samples[0] / 1000, iterations)


def micro(wasm: bytes, *, iterations: int = 20_000, body_sizes: tuple[int, ...] = (100, 65536),
          path: str = "/") -> dict[str, Timing]:
    """Store + instantiate, then `Host.invoke` with a POST body of each size, on a scratch data dir."""
    with tempfile.TemporaryDirectory() as tmp, Host(Config(data_dir=Path(tmp))) as host:
        info = host.deploy("bench", wasm)
        limits = host.module("bench").limits
        prepared = host._cache.get(f"{info.digest}/{limits.stack}", host._load)
        results = {"instantiate": measure(lambda: instantiate_once(prepared, limits), iterations)}
        for size in body_sizes:
            request = Request(method="POST", path=path, headers=[("content-type", "application/octet-stream")],
                              body=b"x" * size)
            results[f"invoke_{size}"] = measure(lambda r=request: host.invoke("bench", r),  # type: ignore[misc]
                                                max(1000, iterations // (1 + size // 8192)))
        return results
