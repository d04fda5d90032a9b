"""The raw C-API layer (engine/_raw.py): the file a wasmtime upgrade touches, tested on its own."""

from __future__ import annotations

import ctypes
import threading

import guests as g
import wasmtime
from wasmtime import _ffi as ffi

from isolate import Config, Limits
from isolate.engine import _native, _output, _raw
from isolate.engine._runtime import Runtime


def test_store_instantiate_export_and_unchecked_calls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runtime = Runtime(Config(data_dir=tmp_path, pool_instances=2))
    try:
        module, shape, _ = runtime.compile(g.wasm(g.HELLO))
        prepared = runtime.prepare("d", module, shape)
        s = _raw.Scratch()
        store = _raw.store_new(runtime.engine_ptr, None, None)
        ctx = _raw.store_context(store)
        _raw.store_limiter(store, 1 << 20, -1, 1, 1, 1)
        _raw.set_epoch_deadline(ctx, 100)
        assert not _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
        assert not s.trap.value and _raw.take_trap(0) is None
        assert _raw.export_get(ctx, s.p_instance, b"memory", 6, s.p_memory)
        assert s.memory.kind == ffi.WASMTIME_EXTERN_MEMORY.value
        assert not _raw.export_get(ctx, s.p_instance, b"nope", 4, s.p_alloc)
        assert _raw.export_get(ctx, s.p_instance, b"isolate_alloc", 13, s.p_alloc)
        assert s.alloc.kind == ffi.WASMTIME_EXTERN_FUNC.value
        s.args[0].i32 = 10
        assert not _raw.call_unchecked(ctx, s.p_alloc_func, s.args, 1, s.p_trap)
        assert s.args[0].i32 == g.HEAP_START
        assert _raw.memory_data_size(ctx, s.p_memory_item) == 65536
        base = _raw.memory_data(ctx, s.p_memory_item)
        assert ctypes.string_at(base + g.RESPONSE_AT, 4) == g.response_bytes()[:4]
        _raw.store_delete(store)
    finally:
        runtime.close()


def test_traps_are_taken_with_their_code(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runtime = Runtime(Config(data_dir=tmp_path, pool_instances=2))
    try:
        module, shape, _ = runtime.compile(g.wasm(g.module("unreachable")))
        prepared = runtime.prepare("d", module, shape)
        s = _raw.Scratch()
        store = _raw.store_new(runtime.engine_ptr, None, None)
        ctx = _raw.store_context(store)
        _raw.set_epoch_deadline(ctx, 100)  # without a deadline, epoch interruption fires at once
        assert not _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
        _raw.export_get(ctx, s.p_instance, b"isolate_handle", 14, s.p_handle)
        assert not _raw.call_unchecked(ctx, s.p_handle_func, s.args, 2, s.p_trap)
        trap = _raw.take_trap(s.trap.value)
        assert trap is not None and trap.trap_code is wasmtime.TrapCode.UNREACHABLE
        _raw.store_delete(store)
    finally:
        runtime.close()


def test_wasi_output_goes_to_the_registered_capture() -> None:
    capture = _output.Capture(1000)
    capture.wait_bounds(0.0, float("inf"))
    key = _output.register(capture)
    try:
        data = (ctypes.c_uint8 * 3)(*b"abc")
        assert _output.STDOUT(key, data, 3) == 3
        assert _output.STDERR(key, data, 2) == 2
        assert _output.STDOUT(key + 10_000, data, 3) == 3  # unknown key: swallowed, never printed
        capture.deadline = 0.0
        assert _output.STDOUT(key, data, 3) == -1  # past the deadline the write fails
        assert capture.interrupted == "timeout"
    finally:
        _output.unregister(capture)
    assert [(r.stream, r.message) for r in capture.finish()] == [("stdout", "abc"), ("stderr", "ab")]
    config = _raw.wasi_config_with_output(_output.STDOUT, _output.STDERR, key)
    assert config
    ffi.wasi_config_delete(ctypes.cast(config, ctypes.POINTER(ffi.wasi_config_t)))


def test_wasm_stacks_above_two_mib_need_the_async_stack_raised() -> None:
    """wasmtime refuses max_wasm_stack > async_stack_size (2 MiB by default) even without async
    support, and its C API aborts the process on that refusal: configure_engine raises it."""
    config = wasmtime.Config()
    config.max_wasm_stack = 4 << 20
    _raw.configure_engine(config, async_stack=5 << 20)
    assert wasmtime.Engine(config)


def test_increment_epoch_interrupts_a_running_guest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runtime = Runtime(Config(data_dir=tmp_path, pool_instances=2, epoch_tick=1.0, limits=Limits(timeout=1.0)))
    try:
        module, shape, _ = runtime.compile(g.wasm(g.module(g.LOOP)))
        prepared = runtime.prepare("d", module, shape)
        s = _raw.Scratch()
        store = _raw.store_new(runtime.engine_ptr, None, None)
        ctx = _raw.store_context(store)
        _raw.set_epoch_deadline(ctx, 3)
        assert not _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
        _raw.export_get(ctx, s.p_instance, b"isolate_handle", 14, s.p_handle)
        timer = threading.Timer(0.05, lambda: [_raw.increment_epoch(runtime.engine_ptr) for _ in range(3)])
        timer.start()
        assert not _raw.call_unchecked(ctx, s.p_handle_func, s.args, 2, s.p_trap)
        trap = _raw.take_trap(s.trap.value)
        assert trap is not None and trap.trap_code is wasmtime.TrapCode.INTERRUPT
        _raw.store_delete(store)
    finally:
        runtime.close()


def test_native_thread_stacks() -> None:
    assert (_native.thread_stack_size() or 0) >= 64 << 10
    sizes: list[int | None] = []
    saved = threading.stack_size()
    try:
        _native.ensure_thread_stacks(_native.default_thread_stack() + (1 << 20))  # needs more than today's
        thread = threading.Thread(target=lambda: sizes.append(_native.thread_stack_size()))
        thread.start()
        thread.join()
        assert (sizes[0] or 0) >= threading.stack_size() > saved
    finally:
        threading.stack_size(saved)
    _native.trim_heap()  # harmless at any time
