"""The native request path (engine/_fastpath.c) against its ctypes fallback: the same answers,
the same failures, the same logs, on every path a request can take."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

import guests as g
import pytest
from conftest import HostFactory
from wasmtime import _ffi as ffi

from isolate import Config, Host, Limits, Request
from isolate.engine import _hostcalls, resume, shutdown
from isolate.errors import AbiViolation, InvalidConfig, Overloaded, ResponseTooLarge, Timeout, Trap

LOG_IMPORT = '(import "isolate" "log" (func $log (param i32 i32 i32)))'


def test_the_native_path_is_built_and_its_layouts_match_wasmtime() -> None:
    # `make test` builds it (a compiler is guaranteed): a failed build must fail here, not fall back quietly.
    fastpath = _hostcalls.FASTPATH
    assert fastpath is not None
    assert fastpath.layout() == {
        "val_raw": ctypes.sizeof(ffi.wasmtime_val_raw_t),
        "extern": ctypes.sizeof(ffi.wasmtime_extern_t),
        "extern_of": ffi.wasmtime_extern_t.of.offset,
        "func": ctypes.sizeof(ffi.wasmtime_func_t),
    }
    assert ctypes.sizeof(ffi.wasmtime_instance_t) == fastpath.layout()["func"]
    assert all(getattr(ffi.dll, name) for name in fastpath.names())


def test_native_is_a_switch() -> None:
    assert Config.from_env({"ISOLATE_NATIVE": "off"}).native is False
    assert Config.from_env({"ISOLATE_NATIVE": "1"}).native is True
    with pytest.raises(InvalidConfig, match="ISOLATE_NATIVE"):
        Config.from_env({"ISOLATE_NATIVE": "maybe"})
    with pytest.raises(InvalidConfig, match="native"):
        Config(native="yes")  # type: ignore[arg-type]


@pytest.fixture(params=[True, False], ids=["native", "ctypes"])
def both(request: pytest.FixtureRequest, make_host: HostFactory) -> Host:
    host = make_host(native=request.param)
    assert (host._runtime.fastpath is not None) is request.param
    return host


def _body_int(host: Host, name: str) -> int:
    return int.from_bytes(host.invoke(name).body, "little", signed=True)


@pytest.mark.parametrize("size", [0, 100, 65536])
def test_answers_and_copies(both: Host, size: int) -> None:
    both.deploy("hello", g.wasm(g.HELLO))
    both.deploy("echo", g.wasm(g.ECHO))
    response = both.invoke("hello")
    assert (response.status, response.body) == (200, b"hello")
    assert response.info["memory_bytes"] == 65536
    assert response.info["instantiate_us"] > 0 and response.info["run_us"] > 0
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    echoed = both.invoke("echo", Request(method="POST", body=payload)).body
    assert payload in echoed  # the echo guest answers its whole request envelope


def test_logs_stdout_and_the_guest_cache(both: Host) -> None:
    both.deploy("logger", g.wasm(g.LOGGER))
    logs = both.invoke("logger").logs
    assert [(r.stream, r.level, r.message) for r in logs] == [
        ("log", "warn", "structured hello"), ("stdout", "info", "printed to stdout\n")]
    both.deploy("visits", g.wasm(g.VISITS))
    assert [both.invoke("visits").body for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]
    both.deploy("put", g.wasm(g.cache_call(
        "(call $cache_put (i32.const 0) (i32.const 5) (i32.const 100) (i32.const 1000) (i32.const 60000))")))
    assert _body_int(both, "put") == 0
    both.deploy("put", g.wasm(g.cache_call("(call $cache_get (i32.const 0) (i32.const 5) (i32.const 100) "
                                           "(i32.const 10))")))
    assert _body_int(both, "put") == 1000  # the whole length, 10 bytes copied
    both.deploy("bad-key", g.wasm(g.cache_call("(call $cache_get (i32.const 0) (i32.const 0) (i32.const 0) "
                                               "(i32.const 0))")))
    assert _body_int(both, "bad-key") == -2


def test_log_levels_and_bounds(both: Host) -> None:
    calls = " ".join(f"(call $log (i32.const {level}) (i32.const 200) (i32.const 2))" for level in (0, 1, 2, 3, 9))
    both.deploy("levels", g.wasm(g.module(f"{calls} {g.returns(g.response_bytes())}", imports=LOG_IMPORT,
                                          extra='(data (i32.const 200) "hi")')))
    assert [r.level for r in both.invoke("levels").logs] == ["debug", "info", "warn", "error", "info"]


def test_log_during_initialize_finds_memory_by_name(both: Host) -> None:
    # Before the handler runs, the request's memory is not looked up yet: host calls find it by name.
    both.deploy("init", g.wasm(g.module(
        imports=LOG_IMPORT,
        extra='(data (i32.const 200) "from init") '
              '(func (export "_initialize") (call $log (i32.const 1) (i32.const 200) (i32.const 9)))')))
    assert [r.message for r in both.invoke("init").logs] == ["from init"]


@pytest.mark.parametrize(("handler", "imports", "match"), [
    ("(call $log (i32.const 1) (i32.const 65530) (i32.const 100)) (i64.const 0)", LOG_IMPORT,
     r"isolate\.log: message 65530\+100 is outside guest memory \(65536 bytes\)"),
    ("(drop (call $cache_get (i32.const 65530) (i32.const 100) (i32.const 0) (i32.const 0))) (i64.const 0)",
     g.CACHE_IMPORTS, r"isolate\.cache_get: key 65530\+100"),
    ("(drop (call $cache_put (i32.const 0) (i32.const 5) (i32.const -1) (i32.const 2) (i32.const 10)))"
     " (i64.const 0)", g.CACHE_IMPORTS, r"isolate\.cache_put: value 4294967295\+2"),
    (g.returns(b"x" * 10, at=65530), "", r"isolate_handle returned response 65530\+10, outside guest memory"),
])
def test_guest_faults_are_abi_violations(both: Host, handler: str, imports: str, match: str) -> None:
    both.deploy("bad", g.wasm(g.module(handler, imports=imports)))
    with pytest.raises(AbiViolation, match=match):
        both.invoke("bad")
    both.deploy("good", g.wasm(g.HELLO))
    assert both.invoke("good").body == b"hello"


def test_an_alloc_outside_memory_is_an_abi_violation(both: Host) -> None:
    from isolate.abi import encode_request

    both.deploy("alloc", g.wasm(g.module(alloc="(i32.const 70000)")))
    size = len(encode_request(Request(), {}))  # what the guest was asked to allocate: the envelope
    with pytest.raises(AbiViolation, match=rf"isolate_alloc\({size}\) returned 70000, outside guest memory") as info:
        both.invoke("alloc")
    assert info.value.extra["phase"] == "alloc"


def test_the_native_path_makes_a_capture_only_for_a_guest_that_logs(make_host: HostFactory) -> None:
    # Given (limit, max_records) instead of a Capture, `invoke` makes one on the first log call (or ABI
    # fault) and reports it; a guest that never needs one costs no Capture.
    from isolate.abi import encode_request
    from isolate.engine import _output

    host = make_host(native=True)
    fastpath = host._runtime.fastpath
    log_twice = "(call $log (i32.const 2) (i32.const 200) (i32.const 2)) " * 2
    reports = {}
    for name, wat in (("quiet", g.HELLO),
                      ("logs", g.module(f"{log_twice} {g.returns(g.response_bytes())}", imports=LOG_IMPORT,
                                        extra='(data (i32.const 200) "hi")')),
                      ("fault", g.module("(call $log (i32.const 1) (i32.const 65530) (i32.const 100)) (i64.const 0)",
                                         imports=LOG_IMPORT))):
        info = host.deploy(name, g.wasm(wat))
        limits = host.module(name).limits
        prepared = host._cache.get(f"{info.digest}/{limits.stack}", host._load)
        reports[name] = fastpath.invoke(
            prepared.runtime.engine_ptr, prepared.pre_ptr, encode_request(Request(), {}), limits.memory, 1000, 0,
            prepared.shape.has_initialize, limits.response_size, (1000, 1), None, name)
    assert reports["quiet"][0] == 0 and reports["quiet"][8] is None
    made = reports["logs"][8]
    assert reports["logs"][0] == 0 and isinstance(made, _output.Capture)
    assert (made.limit, made.max_records) == (1000, 1)  # made with the arguments given
    assert [r.message for r in made.records] == ["hi"] and made.full and made.dropped_records == 1
    fault = reports["fault"][8]
    assert reports["fault"][0] != 0 and isinstance(fault, _output.Capture)
    assert "outside guest memory" in fault.abi_error


def test_traps_timeouts_and_oversized_responses(both: Host) -> None:
    both.deploy("trap", g.wasm(g.module("unreachable")))
    with pytest.raises(Trap) as trap:
        both.invoke("trap")
    assert (trap.value.extra["trap_code"], trap.value.extra["phase"]) == ("unreachable", "handle")
    both.deploy("loop", g.wasm(g.module(g.LOOP)), limits=Limits(timeout=0.05))
    with pytest.raises(Timeout):
        both.invoke("loop")
    both.deploy("big", g.wasm(g.HELLO), limits=Limits(response_size=16))
    with pytest.raises(ResponseTooLarge):
        both.invoke("big")
    both.deploy("init-trap", g.wasm(g.module(extra='(func (export "_initialize") unreachable)')))
    with pytest.raises(Trap) as trap:
        both.invoke("init-trap")
    assert trap.value.extra["phase"] == "initialize"


def test_a_shutdown_before_the_guest_starts_refuses_it(both: Host) -> None:
    both.deploy("hello", g.wasm(g.HELLO))
    shutdown()
    try:
        with pytest.raises(Overloaded) as info:
            both.invoke("hello")
        assert info.value.extra["limit"] == "shutdown"
    finally:
        resume()
    assert both.invoke("hello").body == b"hello"


def test_a_host_bug_in_a_host_function_fails_only_that_request(
        both: Host, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    both.deploy("visits", g.wasm(g.VISITS))

    def broken(*_: Any) -> None:
        raise RuntimeError("cache on fire")

    monkeypatch.setattr(both.guest_cache, "get", broken)
    with pytest.raises(Trap, match=r"isolate\.cache_get failed in the host: RuntimeError"):
        both.invoke("visits")
    assert "host function isolate.cache_get failed" in caplog.text and "cache on fire" in caplog.text
    monkeypatch.undo()
    assert both.invoke("visits").body == b"\x01"


def test_threads_run_guests_and_host_calls_at_once(both: Host) -> None:
    # The native path releases the GIL around the guest and takes it back in host calls: many
    # threads at once must each see their own request's capture and cache binding.
    both.deploy("visits", g.wasm(g.VISITS))
    both.deploy("logger", g.wasm(g.LOGGER))
    errors: list[BaseException] = []
    counts: list[int] = []

    def work() -> None:
        try:
            for _ in range(100):
                counts.append(both.invoke("visits").body[0])
                assert [r.message for r in both.invoke("logger").logs] == ["structured hello", "printed to stdout\n"]
        except BaseException as exc:  # collected: a failure in a thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(counts) == 600  # the counter races (get, then put) but every request answered


def test_instantiate_once_on_both_paths(both: Host) -> None:
    from isolate.engine import instantiate_once

    for name, wat in (("hello", g.HELLO), ("start-trap", g.module(start="unreachable"))):
        info = both.deploy(name, g.wasm(wat))
        limits = both.module(name).limits
        prepared = both._cache.get(f"{info.digest}/{limits.stack}", both._load)
        if name == "hello":
            instantiate_once(prepared, limits)
        else:
            with pytest.raises(Trap, match="unreachable"):
                instantiate_once(prepared, limits)


def test_log_records_and_their_bounds_on_both_paths(make_host: HostFactory, tmp_path: Path) -> None:
    # The native log call keeps records by Capture.add's rule: the same records, the same count of
    # what did not fit, on both paths.
    calls = " ".join(f"(call $log (i32.const 1) (i32.const 200) (i32.const {n}))" for n in (5, 40, 9, 0, 300))
    wat = g.module(f"{calls} {g.returns(g.response_bytes())}", imports=LOG_IMPORT,
                   extra='(data (i32.const 200) "caf\\c3\\a9 \\ff and a longer line of text")')
    answers = []
    for native in (True, False):
        host = make_host(native=native, log_limit=160, data_dir=tmp_path / str(native))
        host.deploy("logs", g.wasm(wat))
        answers.append([(r.stream, r.level, r.message) for r in host.invoke("logs").logs])
    assert answers[0] == answers[1]
    assert answers[0][0] == ("log", "info", "caf\u00e9") and "\ufffd" in answers[0][1][2]  # invalid UTF-8 replaced
    assert answers[0][-1][0] == "host" and "dropped" in answers[0][-1][2]


def test_the_memory_budget_is_held_on_both_paths(both: Host) -> None:
    both.deploy("hello", g.wasm(g.HELLO))
    budget = both._runtime.budget
    assert (budget.native is not None) is (both._runtime.fastpath is not None)
    limit = both.module("hello").limits.memory
    assert budget.reserve(budget.total - limit + 1)  # one byte too few left for the guest
    with pytest.raises(Overloaded) as info:
        both.invoke("hello")
    assert info.value.to_dict()["limit"] == "memory_budget"
    budget.release(budget.total - limit + 1)
    assert both.invoke("hello").status == 200
    stats = budget.statistics()
    assert (stats.in_use, stats.refused) == (0, 1) and stats.peak == budget.total - limit + 1


def test_the_envelope_codec_matches_the_reference() -> None:
    import msgpack

    from isolate.abi import Response, decode_response, encode_request
    from isolate.errors import AbiViolation

    codec = _hostcalls.FASTPATH
    requests = [Request(), Request(method="POST", path="/caf\u00e9", query="a=1", headers=[("a", "b"), ("c", "d" * 40)],
                                   body=b"x" * 70000, params={"n": "v"}, region="eu", client_region="us",
                                   request_id="r1"),
                Request(headers=tuple((f"h{i}", "v" * i) for i in range(20)), path="p" * 300, client_region="")]
    for request in requests:
        for variables in ({}, {"k": "v"}, {str(i): "q" * i for i in range(40)}):
            assert codec.encode_request(request, variables) == encode_request(request, variables)
    for odd in (Request(headers=[("a", 1)]), Request(body=bytearray(b"x")), Request(path="\ud800")):  # type: ignore
        assert codec.encode_request(odd, {}) is None  # declined: the Python encoder judges it

    def pack(value: Any) -> bytes:
        return bytes(msgpack.packb(value, use_bin_type=True))

    for good in ({"status": 200}, {"status": 204, "body": None},
                 {"status": 201, "headers": [["a", "b"], [b"x", b"\xff\t"]], "body": "caf\u00e9"}):
        assert codec.decode_response(pack(good)) == decode_response(pack(good))
    declines: list[Any] = [{"status": 200, "extra": 1}, {"status": 199}, {"status": True},
                           {"status": 200, "headers": [["bad name", "v"]]}, {"status": 200, "headers": [["n", "a\nb"]]},
                           {"status": 200, "headers": [["n", "\u20ac"]]}, {"headers": []}]
    for declined in declines:
        assert codec.decode_response(pack(declined)) is None
        try:
            decode_response(pack(declined))
        except AbiViolation:
            pass
    assert codec.decode_response(pack({"status": 200}) + b"\x00") is None  # trailing bytes
    response = codec.construct(Response, 200, (("a", "b"),), b"x", (), {"k": 1})
    assert response == Response(200, (("a", "b"),), b"x", (), {"k": 1})


def test_the_native_ticker_advances_the_epoch_and_stops() -> None:
    import os

    import wasmtime

    from isolate.engine import _raw
    from isolate.engine._ticker import EpochTicker

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    before = threads()
    ticker = EpochTicker(engine, 0.001, _hostcalls.FASTPATH, _raw.engine_pointer(engine))
    assert threads() == before + 1
    # A guest with a 2-tick deadline spinning forever is stopped by the ticker alone.
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(2)
    spin = wasmtime.Instance(store, wasmtime.Module(engine, "(module (func (export \"spin\") (loop $l (br $l))))"),
                             []).exports(store)["spin"]
    with pytest.raises(wasmtime.Trap) as trap:
        spin(store)  # type: ignore[operator]
    assert trap.value.trap_code is wasmtime.TrapCode.INTERRUPT
    running = threads()  # wasmtime may have started threads of its own by now
    ticker.close()
    ticker.close()  # idempotent
    assert threads() == running - 1


_TICKER_IN_GARBAGE = """
import gc
import wasmtime
from isolate.engine import _hostcalls, _raw
from isolate.engine._ticker import EpochTicker

for _ in range(20):
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    holder = {"ticker": EpochTicker(engine, 0.0001, _hostcalls.FASTPATH, _raw.engine_pointer(engine)),
              "engine": engine}
    holder["self"] = holder  # a cycle, as a traceback's frames make: gc finalizes the Engine first
    del engine, holder
    gc.collect()
print("done")
"""


@pytest.mark.skipif(_hostcalls.FASTPATH is None, reason="the native path is not built")
def test_a_native_ticker_never_outlives_its_engine() -> None:
    """An unclosed ticker in garbage: the collector deletes the Engine before the ticker's capsule stops
    the thread, which then ticked freed memory (a segfault) until the ticker held an engine of its own."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _TICKER_IN_GARBAGE], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert (done.returncode, done.stdout.strip()) == (0, "done"), done.stderr[-2000:]
