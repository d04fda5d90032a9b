"""In-process microbenchmark: store + instantiate, and a full `Host.invoke` of the hello guest.

Prints medians (and p99) over many iterations. Not a test: it asserts nothing.
Run: `make bench-micro` or `.venv/bin/python bench/micro.py [--iterations N]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import guests  # noqa: E402  (inline-WAT guests shared with the tests)

from isolate import Config, Host, Request  # noqa: E402
from isolate.engine import instantiate_once  # noqa: E402


def measure(fn: Callable[[], object], iterations: int, warmup: int = 2000) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    samples.sort()
    return {
        "median_us": statistics.median(samples) / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "min_us": samples[0] / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Host(Config(data_dir=Path(tmp))) as host:
        host.deploy("hello", guests.wasm(guests.HELLO))
        host.deploy("echo", guests.wasm(guests.ECHO))
        limits = host.module("hello").limits
        key = f"{host.module('hello').active.digest}/{limits.stack}"
        prepared = host._cache.get(key, host._load)  # bench-only peek at the pre-linked module
        request = Request(method="POST", path="/hello", headers=[("content-type", "text/plain")], body=b"x" * 100)
        big = Request(method="POST", path="/hello", body=b"x" * 65536)
        results = {
            "instantiate": measure(lambda: instantiate_once(prepared, limits), args.iterations),
            "invoke": measure(lambda: host.invoke("hello", request), args.iterations),
            "invoke_echo_64k": measure(lambda: host.invoke("echo", big), args.iterations // 5),
        }
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'measure':<18}{'median µs':>12}{'p99 µs':>12}{'min µs':>12}")
    for name, r in results.items():
        print(f"{name:<18}{r['median_us']:>12.2f}{r['p99_us']:>12.2f}{r['min_us']:>12.2f}")


if __name__ == "__main__":
    main()
