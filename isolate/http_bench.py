"""`isolate bench FILE --http`: a module on a private server under bounded load, beside the reference guest.

Starts `isolate serve` on free loopback ports with a scratch data directory, deploys the module and
the reference hello guest (routes with the response cache off, so every request runs a guest),
drives each with wrk when it is installed or with a built-in client otherwise, and reads the
server-timing breakdown from sequential requests. Measures; never asserts.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .engine import wat_to_wasm

# The reference guest (as bench/guests/hello.wat): 200 "hello from isolate\n", no host calls.
REFERENCE_WAT = r"""
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 1024)
    "\83\a6status\cc\c8\a7headers\91\92\accontent-type\aatext/plain\a4body\b3hello from isolate\0a")
  (func (export "isolate_abi_v1"))
  (func (export "isolate_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.sub (i32.add (i32.shr_u (local.get $end) (i32.const 16)) (i32.const 1))
                                          (memory.size)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "isolate_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 69))))
"""
MAX_DURATION = 60.0
MAX_CONNECTIONS = 256


@dataclass(frozen=True)
class HttpFigures:
    """One module's figures under load, and the medians of its server-timing entries (ms)."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    status: int  # of a request sent before the load, to show what the module answers
    timing_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpReport:
    client: str  # "wrk" or "built-in"
    duration_s: float
    connections: int
    figures: dict[str, HttpFigures]  # "module" and "reference"


def run(wasm: bytes, *, path: str = "/", duration: float = 5.0, connections: int = 32, client: str = "auto",
        limits: dict[str, str] | None = None) -> HttpReport:
    """Serve `wasm` privately and measure it and the reference guest, one after the other."""
    duration = min(max(duration, 0.5), MAX_DURATION)
    connections = min(max(connections, 1), MAX_CONNECTIONS)
    use_wrk = client == "wrk" or (client == "auto" and shutil.which("wrk") is not None)
    if client == "wrk" and shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk), or use --client builtin")
    with tempfile.TemporaryDirectory(prefix="isolate-bench-") as tmp, _Server(Path(tmp)) as server:
        server.deploy("module", wasm, limits or {})
        server.deploy("reference", wat_to_wasm(REFERENCE_WAT), {})
        figures = {}
        for name in ("module", "reference"):
            url = f"{server.url}{path if name == 'module' else '/'}"
            host = f"{name}.bench"
            status = httpx.get(url, headers={"host": host}, timeout=30).status_code
            load = _wrk(url, host, duration, connections) if use_wrk else _builtin(url, host, duration, connections)
            figures[name] = HttpFigures(*load, status=status, timing_ms=_timings(url, host))
    return HttpReport("wrk" if use_wrk else "built-in", duration, connections, figures)


class _Server:
    """A private `isolate serve` on free loopback ports (stopped with SIGTERM on exit)."""

    def __init__(self, work: Path) -> None:
        self.data = work / "data"
        self.port, self.admin_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "isolate.cli", "serve", "--data-dir", str(self.data), "--port", str(self.port),
                 "--admin-port", str(self.admin_port), "--no-access-log", "--log-level", "warning"],
                stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the private server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the private server was not ready within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def deploy(self, name: str, wasm: bytes, limits: dict[str, str]) -> None:
        token = (self.data / "admin-token").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}", timeout=120,
                          headers={"authorization": f"Bearer {token}"}) as admin:
            deployed = admin.put(f"/v1/modules/{name}", content=wasm, params=limits)
            if deployed.status_code != 201:
                raise RuntimeError(f"deploy failed: {deployed.text}")
            route = {"host": f"{name}.bench", "path": "/...", "module": name, "cache": False}
            admin.post("/v1/routes", json={"routes": [route]}).raise_for_status()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, host: str, duration: float, connections: int) -> tuple[float, float, float, int]:
    # "Host" spelled so: wrk adds a second host header of its own for any other spelling.
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
                          "-H", f"Host: {host}", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = (float(v) * _UNITS[u] for v, u in (
        re.search(rf"{q}%\s+([\d.]+)(us|ms|s)", out).groups() for q in ("50", "99")))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def _builtin(url: str, host: str, duration: float, connections: int) -> tuple[float, float, float, int]:
    """Keep-alive connections on threads, each sending GETs until `duration` passes."""
    target = url.split("://", 1)[1]
    authority, _, rest = target.partition("/")
    address, _, port = authority.partition(":")
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + duration

    def client() -> None:
        conn = http.client.HTTPConnection(address, int(port), timeout=30)
        mine: list[float] = []
        failed = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                conn.request("GET", "/" + rest, headers={"host": host})
                response = conn.getresponse()
                response.read()
                failed += response.status >= 400
            except (OSError, http.client.HTTPException):
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection(address, int(port), timeout=30)
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    if not latencies:
        return 0.0, 0.0, 0.0, errors[0]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000, errors[0]


def _timings(url: str, host: str, samples: int = 200) -> dict[str, float]:
    """Medians of each `server-timing` entry over sequential requests (ms)."""
    seen: dict[str, list[float]] = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(samples):
            header = client.get(url, headers={"host": host}).headers.get("server-timing", "")
            for name, value in re.findall(r"([\w-]+);dur=([\d.]+)", header):
                seen.setdefault(name, []).append(float(value))
    return {name: round(statistics.median(values), 3) for name, values in seen.items()}
