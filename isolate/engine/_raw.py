"""Direct calls into wasmtime's bundled C API: the only file that uses wasmtime-py's private bindings.

wasmtime-py's object layer costs 10-30 µs per call (it re-reads types and boxes values); these
prototypes call the same C functions with raw pointers and preallocated buffers (~1.5 µs). They
release the GIL like every ctypes call, so guests run in parallel with Python threads. The
wasmtime version is pinned to one major in pyproject.toml; `tests/test_raw.py` covers this file.
"""

from __future__ import annotations

import ctypes
from ctypes import CFUNCTYPE, POINTER, byref, c_bool, c_int64, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # private: the ctypes bindings of the bundled C API

_dll = ffi.dll


def address(name: str) -> int:
    """The address of C API function `name` in the libwasmtime the wheel loaded."""
    found = ctypes.cast(getattr(_dll, name), c_void_p).value
    assert found, name
    return found


def _proto(name: str, restype: Any, *argtypes: Any) -> Any:
    """A fresh prototype for C function `name`, so wasmtime-py's own bindings stay untouched."""
    return CFUNCTYPE(restype, *argtypes)(address(name))


store_new = _proto("wasmtime_store_new", c_void_p, c_void_p, c_void_p, c_void_p)
store_context = _proto("wasmtime_store_context", c_void_p, c_void_p)
store_limiter = _proto("wasmtime_store_limiter", None, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64)
store_delete = _proto("wasmtime_store_delete", None, c_void_p)
set_epoch_deadline = _proto("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)
context_set_wasi = _proto("wasmtime_context_set_wasi", c_void_p, c_void_p, c_void_p)
wasi_config_new = _proto("wasi_config_new", c_void_p)
wasi_config_delete = _proto("wasi_config_delete", None, c_void_p)
instantiate_pre = _proto("wasmtime_instance_pre_instantiate", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)
export_get = _proto("wasmtime_instance_export_get", c_bool, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)
call_unchecked = _proto("wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p)
memory_data = _proto("wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
memory_data_size = _proto("wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
increment_epoch = _proto("wasmtime_engine_increment_epoch", None, c_void_p)
_async_stack_size_set = _proto("wasmtime_config_async_stack_size_set", None, c_void_p, c_size_t)
_total_stacks_set = _proto("wasmtime_pooling_allocation_config_total_stacks_set", None, c_void_p, c_uint32)

OUTPUT_CALLBACK = CFUNCTYPE(ctypes.c_ssize_t, c_void_p, POINTER(c_uint8), c_size_t)
FINALIZER = CFUNCTYPE(None, c_void_p)
_wasi_set_stdout = _proto("wasi_config_set_stdout_custom", None, c_void_p, OUTPUT_CALLBACK, c_void_p, FINALIZER)
_wasi_set_stderr = _proto("wasi_config_set_stderr_custom", None, c_void_p, OUTPUT_CALLBACK, c_void_p, FINALIZER)


def _finalize_nothing(_data: Any) -> None:
    """The host owns the callback data (a registry key), so there is nothing to free."""


_no_finalizer = FINALIZER(_finalize_nothing)


def wasi_config_with_output(stdout: Any, stderr: Any, key: int) -> int:
    """A WASI config with no args, env, files or sockets whose stdout/stderr go to the callbacks."""
    config = wasi_config_new()
    _wasi_set_stdout(config, stdout, key, _no_finalizer)
    _wasi_set_stderr(config, stderr, key, _no_finalizer)
    return int(config)


class Scratch:
    """Per-thread preallocated out-parameters for one request (reused, never shared across threads)."""

    __slots__ = ("instance", "trap", "memory", "alloc", "handle", "init", "args", "p_instance", "p_trap",
                 "p_memory", "p_alloc", "p_handle", "p_init", "p_memory_item", "p_alloc_func",
                 "p_handle_func", "p_init_func", "stack_room")

    def __init__(self) -> None:
        self.stack_room = 1 << 62  # wasm stack this thread can hold; the engine measures it per thread
        self.instance = ffi.wasmtime_instance_t()
        self.trap = c_void_p()
        self.memory = ffi.wasmtime_extern_t()
        self.alloc = ffi.wasmtime_extern_t()
        self.handle = ffi.wasmtime_extern_t()
        self.init = ffi.wasmtime_extern_t()
        self.args = (ffi.wasmtime_val_raw_t * 2)()
        self.p_instance = byref(self.instance)
        self.p_trap = byref(self.trap)
        self.p_memory = byref(self.memory)
        self.p_alloc = byref(self.alloc)
        self.p_handle = byref(self.handle)
        self.p_init = byref(self.init)
        # The `of` union sits after the kind byte; wasmtime's C API takes a pointer to the item.
        offset = ffi.wasmtime_extern_t.of.offset
        self.p_memory_item = ctypes.c_void_p(ctypes.addressof(self.memory) + offset)
        self.p_alloc_func = ctypes.c_void_p(ctypes.addressof(self.alloc) + offset)
        self.p_handle_func = ctypes.c_void_p(ctypes.addressof(self.handle) + offset)
        self.p_init_func = ctypes.c_void_p(ctypes.addressof(self.init) + offset)


def take_trap(address: int) -> wasmtime.Trap | None:
    """An owned `wasmtime.Trap` (which frees it) from a trap pointer, or None for 0."""
    if not address:
        return None
    return wasmtime.Trap._from_ptr(ctypes.cast(address, POINTER(ffi.wasm_trap_t)))


def take_error(address: int) -> wasmtime.WasmtimeError:
    """An owned `WasmtimeError` (or `ExitTrap` for WASI proc_exit) from a returned error pointer."""
    return wasmtime.WasmtimeError._from_ptr(ctypes.cast(address, POINTER(ffi.wasmtime_error_t)))


def engine_pointer(engine: wasmtime.Engine) -> int:
    return int(ctypes.cast(engine.ptr(), c_void_p).value or 0)


def instance_pre_pointer(pre: wasmtime.InstancePre) -> int:
    return int(ctypes.cast(pre.ptr(), c_void_p).value or 0)


def configure_engine(config: wasmtime.Config, *, async_stack: int) -> None:
    """Settings wasmtime-py's Config lacks that `Engine` creation checks.

    wasmtime refuses (and its C API aborts on) a `max_wasm_stack` above `async_stack_size`, even
    with async support off: the default 2 MiB made every stack limit above 2 MiB fatal.
    """
    _async_stack_size_set(_config_pointer(config), async_stack)


def _config_pointer(config: wasmtime.Config) -> int:
    return int(ctypes.cast(config.ptr(), c_void_p).value or 0)


def configure_pooling(
    config: wasmtime.Config,
    *,
    instances: int,
    max_memory_size: int,
    warm_slots: int,
    keep_resident: int,
    copy_on_write: bool = True,
) -> None:
    """Switch `config` to the pooling instance allocator (absent from wasmtime-py's Config);
    `copy_on_write`: initial memory mapped from images, else copied from data segments (_images.py)."""
    pooling = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pooling, c_uint32(instances))
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pooling, c_uint32(instances))
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pooling, c_uint32(instances))
        ffi.wasmtime_pooling_allocation_config_max_memories_per_module_set(pooling, c_uint32(1))
        ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pooling, c_uint32(1))
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pooling, c_size_t(max_memory_size))
        ffi.wasmtime_pooling_allocation_config_max_unused_warm_slots_set(pooling, c_uint32(warm_slots))
        # Reset the first bytes of a slot with memset instead of madvise: no syscall per request
        # for guests that stay small, and no page-table work between requests.
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pooling, c_size_t(keep_resident))
        ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pooling, c_size_t(keep_resident))
        # Fiber stacks serve async calls only, which this host never makes: reserve none (the
        # default is 1,000 async stacks of address space).
        _total_stacks_set(ctypes.cast(pooling, c_void_p), 0)
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pooling)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pooling)
    ffi.wasmtime_config_memory_init_cow_set(config.ptr(), copy_on_write)


# -- host functions without wasmtime-py's per-call type checks and value boxing ----------------

HOST_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, c_void_p, c_size_t)
"""wasmtime_func_unchecked_callback_t: (env, caller, args_and_results, count) -> trap pointer or 0.
The values are 16-byte `wasmtime_val_raw_t` slots, passed as an address: reading them with one
`string_at` and `struct` costs less than indexing a ctypes array, which makes an object per slot."""
VAL_RAW_SIZE = ctypes.sizeof(ffi.wasmtime_val_raw_t)
_define_unchecked = _proto("wasmtime_linker_define_func_unchecked", c_void_p, c_void_p, ctypes.c_char_p, c_size_t,
                           ctypes.c_char_p, c_size_t, c_void_p, HOST_CALLBACK, c_void_p, c_void_p)
caller_export_get = _proto("wasmtime_caller_export_get", c_bool, c_void_p, ctypes.c_char_p, c_size_t, c_void_p)
caller_context = _proto("wasmtime_caller_context", c_void_p, c_void_p)
trap_new = _proto("wasmtime_trap_new", c_void_p, ctypes.c_char_p, c_size_t)


def define_unchecked(linker: wasmtime.Linker, module: str, name: str, ty: wasmtime.FuncType, callback: Any) -> None:
    """Define `module.name` with a raw callback (a HOST_CALLBACK the caller keeps alive)."""
    error = _define_unchecked(linker_pointer(linker), module.encode(), len(module.encode()), name.encode(),
                              len(name.encode()), functype_pointer(ty), callback, None, None)
    if error:
        raise take_error(error)


def linker_pointer(linker: wasmtime.Linker) -> int:
    return int(ctypes.cast(linker.ptr(), c_void_p).value or 0)


def functype_pointer(ty: wasmtime.FuncType) -> int:
    return int(ctypes.cast(ty.ptr(), c_void_p).value or 0)


class CallerMemory:
    """Per-thread out-parameter for looking up the calling instance's `memory` export."""

    __slots__ = ("item", "p_item", "p_memory")

    def __init__(self) -> None:
        self.item = ffi.wasmtime_extern_t()
        self.p_item = byref(self.item)
        self.p_memory = ctypes.c_void_p(ctypes.addressof(self.item) + ffi.wasmtime_extern_t.of.offset)
