"""Hostile guests the engine must bound: waiting in WASI host calls, shutdown, the host-wide memory
budget, and floods of guest output."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import guests as g
import pytest
import wasmtime
from conftest import HostFactory

from isolate import Config, GuestError, Host, InvalidConfig, Limits, LogRecord, Overloaded, StorageError
from isolate.engine import BLOCKING_IMPORTS, Prepared, Runtime, resume, run, shutdown
from isolate.engine._linker import inspect_module

POLL_IMPORT = '(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))'
CLOCK_IMPORT = '(import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))'
LOG_IMPORT = '(import "isolate" "log" (func $log (param i32 i32 i32)))'
WRITE_IMPORT = ('(import "wasi_snapshot_preview1" "fd_write" '
                '(func $fd_write (param i32 i32 i32 i32) (result i32)))')
SUBS_AT, EVENTS_AT, NEVENTS_AT, NOW_AT = 2048, 4096, 4000, 5000
REALTIME, MONOTONIC, PROCESS_CPUTIME = 0, 1, 2
SECOND = 1_000_000_000  # nanoseconds


def clock(timeout_ns: int, *, clock_id: int = MONOTONIC, absolute: bool = False, userdata: int = 7) -> bytes:
    """A WASI preview 1 clock subscription (48 bytes)."""
    return struct.pack("<QB7xI4xQQH6x", userdata, 0, clock_id, timeout_ns, 0, 1 if absolute else 0)


def fd_ready(fd: int, *, write: bool = False, userdata: int = 9) -> bytes:
    return struct.pack("<QB7xI4xQQH6x", userdata, 2 if write else 1, fd, 0, 0, 0)


def poller(subscriptions: list[bytes], *, relative_to: int | None = None, count: int | None = None) -> str:
    """A guest that calls poll_oneoff once and answers errno, nevents and the events it got.

    `relative_to` (a clock id) makes the first subscription's timeout absolute: the guest adds the
    clock's current time to it before polling.
    """
    n = len(subscriptions)
    body = b"\0" * (8 + 32 * n)
    response = g.response_bytes(body=body)
    body_at = g.RESPONSE_AT + len(response) - len(body)
    adjust = ""
    if relative_to is not None:
        adjust = f"""
    (drop (call $now (i32.const {relative_to}) (i64.const 1) (i32.const {NOW_AT})))
    (i64.store (i32.const {SUBS_AT + 24}) (i64.add (i64.load (i32.const {SUBS_AT + 24}))
                                                    (i64.load (i32.const {NOW_AT}))))"""
    handler = f"""{adjust}
    (i32.store (i32.const {body_at})
      (call $poll (i32.const {SUBS_AT}) (i32.const {EVENTS_AT}) (i32.const {n if count is None else count})
                  (i32.const {NEVENTS_AT})))
    (i32.store (i32.const {body_at + 4}) (i32.load (i32.const {NEVENTS_AT})))
    (memory.copy (i32.const {body_at + 8}) (i32.const {EVENTS_AT}) (i32.const {32 * n}))
    {g.returns(response)}"""
    return g.module(handler, response=response, imports=POLL_IMPORT + CLOCK_IMPORT,
                    extra=f'(data (i32.const {SUBS_AT}) "{g.data_string(b"".join(subscriptions))}")')


def answer(body: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """(errno, [(userdata, error, type) of each event]) from a poller's response body."""
    errno, nevents = struct.unpack_from("<iI", body)
    events = [struct.unpack_from("<QHB", body, 8 + 32 * i) for i in range(nevents)]
    return errno, [(int(u), int(e), int(t)) for u, e, t in events]


@pytest.fixture(autouse=True)
def _resume_after_shutdown() -> Iterator[None]:
    yield
    resume()  # shutdown() is process-wide: never leak it into other tests


# -- waiting in the host is bounded by the request's deadline ----------------------------------------------------


@pytest.mark.parametrize("subscription,relative_to", [
    (clock(5 * SECOND), None),
    (clock(5 * SECOND, clock_id=REALTIME), None),
    (clock(5 * SECOND, absolute=True), MONOTONIC),
    (clock(5 * SECOND, clock_id=REALTIME, absolute=True), REALTIME),
    (clock(2**64 - 1), None),  # the longest relative wait there is
])
def test_a_long_sleep_is_cut_at_the_deadline(host: Host, subscription: bytes, relative_to: int | None) -> None:
    host.deploy("sleepy", g.wasm(poller([subscription], relative_to=relative_to)), limits={"timeout": 0.1})
    host.deploy("hello", g.wasm(g.HELLO))
    started = time.monotonic()
    with pytest.raises(GuestError) as info:
        host.invoke("sleepy")
    assert time.monotonic() - started < 2  # a 5 s sleep under a 100 ms limit was cut short
    diagnostic = info.value.to_dict()
    assert (info.value.kind, info.value.status) == ("timeout", 504)
    assert diagnostic["limit"] == "timeout" and diagnostic["phase"] == "handle"
    assert host.invoke("hello").status == 200


def test_several_clocks_wait_for_the_earliest_and_report_what_is_due(host: Host) -> None:
    subs = [clock(5 * SECOND, userdata=1), clock(1_000_000, userdata=2), clock(3 * SECOND, userdata=3)]
    host.deploy("poll", g.wasm(poller(subs)), limits={"timeout": 1})
    assert answer(host.invoke("poll").body) == (0, [(2, 0, 0)])


def test_a_cut_sleep_leaves_no_error_behind_for_other_wasm_calls(host: Host) -> None:
    """poll_oneoff's interruption is this request's trap, and nothing more: it once stayed in wasmtime-py's
    process-wide LAST_EXCEPTION, and the next trapping wasm call anywhere in the process raised it."""
    host.deploy("sleepy", g.wasm(poller([clock(5 * SECOND)])), limits={"timeout": 0.1})
    with pytest.raises(GuestError) as info:
        host.invoke("sleepy")
    assert info.value.kind == "timeout"
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    trap = wasmtime.Instance(store, wasmtime.Module(engine, '(module (func (export "f") unreachable))'),
                             []).exports(store)["f"]
    with pytest.raises(wasmtime.Trap) as trapped:
        trap(store)  # type: ignore[operator]
    assert trapped.value.trap_code is wasmtime.TrapCode.UNREACHABLE
    assert "poll_oneoff" not in str(trapped.value)


@pytest.mark.parametrize("subscription,relative_to", [
    (clock(2_000_000), None),
    (clock(2_000_000, absolute=True), MONOTONIC),  # the guest's monotonic clock starts with its request
    (clock(2_000_000, clock_id=REALTIME, absolute=True), REALTIME),
    (clock(0, clock_id=REALTIME, absolute=True), None),  # 1970: already due
    (clock(0), None),
])
def test_a_short_sleep_completes_with_its_event(host: Host, subscription: bytes, relative_to: int | None) -> None:
    host.deploy("nap", g.wasm(poller([subscription], relative_to=relative_to)), limits={"timeout": 1})
    assert answer(host.invoke("nap").body) == (0, [(7, 0, 0)])


def test_file_subscriptions_are_ready_at_once_and_never_wait(host: Host) -> None:
    subs = [clock(60 * SECOND, userdata=1), fd_ready(0, userdata=2), fd_ready(1, write=True, userdata=3),
            fd_ready(42, userdata=4)]
    host.deploy("poll", g.wasm(poller(subs)), limits={"timeout": 0.1})
    errno, events = answer(host.invoke("poll").body)
    assert errno == 0 and events == [(2, 0, 1), (3, 0, 2), (4, 8, 1)]  # fd 42 does not exist: EBADF


@pytest.mark.parametrize("subs,count,errno", [
    ([clock(SECOND, clock_id=PROCESS_CPUTIME)], None, 28),  # EINVAL, as wasmtime
    ([clock(SECOND)], 0, 28),  # no subscriptions
    ([clock(SECOND)], 100_000, 28),  # more than the host parses
    ([clock(SECOND)], 2000, 21),  # runs past the end of memory: EFAULT
])
def test_bad_poll_arguments_are_errors_not_waits(host: Host, subs: list[bytes], count: int | None,
                                                 errno: int) -> None:
    host.deploy("poll", g.wasm(poller(subs, count=count)), limits={"timeout": 0.1})
    assert answer(host.invoke("poll").body)[0] == errno


def test_start_function_sleeping_is_cut_too(host: Host) -> None:
    start = f"""(drop (call $poll (i32.const {SUBS_AT}) (i32.const {EVENTS_AT}) (i32.const 1)
                                  (i32.const {NEVENTS_AT})))"""
    wat = g.module(start=start, imports=POLL_IMPORT,
                   extra=f'(data (i32.const {SUBS_AT}) "{g.data_string(clock(5 * SECOND))}")')
    host.deploy("sleepy", g.wasm(wat), limits={"timeout": 0.1})
    with pytest.raises(GuestError) as info:
        host.invoke("sleepy")
    assert info.value.kind == "timeout" and info.value.to_dict()["phase"] == "instantiate"


WASI_CALLS = {
    # (import, a call whose result is dropped): none of them may wait with the WASI context the host builds
    "fd_read on stdin": ('(import "wasi_snapshot_preview1" "fd_read" (func $f (param i32 i32 i32 i32) (result i32)))',
                         "(i32.store (i32.const 100) (i32.const 200)) (i32.store (i32.const 104) (i32.const 64))"
                         "(drop (call $f (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 108)))"),
    "sched_yield": ('(import "wasi_snapshot_preview1" "sched_yield" (func $f (result i32)))', "(drop (call $f))"),
    "random_get": ('(import "wasi_snapshot_preview1" "random_get" (func $f (param i32 i32) (result i32)))',
                   "(drop (call $f (i32.const 0) (i32.const 65536)))"),
    "sock_accept": ('(import "wasi_snapshot_preview1" "sock_accept" (func $f (param i32 i32 i32) (result i32)))',
                    "(drop (call $f (i32.const 3) (i32.const 0) (i32.const 100)))"),
    "sock_recv": ('(import "wasi_snapshot_preview1" "sock_recv" '
                  '(func $f (param i32 i32 i32 i32 i32 i32) (result i32)))',
                  "(drop (call $f (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 0) (i32.const 120) "
                  "(i32.const 124)))"),
    "fd_write to stdout": (WRITE_IMPORT, "(i32.store (i32.const 100) (i32.const 0)) (i32.store (i32.const 104) "
                           "(i32.const 65536)) (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) "
                           "(i32.const 108)))"),
}


@pytest.mark.parametrize("case", list(WASI_CALLS))
def test_other_wasi_calls_cannot_outlive_the_deadline(host: Host, case: str) -> None:
    imports, call = WASI_CALLS[case]
    host.deploy("wasi", g.wasm(g.module(f"(loop $l {call} (br $l)) (i64.const 0)", imports=imports)),
                limits={"timeout": 0.1})
    started = time.monotonic()
    with pytest.raises(GuestError) as info:
        host.invoke("wasi")
    assert time.monotonic() - started < 2
    assert info.value.kind in ("timeout", "trap"), info.value.to_dict()  # sock_* may trap as unsupported


def test_one_huge_stdout_write_is_cut_at_the_deadline(make_host: HostFactory) -> None:
    """wasmtime hands a write to the host 4 KiB at a time, ~25 µs each, and takes up to 128 MiB in
    one call: 120 MiB held the guest in the host for 0.7-1.1 s, whatever its 100 ms deadline."""
    host = make_host()
    size = 120 << 20
    wat = g.module(f"""
    (drop (memory.grow (i32.const {size >> 16})))
    (i32.store (i32.const 100) (i32.const 0)) (i32.store (i32.const 104) (i32.const {size}))
    {"(drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))" * 4}
    {g.returns(g.response_bytes())}""", imports=WRITE_IMPORT)  # no epoch check between the calls
    host.deploy("loud", g.wasm(wat), limits={"timeout": 0.1})
    started = time.monotonic()
    with pytest.raises(GuestError) as info:
        host.invoke("loud")
    assert time.monotonic() - started < 1  # ~3 s uncut
    assert info.value.kind == "timeout"  # even though the guest went on to answer once the write failed


def test_module_shape_says_whether_a_module_can_wait_in_the_host(host: Host, tmp_path: Path) -> None:
    io = {"http_send", "http_take", "kv_open", "kv_get", "kv_set", "kv_delete", "kv_exists", "kv_list"}
    assert BLOCKING_IMPORTS == frozenset({("wasi_snapshot_preview1", "poll_oneoff")} | {("isolate", n) for n in io})
    runtime = Runtime(Config(data_dir=tmp_path, pool_instances=2))
    try:
        assert runtime.compile(g.wasm(poller([clock(1)])))[1].may_block
        assert inspect_module(runtime.compile(g.wasm(poller([clock(1)])))[0]).may_block
        assert not runtime.compile(g.wasm(g.LOGGER))[1].may_block
        assert not runtime.compile(g.wasm(g.HELLO))[1].may_block
        assert runtime.compile(g.wasm(g.module(memory="1 3")))[1].memory_max == 3 * 65536
        assert runtime.compile(g.wasm(g.HELLO))[1].memory_max is None
    finally:
        runtime.close()


def prepare(runtime: Runtime, wat: str) -> Prepared:
    module, shape, _ = runtime.compile(g.wasm(wat))
    return runtime.prepare(wat, module, shape)


# -- shutdown ------------------------------------------------------------------------------------------------------


def test_shutdown_stops_waiting_and_running_guests_then_refuses_new_ones(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, pool_instances=4, limits=Limits(memory=1 << 20, timeout=30),
                    memory_budget=8 << 20, keep_resident=64 << 10)
    runtime = Runtime(config)
    try:
        sleeper, looper, hello = (prepare(runtime, wat) for wat in (poller([clock(60 * SECOND)]),
                                                                    g.module(g.LOOP), g.HELLO))
        errors: list[BaseException] = []

        def call(prepared: Prepared) -> None:
            try:
                run(prepared, b"", config.limits, 1024)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(p,)) for p in (sleeper, looper)]
        for t in threads:
            t.start()
        while runtime.budget.in_use < 2 << 20:  # both guests are running
            time.sleep(0.001)
        started = time.monotonic()
        shutdown()
        for t in threads:
            t.join(10)
        assert time.monotonic() - started < 2
        assert [(e.kind, e.to_dict()["limit"]) for e in errors] == [("overloaded", "shutdown")] * 2  # type: ignore[attr-defined]
        with pytest.raises(Overloaded, match="shutting down"):
            run(hello, b"", config.limits, 1024)
        assert runtime.budget.in_use == 0
        resume()
        assert run(hello, b"", config.limits, 1024).payload == g.response_bytes()
    finally:
        resume()
        runtime.close()


# -- the host-wide memory budget --------------------------------------------------------------------------------


def test_memory_budget_refuses_guests_it_cannot_cover_without_running_them(make_host: HostFactory) -> None:
    host = make_host(limits=Limits(memory=1 << 20), memory_budget=2 << 20, keep_resident=64 << 10)
    host.deploy("sleepy", g.wasm(poller([clock(60 * SECOND)])), limits={"timeout": 0.5})
    host.deploy("counter", g.wasm(g.COUNTER))
    host.deploy("tiny", g.wasm(g.module(memory="1 1")))  # declares 64 KiB at most: reserves only that
    budget = host._runtime.budget
    kinds: list[str] = []

    def sleep() -> None:
        try:
            host.invoke("sleepy")
        except GuestError as exc:
            kinds.append(exc.kind)

    threads = [threading.Thread(target=sleep) for _ in range(2)]
    for t in threads:
        t.start()
    while budget.in_use < 2 << 20:
        time.sleep(0.001)
    with pytest.raises(Overloaded) as info:
        host.invoke("counter")
    assert info.value.status == 503 and info.value.to_dict()["limit"] == "memory_budget"
    assert host.statistics().invocations == 1  # the refused request counted; the guest never ran
    for t in threads:
        t.join()
    assert kinds == ["timeout", "timeout"]
    stats = budget.statistics()
    assert (stats.total, stats.in_use, stats.peak, stats.refused) == (2 << 20, 0, 2 << 20, 1)
    assert host.invoke("counter").body == b"\x01\x01"  # released after failures too
    assert host.invoke("tiny").status == 200


def test_memory_limits_above_the_budget_are_refused_at_deploy(make_host: HostFactory) -> None:
    host = make_host(memory_budget=256 << 20)
    with pytest.raises(InvalidConfig, match="memory budget"):
        host.deploy("big", g.wasm(g.HELLO), limits={"memory": 512 << 20})
    with pytest.raises(InvalidConfig):
        make_host(memory_budget=1 << 20)  # below the default memory limit: no module could run


def test_budget_is_shared_by_every_engine_of_a_config(host: Host) -> None:
    host.deploy("a", g.wasm(g.HELLO))
    host.deploy("b", g.wasm(g.HELLO), limits={"stack": 1 << 20})
    assert host.invoke("a").status == host.invoke("b").status == 200
    runtimes = set(host._runtimes.values())  # the default engine and one per stack size for copying modules
    assert len(runtimes) == 3 and len({id(runtime.budget) for runtime in runtimes}) == 1


# -- guest output floods ----------------------------------------------------------------------------------------


def logger(count: int, length: int = 0, extra_call: str = "") -> str:
    return g.module(f"""
    (local $i i32)
    (loop $l
      (call $log (i32.const 1) (i32.const 200) (i32.const {length}))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {count}))))
    {extra_call}
    {g.returns(g.response_bytes())}""", imports=LOG_IMPORT)


def test_empty_log_records_count_against_the_caps(host: Host) -> None:
    host.deploy("empty", g.wasm(logger(5000)), limits={"timeout": 10})
    logs = host.invoke("empty").logs
    assert len(logs) == 257  # 256 kept, and the host's note
    assert logs[-1].stream == "host" and logs[-1].message == "guest output truncated: 4744 records (0 bytes) dropped"


def test_record_cap_and_byte_cap(make_host: HostFactory) -> None:
    host = make_host(log_records=3, log_limit=100)
    host.deploy("few", g.wasm(logger(10, length=4)))
    logs = host.invoke("few").logs
    # (4 + 32) bytes per record: two fit in 100 bytes, then the byte cap holds before the record cap
    assert [r.message for r in logs] == ["\0\0\0\0", "\0\0\0\0",
                                         "guest output truncated: 8 records (32 bytes) dropped"]
    host = make_host(log_records=0)
    host.deploy("none", g.wasm(logger(3, length=1)))
    assert [r.message for r in host.invoke("none").logs] == ["guest output truncated: 3 records (3 bytes) dropped"]


def test_once_full_guest_memory_is_not_even_read(make_host: HostFactory) -> None:
    host = make_host(log_records=2)
    bad = "(call $log (i32.const 0) (i32.const -100) (i32.const 1000))"  # outside memory: unread once full
    host.deploy("flood", g.wasm(logger(2, extra_call=bad)))
    logs = host.invoke("flood").logs
    assert len(logs) == 3 and logs[-1].message == "guest output truncated: 1 records (1000 bytes) dropped"
    host.deploy("early", g.wasm(logger(1, extra_call=bad)))
    with pytest.raises(GuestError) as info:  # not full yet: the bad pointer is caught
        host.invoke("early")
    assert info.value.kind == "abi"


def test_stdout_writes_count_the_same(make_host: HostFactory) -> None:
    host = make_host(log_records=4)
    write = ("(i32.store (i32.const 100) (i32.const 200)) (i32.store (i32.const 104) (i32.const 60000))"
             "(drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))")
    small = ("(i32.store (i32.const 100) (i32.const 200)) (i32.store (i32.const 104) (i32.const 1))"
             "(drop (call $fd_write (i32.const 2) (i32.const 100) (i32.const 1) (i32.const 108)))")
    wat = g.module(f"""
    (local $i i32)
    {small}
    (loop $l {write} (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (local.set $i (i32.const 0))
    (loop $l {small} (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10))))
    {g.returns(g.response_bytes())}""", imports=WRITE_IMPORT)
    host.deploy("loud", g.wasm(wat), limits={"timeout": 10})
    logs = host.invoke("loud").logs
    # wasmtime hands a write over in pieces of at most 4 KiB, 15 for 60,000 bytes: 3 kept, the rest counted
    assert [r.stream for r in logs[:4]] == ["stderr", "stdout", "stdout", "stdout"]
    records, size = 1000 * 15 - 3 + 10, 1000 * 60000 - 3 * 4096 + 10
    assert logs[4:] == (LogRecord("host", "warn", f"guest output truncated: {records} records ({size} bytes) dropped"),)


# -- limits and settings of every type -------------------------------------------------------------------------

BAD_VALUES = ["64", True, 1.5, -1, 1 << 60, None, float("nan"), float("inf"), [1]]


@pytest.mark.parametrize("field", ["memory", "timeout", "response_size", "stack"])
@pytest.mark.parametrize("value", BAD_VALUES)
def test_limits_of_the_wrong_type_or_range_are_invalid(field: str, value: object) -> None:
    if field == "timeout" and value == 1.5:
        return  # a valid timeout
    with pytest.raises(InvalidConfig):
        Limits(**{field: value})  # type: ignore[arg-type]


CONFIG_FIELDS = ["max_module_size", "max_memory_limit", "max_timeout", "max_stack_limit", "max_response_size",
                 "epoch_tick", "pool_instances", "module_cache_size", "log_limit", "log_records", "keep_resident",
                 "guest_cache_entries", "guest_cache_bytes", "guest_cache_module_share", "memory_budget"]


@pytest.mark.parametrize("field", CONFIG_FIELDS)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_config_fields_of_the_wrong_type_or_range_are_invalid(field: str, value: object) -> None:
    if value == 1.5 and field in ("max_timeout",):
        return  # valid
    with pytest.raises(InvalidConfig):
        Config(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field,text", [
    ("ISOLATE_MAX_STACK_LIMIT", "8MiB"), ("ISOLATE_MAX_MEMORY_LIMIT", "8GiB"), ("ISOLATE_POOL_INSTANCES", "40000"),
    ("ISOLATE_EPOCH_TICK", "0"), ("ISOLATE_KEEP_RESIDENT", "1GiB"), ("ISOLATE_MEMORY_BUDGET", "lots"),
    ("ISOLATE_MAX_RESPONSE_SIZE", "100GiB"), ("ISOLATE_MAX_TIMEOUT", "1e9"), ("ISOLATE_LOG_RECORDS", "-1"),
    ("ISOLATE_GUEST_CACHE_MODULE_SHARE", "2"), ("ISOLATE_MAX_MEMORY_LIMIT", "9" * 400),
])
def test_environment_values_are_validated_like_fields(field: str, text: str) -> None:
    with pytest.raises(InvalidConfig, match=field):
        Config.from_env({field: text})


def test_environment_takes_units() -> None:
    config = Config.from_env({"ISOLATE_MEMORY_BUDGET": "2GiB", "ISOLATE_EPOCH_TICK": "2ms",
                              "ISOLATE_MAX_RESPONSE_SIZE": "32MiB", "ISOLATE_LOG_RECORDS": "10",
                              "ISOLATE_GUEST_CACHE_MODULE_SHARE": "0.5"})
    assert (config.memory_budget, config.epoch_tick, config.max_response_size, config.log_records,
            config.guest_cache_module_share) == (2 << 30, 0.002, 32 << 20, 10, 0.5)


def test_response_size_has_a_ceiling(make_host: HostFactory) -> None:
    assert Config().max_response_size == 64 << 20
    host = make_host()
    with pytest.raises(InvalidConfig, match="response_size"):
        host.deploy("m", g.wasm(g.HELLO), limits={"response_size": 100 << 30})
    with pytest.raises(InvalidConfig, match="response_size"):
        host.deploy("m", g.wasm(g.HELLO), limits={"response_size": (64 << 20) + 1})
    with pytest.raises(InvalidConfig, match="max_response_size"):
        Config(limits=Limits(response_size=128 << 20))  # defaults above the ceiling
    host.deploy("m", g.wasm(g.HELLO), limits={"response_size": 64 << 20})


@pytest.mark.parametrize("stored", [
    {"memory": "lots"}, {"memory": True}, {"timeout": -1}, {"stack": 1 << 40}, {"response_size": 1.5},
    {"stack": 8 << 20}, {"memory": 8 << 30},
])
def test_stored_limits_of_any_shape_fail_requests_not_the_process(make_host: HostFactory, tmp_path: Path,
                                                                  stored: dict[str, object]) -> None:
    import json

    host = make_host()
    host.deploy("m", g.wasm(g.HELLO))
    host.close()
    path = tmp_path / "data" / "modules" / "m.json"
    record = json.loads(path.read_text())
    record["limits"] = stored
    path.write_text(json.dumps(record))
    restarted = make_host()
    with pytest.raises(StorageError, match="stored limits"):
        restarted.invoke("m")
