"""One request in one fresh isolate: new Store, limits, deadline, instantiate, call, copy out, drop.

Nothing survives the request: the Store (and with it the instance, its memory and WASI context) is
deleted in `finally`, whatever the guest did. Every failure is translated here, in one place.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

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

if TYPE_CHECKING:  # _runtime imports _component, which uses the translator here
    from ._runtime import Prepared

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_local = threading.local()

# Substrings of wasmtime's instantiation errors (not traps) and what they mean to a client.
_MEMORY_ERRORS = ("memory minimum size", "exceeds memory limits", "memory index", "resource limit exceeded")
_CAPACITY_ERRORS = ("maximum concurrent", "concurrent memory limit", "concurrent table limit")


class Outcome(NamedTuple):
    """The raw response envelope a guest produced, and what running it cost (a tuple: made per request)."""

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


# What a request's run reports, whichever path ran it (`_fastpath.invoke` or `_invoke_ctypes`):
# (status, phase, output, memory size or -1, instantiate ns, run ns, a, b, capture). Statuses and
# phases are numbered as in _fastpath.c; `a` and `b` carry error and trap pointers or the offending
# range; the capture is None when the native path was asked to make one on first use and none was.
_OK, _STOPPING, _WASI_FAILED, _FAILED, _LOST_EXPORT, _BAD_ALLOC, _TOO_LARGE, _BAD_RESPONSE, _OVER_BUDGET = range(9)
_PHASES = ("instantiate", "initialize", "alloc", "handle")
_Report = tuple[int, int, "bytes | None", int, int, int, int, int, "_output.Capture | None"]
_NO_CACHE = (None, None)
_NO_LOGS: tuple[LogRecord, ...] = ()
_new_tuple: Any = tuple.__new__


def run(prepared: Prepared, payload: bytes, limits: Limits, log_limit: int,
        cache: tuple[GuestCache, str] | None = None, io: Any = None) -> Outcome:
    """Run the guest's handler on `payload` (an encoded request) in a fresh isolate.

    `cache` is the guest cache and the namespace (module name) its host functions use; `io` the
    request's `isolate.capabilities.GuestIO` (outbound HTTP, key-value stores), or None: denied.
    """
    runtime = prepared.runtime
    s = getattr(_local, "scratch", None) or _scratch()
    if runtime.stack > s.stack_room:
        raise _thread_too_small(runtime.stack, s.stack_room)
    shape = prepared.shape
    # The most memory the guest can touch: its limit, or the maximum its memory declares.
    reserved = limits.memory if shape.memory_max is None or shape.memory_max > limits.memory else shape.memory_max
    budget = runtime.budget
    fastpath = runtime.fastpath
    # The native path reserves and releases the budget's native count itself, inside `invoke`.
    held = budget.native if fastpath is not None else None
    if held is None and not budget.reserve(reserved):
        raise _over_budget(reserved, budget.in_use, budget.total)
    waits = shape.uses_wasi or shape.uses_io
    # The native path makes a request's capture on first use when nothing but its own host functions
    # can need it (most guests never log); a guest that may wait, and the ctypes path, get one now.
    capture: Any = (log_limit, runtime.log_records) if fastpath is not None and not waits else _output.Capture(
        log_limit, runtime.log_records)
    # The host functions written in Python (I/O, WASI output and poll_oneoff; every one on the
    # ctypes path) find the request here; the native ones are handed it by `invoke`.
    current = _output.current if fastpath is None or waits else None
    try:
        wasi = 0
        if waits:  # poll_oneoff, stdout/stderr writes and I/O calls bound their time by the deadline
            started = time.perf_counter()
            capture.wait_bounds(started, started + limits.timeout)
            if shape.uses_wasi:
                wasi = _raw.wasi_config_with_output(_output.STDOUT, _output.STDERR, _output.register(capture))
            if io is not None:
                io.note = capture.note
        if current is not None:
            current.capture = capture
            current.cache = cache
            current.io = io
        ticks = runtime.ticker.ticks_for(limits.timeout)
        if fastpath is not None:
            guest_cache, namespace = cache or _NO_CACHE  # unpacked here: a *args call is the slow call path
            report: _Report = fastpath.invoke(
                runtime.engine_ptr, prepared.pre_ptr, payload, limits.memory, ticks, wasi, shape.has_initialize,
                limits.response_size, capture, guest_cache, namespace, held, reserved)
        else:
            report = _invoke_ctypes(prepared, s, payload, limits, ticks, wasi, capture)
        status, phase, out, memory, instantiate_ns, run_ns, a, b, capture = report
        memory_size = None if memory < 0 else memory
        if status != _OK or (waits and capture.interrupted):
            if status == _OVER_BUDGET:  # `a`: what running isolates held when it refused
                raise _over_budget(reserved, a, budget.total)
            # A host call refused to run past the deadline and the guest finished before its epoch
            # deadline caught up with it: still a timeout, its output was cut.
            if capture is None:  # nothing made one: no record, no abi_error, no out_of_memory
                capture = _output.Capture(log_limit, runtime.log_records)
            raise _refusal(report, capture, limits, memory_size)
    except GuestError as exc:
        exc.logs = capture.finish() if isinstance(capture, _output.Capture) else _NO_LOGS
        raise
    finally:
        if current is not None:
            current.capture = current.cache = current.io = current.memory = None
        if held is None:
            budget.release(reserved)
        if shape.uses_wasi:
            _output.unregister(capture)
    assert out is not None
    # tuple.__new__ skips NamedTuple's Python-level __new__ (~0.1 µs of every request)
    outcome: Outcome = _new_tuple(Outcome, (out, capture.finish() if capture is not None else _NO_LOGS,
                                            instantiate_ns / 1000, run_ns / 1000, memory_size or 0))
    return outcome


def _refusal(report: _Report, capture: _output.Capture, limits: Limits, memory: int | None) -> IsolateError:
    """The error for a run that did not produce a response, from what the run reported."""
    status, phase_no, _, _, _, _, a, b, _ = report
    phase = _PHASES[phase_no]
    if status == _STOPPING:
        return _stopped(phase)
    if status == _WASI_FAILED:
        return IsolateError(f"cannot set up WASI: {_raw.take_error(a)}")
    if status == _LOST_EXPORT:
        return AbiViolation("module lost a required export after instantiation")
    if status == _BAD_ALLOC:
        return AbiViolation(f"isolate_alloc({b}) returned {a}, outside guest memory "
                            f"({memory} bytes)", phase=phase)
    if status == _TOO_LARGE:
        return ResponseTooLarge(f"response of {b} bytes exceeds the {limits.response_size}-byte limit",
                                limit="response_size", size=b)
    if status == _BAD_RESPONSE:
        return AbiViolation(f"isolate_handle returned response {a}+{b}, outside guest memory ({memory} bytes)",
                            phase=phase)
    # _FAILED, or _OK with a host call interrupted
    return _failure(b, a, capture, limits, phase, memory)


def _invoke_ctypes(prepared: Prepared, s: _raw.Scratch, payload: bytes, limits: Limits, ticks: int,
                   wasi: int, capture: _output.Capture) -> _Report:
    """The ctypes path (no `_fastpath` built, or `Config.native` off): what `_fastpath.invoke` does,
    one C API call at a time, reporting the same tuple."""
    runtime = prepared.runtime
    started = time.perf_counter_ns()
    store = _raw.store_new(runtime.engine_ptr, None, None)
    ctx = _raw.store_context(store)
    phase = 0
    memory_size = -1
    instantiated = 0  # when instantiation ended, once it has

    def report(status: int, out: bytes | None = None, a: int = 0, b: int = 0) -> _Report:
        now = time.perf_counter_ns()
        if status == _FAILED:
            a, b = int(a or 0), int(s.trap.value or 0)
            s.trap.value = None
        ran = now - instantiated if instantiated else 0
        return status, phase, out, memory_size, (instantiated or now) - started, ran, a, b, capture

    try:
        _raw.store_limiter(store, limits.memory, -1, 1, 1, 1)
        _raw.set_epoch_deadline(ctx, ticks)
        if _shutdown.stopping:  # checked after the deadline is armed: a shutdown from now on interrupts it
            if wasi:
                _raw.wasi_config_delete(wasi)
            return report(_STOPPING)
        if wasi:
            error = _raw.context_set_wasi(ctx, wasi)
            if error:
                return report(_WASI_FAILED, a=error)
        error = _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
        if error or s.trap.value:
            return report(_FAILED, a=error)
        instantiated = time.perf_counter_ns()
        get = _raw.export_get
        if not (
            get(ctx, s.p_instance, b"memory", 6, s.p_memory)
            and get(ctx, s.p_instance, b"isolate_alloc", 13, s.p_alloc)
            and get(ctx, s.p_instance, b"isolate_handle", 14, s.p_handle)
        ):
            return report(_LOST_EXPORT)
        _output.current.memory = s.p_memory_item  # host calls from here on skip the lookup by name
        call = _raw.call_unchecked
        args = s.args
        if prepared.shape.has_initialize:
            phase = 1
            get(ctx, s.p_instance, b"_initialize", 11, s.p_init)
            error = call(ctx, s.p_init_func, args, 0, s.p_trap)
            if error or s.trap.value:
                memory_size = _raw.memory_data_size(ctx, s.p_memory_item)
                return report(_FAILED, a=error)
        phase = 2
        size = len(payload)
        args[0].i32 = size
        error = call(ctx, s.p_alloc_func, args, 1, s.p_trap)
        memory_size = _raw.memory_data_size(ctx, s.p_memory_item)
        if error or s.trap.value:
            return report(_FAILED, a=error)
        ptr = args[0].i32 & _U32
        if ptr + size > memory_size:
            return report(_BAD_ALLOC, a=ptr, b=size)
        ctypes.memmove(_raw.memory_data(ctx, s.p_memory_item) + ptr, payload, size)
        phase = 3
        args[0].i32 = ptr
        args[1].i32 = size
        error = call(ctx, s.p_handle_func, args, 2, s.p_trap)
        memory_size = _raw.memory_data_size(ctx, s.p_memory_item)
        if error or s.trap.value:
            return report(_FAILED, a=error)
        packed = args[0].i64 & _U64
        out_ptr, out_len = packed >> 32, packed & _U32
        if out_len > limits.response_size:
            return report(_TOO_LARGE, b=out_len)
        if out_len == 0 or out_ptr + out_len > memory_size:
            return report(_BAD_RESPONSE, a=out_ptr, b=out_len)
        return report(_OK, ctypes.string_at(_raw.memory_data(ctx, s.p_memory_item) + out_ptr, out_len))
    finally:
        _raw.store_delete(store)


def _failure(
    trap_address: int, error: int | None, capture: _output.Capture, limits: Limits, phase: str, memory: int | None
) -> IsolateError:
    """Translate whatever stopped a module's guest into the error tree (see `_translate`)."""
    trap = _raw.take_trap(trap_address)
    err = _raw.take_error(error) if error else None
    exit_code = err.code if isinstance(err, wasmtime.ExitTrap) else None
    text = trap.message if trap is not None else str(err)
    return _translate(trap.trap_code if trap is not None else None, text, exit_code, capture, limits, phase, memory)


# The text wasmtime gives each trap code (its `Trap` Display): a component's call reports only text.
_TRAP_TEXTS = (
    ("call stack exhausted", wasmtime.TrapCode.STACK_OVERFLOW),
    ("out of bounds memory access", wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS),
    ("misaligned memory access", wasmtime.TrapCode.HEAP_MISALIGNED),
    ("out of bounds table access", wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS),
    ("uninitialized element", wasmtime.TrapCode.INDIRECT_CALL_TO_NULL),
    ("indirect call type mismatch", wasmtime.TrapCode.BAD_SIGNATURE),
    ("integer overflow", wasmtime.TrapCode.INTEGER_OVERFLOW),
    ("integer divide by zero", wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO),
    ("invalid conversion to integer", wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER),
    ("`unreachable` instruction executed", wasmtime.TrapCode.UNREACHABLE),
    ("wasm trap: interrupt", wasmtime.TrapCode.INTERRUPT),
)


def _failure_from(text: str, capture: _output.Capture, limits: Limits, phase: str,
                  memory: int | None) -> IsolateError:
    """Translate a failure known only by wasmtime's message (a component's call) into the error tree."""
    code = next((code for words, code in _TRAP_TEXTS if words in text), None)
    return _translate(code, text, None, capture, limits, phase, memory)


def _translate(code: wasmtime.TrapCode | None, text: str, exit_code: int | None, capture: _output.Capture,
               limits: Limits, phase: str, memory: int | None) -> IsolateError:
    """Translate whatever stopped the guest into the error tree (the one place that does)."""
    error = _classify(code, text, exit_code, capture, limits, phase, memory)
    if isinstance(error, GuestError):
        # Every guest failure keeps its frames (a stack overflow's or an out-of-memory abort's too, not
        # only a trap's): dev mode shows them, symbolised when the module kept its name section.
        error.backtrace = _dev_backtrace(text)
    return error


def _classify(code: wasmtime.TrapCode | None, text: str, exit_code: int | None, capture: _output.Capture,
              limits: Limits, phase: str, memory: int | None) -> IsolateError:
    where = {"phase": phase}
    if memory is not None:
        where["memory_bytes"] = memory  # type: ignore[assignment]
    interrupted = getattr(capture, "interrupted", None)  # set only for guests that may wait in the host
    if interrupted == "shutdown" or (code is wasmtime.TrapCode.INTERRUPT and _shutdown.stopping):
        return _stopped(phase)
    if interrupted == "timeout" or code is wasmtime.TrapCode.INTERRUPT:
        ms = limits.timeout * 1000
        waiting = " (in a host call)" if interrupted else ""
        return Timeout(f"guest ran past its {ms:g} ms time limit{waiting}", limit="timeout", timeout_ms=ms, **where)
    if capture.abi_error:
        return AbiViolation(capture.abi_error, **where)
    requested = getattr(capture, "out_of_memory", None)
    if requested is not None:
        # The guest's allocator told the host (isolate.out_of_memory) that memory.grow failed: whatever
        # stopped the guest after that (Rust's alloc-error abort, AssemblyScript's `unreachable`, a
        # C write through the NULL malloc returned, an exit) follows from it.
        return MemoryLimit(
            f"guest could not allocate {requested} bytes within its memory limit of {limits.memory} bytes "
            f"and failed ({_cause(text, exit_code)})",
            limit="memory",
            memory_limit=limits.memory,
            requested_bytes=requested,
            **where,
        )
    if exit_code is not None:
        return Trap(f"guest called proc_exit({exit_code})", trap_code="exit", exit_code=exit_code, **where)
    message = _first_line(text)
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
        return Trap(f"guest trapped: {message}", trap_code=code.name.lower(), backtrace=_backtrace(text), **where)
    lowered = message.lower()
    if any(words in lowered for words in _MEMORY_ERRORS):
        return MemoryLimit(
            f"guest memory exceeds its limit of {limits.memory} bytes: {message}",
            limit="memory",
            memory_limit=limits.memory,
            **where,
        )
    if any(words in lowered for words in _CAPACITY_ERRORS):
        return Overloaded(f"no free isolate slot: {message}", **where)
    return Trap(f"guest failed: {message}", trap_code="error", **where)


def _over_budget(size: int, in_use: int, total: int) -> Overloaded:
    return Overloaded(
        f"the host's memory budget is exhausted: this request needs {size} bytes and running "
        f"isolates hold {in_use} of {total}",
        limit="memory_budget",
        memory_budget=total,
    )


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


def _cause(text: str, exit_code: int | None) -> str:
    """What stopped the guest, in a few words: its proc_exit code or the trap's root cause."""
    return f"proc_exit({exit_code})" if exit_code is not None else _first_line(text)


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


_FRAME = re.compile(r"\s*\d+:\s+\S")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}\b")
_DEV_FRAMES = (24, 8)
"""Frames a dev-mode backtrace keeps: the innermost and the outermost, so a deep recursion still shows
both where it overflowed and the handler that started it."""


def _dev_backtrace(text: str) -> tuple[str, ...]:
    """All the wasm frames of a failure's message, innermost first, with the middle of a long one elided."""
    # `N: name` as well as `N: 0xOFFSET - name`: wasmtime gives a stack overflow's innermost frame no offset.
    # Rust symbols keep their hash (`echo::echo::h5baf66b5bc636a9d`), and a module without a name of its
    # own is `<unknown>!`: noise to a reader, dropped.
    frames = [_RUST_HASH.sub("", line.strip()).replace(" - <unknown>!", " - ") for line in text.splitlines()
              if _FRAME.match(line)]
    inner, outer = _DEV_FRAMES
    if len(frames) > inner + outer:
        frames[inner:-outer] = [f"... {len(frames) - inner - outer} frames elided ..."]
    return tuple(frames)


def instantiate_once(prepared: Prepared, limits: Limits) -> None:
    """Create a store, apply limits and deadline, instantiate, drop: the isolate cost alone (for bench/)."""
    runtime = prepared.runtime
    ticks = runtime.ticker.ticks_for(limits.timeout)
    if prepared.plan is not None:
        from ._component import instantiate_component

        instantiate_component(prepared.plan, runtime, limits, ticks)
        return
    if runtime.fastpath is not None:
        error, trap = runtime.fastpath.instantiate(runtime.engine_ptr, prepared.pre_ptr, limits.memory, ticks)
    else:
        s = _scratch()
        store = _raw.store_new(runtime.engine_ptr, None, None)
        try:
            ctx = _raw.store_context(store)
            _raw.store_limiter(store, limits.memory, -1, 1, 1, 1)
            _raw.set_epoch_deadline(ctx, ticks)
            error = _raw.instantiate_pre(prepared.pre_ptr, ctx, s.p_instance, s.p_trap)
            trap, s.trap.value = s.trap.value or 0, None
        finally:
            _raw.store_delete(store)
    if error or trap:
        raise _failure(trap, error, _output.Capture(0), limits, "instantiate", None)
