"""One request in one fresh isolate: new Store, limits, deadline, instantiate, call, copy out, drop.

Nothing survives the request: the Store (and with it the instance, its memory and WASI context) is
deleted in `finally`, whatever the guest did. Every failure is translated here, in one place.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import wasmtime

from ..abi import LogRecord
from ..cache import GuestCache
from ..config import Limits
from ..errors import (
    AbiViolation,
    GuestError,
    InternalError,
    IsolateError,
    MemoryLimit,
    Overloaded,
    ResponseTooLarge,
    StackOverflow,
    Timeout,
    Trap,
)
from . import _native, _output, _raw, _shutdown
from ._runtime import Prepared

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_local = threading.local()

# Substrings of wasmtime's instantiation errors (not traps) and what they mean to a client.
_MEMORY_ERRORS = ("memory minimum size", "exceeds memory limits", "memory index", "resource limit exceeded")
_CAPACITY_ERRORS = ("maximum concurrent", "concurrent memory limit", "concurrent table limit")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The raw response envelope a guest produced, and what running it cost."""

    payload: bytes
    logs: tuple[LogRecord, ...]
    instantiate_us: float
    run_us: float
    memory_bytes: int


def _scratch() -> _raw.Scratch:
    scratch: _raw.Scratch | None = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = _raw.Scratch()
        native = _native.thread_stack_size()
        if native is not None:
            scratch.stack_room = native - _native.HOST_HEADROOM
    return scratch


def run(prepared: Prepared, payload: bytes, limits: Limits, log_limit: int,
        cache: tuple[GuestCache, str] | None = None, io: Any = None) -> Outcome:
    """Run the guest's handler on `payload` (an encoded request) in a fresh isolate.

    `cache` is the guest cache and the namespace (module name) its host functions use; `io` the
    request's `isolate.capabilities.GuestIO` (outbound HTTP, key-value stores), or None: denied.
    """
    runtime = prepared.runtime
    s = _scratch()
    if runtime.stack > s.stack_room:
        raise _thread_too_small(runtime.stack, s.stack_room)
    shape = prepared.shape
    # The most memory the guest can touch: its limit, or the maximum its memory declares.
    reserved = limits.memory if shape.memory_max is None or shape.memory_max > limits.memory else shape.memory_max
    budget = runtime.budget
    if not budget.reserve(reserved):
        raise Overloaded(
            f"the host's memory budget is exhausted: this request needs {reserved} bytes and running "
            f"isolates hold {budget.in_use} of {budget.total}",
            limit="memory_budget",
            memory_budget=budget.total,
        )
    started = time.perf_counter()
    capture = _output.Capture(log_limit, runtime.log_records)
    waits = shape.uses_wasi or shape.uses_io
    if waits:  # poll_oneoff, stdout/stderr writes and I/O calls bound their time by the deadline
        capture.wait_bounds(started, started + limits.timeout)
    store = _raw.store_new(runtime.engine_ptr, None, None)
    ctx = _raw.store_context(store)
    phase = "instantiate"
    memory_size: int | None = None
    try:
        _raw.store_limiter(store, limits.memory, -1, 1, 1, 1)
        _raw.set_epoch_deadline(ctx, runtime.ticker.ticks_for(limits.timeout))
        if _shutdown.stopping:  # checked after the deadline is armed: a shutdown from now on interrupts it
            raise _stopped(phase)
        if shape.uses_wasi:
            config = _raw.wasi_config_with_output(_output.STDOUT, _output.STDERR, _output.register(capture))
            error = _raw.context_set_wasi(ctx, config)
            if error:
                raise IsolateError(f"cannot set up WASI: {_raw.take_error(error)}")
        _output.current.capture = capture
        _output.current.cache = cache
        _output.current.io = io
        if io is not None:
            io.note = capture.note
        error = _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
        if error or s.trap.value:
            raise _failure(s, error, capture, limits, phase, None)
        instantiated = time.perf_counter()

        get = _raw.export_get
        if not (
            get(ctx, s.p_instance, b"memory", 6, s.p_memory)
            and get(ctx, s.p_instance, b"isolate_alloc", 13, s.p_alloc)
            and get(ctx, s.p_instance, b"isolate_handle", 14, s.p_handle)
        ):
            raise AbiViolation("module lost a required export after instantiation")
        _output.current.memory = s.p_memory_item  # host calls from here on skip the lookup by name
        call = _raw.call_unchecked
        args = s.args
        if shape.has_initialize:
            phase = "initialize"
            get(ctx, s.p_instance, b"_initialize", 11, s.p_init)
            error = call(ctx, s.p_init_func, args, 0, s.p_trap)
            if error or s.trap.value:
                raise _failure(s, error, capture, limits, phase, _raw.memory_data_size(ctx, s.p_memory_item))

        phase = "alloc"
        size = len(payload)
        args[0].i32 = size
        error = call(ctx, s.p_alloc_func, args, 1, s.p_trap)
        if error or s.trap.value:
            raise _failure(s, error, capture, limits, phase, _raw.memory_data_size(ctx, s.p_memory_item))
        ptr = args[0].i32 & _U32
        memory_size = _raw.memory_data_size(ctx, s.p_memory_item)
        if ptr + size > memory_size:
            raise AbiViolation(
                f"isolate_alloc({size}) returned {ptr}, outside guest memory ({memory_size} bytes)", phase=phase
            )
        ctypes.memmove(_raw.memory_data(ctx, s.p_memory_item) + ptr, payload, size)

        phase = "handle"
        args[0].i32 = ptr
        args[1].i32 = size
        error = call(ctx, s.p_handle_func, args, 2, s.p_trap)
        memory_size = _raw.memory_data_size(ctx, s.p_memory_item)
        if error or s.trap.value or (waits and capture.interrupted):
            # A host call refused to run past the deadline and the guest finished before its epoch
            # deadline caught up with it: still a timeout, its output was cut.
            raise _failure(s, error, capture, limits, phase, memory_size)
        packed = args[0].i64 & _U64
        out_ptr, out_len = packed >> 32, packed & _U32
        if out_len > limits.response_size:
            raise ResponseTooLarge(
                f"response of {out_len} bytes exceeds the {limits.response_size}-byte limit",
                limit="response_size",
                size=out_len,
            )
        if out_len == 0 or out_ptr + out_len > memory_size:
            raise AbiViolation(
                f"isolate_handle returned response {out_ptr}+{out_len}, outside guest memory ({memory_size} bytes)",
                phase=phase,
            )
        out = ctypes.string_at(_raw.memory_data(ctx, s.p_memory_item) + out_ptr, out_len)
        finished = time.perf_counter()
    except GuestError as exc:
        exc.logs = capture.finish()
        raise
    finally:
        _output.current.capture = _output.current.cache = _output.current.io = _output.current.memory = None
        _raw.store_delete(store)
        budget.release(reserved)
        if shape.uses_wasi:
            _output.unregister(capture)
    return Outcome(
        payload=out,
        logs=capture.finish(),
        instantiate_us=(instantiated - started) * 1e6,
        run_us=(finished - instantiated) * 1e6,
        memory_bytes=memory_size,
    )


def _failure(
    s: _raw.Scratch, error: int | None, capture: _output.Capture, limits: Limits, phase: str, memory: int | None
) -> IsolateError:
    """Translate whatever stopped the guest into the error tree (the one place that does)."""
    trap = _raw.take_trap(s)
    err = _raw.take_error(error) if error else None
    where = {"phase": phase}
    if memory is not None:
        where["memory_bytes"] = memory  # type: ignore[assignment]
    code = trap.trap_code if trap is not None else None
    interrupted = getattr(capture, "interrupted", None)  # set only for modules that may wait in the host
    if interrupted == "shutdown" or (code is wasmtime.TrapCode.INTERRUPT and _shutdown.stopping):
        return _stopped(phase)
    if interrupted == "timeout" or code is wasmtime.TrapCode.INTERRUPT:
        ms = limits.timeout * 1000
        waiting = " (in a host call)" if interrupted else ""
        return Timeout(f"guest ran past its {ms:g} ms time limit{waiting}", limit="timeout", timeout_ms=ms, **where)
    if capture.abi_error:
        return AbiViolation(capture.abi_error, **where)
    if isinstance(err, wasmtime.ExitTrap):
        return Trap(f"guest called proc_exit({err.code})", trap_code="exit", exit_code=err.code, **where)
    message = _first_line(trap.message if trap is not None else str(err))
    if code is wasmtime.TrapCode.STACK_OVERFLOW:
        return StackOverflow("guest exhausted the wasm stack (deep or unbounded recursion)", **where)
    if memory is not None and memory + _memory_slack(limits.memory) > limits.memory:
        # A refused memory.grow returns -1 rather than trapping (wasmtime's C API offers no
        # trap-on-grow-failure), and the guest's allocator then aborts. A trap with memory this
        # close to the limit is taken to be that abort; the diagnostic carries both figures.
        return MemoryLimit(
            f"guest reached its memory limit of {limits.memory} bytes and trapped ({message})",
            limit="memory",
            memory_limit=limits.memory,
            **where,
        )
    if code is not None:
        text = trap.message if trap is not None else ""
        return Trap(f"guest trapped: {message}", trap_code=code.name.lower(), backtrace=_backtrace(text), **where)
    lowered = message.lower()
    if any(text in lowered for text in _MEMORY_ERRORS):
        return MemoryLimit(
            f"guest memory exceeds its limit of {limits.memory} bytes: {message}",
            limit="memory",
            memory_limit=limits.memory,
            **where,
        )
    if any(text in lowered for text in _CAPACITY_ERRORS):
        return Overloaded(f"no free isolate slot: {message}", **where)
    return Trap(f"guest failed: {message}", trap_code="error", **where)


def _stopped(phase: str) -> Overloaded:
    return Overloaded("the host is shutting down: the request was stopped", limit="shutdown", phase=phase)


def _thread_too_small(stack: int, room: int) -> InternalError:
    native = room + _native.HOST_HEADROOM
    return InternalError(
        f"this thread's native stack ({native} bytes) cannot hold a {stack}-byte wasm stack plus "
        f"{_native.HOST_HEADROOM} bytes for host calls: run guests on threads created after the Host, "
        "or raise `ulimit -s`",
        limit="stack",
    )


def _memory_slack(limit: int) -> int:
    """How near the limit a trapping guest's memory must be to count as out of memory."""
    return max(1 << 20, limit // 16)


def _first_line(text: str) -> str:
    """A one-line cause from a wasmtime message: the root cause, with any context in parentheses.

    wasmtime writes "error while executing at wasm backtrace: ... Caused by: [N: ]context ... trap".
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Caused by:" not in lines:
        return lines[0] if lines else "unknown"
    causes = [re.sub(r"^\d+: ", "", line).removeprefix("wasm trap: ") for line in
              lines[lines.index("Caused by:") + 1:]]
    if not causes:
        return "unknown"
    root, context = causes[-1], causes[:-1]
    return f"{root} ({'; '.join(context)})" if context else root


def _backtrace(text: str) -> list[str]:
    """The numbered wasm frames of a trap message, innermost first, at most 16."""
    frames = [line.strip() for line in text.splitlines() if line.strip()[:1].isdigit() and " - " in line]
    return frames[:16]


def instantiate_once(prepared: Prepared, limits: Limits) -> None:
    """Create a store, apply limits and deadline, instantiate, drop: the isolate cost alone (for bench/)."""
    runtime = prepared.runtime
    s = _scratch()
    store = _raw.store_new(runtime.engine_ptr, None, None)
    try:
        ctx = _raw.store_context(store)
        _raw.store_limiter(store, limits.memory, -1, 1, 1, 1)
        _raw.set_epoch_deadline(ctx, runtime.ticker.ticks_for(limits.timeout))
        error = _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
        if error or s.trap.value:
            raise _failure(s, error, _output.Capture(0), limits, "instantiate", None)
    finally:
        _raw.store_delete(store)
