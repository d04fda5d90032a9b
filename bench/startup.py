"""Start-up with many deployed modules: Host() → ready, and the first response of a cold module.

Deploys N distinct modules into a temporary data directory (untimed), then times, over several
rounds, a fresh `Host` on that directory until it can list every module, and its first `invoke`
(a lazy load: verify the artifact's seal, map it, pre-link). Not a test: it asserts nothing.
Run: `.venv/bin/python bench/startup.py [--modules 1000]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import guests  # noqa: E402

from isolate import Config, Host  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modules", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(data_dir=Path(tmp))
        started = time.perf_counter()
        with Host(config) as host:
            for i in range(args.modules):
                body = f"tenant {i}".encode()
                host.deploy(f"m{i}", guests.wasm(guests.module(response=guests.response_bytes(body=body))))
        print(f"deployed {args.modules} modules in {time.perf_counter() - started:.1f} s (untimed set-up)")
        ready, first = [], []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            host = Host(config)
            assert len(host.modules()) == args.modules
            t1 = time.perf_counter()
            host.invoke(f"m{r * 7 % args.modules}")
            t2 = time.perf_counter()
            host.close()
            ready.append((t1 - t0) * 1000)
            first.append((t2 - t1) * 1000)
    print(f"Host() → ready with {args.modules} modules: median {statistics.median(ready):.1f} ms "
          f"(min {min(ready):.1f}, max {max(ready):.1f})")
    print(f"first invoke of a cold module: median {statistics.median(first):.2f} ms "
          f"(min {min(first):.2f}, max {max(first):.2f})")


if __name__ == "__main__":
    main()
