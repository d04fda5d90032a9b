"""The host side of the import namespace: WASI preview 1, the `isolate` host functions, and the
deploy-time check that a module imports only these and exports what ABI v1 requires."""

from __future__ import annotations

import ctypes
import logging
import math
import re
import struct
import time
from dataclasses import dataclass

import wasmtime
from wasmtime import FuncType, MemoryType, ValType

from ..abi import (
    ABI_VERSION,
    EXPORT_ABI_PREFIX,
    EXPORT_ALLOC,
    EXPORT_HANDLE,
    EXPORT_INITIALIZE,
    EXPORT_MEMORY,
    HOST_NAMESPACE,
)
from ..errors import InvalidModule
from . import _hostcalls, _output, _raw, _shutdown
from ._hostcalls import IO_FUNCTIONS, SIGNATURES, signature

WASI_NAMESPACE = "wasi_snapshot_preview1"
BLOCKING_IMPORTS = frozenset({(WASI_NAMESPACE, "poll_oneoff")} | {(HOST_NAMESPACE, name) for name in IO_FUNCTIONS})
"""Host functions that can wait on the guest's behalf (`poll_oneoff`, outbound HTTP, key-value
stores): a module importing one must never run on an event loop. Every other WASI call returns at
once with the WASI context the host builds (stdin empty, no preopened files or sockets): fd_read on
stdin reads end-of-file, sched_yield yields,
sock_* find no socket, path_* no directory. Two are not waits but can run long: fd_write to
stdout/stderr (up to 128 MiB per call, 4 KiB per callback: `_output` fails it past the deadline)
and random_get (wasmtime caps a call at 64 MiB, ~0.25 s here, then the epoch stops the guest)."""
_I32, _I64 = ValType.i32(), ValType.i64()

# name -> (params, results) of every host function in the `isolate` namespace (see _hostcalls)
HOST_FUNCTIONS: dict[str, tuple[list[ValType], list[ValType]]] = {name: signature(name) for name in SIGNATURES}
_REQUIRED_EXPORTS: dict[str, tuple[list[ValType], list[ValType]]] = {
    EXPORT_ALLOC: ([_I32], [_I32]),
    EXPORT_HANDLE: ([_I32, _I32], [_I64]),
}
_ABI_MARKER = re.compile(re.escape(EXPORT_ABI_PREFIX) + r"(\d+)")


@dataclass(frozen=True, slots=True)
class ModuleShape:
    """What the deploy-time check learned about a module, needed again on every request."""

    abi_version: int
    uses_wasi: bool
    has_initialize: bool
    memory_min: int  # bytes declared as the memory's minimum
    memory_max: int | None = None  # bytes declared as the memory's maximum, if any
    may_block: bool = False  # imports a host function that can wait (BLOCKING_IMPORTS)
    uses_io: bool = False  # imports outbound HTTP or key-value functions: its requests get a GuestIO
    kind: str = "module"  # "module" (ABI v1) or "component" (wasi:http, engine/_component.py)


# WASI preview 1 ABI (wasi_snapshot_preview1.witx): a subscription is 48 bytes, an event 32.
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # userdata, tag, clock id | fd, timeout, precision, flags
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, errno, type, fd_readwrite.nbytes, fd_readwrite.flags
_CLOCK, _FD_READ, _FD_WRITE = 0, 1, 2
_REALTIME, _MONOTONIC = 0, 1
_ABSTIME = 1
_ESUCCESS, _EBADF, _EFAULT, _EINVAL = 0, 8, 21, 28
_MAX_SUBSCRIPTIONS = 4096  # parsing is host CPU time too; libc's poll and sleep use one or two


def _poll_oneoff(caller: int, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
    """WASI `poll_oneoff`, waiting at most until the request's deadline (wasmtime's sleeps as asked).

    File subscriptions are ready at once (stdin is empty, stdout and stderr take anything; other
    descriptors do not exist), so only clocks wait. A wait the deadline cuts short fails the guest
    with the `timeout` diagnostic; `shutdown()` wakes it and fails the guest as overloaded.
    """
    capture = getattr(_output.current, "capture", None)
    count &= 0xFFFFFFFF
    if not 0 < count <= _MAX_SUBSCRIPTIONS:
        return _EINVAL
    try:
        memory = _hostcalls.Call(caller, "poll_oneoff")
    except _hostcalls._GuestFault:  # the module exports no memory
        return _EFAULT
    size = memory.size
    in_ptr, out_ptr, nevents_ptr = in_ptr & 0xFFFFFFFF, out_ptr & 0xFFFFFFFF, nevents_ptr & 0xFFFFFFFF
    if in_ptr + count * 48 > size or out_ptr + count * 32 > size or nevents_ptr + 4 > size:
        return _EFAULT
    now = time.perf_counter()
    wall = time.time()
    ready: list[tuple[int, int, int]] = []  # userdata, errno, event type
    timers: list[tuple[float, int]] = []  # due (perf_counter), userdata
    for userdata, tag, ident, timeout, _precision, flags in _SUBSCRIPTION.iter_unpack(
            memory.read("subscriptions", in_ptr, count * 48)):
        if tag == _CLOCK:
            if ident not in (_REALTIME, _MONOTONIC):
                return _EINVAL  # as wasmtime: CPU-time clocks cannot be waited on
            seconds = timeout / 1e9
            if not flags & _ABSTIME:
                due = now + seconds
            elif ident == _REALTIME:
                due = now + seconds - wall
            else:  # a WASI context's monotonic clock counts from its creation, at the request's start
                due = getattr(capture, "started", now) + seconds
            timers.append((due, userdata))
        elif tag in (_FD_READ, _FD_WRITE):
            ready.append((userdata, _ESUCCESS if ident <= 2 else _EBADF, tag))
        else:
            return _EINVAL
    if not ready:
        due = min(t[0] for t in timers)
        _wait_until(capture, due)
        now = time.perf_counter()
        ready = [(userdata, _ESUCCESS, _CLOCK) for at, userdata in timers if at <= now]
    out = b"".join(_EVENT.pack(userdata, errno, kind, 0, 0) for userdata, errno, kind in ready)
    memory.write("events", out_ptr, out, len(out))
    memory.write("nevents", nevents_ptr, len(ready).to_bytes(4, "little"), 4)
    return _ESUCCESS


def _wait_until(capture: _output.Capture | None, due: float) -> None:
    """Sleep until `due` (perf_counter time), but never past the request's deadline."""
    deadline: float = getattr(capture, "deadline", -math.inf)  # no request: nothing to wait for
    why = _shutdown.sleep_until(due, deadline)
    if why is not None:
        _interrupt(capture, why)


class _Interrupted(Exception):
    """A wait cut short; the raw callback turns it into a trap."""


def _interrupt(capture: _output.Capture | None, why: str) -> None:
    """Fail the guest from a host call; `_isolate._failure` reads `why` off the capture."""
    if capture is not None:
        capture.interrupted = why
    raise _Interrupted(f"{WASI_NAMESPACE}.poll_oneoff interrupted: {why}")


_POLL_ARGS = struct.Struct("<" + f"i{_raw.VAL_RAW_SIZE - 4}x" * 4)


def _poll_oneoff_raw(_env: int, caller: int, values: int, _count: int) -> int:
    """poll_oneoff as a raw callback: an exception never crosses into wasmtime-py's trampoline, whose
    process-wide `LAST_EXCEPTION` nothing on this host's call paths ever consumes."""
    try:
        result = _poll_oneoff(caller, *_POLL_ARGS.unpack(ctypes.string_at(values, _POLL_ARGS.size)))
        ctypes.c_int32.from_address(values).value = result
        return 0
    except _Interrupted as exc:
        return _hostcalls._trap(str(exc))
    except BaseException as exc:  # a host bug: fail this request, never the process
        logging.getLogger(__name__).exception("host function %s.poll_oneoff failed", WASI_NAMESPACE)
        return _hostcalls._trap(f"{WASI_NAMESPACE}.poll_oneoff failed in the host: {type(exc).__name__}")


_POLL_CALLBACK = _raw.HOST_CALLBACK(_poll_oneoff_raw)  # kept for the life of the process


def build_linker(engine: wasmtime.Engine, native: bool = False) -> wasmtime.Linker:
    """One linker per engine: WASI preview 1 plus the `isolate` host functions (see `_hostcalls.define`)."""
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.allow_shadowing = True  # replace wasmtime's poll_oneoff, which sleeps as long as asked
    _raw.define_unchecked(linker, WASI_NAMESPACE, "poll_oneoff", FuncType([_I32] * 4, [_I32]), _POLL_CALLBACK)
    linker.allow_shadowing = False
    _hostcalls.define(linker, native)
    return linker


def _signature(ty: FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in ty.params], [str(r) for r in ty.results]


def _describe(sig: tuple[list[ValType], list[ValType]]) -> str:
    params, results = sig
    return f"({', '.join(map(str, params))}) -> ({', '.join(map(str, results))})"


def inspect_module(module: wasmtime.Module) -> ModuleShape:
    """Check imports and exports against ABI v1; every problem found is named in one error."""
    problems: list[str] = []
    uses_wasi = may_block = uses_io = False
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        may_block = may_block or (imp.module, imp.name) in BLOCKING_IMPORTS
        uses_io = uses_io or (imp.module == HOST_NAMESPACE and imp.name in IO_FUNCTIONS)
        if imp.module == WASI_NAMESPACE and isinstance(imp.type, FuncType):
            uses_wasi = True  # signatures are checked by the linker in instantiate_pre
        elif imp.module == HOST_NAMESPACE and imp.name in HOST_FUNCTIONS and isinstance(imp.type, FuncType):
            want = HOST_FUNCTIONS[imp.name or ""]
            if _signature(imp.type) != ([str(p) for p in want[0]], [str(r) for r in want[1]]):
                problems.append(f"import {where} has the wrong signature; expected {_describe(want)}")
        else:
            problems.append(
                f"unknown import {where}: the host provides {WASI_NAMESPACE}.* and "
                f"{HOST_NAMESPACE}.{{{', '.join(sorted(HOST_FUNCTIONS))}}}"
            )

    exports = {exp.name: exp.type for exp in module.exports}
    versions = sorted(int(m.group(1)) for name in exports if (m := _ABI_MARKER.fullmatch(name)))
    if not versions:
        problems.append(f"missing ABI version marker: export a function named {EXPORT_ABI_PREFIX}{ABI_VERSION}")
    elif versions != [ABI_VERSION]:
        problems.append(
            f"unsupported ABI version {', '.join(map(str, versions))}: this host speaks ABI v{ABI_VERSION}"
        )

    memory = exports.get(EXPORT_MEMORY)
    memory_min, memory_max = 0, None
    if not isinstance(memory, MemoryType):
        problems.append(f"missing export {EXPORT_MEMORY!r} (a linear memory)")
    elif memory.is_64:
        problems.append("memory64 is not supported: export a 32-bit memory")
    else:
        memory_min = memory.limits.min * 65536
        memory_max = None if memory.limits.max is None else memory.limits.max * 65536
    for name, want in _REQUIRED_EXPORTS.items():
        ty = exports.get(name)
        if not isinstance(ty, FuncType):
            problems.append(f"missing export {name!r}, a function {_describe(want)}")
        elif _signature(ty) != ([str(p) for p in want[0]], [str(r) for r in want[1]]):
            problems.append(f"export {name!r} has the wrong signature; expected {_describe(want)}")
    init = exports.get(EXPORT_INITIALIZE)
    if init is not None and not (isinstance(init, FuncType) and _signature(init) == ([], [])):
        problems.append(f"export {EXPORT_INITIALIZE!r} must be a function () -> ()")

    if problems:
        raise InvalidModule("; ".join(problems), problems=problems)
    return ModuleShape(
        abi_version=ABI_VERSION,
        uses_wasi=uses_wasi,
        has_initialize=init is not None,
        memory_min=memory_min,
        memory_max=memory_max,
        may_block=may_block,
        uses_io=uses_io,
    )
