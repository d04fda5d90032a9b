"""The component host-function bridge (engine/_components.c): value conversion both ways for every
kind of component value, host resources, failures stored on the state, interrupts and memory limits."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import wasmtime
import wasmtime.component
from wasmtime import _ffi as ffi

from isolate.engine._component_bridge import BRIDGE, UNAVAILABLE

pytestmark = pytest.mark.skipif(BRIDGE is None, reason=f"bridge not built: {UNAVAILABLE}")

RESOURCE_ID = 7001
BENCH_CALLS = 10_000

# name -> (WIT type, how the guest passes get-<name>'s result to put-<name>: None, directly (one flat
# value), or the loads from get-<name>'s return area that make put-<name>'s flat parameters)
ROUND_TRIPS: dict[str, tuple[str, list[tuple[str, int]] | None]] = {
    "string": ("string", [("i32.load", 0), ("i32.load", 4)]),
    "bytes": ("(list u8)", [("i32.load", 0), ("i32.load", 4)]),
    "strings": ("(list string)", [("i32.load", 0), ("i32.load", 4)]),
    "rec": ("$rec-e", [("i32.load", 0), ("i32.load", 4), ("i32.load", 8)]),
    "tup": ("(tuple u32 string bool)", [("i32.load", 0), ("i32.load", 4), ("i32.load", 8), ("i32.load8_u", 12)]),
    "var": ("$var-e", [("i32.load8_u", 0), ("i32.load", 4), ("i32.load", 8)]),
    "en": ("$en-e", None),
    "opt": ("(option (list u8))", [("i32.load8_u", 0), ("i32.load", 4), ("i32.load", 8)]),
    "res": ("(result u32 (error string))", [("i32.load8_u", 0), ("i32.load", 4), ("i32.load", 8)]),
    "fl": ("$fl-e", None),
    "prims": ("(tuple bool s8 s64 f64 char)",
              [("i32.load8_u", 0), ("i32.load8_s", 1), ("i64.load", 8), ("f64.load", 16), ("i32.load", 24)]),
    "nested": ("(list (tuple string (option (list u8))))", [("i32.load", 0), ("i32.load", 4)]),
}
RET = 64  # the guest's return area (8-aligned); 0..4096 is scratch, the heap starts at 4096


def _core_type(op: str) -> str:
    return op.split(".")[0]


def component_wat() -> str:
    """The test component: imports test:bridge/host, exports test:bridge/run (and `run` at the root)."""
    host_funcs = "\n".join(
        f'(export "get-{name}" (func (result {wit})))\n(export "put-{name}" (func (param "v" {wit})))'
        for name, (wit, _) in ROUND_TRIPS.items())
    core_imports, lowers, calls, exports = [], [], [], []
    for name, (_, shape) in ROUND_TRIPS.items():
        if shape is None:
            core_imports.append(f'(import "host" "get-{name}" (func $get-{name} (result i32)))')
            core_imports.append(f'(import "host" "put-{name}" (func $put-{name} (param i32)))')
            calls.append(f"(call $put-{name} (call $get-{name}))")
        else:
            params = " ".join(_core_type(op) for op, _ in shape)
            core_imports.append(f'(import "host" "get-{name}" (func $get-{name} (param i32)))')
            core_imports.append(f'(import "host" "put-{name}" (func $put-{name} (param {params})))')
            loads = " ".join(f"({op} offset={offset} (i32.const {RET}))" for op, offset in shape)
            calls.append(f"(call $get-{name} (i32.const {RET})) (call $put-{name} {loads})")
        for kind in ("get", "put"):
            lowers.append(f'(alias export $host "{kind}-{name}" (func $h-{kind}-{name}))')
            lowers.append(f"(core func $c-{kind}-{name} (canon lower (func $h-{kind}-{name}) (memory $mem) "
                          f"(realloc $realloc) string-encoding=utf8))")
            exports.append(f'(export "{kind}-{name}" (func $c-{kind}-{name}))')
    plain = {"report": "(func (param i32))", "nop": "(func (result i32))", "fail": "(func)",
             "sink": "(func (param i32 i32))", "get-text": "(func (param i32))",
             "r-new": "(func (param i32) (result i32))", "r-get": "(func (param i32) (result i32))",
             "r-take": "(func (param i32) (result i32))"}
    wit_names = {"report": "report", "nop": "nop", "fail": "fail", "sink": "sink", "get-text": "get-text",
                 "r-new": "[constructor]r", "r-get": "[method]r.get", "r-take": "[static]r.take"}
    for name, core in plain.items():
        core_imports.append(f'(import "host" "{name}" {core.replace("(func", f"(func ${name}", 1)})')
        lowers.append(f'(alias export $host "{wit_names[name]}" (func $h-{name}))')
        lowers.append(f"(core func $c-{name} (canon lower (func $h-{name}) (memory $mem) (realloc $realloc) "
                      "string-encoding=utf8))")
        exports.append(f'(export "{name}" (func $c-{name}))')
    core_imports.append('(import "host" "r-drop" (func $r-drop (param i32)))')
    exports.append('(export "r-drop" (func $c-r-drop))')
    loop = ("(local $i i32) (local.set $i (i32.const {n})) (loop $l {body} "
            "(local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $l (local.get $i)))")
    return f"""
(component
  (type $host-t (instance
    (type $rec (record (field "a" u32) (field "b" string)))
    (export "rec" (type $rec-e (eq $rec)))
    (type $var (variant (case "none") (case "num" u32) (case "text" string)))
    (export "var" (type $var-e (eq $var)))
    (type $en (enum "a" "b" "c"))
    (export "en" (type $en-e (eq $en)))
    (type $fl (flags "x" "y" "z"))
    (export "fl" (type $fl-e (eq $fl)))
    (export "r" (type $r (sub resource)))
    (export "report" (func (param "x" u32)))
    (export "nop" (func (result u32)))
    (export "fail" (func))
    (export "sink" (func (param "v" (list u8))))
    (export "get-text" (func (result string)))
    (export "[constructor]r" (func (param "v" u32) (result (own $r))))
    (export "[method]r.get" (func (param "self" (borrow $r)) (result u32)))
    (export "[static]r.take" (func (param "x" (own $r)) (result u32)))
    {host_funcs}
  ))
  (import "test:bridge/host" (instance $host (type $host-t)))
  (alias export $host "r" (type $r))

  (core module $libc
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $p i32) (local $end i32) (local $have i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end (i32.add (local.get $p) (local.get $size)))
      (local.set $have (i32.mul (memory.size) (i32.const 65536)))
      (if (i32.gt_u (local.get $end) (local.get $have))
        (then (if (i32.eq (memory.grow (i32.div_u (i32.add (i32.sub (local.get $end) (local.get $have))
                                                          (i32.const 65535)) (i32.const 65536)))
                          (i32.const -1))
                (then unreachable))))
      (global.set $heap (local.get $end))
      (local.get $p))
    (func (export "reset") (global.set $heap (i32.const 4096)))
  )
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
  (alias core export $libc "reset" (core func $reset))
  {chr(10).join(lowers)}
  (core func $c-r-drop (canon resource.drop $r))
  (core instance $host-core {" ".join(exports)})

  (core module $main
    (import "libc" "memory" (memory 1))
    (import "libc" "reset" (func $reset))
    {chr(10).join(core_imports)}
    (func (export "run") (local $h i32)
      {chr(10).join(calls)}
      (local.set $h (call $r-new (i32.const 7)))
      (call $report (call $r-get (local.get $h)))
      (call $report (call $r-take (call $r-new (i32.const 8))))
      (call $r-drop (local.get $h)))
    (func (export "take-arg") (param $h i32)
      (call $report (call $r-get (local.get $h)))
      (call $r-drop (local.get $h)))
    (func (export "fail") (call $fail))
    (func (export "spin") (loop $l (br $l)))
    (func (export "grow") (call $report (memory.grow (i32.const 1000))))
    (func (export "bench-nop") {loop.format(n=BENCH_CALLS, body="(drop (call $nop))")})
    (func (export "bench-bytes")
      {loop.format(n=BENCH_CALLS, body="(call $sink (i32.const 256) (i32.const 100))")})
    (func (export "bench-string")
      {loop.format(n=BENCH_CALLS, body=f"(call $reset) (call $get-text (i32.const {RET}))")})
  )
  (core instance $main (instantiate $main
    (with "libc" (instance $libc)) (with "host" (instance $host-core))))

  (func $run (canon lift (core func $main "run")))
  (func $take-arg (param "r" (own $r)) (canon lift (core func $main "take-arg")))
  (func $fail (canon lift (core func $main "fail")))
  (func $spin (canon lift (core func $main "spin")))
  (func $grow (canon lift (core func $main "grow")))
  (func $bench-nop (canon lift (core func $main "bench-nop")))
  (func $bench-bytes (canon lift (core func $main "bench-bytes")))
  (func $bench-string (canon lift (core func $main "bench-string")))
  (instance $exports
    (export "run" (func $run)) (export "take-arg" (func $take-arg)) (export "fail" (func $fail))
    (export "spin" (func $spin)) (export "grow" (func $grow)) (export "bench-nop" (func $bench-nop))
    (export "bench-bytes" (func $bench-bytes)) (export "bench-string" (func $bench-string)))
  (export "test:bridge/run" (instance $exports))
  (export "run" (func $run))
)
"""


class State:
    """What run() hands the host functions: the values to return and what they saw."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.error: BaseException | None = None
        self.values = values
        self.received: dict[str, Any] = {}
        self.reports: list[int] = []
        self.resources: dict[int, int] = {}
        self.dropped: list[int] = []
        self.taken: list[int] = []


VALUES_A: dict[str, Any] = {
    "string": "héllo wörld ✓",
    "bytes": bytes(range(256)) * 4096,  # 1 MiB
    "strings": ["a", "", "ünïcode", "x" * 1000],
    "rec": (42, "record field"),
    "tup": (4_000_000_000, "tuple", True),
    "var": ("text", "variant payload"),
    "en": "c",
    "opt": b"\x00\x01\x02",
    "res": ("ok", 99),
    "fl": frozenset({"x", "z"}),
    "prims": (True, -128, -(2**63), 2.5, "ß"),
    "nested": [("one", b"1"), ("none", None), ("empty", b"")],
}
VALUES_B: dict[str, Any] = {
    "string": "",
    "bytes": b"",
    "strings": [],
    "rec": (0, ""),
    "tup": (0, "", False),
    "var": ("num", 7),
    "en": "a",
    "opt": None,
    "res": ("err", "bad thing"),
    "fl": frozenset(),
    "prims": (False, 127, 2**63 - 1, -0.0, "\U0001f600"),
    "nested": [],
}
VALUES_C: dict[str, Any] = {**VALUES_B, "var": ("none", None), "opt": b"", "fl": {"x", "y", "z"}}


def _address(obj: Any) -> int:
    return int(ctypes.cast(obj.ptr(), ctypes.c_void_p).value or 0)


def define_host(instance: int) -> None:
    def getter(name: str) -> Any:
        return lambda state, *args: state.values[name]

    def putter(name: str) -> Any:
        def put(state: State, value: Any) -> None:
            state.received[name] = value
        return put

    for name in ROUND_TRIPS:
        BRIDGE.define_func(instance, f"get-{name}", getter(name))
        BRIDGE.define_func(instance, f"put-{name}", putter(name))

    def new(state: State, value: int) -> int:
        rep = 100 + len(state.resources)
        state.resources[rep] = value
        return rep

    def take(state: State, rep: int) -> int:
        state.taken.append(rep)
        return state.resources[rep] * 10

    def fail(state: State) -> None:
        raise ValueError("the host refuses")

    def drop(state: State, rep: int) -> None:
        if state.values.get("fail-drop"):
            raise RuntimeError("dtor refuses")
        state.dropped.append(rep)

    BRIDGE.define_resource(instance, "r", RESOURCE_ID, drop)
    BRIDGE.define_func(instance, "[constructor]r", new)
    BRIDGE.define_func(instance, "[method]r.get", lambda state, rep: state.resources[rep])
    BRIDGE.define_func(instance, "[static]r.take", take)
    BRIDGE.define_func(instance, "report", lambda state, x: state.reports.append(x))
    BRIDGE.define_func(instance, "nop", lambda state: 1)
    BRIDGE.define_func(instance, "fail", fail)
    BRIDGE.define_func(instance, "sink", lambda state, data: None)
    BRIDGE.define_func(instance, "get-text", lambda state: "a string result")


class World:
    def __init__(self) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.component = wasmtime.component.Component(self.engine, wasmtime.wat2wasm(component_wat()))
        self.linker = wasmtime.component.Linker(self.engine)
        with self.linker.root() as root, root.add_instance("test:bridge/host") as host:
            define_host(_address(host))
        self.indexes: dict[str, int] = {}

    def index(self, func: str, instance: str = "test:bridge/run") -> int:
        key = f"{instance}#{func}"
        if key not in self.indexes:
            self.indexes[key] = BRIDGE.export_index(_address(self.component), instance, func)
        return self.indexes[key]

    def run(self, func: str, state: Any, *, memory: int = 64 << 20, ticks: int = 1 << 40,
            args: tuple[tuple[int, int], ...] = (),
            instance: str = "test:bridge/run") -> tuple[int, str | None, int, int]:
        result: tuple[int, str | None, int, int] = BRIDGE.run(
            _address(self.engine), _address(self.linker), _address(self.component), self.index(func, instance),
            state, memory, ticks, args)
        return result

    def close(self) -> None:
        for index in self.indexes.values():
            BRIDGE.free_export_index(index)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def _offset(struct: Any, field: str) -> int:
    return int(getattr(struct, field).offset)


def test_layouts_match_wasmtime() -> None:
    assert BRIDGE.layout() == {
        "val": ctypes.sizeof(ffi.wasmtime_component_val_t),
        "val_of": ffi.wasmtime_component_val_t.of.offset,
        "valtype": ctypes.sizeof(ffi.wasmtime_component_valtype_t),
        "valtype_of": ffi.wasmtime_component_valtype_t.of.offset,
        "record_entry": ctypes.sizeof(ffi.wasmtime_component_valrecord_entry_t),
        "record_entry_val": _offset(ffi.wasmtime_component_valrecord_entry_t, "val"),
        "variant": ctypes.sizeof(ffi.wasmtime_component_valvariant_t),
        "variant_val": _offset(ffi.wasmtime_component_valvariant_t, "val"),
        "result": ctypes.sizeof(ffi.wasmtime_component_valresult_t),
        "result_val": _offset(ffi.wasmtime_component_valresult_t, "val"),
        "vallist": ctypes.sizeof(ffi.wasmtime_component_vallist_t),
        "instance": ctypes.sizeof(ffi.wasmtime_component_instance_t),
        "func": ctypes.sizeof(ffi.wasmtime_component_func_t),
    }
    # The value and type kinds this file numbers (val.h and types/val.h number them differently).
    assert (ffi.WASMTIME_COMPONENT_U8.value, ffi.WASMTIME_COMPONENT_RESOURCE.value) == (2, 21)
    assert (ffi.WASMTIME_COMPONENT_VALTYPE_U8.value, ffi.WASMTIME_COMPONENT_VALTYPE_OWN.value,
            ffi.WASMTIME_COMPONENT_VALTYPE_BORROW.value) == (5, 21, 22)
    assert all(getattr(ffi.dll, name) for name in BRIDGE.names())


@pytest.mark.parametrize("values", [VALUES_A, VALUES_B, VALUES_C], ids=["a", "b", "c"])
def test_values_round_trip_and_resources(world: World, values: dict[str, Any]) -> None:
    state = State(values)
    status, message, instantiate_ns, run_ns = world.run("run", state)
    assert (status, message, state.error) == (0, None, None)
    expected = {name: frozenset(value) if name == "fl" else value for name, value in values.items()}
    assert state.received == expected
    assert type(state.received["bytes"]) is bytes
    assert instantiate_ns > 0 and run_ns > 0
    # ctor(7) -> rep 100, get(borrow 100) -> 7; ctor(8) -> rep 101, take(own 101) -> 80; drop(100) -> dtor
    assert state.reports == [7, 80]
    assert state.taken == [101]
    assert state.dropped == [100]


def test_root_export_and_missing_exports(world: World) -> None:
    state = State(VALUES_A)
    assert world.run("run", state, instance="")[0] == 0
    assert state.reports == [7, 80]
    component = _address(world.component)
    assert BRIDGE.export_index(component, "test:bridge/nope", "run") == 0
    assert BRIDGE.export_index(component, "test:bridge/run", "nope") == 0


def test_owned_resource_arguments(world: World) -> None:
    state = State(VALUES_A)
    state.resources[5] = 55
    status, message, _, _ = world.run("take-arg", state, args=((RESOURCE_ID, 5),))
    assert (status, message, state.error) == (0, None, None)
    assert state.reports == [55]
    assert state.dropped == [5]


def test_a_python_exception_traps_and_lands_on_the_state(world: World) -> None:
    state = State(VALUES_A)
    status, message, _, _ = world.run("fail", state)
    assert status == 2 and message is not None and "host function fail failed" in message
    assert isinstance(state.error, ValueError) and str(state.error) == "the host refuses"
    assert state.error.__traceback__ is not None
    # the first error wins
    state.error = KeyError("first")
    assert world.run("fail", state)[0] == 2
    assert isinstance(state.error, KeyError)


def test_a_failing_destructor_traps_like_a_function(world: World) -> None:
    state = State({**VALUES_B, "fail-drop": True})
    status, message, _, _ = world.run("run", state)
    assert status == 2 and message is not None and "host function r failed" in message
    assert isinstance(state.error, RuntimeError) and state.reports == [7, 80]


def test_runs_in_parallel_threads(world: World) -> None:
    # run() releases the GIL; each callback takes it back and finds its own request's state.
    statuses: list[tuple[int, bool]] = []

    def worker(tag: str) -> None:
        for _ in range(20):
            state = State({**VALUES_B, "string": tag})
            status = world.run("run", state)[0]
            statuses.append((status, state.received["string"] == tag and state.reports == [7, 80]))

    threads = [threading.Thread(target=worker, args=(f"thread {i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [(0, True)] * 80


@pytest.mark.parametrize("name, bad", [
    ("string", b"not a str"), ("string", "\ud800"), ("bytes", ["no"]), ("strings", [1]), ("rec", (1,)),
    ("rec", (-1, "x")), ("tup", (1, "x", 1)), ("var", ("nope", None)), ("var", ("num", None)),
    ("var", ("none", 1)), ("en", "d"), ("en", 3), ("opt", "str"), ("res", ("maybe", 1)), ("res", ("ok",)),
    ("fl", {"w"}), ("fl", "xy"), ("prims", (True, 128, 0, 0.0, "a")), ("prims", (True, 0, 0, 0.0, "ab")),
    ("prims", (True, 0, 2**63, 0.0, "a")), ("prims", (1, 0, 0, 0.0, "a")), ("prims", (True, 0, 0, "x", "a")),
    ("nested", [("a", "not bytes")]),
])
def test_bad_results_fail_the_call_not_the_process(world: World, name: str, bad: Any) -> None:
    state = State({**VALUES_A, name: bad})
    status, message, _, _ = world.run("run", state)
    assert status == 2 and message is not None and f"host function get-{name} failed" in message
    assert isinstance(state.error, (TypeError, ValueError, OverflowError, UnicodeError))


def test_a_state_without_an_error_attribute_still_fails_cleanly(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    status, message, _, _ = world.run("fail", object())
    assert status == 2 and message is not None and "fail" in message
    assert [type(u.exc_value) for u in unraisable] == [AttributeError]  # reported, not raised into wasmtime


def test_an_infinite_loop_is_interrupted(world: World) -> None:
    done = threading.Event()

    def tick() -> None:
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            world.engine.increment_epoch()
            time.sleep(0.005)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        status, message, _, _ = world.run("spin", State(VALUES_A), ticks=1)
    finally:
        done.set()
        ticker.join()
    assert status == 2 and message is not None and "interrupt" in message


def test_memory_limit(world: World) -> None:
    state = State(VALUES_A)
    assert world.run("grow", state, memory=16 << 20)[0] == 0
    assert state.reports == [0xFFFFFFFF]  # memory.grow's -1: refused
    state = State(VALUES_A)
    assert world.run("grow", state, memory=128 << 20)[0] == 0
    assert state.reports[0] != 0xFFFFFFFF


def test_instantiation_failure_and_non_function_exports(world: World) -> None:
    empty = wasmtime.component.Linker(world.engine)  # the import is missing
    index = world.index("run")
    status, message, _, _ = BRIDGE.run(_address(world.engine), _address(empty), _address(world.component), index,
                                       State(VALUES_A), 1 << 20, 1 << 40, ())
    assert status == 1 and message is not None and "test:bridge/host" in message
    instance_index = BRIDGE.export_index(_address(world.component), "", "test:bridge/run")
    try:
        result = BRIDGE.run(_address(world.engine), _address(world.linker), _address(world.component),
                            instance_index, State(VALUES_A), 1 << 20, 1 << 40, ())
        assert result[0] == 3
    finally:
        BRIDGE.free_export_index(instance_index)


@pytest.mark.parametrize("func", ["bench-nop", "bench-bytes", "bench-string"])
def test_many_host_calls_in_a_row(world: World, func: str) -> None:
    """BENCH_CALLS calls of one shape from one guest call all go through. The cost per call is printed
    (`pytest -s`) for whoever wants the figure; tests never assert timings."""
    status, message, _, run_ns = world.run(func, State(VALUES_A))
    assert (status, message) == (0, None)
    print(f"{func}: {run_ns / BENCH_CALLS / 1000:.2f} µs per host call")


def test_a_second_linear_memory_is_refused(world: World) -> None:
    """The memory limit and the host's memory budget count one memory per request: a component that
    makes two fails to instantiate rather than holding twice its limit."""
    def component(memories: int) -> Any:
        modules = "\n".join(f'(core module $m{i} (memory (export "mem") 1)) (core instance (instantiate $m{i}))'
                            for i in range(memories))
        wat = f"""(component {modules}
          (core module $f (func (export "f") (result i32) i32.const 7)) (core instance $fi (instantiate $f))
          (func (export "f") (result u32) (canon lift (core func $fi "f"))))"""
        return wasmtime.component.Component(world.engine, wasmtime.wat2wasm(wat))

    linker = wasmtime.component.Linker(world.engine)
    for memories, expected in ((1, 0), (2, 1)):
        built = component(memories)
        index = BRIDGE.export_index(_address(built), "", "f")
        try:
            status, message, _, _ = BRIDGE.run(_address(world.engine), _address(linker), _address(built), index,
                                               State(VALUES_A), 1 << 20, 1 << 40, ())
        finally:
            BRIDGE.free_export_index(index)
        assert status == expected, message
        if expected:
            assert message is not None and "memor" in message
