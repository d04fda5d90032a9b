"""In-process microbenchmark of the hello guest: store + instantiate, and a full `Host.invoke` with a
100-byte and a 64 KiB body (the same measures as phase 1 of `bench/run.py`). Prints medians and p99.

Not a test: it asserts nothing. Run: `make bench-micro` or `.venv/bin/python bench/micro.py [--iterations N]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from isolate.benchmark import micro  # noqa: E402
from isolate.engine import wat_to_wasm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    hello = wat_to_wasm((ROOT / "bench" / "guests" / "hello.wat").read_text())
    results = micro(hello, iterations=args.iterations, body_sizes=(100, 65536), path="/hello")
    if args.json:
        print(json.dumps({name: asdict(timing) for name, timing in results.items()}))
        return
    print(f"{'measure':<18}{'median µs':>12}{'p99 µs':>12}{'min µs':>12}")
    for name, timing in results.items():
        print(f"{name:<18}{timing.median_us:>12.2f}{timing.p99_us:>12.2f}{timing.min_us:>12.2f}")


if __name__ == "__main__":
    main()
