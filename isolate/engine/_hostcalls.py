"""The `isolate` host functions (ABI.md, "Host functions"), defined on the C API's unchecked path.

wasmtime-py's `define_func` re-reads the function type and boxes every value on each call (~25 µs);
here each call is one ctypes callback with raw values and direct memory copies. The functions only
move bytes between guest memory and Python: the guest cache and `GuestIO` (isolate.capabilities)
decide everything else. Pointers outside guest memory trap the guest with an `abi` failure; the
request's deadline or a shutdown passing during a wait fails it as `timeout` or `overloaded`.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import wasmtime
from wasmtime import FuncType, ValType

from ..abi import HOST_NAMESPACE, LogRecord
from ..cache._guest import MAX_KEY, MAX_TTL_MS, MAX_VALUE
from . import _output, _raw, _shutdown

T = TypeVar("T")

log = logging.getLogger("isolate.engine")
_I32 = ValType.i32()
_U32 = 0xFFFFFFFF
_MAX_LOG_MESSAGE = 16 * 1024

# name -> number of i32 parameters and results of every host function in the `isolate` namespace
SIGNATURES: dict[str, tuple[int, int]] = {
    "log": (3, 0),  # (level, ptr, len)
    "cache_get": (4, 1),  # (key, key_len, out, out_cap) -> length | error
    "cache_put": (5, 1),  # (key, key_len, value, value_len, ttl_ms) -> 0 | error
    "http_send": (2, 1),  # (req, req_len) -> response length | error
    "http_take": (2, 1),  # (out, out_cap) -> response length | -1
    "kv_open": (2, 1),  # (name, name_len) -> handle | error
    "kv_get": (5, 1),  # (store, key, key_len, out, out_cap) -> length | error
    "kv_set": (5, 1),  # (store, key, key_len, value, value_len) -> 0 | error
    "kv_delete": (3, 1),  # (store, key, key_len) -> 0 | error
    "kv_exists": (3, 1),  # (store, key, key_len) -> 1 | 0 | error
    "kv_list": (7, 1),  # (store, prefix, prefix_len, cursor, cursor_len, out, out_cap) -> length | error
    "out_of_memory": (1, 0),  # (requested): the guest's allocator could not get `requested` bytes
}
IO_FUNCTIONS = frozenset(name for name in SIGNATURES if name.startswith(("http_", "kv_")))
"""Host functions that reach outside the isolate and may wait: modules importing one run on a thread."""
NATIVE_FUNCTIONS = frozenset({"log", "cache_get", "cache_put"})
"""Host functions the native path (`_fastpath.c`) implements in C, re-entering Python only for the
capture or the guest cache; the I/O functions stay here, where a wait costs far more than a call."""

# cache_get / cache_put results (ABI.md, "The guest cache")
CACHE_MISS = -1
CACHE_BAD_KEY = -2
CACHE_VALUE_TOO_LARGE = -3
CACHE_BAD_TTL = -4
CACHE_REFUSED = -5
NO_IO_HTTP = -2  # http_send without a GuestIO (a bare engine run): denied
NO_IO_KV = -4  # kv_* without a GuestIO: no such store


class _GuestFault(Exception):
    """The guest passed a range outside its memory: an `abi` failure."""


class _Interrupt(Exception):
    """A wait cut short: `why` is "timeout" or "shutdown"."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


_local = threading.local()


class Call:
    """The calling instance's memory during one host call."""

    __slots__ = ("base", "size", "name")

    def __init__(self, caller: int, name: str) -> None:
        self.name = name
        # The request's `memory` export, once `run` has looked it up (it belongs to the caller's
        # store); before that (start function, _initialize) it is looked up by name.
        memory = getattr(_output.current, "memory", None)
        if memory is None:
            scratch: _raw.CallerMemory | None = getattr(_local, "memory", None)
            if scratch is None:
                scratch = _local.memory = _raw.CallerMemory()
            if not _raw.caller_export_get(caller, b"memory", 6, scratch.p_item):
                raise _GuestFault(f"{HOST_NAMESPACE}.{name}: the module exports no memory")
            memory = scratch.p_memory
        ctx = _raw.caller_context(caller)
        self.base = _raw.memory_data(ctx, memory) or 0
        self.size = _raw.memory_data_size(ctx, memory)

    def check(self, what: str, ptr: int, length: int) -> int:
        ptr &= _U32
        if ptr + (length & _U32) > self.size:
            raise _GuestFault(f"{HOST_NAMESPACE}.{self.name}: {what} {ptr}+{length & _U32} is outside guest memory "
                              f"({self.size} bytes)")
        return ptr

    def read(self, what: str, ptr: int, length: int) -> bytes:
        length &= _U32
        return ctypes.string_at(self.base + self.check(what, ptr, length), length) if length else b""

    def write(self, what: str, ptr: int, data: bytes, cap: int) -> None:
        """Copy `data` (at most `cap` bytes of it) to `ptr`, after checking `cap` bytes are there."""
        ptr = self.check(what, ptr, cap)
        n = min(len(data), cap & _U32)
        if n:
            ctypes.memmove(self.base + ptr, data, n)


# -- the functions: each takes the caller and the raw i32 arguments, returns the i32 result ---------

def _log(caller: int, level: int, ptr: int, length: int) -> None:
    capture = getattr(_output.current, "capture", None)
    if capture is None:
        return
    size = min(length & _U32, _MAX_LOG_MESSAGE)
    if capture.full:
        capture.drop(size)  # not even read: logging is over
        return
    call = Call(caller, "log")
    call.check("message", ptr, length)
    data = call.read("message", ptr, size)  # at most 16 KiB: `add` keeps it or counts it
    capture.add("log", _output.LEVELS[level] if 0 <= level < len(_output.LEVELS) else "info", data)


def _cache_get(caller: int, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
    binding = getattr(_output.current, "cache", None)
    if not 0 < (key_len & _U32) <= MAX_KEY:
        return CACHE_BAD_KEY
    call = Call(caller, "cache_get")
    key = call.read("key", key_ptr, key_len)
    value = binding[0].get(binding[1], key) if binding is not None else None
    if value is None:
        return CACHE_MISS
    call.write("output buffer", out_ptr, value, out_cap)
    return len(value)


def _cache_put(caller: int, key_ptr: int, key_len: int, value_ptr: int, value_len: int, ttl_ms: int) -> int:
    binding = getattr(_output.current, "cache", None)
    # Sizes are judged before memory is read: an oversized value is refused without copying it.
    if not 0 < (key_len & _U32) <= MAX_KEY:
        return CACHE_BAD_KEY
    if (value_len & _U32) > MAX_VALUE:
        return CACHE_VALUE_TOO_LARGE
    if not 0 < ttl_ms <= MAX_TTL_MS:
        return CACHE_BAD_TTL
    call = Call(caller, "cache_put")
    key = call.read("key", key_ptr, key_len)
    value = call.read("value", value_ptr, value_len)
    if binding is None or not binding[0].put(binding[1], key, value, ttl_ms):
        return CACHE_REFUSED
    return 0


def _io() -> Any:
    return getattr(_output.current, "io", None)


def _http_send(caller: int, ptr: int, length: int) -> int:
    io = _io()
    envelope = Call(caller, "http_send").read("request", ptr, length)
    return NO_IO_HTTP if io is None else int(io.http_send(envelope))


def _http_take(caller: int, out_ptr: int, out_cap: int) -> int:
    io = _io()
    if io is None:
        return -1
    call = Call(caller, "http_take")
    call.check("output buffer", out_ptr, out_cap)
    held = io.http_take(out_cap & _U32)
    if isinstance(held, int):
        return held
    call.write("output buffer", out_ptr, held, out_cap)
    return len(held)


def _kv_open(caller: int, ptr: int, length: int) -> int:
    io = _io()
    call = Call(caller, "kv_open")
    call.check("name", ptr, length)
    name = call.read("name", ptr, min(length & _U32, 256))
    return NO_IO_KV if io is None else int(io.kv_open(name))


def _key(caller: int, what: str, ptr: int, length: int) -> tuple[Call, bytes]:
    """The key at `ptr`; an oversized one is read only as far as needed to be refused (1025 bytes)."""
    call = Call(caller, what)
    call.check("key", ptr, length)
    return call, call.read("key", ptr, min(length & _U32, 1025))


def _kv_get(caller: int, store: int, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
    io = _io()
    call, key = _key(caller, "kv_get", key_ptr, key_len)
    call.check("output buffer", out_ptr, out_cap)
    if io is None:
        return NO_IO_KV
    value = io.kv_get(store, key, out_cap & _U32)
    if isinstance(value, int):
        return value
    call.write("output buffer", out_ptr, value, out_cap)
    return len(value)


def _kv_set(caller: int, store: int, key_ptr: int, key_len: int, value_ptr: int, value_len: int) -> int:
    io = _io()
    call, key = _key(caller, "kv_set", key_ptr, key_len)
    call.check("value", value_ptr, value_len)
    if io is None:
        return NO_IO_KV
    return int(io.kv_set(store, key, value_len & _U32, lambda: call.read("value", value_ptr, value_len)))


def _kv_delete(caller: int, store: int, key_ptr: int, key_len: int) -> int:
    io = _io()
    _, key = _key(caller, "kv_delete", key_ptr, key_len)
    return NO_IO_KV if io is None else int(io.kv_delete(store, key))


def _kv_exists(caller: int, store: int, key_ptr: int, key_len: int) -> int:
    io = _io()
    _, key = _key(caller, "kv_exists", key_ptr, key_len)
    return NO_IO_KV if io is None else int(io.kv_exists(store, key))


def _kv_list(caller: int, store: int, prefix_ptr: int, prefix_len: int, cursor_ptr: int, cursor_len: int,
             out_ptr: int, out_cap: int) -> int:
    io = _io()
    call, prefix = _key(caller, "kv_list", prefix_ptr, prefix_len)
    call.check("cursor", cursor_ptr, cursor_len)
    cursor = call.read("cursor", cursor_ptr, min(cursor_len & _U32, 1025))
    call.check("output buffer", out_ptr, out_cap)
    if io is None:
        return NO_IO_KV
    page = io.kv_list(store, prefix, cursor, out_cap & _U32)
    if isinstance(page, int):
        return page
    if len(page) <= out_cap & _U32:  # a page is copied whole or not at all (ABI.md)
        call.write("output buffer", out_ptr, page, out_cap)
    return len(page)


def _out_of_memory(caller: int, requested: int) -> None:
    """Note on the request that the guest's allocator failed; the guest goes on (C's malloc returns
    NULL) or traps, and `_isolate._translate` reports a failure after this as `memory_limit`.

    Called only when an allocation has already failed, so it stays here rather than in `_fastpath.c`,
    and finds the request's capture the slow way on the native path (which tells only its own
    functions)."""
    capture = getattr(_output.current, "capture", None)
    if capture is None and FASTPATH is not None:
        capture = FASTPATH.current_capture()
    if capture is None:
        return
    requested &= _U32
    if getattr(capture, "out_of_memory", None) is None:  # the first failure is the one that matters
        capture.out_of_memory = requested
        capture.note("warn", f"guest allocator could not get {requested} bytes: the memory limit refused "
                             "to grow memory")


_IMPLEMENTATIONS: dict[str, Callable[..., int | None]] = {
    "log": _log, "cache_get": _cache_get, "cache_put": _cache_put, "http_send": _http_send,
    "http_take": _http_take, "kv_open": _kv_open, "kv_get": _kv_get, "kv_set": _kv_set,
    "kv_delete": _kv_delete, "kv_exists": _kv_exists, "kv_list": _kv_list, "out_of_memory": _out_of_memory,
}


def _trap(message: str) -> int:
    data = message.encode("utf-8", "replace")
    return int(_raw.trap_new(data, len(data)) or 0)


def _callback(name: str, impl: Callable[..., int | None], params: int, results: int) -> Any:
    """The raw callback for one host function: unpack i32 arguments, store the i32 result, and turn
    every exception into a trap (an exception must never cross back into wasmtime)."""

    unpack = struct.Struct("<" + f"i{_raw.VAL_RAW_SIZE - 4}x" * params).unpack
    size = params * _raw.VAL_RAW_SIZE

    def callback(_env: int, caller: int, values: int, _count: int) -> int:
        try:
            result = impl(caller, *unpack(ctypes.string_at(values, size)))
            if results:
                ctypes.c_int32.from_address(values).value = result or 0
            return 0
        except _GuestFault as exc:
            capture = getattr(_output.current, "capture", None)
            if capture is not None:
                capture.abi_error = str(exc)
            return _trap(str(exc))
        except TimeoutError:
            return _interrupt("timeout", name)
        except InterruptedError:
            return _interrupt("shutdown", name)
        except BaseException as exc:  # a host bug: fail this request, never the process
            log.exception("host function %s.%s failed", HOST_NAMESPACE, name)
            return _trap(f"{HOST_NAMESPACE}.{name} failed in the host: {type(exc).__name__}")

    return _raw.HOST_CALLBACK(callback)


def _interrupt(why: str, name: str) -> int:
    capture = getattr(_output.current, "capture", None)
    if capture is not None:
        capture.interrupted = why
    return _trap(f"{HOST_NAMESPACE}.{name} interrupted: {why}")


# Made once and kept for the life of the process: every linker's functions point at these.
_CALLBACKS = {name: _callback(name, _IMPLEMENTATIONS[name], *SIGNATURES[name]) for name in SIGNATURES}


def _report(name: str, exc: BaseException) -> None:
    """A native host function failed in the host: logged like the ctypes ones' failures."""
    log.error("host function %s.%s failed", HOST_NAMESPACE, name, exc_info=exc)


def _load_fastpath() -> Any:
    """The native request path, initialised with this process's C API, or None if it was not built."""
    try:
        from . import _fastpath  # type: ignore[attr-defined]
    except ImportError:  # installed without a C compiler: the ctypes path serves
        return None
    _fastpath.init({name: _raw.address(name) for name in _fastpath.names()}, _shutdown, _output.LEVELS, _report,
                   LogRecord, _output.RECORD_OVERHEAD, _output.Capture)
    return _fastpath


FASTPATH: Any = _load_fastpath()
"""The `_fastpath` extension, ready to use, or None."""


def _construct(cls: type[T], *values: Any) -> T:
    """`_fastpath.construct` in Python: the same result, at a frozen dataclass's own cost."""
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):  # type: ignore[attr-defined]
        object.__setattr__(obj, name, value)
    return obj


construct: Callable[..., Any] = FASTPATH.construct if FASTPATH is not None else _construct
"""construct(cls, *values): an instance of the slots dataclass `cls`, its fields (`__slots__`, in order)
set to `values`, without running __init__ (1.3 -> 0.2 µs for a Request, made for every request)."""


def define(linker: wasmtime.Linker, native: bool = False) -> None:
    """Define every `isolate` host function on `linker`: NATIVE_FUNCTIONS in C when `native` (for
    stores run by `FASTPATH.invoke`, which tells them the request's capture and cache)."""
    for name, (params, results) in SIGNATURES.items():
        ty = FuncType([_I32] * params, [_I32] * results)
        if native and name in NATIVE_FUNCTIONS:
            error = FASTPATH.define(_raw.linker_pointer(linker), name, _raw.functype_pointer(ty))
            if error:
                raise _raw.take_error(error)
        else:
            _raw.define_unchecked(linker, HOST_NAMESPACE, name, ty, _CALLBACKS[name])


def signature(name: str) -> tuple[list[ValType], list[ValType]]:
    params, results = SIGNATURES[name]
    return [_I32] * params, [_I32] * results
