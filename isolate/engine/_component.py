"""wasi:http components beside ABI v1 modules: detect, check, link and run one per request.

A component (binary layer 1, version 0x0d) is accepted wherever a core module is. At deploy it must
export `wasi:http/incoming-handler@0.2.x` and import only what the host gives: the interfaces that
`_wasi_http.INTERFACES` implements (http types and outgoing-handler, io, cli, clocks, random) under
any 0.2.x version, and the other standard WASI 0.2 interfaces (filesystem, sockets, ...), which are
defined as traps: toolchains import them whether or not the guest uses them. Anything else is refused
by name.

Each component gets a linker of its own that defines exactly the versions it imports; wasmtime has no
InstancePre for components, so every request instantiates through that linker in a fresh store
(`_components.run`, the native bridge), with the same memory limit, epoch deadline and memory budget
as a module, and failures go through the one translator of `_isolate`.
"""

from __future__ import annotations

import ctypes
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
import wasmtime.component as wc

from ..abi import LogRecord, Request, check_headers
from ..config import Limits
from ..errors import AbiViolation, GuestError, InvalidModule, IsolateError, MemoryLimit, Trap
from . import _output, _shutdown
from ._isolate import _failure_from, _over_budget, _stopped

COMPONENT_VERSION = b"\x0d\x00\x01\x00"
"""Bytes 4..8 of a component binary (version 0xd, layer 1); a core module has 01 00 00 00."""
HANDLER = "wasi:http/incoming-handler"
OUTGOING = "wasi:http/outgoing-handler"
# A pre-release (`@0.2.0-rc-...`) is not 0.2.x: its interfaces differ, so it does not match.
_NAME = re.compile(r"(?P<base>[a-z][a-z0-9-]*:[a-z][a-z0-9-]*/[a-z][a-z0-9-]*)@(?P<version>\d+\.\d+\.\d+)")
_SUPPORTED = re.compile(r"0\.2\.\d+")
TRAPPED_INTERFACES = frozenset({
    "wasi:filesystem/types", "wasi:filesystem/preopens",
    "wasi:sockets/network", "wasi:sockets/instance-network", "wasi:sockets/udp", "wasi:sockets/udp-create-socket",
    "wasi:sockets/tcp", "wasi:sockets/tcp-create-socket", "wasi:sockets/ip-name-lookup",
    "wasi:cli/run",
})
"""Standard WASI 0.2 interfaces a guest may import but not use here: every call traps."""
# What a guest's runtime writes to stderr when its allocator cannot grow memory (wasmtime's C API
# offers no trap on a failed memory.grow, and a component's memories are not visible to the host).
_log = logging.getLogger("isolate.engine")
_FAILED_CALL = re.compile(r"host function (\S+) failed")
_HOSTCALL_DATA = "fuel allocated for hostcalls has been exhausted"
_UNCAUGHT = ("Error while running request handler:",)  # StarlingMonkey, before its own 500
_OUT_OF_MEMORY = ("MemoryError", "out of memory", "memory allocation of", "allocation failed")


def is_component(wasm: bytes) -> bool:
    """Whether `wasm` is a component binary (by its header), as opposed to a core module."""
    return len(wasm) >= 8 and wasm[:4] == b"\0asm" and wasm[4:8] == COMPONENT_VERSION


@dataclass(frozen=True, slots=True)
class ComponentShape:
    """What the deploy-time check learned about a component."""

    handler: str  # the exported incoming-handler instance, e.g. "wasi:http/incoming-handler@0.2.3"
    implemented: tuple[str, ...]  # imports the host implements, by their full versioned name
    trapped: tuple[str, ...]  # imports defined as traps
    uses_io: bool  # imports wasi:http/outgoing-handler


def _bridge() -> Any:
    from ._component_bridge import BRIDGE, UNAVAILABLE

    if BRIDGE is None:
        raise InvalidModule(f"components cannot run on this host: {UNAVAILABLE}")
    return BRIDGE


def _interfaces() -> dict[str, Any]:
    from ._wasi_http import INTERFACES

    return INTERFACES


def inspect_component(component: wc.Component, engine: wasmtime.Engine) -> ComponentShape:
    """Check a component's exports and imports against what the host provides; name the first problem."""
    provided = _interfaces()
    ty = component.type
    implemented, trapped = [], []
    for name in ty.imports(engine):
        match = _NAME.fullmatch(name)
        if match is None or not _SUPPORTED.fullmatch(match["version"]):
            raise _unsupported(name)
        if match["base"] in provided:
            implemented.append(name)
        elif match["base"] in TRAPPED_INTERFACES:
            trapped.append(name)
        else:
            raise _unsupported(name)
    handler = None
    for name in ty.exports(engine):
        match = _NAME.fullmatch(name)
        if match and match["base"] == HANDLER and _SUPPORTED.fullmatch(match["version"]):
            handler = name
            break
    if handler is None:
        exports = ", ".join(sorted(ty.exports(engine))) or "nothing"
        raise InvalidModule(f"component does not export {HANDLER}@0.2.x (it exports {exports}): this host "
                            "runs wasi:http proxy components", problems=[f"missing export {HANDLER}@0.2.x"])
    _check_handle(handler, ty.exports(engine)[handler].ty, engine)
    return ComponentShape(handler, tuple(implemented), tuple(trapped),
                          any(name.startswith(OUTGOING + "@") for name in implemented))


def _check_handle(handler: str, instance: Any, engine: wasmtime.Engine) -> None:
    """`handle` must be `func(request: own<incoming-request>, response-out: own<response-outparam>)`:
    a guest declaring another signature would fail every request at the call instead of at deploy."""
    handle = instance.exports(engine).get("handle") if isinstance(instance, wc.ComponentInstanceType) else None
    func = handle.ty if handle is not None else None
    if not (isinstance(func, wc.FuncType) and func.result is None and len(func.params) == 2
            and all(isinstance(ty, wc.OwnType) for _, ty in func.params)):
        raise InvalidModule(f"component export {handler} must have a function `handle(request: own<incoming-request>, "
                            "response-out: own<response-outparam>)` with no result",
                            problems=[f"bad export {handler}#handle"])


def _unsupported(name: str) -> InvalidModule:
    return InvalidModule(
        f"component imports {name}, which this host does not provide: it provides wasi:http/types, "
        "wasi:http/outgoing-handler, wasi:io, wasi:cli, wasi:clocks and wasi:random at 0.2.x",
        problems=[f"unsupported import {name}"], unsupported_import=name)


def _address(obj: Any) -> int:
    return ctypes.cast(obj.ptr(), ctypes.c_void_p).value or 0


class ComponentPlan:
    """A component linked once for its requests: its own linker and the handler's export index."""

    __slots__ = ("component", "linker", "shape", "linker_ptr", "component_ptr", "export_index", "__weakref__")

    def __init__(self, engine: wasmtime.Engine, component: wc.Component, shape: ComponentShape) -> None:
        bridge = _bridge()
        provided = _interfaces()
        self.component = component
        self.shape = shape
        self.linker = linker = wc.Linker(engine)
        try:
            with linker.root() as root:
                for name in shape.implemented:
                    match = _NAME.fullmatch(name)
                    assert match is not None
                    with root.add_instance(name) as instance:
                        provided[match["base"]](_address(instance))
            linker.define_unknown_imports_as_traps(component)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"cannot link component: {_first(str(exc))}") from None
        self.linker_ptr = _address(linker)
        self.component_ptr = _address(component)
        self.export_index = bridge.export_index(self.component_ptr, shape.handler, "handle")
        if not self.export_index:
            raise InvalidModule(f"component export {shape.handler} has no function `handle`")
        # Bound now: a finalizer that imported the bridge during interpreter teardown crashed there.
        weakref.finalize(self, bridge.free_export_index, self.export_index)


def _first(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def run_component(runtime: Any, plan: ComponentPlan, request: Request, environment: list[tuple[str, str]],
                  limits: Limits, log_limit: int, io: Any = None, waited: Callable[[], None] | None = None
                  ) -> tuple[int, tuple[tuple[str, str], ...], bytes, tuple[LogRecord, ...], float, float, int]:
    """Serve `request` with a fresh instance of the component: (status, headers, body, logs,
    instantiate µs, run µs, memory bytes). `waited` is called if the guest waited in the host (a
    timer, an outbound call): whether a component waits shows only when it runs."""
    from ._wasi_http import Exchange

    bridge = _bridge()
    budget = runtime.budget
    reserved = limits.memory
    if not budget.reserve(reserved):
        raise _over_budget(reserved, budget.in_use, budget.total)
    capture = _output.Capture(log_limit, runtime.log_records)
    exchange = None
    try:
        started = time.perf_counter()
        deadline = started + limits.timeout
        capture.wait_bounds(started, deadline)
        if io is not None:
            io.note = capture.note
        authority = ""
        headers = []
        for key, value in request.headers:
            if key == "host" and not authority:
                authority = value
            headers.append((key, value.encode("latin-1")))
        # wasmtime serve takes the authority from the request; a request without a Host header (HTTP/1.0,
        # `Host.invoke` in-process) still needs one, or guests cannot build their request URL.
        authority = authority or "localhost"
        target = request.path + ("?" + request.query if request.query else "")
        exchange = Exchange(method=request.method, scheme="http", authority=authority, path_with_query=target,
                            headers=headers, body=request.body, environment=environment, capture=capture,
                            deadline=deadline, io=io, response_limit=limits.response_size)
        ticks = runtime.ticker.ticks_for(limits.timeout)
        if _shutdown.stopping:
            raise _stopped("instantiate")
        status, message, instantiate_ns, run_ns = bridge.run(
            runtime.engine_ptr, plan.linker_ptr, plan.component_ptr, plan.export_index, exchange, limits.memory,
            ticks, exchange.handler_args())
        exchange.flush_output()  # the last line a guest wrote without a newline (e.g. before it trapped)
        error = _failure_of_run(status, message, exchange, capture, limits)
        if error is not None:
            raise error
        try:
            response = exchange.response
        except Exception:  # the guest handed the host a resource of another kind where a response goes
            _log.warning("component response unreadable", exc_info=True)
            raise AbiViolation("component set a response the host cannot read", phase="handle") from None
        if response is None:
            raise AbiViolation(_no_response(exchange), phase="handle")
        code, raw_headers, body = response
        if code == 500 and not body:
            caught = _caught_failure(capture, limits)
            if caught is not None:
                raise caught
        if not 200 <= code <= 599:
            raise AbiViolation(f"response status must be in 200-599, got {code}", field="status")
        out_headers = check_headers(raw_headers)
    except GuestError as exc:
        exc.logs = capture.finish()
        raise
    finally:
        budget.release(reserved)
        if waited is not None and exchange is not None and exchange.waited:
            waited()
    return code, out_headers, bytes(body), capture.finish(), instantiate_ns / 1000, run_ns / 1000, 0


def _no_response(exchange: Any) -> str:
    failed = getattr(exchange, "response_error", None)
    if failed is not None:
        return f"component answered with error-code {failed!r} instead of a response"
    return "component returned without setting a response (response-outparam.set was not called)"


def _failure_of_run(status: int, message: str | None, exchange: Any, capture: _output.Capture,
                    limits: Limits) -> IsolateError | None:
    """The error for a run that failed, or None: host-function errors first, then the trap."""
    if status == 0 and exchange.error is None and not getattr(capture, "interrupted", None):
        return None
    phase = "instantiate" if status == 1 else "handle"
    error = exchange.error
    if isinstance(error, IsolateError) and not getattr(capture, "interrupted", None):
        if isinstance(error, GuestError):
            error.extra.setdefault("phase", phase)
        return error
    exit_code = getattr(error, "exit_code", None)
    if exit_code is not None:  # wasi:cli/exit
        return Trap(f"guest called exit({'ok' if exit_code == 0 else 'err'})", trap_code="exit",
                    exit_code=exit_code, phase=phase)
    if error is not None and not getattr(capture, "interrupted", None):
        # The guest declares the types of the host functions it imports; one that declared other types than
        # WASI's gets values the host cannot convert. The detail goes to the host log, not to the client.
        called = _FAILED_CALL.search(message or "")
        name = called.group(1) if called else "a host function"
        _log.warning("component call to %s failed", name, exc_info=error)
        return AbiViolation(f"guest's call to {name} failed: its import does not match the WASI signature",
                            phase=phase)
    if status == 3:
        return AbiViolation("component export `handle` is not a function", phase=phase)
    text = message or ""
    if _HOSTCALL_DATA in text:
        return AbiViolation("guest copied more data between itself and the host in one call than wasmtime allows",
                            limit="hostcall_data", phase=phase)
    translated = _failure_from(text, capture, limits, phase, None)
    if type(translated) is Trap and _out_of_memory(capture):
        return MemoryLimit(f"guest ran out of memory under its limit of {limits.memory} bytes "
                           f"({translated.detail.removeprefix('guest trapped: ')})",
                           limit="memory", memory_limit=limits.memory, phase=phase)
    return translated


def _caught_failure(capture: _output.Capture, limits: Limits) -> GuestError | None:
    """The failure behind an empty 500 that the guest's runtime answered itself after reporting an
    uncaught error on stderr (StarlingMonkey, componentize-js's engine, does so for a `throw` and for
    out of memory, where CPython traps): the same diagnostic as a guest that trapped."""
    if not any(record.stream == "stderr" and record.message.startswith(_UNCAUGHT)
               for record in capture.records[-8:]):
        return None
    if _out_of_memory(capture):
        return MemoryLimit(f"guest ran out of memory under its limit of {limits.memory} bytes (its runtime "
                           "caught the failed allocation and answered 500)", limit="memory",
                           memory_limit=limits.memory, phase="handle")
    return Trap("guest threw an uncaught exception (its runtime caught it and answered 500; the message is in "
                "the guest's log)", trap_code="uncaught_exception", phase="handle")


def _out_of_memory(capture: _output.Capture) -> bool:
    """Whether the guest's runtime said, on stderr, that an allocation failed before it trapped."""
    for record in capture.records[-8:]:
        if record.stream == "stderr" and any(text in record.message for text in _OUT_OF_MEMORY):
            return True
    return False


def instantiate_component(plan: ComponentPlan, runtime: Any, limits: Limits, ticks: int) -> None:
    """Create a store, apply limits and deadline, instantiate the component, drop (the deploy's trial, bench/)."""
    from ._wasi_http import Exchange

    capture = _output.Capture(0)
    started = time.perf_counter()
    capture.wait_bounds(started, started + limits.timeout)
    # What a start function may call finds a request, as at a request: an empty GET /.
    state = Exchange(method="GET", scheme="http", authority="localhost", path_with_query="/", headers=[], body=b"",
                     environment=[], capture=capture, deadline=started + limits.timeout, io=None,
                     response_limit=limits.response_size)
    status, message, _, _ = _bridge().run(runtime.engine_ptr, plan.linker_ptr, plan.component_ptr, 0, state,
                                          limits.memory, ticks, ())
    if status != 0:
        raise _failure_from(message or "", capture, limits, "instantiate", None)
