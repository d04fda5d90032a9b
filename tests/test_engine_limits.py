"""Engines at the edges of every accepted setting, and compiles: each case runs in a subprocess,
because wasmtime aborts the whole process (SIGABRT, SIGSEGV) on settings it cannot honour."""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import guests as g
import pytest

from isolate import Config, InvalidConfig, Limits
from isolate.config import MAX_KEEP_RESIDENT, MAX_POOL_INSTANCES, MAX_STACK_CEILING, MIN_EPOCH_TICK
from isolate.engine import Runtime, _runtime

TESTS = Path(__file__).resolve().parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Runs every guest of a config on the main thread and on a fresh thread, printing one JSON line.
SCRIPT = textwrap.dedent("""
    import json, sys, tempfile, threading
    sys.path.insert(0, {tests!r})
    import guests as g
    from isolate import Config, Host, IsolateError, Limits
    from isolate.engine import shutdown

    settings = json.loads(sys.argv[1])
    limits = Limits(**settings.pop("limits"))
    guests = {{
        "hello": g.HELLO,
        "bounded": g.BOUNDED_RECURSION,
        "deep": g.module("(drop (call $deep (i32.const 0))) (i64.const 0)", extra=g.RECURSE_EXTRA),
        "grow": g.module(g.GROW_BOMB),
        "loop": g.module(g.LOOP),
    }}
    results = {{}}
    with Host(Config(data_dir=tempfile.mkdtemp(), limits=limits, **settings)) as host:
        for name, wat in guests.items():
            host.deploy(name, g.wasm(wat))

        def run_all(where):
            for name in guests:
                try:
                    results[where + ":" + name] = host.invoke(name).status
                except IsolateError as exc:
                    results[where + ":" + name] = exc.kind

        run_all("main")
        thread = threading.Thread(target=run_all, args=("thread",))
        thread.start()
        thread.join()
        shutdown()
    print(json.dumps(results))
""")


def run_script(settings: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS)), json.dumps(settings)],
                          capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


EXTREMES = {
    "smallest": {
        "limits": {"memory": 64 * KiB, "stack": 64 * KiB, "timeout": 0.001, "response_size": 16},
        "max_memory_limit": 64 * KiB, "max_stack_limit": 64 * KiB, "max_timeout": 0.001, "max_response_size": 16,
        "pool_instances": 1, "keep_resident": 0, "epoch_tick": MIN_EPOCH_TICK, "log_limit": 0, "log_records": 0,
        "memory_budget": 64 * KiB,
    },
    "largest": {
        "limits": {"memory": 4 * GiB, "stack": MAX_STACK_CEILING, "timeout": 1.0, "response_size": 4 * GiB - 1},
        "max_memory_limit": 4 * GiB, "max_stack_limit": MAX_STACK_CEILING, "max_timeout": 3600.0,
        "max_response_size": 4 * GiB - 1, "pool_instances": MAX_POOL_INSTANCES, "keep_resident": MAX_KEEP_RESIDENT,
        "epoch_tick": 1.0, "memory_budget": 1 << 50,
    },
    "defaults": {"limits": {}},
}


@pytest.mark.parametrize("case", list(EXTREMES))
def test_engines_at_the_extremes_run_guests(case: str) -> None:
    results = run_script(EXTREMES[case])
    for where in ("main", "thread"):
        if case == "smallest":
            # 1 ms and 16 bytes: hello's response is too large, everything else stops on its limit
            assert results[f"{where}:hello"] in ("response_too_large", "timeout")
            assert results[f"{where}:bounded"] in ("stack_overflow", "timeout")
            assert results[f"{where}:deep"] in ("stack_overflow", "timeout")
            assert results[f"{where}:grow"] in ("memory_limit", "timeout")
        else:
            assert results[f"{where}:hello"] == results[f"{where}:bounded"] == 200
            assert results[f"{where}:deep"] == "stack_overflow"  # 4 MiB of wasm stack, exhausted cleanly
            assert results[f"{where}:grow"] == "memory_limit"  # up to 4 GiB
        assert results[f"{where}:loop"] == "timeout"


def test_a_large_wasm_stack_runs_on_threads_whatever_ulimit_says() -> None:
    """`ulimit -s unlimited` gives threads 2 MiB of stack: the engine raises it for threads it
    will run on, and refuses, rather than crashes on, threads that are too small."""
    if resource.getrlimit(resource.RLIMIT_STACK)[1] != resource.RLIM_INFINITY:
        pytest.skip("cannot lift RLIMIT_STACK here")
    script = textwrap.dedent(f"""
        import sys, tempfile, threading
        sys.path.insert(0, {str(TESTS)!r})
        import guests as g
        from isolate import Config, Host, IsolateError
        results = []
        def call(host):
            try:
                results.append(host.invoke("deep").status)
            except IsolateError as exc:
                results.append(exc.kind)
        go = threading.Event()
        early = threading.Thread(target=lambda: (go.wait(), call(host)))
        early.start()  # created before the engine: glibc's 2 MiB
        host = Host(Config(data_dir=tempfile.mkdtemp(), pool_instances=4))
        deep = g.module("(drop (call $deep (i32.const 0))) (i64.const 0)", extra=g.RECURSE_EXTRA)
        host.deploy("deep", g.wasm(deep), limits={{"stack": 4 << 20}})
        go.set(); early.join()
        late = threading.Thread(target=call, args=(host,)); late.start(); late.join()
        print(results)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_STACK,
                                                                (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['internal', 'stack_overflow']"


def test_engines_beyond_the_address_space_are_refused_not_fatal(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, pool_instances=MAX_POOL_INSTANCES)
    first = Runtime(config)  # 10,000 slots of 4 GiB: 40 TiB of the 64 TiB engines may reserve
    try:
        with pytest.raises(InvalidConfig, match="no address space for another engine"):
            Runtime(config, 1 << 20)
    finally:
        first.close()


def test_engines_only_a_collection_would_free_give_their_address_space_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isolate.engine import _runtime

    monkeypatch.setattr(_runtime, "_collected_at", -1e9)  # no collection for room in the last second
    config = Config(data_dir=tmp_path, pool_instances=MAX_POOL_INSTANCES)
    gc.disable()  # nothing collects the first engine but the reservation itself
    try:
        first = Runtime(config)
        first.close()
        cycle: list[Any] = [first]
        cycle.append(cycle)  # a closed host's engine, reachable only from a reference cycle
        del first, cycle
        second = Runtime(config, 1 << 20)  # 40 + 40 TiB do not fit: the first must have been collected
        second.close()
    finally:
        gc.enable()


def test_a_collection_for_room_is_made_at_most_once_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A module whose engine cannot be made asks again on every request: it must not collect every time.
    from isolate.engine import _runtime

    config = Config(data_dir=tmp_path, pool_instances=MAX_POOL_INSTANCES)
    first = Runtime(config)
    collections: list[int] = []
    monkeypatch.setattr(_runtime, "_collected_at", -1e9)
    monkeypatch.setattr(_runtime.gc, "collect", lambda: collections.append(1) or 0)
    try:
        for _ in range(3):
            with pytest.raises(InvalidConfig, match="no address space"):
                Runtime(config, 1 << 20)
        assert collections == [1]
    finally:
        first.close()


def test_settings_wasmtime_would_abort_on_never_reach_it() -> None:
    with pytest.raises(InvalidConfig):
        Config(max_memory_limit=4 * GiB + 64 * KiB)  # beyond the pooling allocator's 4 GiB reservation
    with pytest.raises(InvalidConfig):
        Config(max_stack_limit=8 * MiB)
    with pytest.raises(InvalidConfig):
        Config(pool_instances=MAX_POOL_INSTANCES + 1)
    with pytest.raises(InvalidConfig):
        Config(keep_resident=MAX_KEEP_RESIDENT + 1)
    with pytest.raises(InvalidConfig):
        Runtime(Config(), 8 * MiB)
    with pytest.raises(InvalidConfig):
        Limits(stack=MAX_STACK_CEILING + 1)


def test_idle_slots_keep_at_most_half_the_memory_budget_resident() -> None:
    # A small machine keeps fewer warm slots rather than refusing the pool: idle slots past
    # warm_slots give their memory back to the kernel.
    assert Config(pool_instances=1000, keep_resident=64 * MiB, memory_budget=1 * GiB).warm_slots == 8
    assert Config(pool_instances=2000, keep_resident=1 * MiB, memory_budget=8 * GiB).warm_slots == 2000
    assert Config(pool_instances=2000, keep_resident=1 * MiB, memory_budget=2 * GiB).warm_slots == 1024
    assert Config(pool_instances=3, keep_resident=0).warm_slots == 3


# -- compiles -----------------------------------------------------------------------------------------------------


def many_functions(count: int) -> bytes:
    funcs = "".join(f"(func (result i32) (i32.const {i}))" for i in range(count))
    return g.wasm(g.module(extra=funcs))


def test_compiles_run_one_at_a_time_per_spare_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime(Config(data_dir=tmp_path, pool_instances=2))
    active, peak = 0, 0
    lock = threading.Lock()
    real = _runtime.wasmtime.Module

    def counting(engine: Any, wasm: bytes) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return real(engine, wasm)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(_runtime.wasmtime, "Module", counting)
    try:
        wasm = many_functions(2000)
        threads = [threading.Thread(target=runtime.compile, args=(wasm,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        runtime.close()
    assert peak == _runtime._COMPILE_SLOTS._initial_value  # type: ignore[attr-defined]


def test_compile_memory_is_given_back() -> None:
    """glibc keeps the heap a compile grew unless trimmed: 50k functions once left +290 MB of RSS."""
    script = textwrap.dedent(f"""
        import sys, tempfile, gc
        sys.path.insert(0, {str(TESTS)!r})
        import guests as g
        from isolate import Config, Host
        funcs = "".join(f"(func (result i32) (i32.const {{i}}))" for i in range(40000))
        wasm = g.wasm(g.module(extra=funcs))
        del funcs
        gc.collect()
        def rss():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) >> 10
        from isolate.engine import _native
        _native.trim_heap()
        with Host(Config(data_dir=tempfile.mkdtemp(), pool_instances=2)) as host:
            before = rss()
            host.deploy("big", wasm)
            print(rss() - before)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) < 120  # MB kept: compiled code and metadata, not the compiler's heap
