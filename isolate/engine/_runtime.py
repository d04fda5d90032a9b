"""Process-wide engine (pooling allocator, epoch interruption), compilation, and pre-linking."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import resource
import threading
import time
import weakref
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime
import wasmtime.component as wc

from ..config import MAX_STACK_CEILING, MIN_STACK, Config, GiB, MiB
from ..errors import InvalidConfig, InvalidModule, IsolateError
from . import _hostcalls, _native, _raw, _shutdown
from ._budget import MemoryBudget, budget_for
from ._compile_cache import CompileCache
from ._component import ComponentPlan, inspect_component, instantiate_component, is_component
from ._linker import ModuleShape, build_linker, inspect_module
from ._ticker import EpochTicker

WASM_MAGIC = b"\0asm"
_WASMTIME_VERSION = version("wasmtime")  # read once: the metadata lookup takes ~0.1 ms, a restart asks per module

# wasmtime aborts the process when an engine cannot be built (the C API unwraps the error), so
# every setting is checked here first. What it refuses, as measured on wasmtime 50:
#   max_wasm_stack > async_stack_size (2 MiB unless set: the async stack size is set below);
#   pooling max_memory_size > its 4 GiB memory reservation (Config caps max_memory_limit at 4 GiB);
#   a pool whose slots do not fit the address space ("failed to create memory pool mapping"):
#   each slot reserves 4 GiB + a 32 MiB guard whatever the memory limit, and the process has 128 TiB.
SLOT_ADDRESS_SPACE = 4 * GiB + 64 * MiB  # per pooled instance, rounded up from the measured 4 GiB + 32 MiB
_address_lock = threading.Lock()
_address_reserved = 0  # bytes of address space the pools of live engines hold
_collected_at = -1e9  # when `_reserve_address_space` last collected garbage to make room
_COLLECT_EVERY = 1.0

# Compiling takes every core it is given (a 2 MB module of 200k functions pushed /hello's p99 to
# 177 ms under 100 concurrent deploys): compiles run one at a time per spare core, one thread each.
_COMPILE_SLOTS = threading.BoundedSemaphore(max(1, (os.cpu_count() or 1) - 1))


def address_space_budget() -> int:
    """Bytes of address space engine pools may take: half of the process's (RLIMIT_AS or 47 bits)."""
    whole = 1 << 47
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        whole = min(whole, int(soft))
    return whole // 2


def engine_reservation(config: Config) -> int:
    """Bytes of address space one engine's pool of isolates reserves."""
    return config.pool_instances * SLOT_ADDRESS_SPACE


def address_space_free() -> int:
    """Bytes of the engines' address-space budget no live engine holds."""
    with _address_lock:
        return address_space_budget() - _address_reserved


def _reserve_address_space(size: int) -> None:
    global _address_reserved, _collected_at
    budget = address_space_budget()
    for attempt in range(2):
        with _address_lock:
            if _address_reserved + size <= budget:
                _address_reserved += size
                return
        now = time.monotonic()
        if attempt == 0 and now - _collected_at > _COLLECT_EVERY:
            # An engine gives its reservation back when collected: those of closed hosts still in a reference
            # cycle are freed by a collection (made out of the lock, which their finalizers take). At most
            # once a second: a module whose engine cannot be made is asked for again on every request.
            _collected_at = now
            gc.collect()
    raise InvalidConfig(
        f"no address space for another engine: its pool of isolates needs {size >> 30} GiB, "
        f"{_address_reserved >> 30} of {budget >> 30} GiB are held by the engines already built "
        "(one per distinct stack limit, and way of initialising memory, in use); use a stack limit already in "
        "use, or lower pool_instances"
    )


def _release_address_space(size: int) -> None:
    global _address_reserved
    with _address_lock:
        _address_reserved -= size


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """A module ready to instantiate per request: deserialized, checked, and pre-linked once."""

    runtime: Runtime
    digest: str
    module: wasmtime.Module | wc.Component
    pre: wasmtime.InstancePre | None  # None for a component (wasmtime has no InstancePre for them)
    pre_ptr: int
    shape: ModuleShape
    plan: ComponentPlan | None = None
    """A component's linker and handler (engine/_component.py); None for an ABI v1 module."""


class Runtime:
    """Owns a wasmtime engine, its linker and epoch ticker: one per process, wasm stack size and way of
    initialising memory.

    `copies`: for modules whose initial data is copied into each isolate (`_images.copies_data`):
    memory images off, and the pool hands out the slot freed last, whichever module used it (one
    warm slot). Otherwise memory images on, and each module keeps warm slots of its own."""

    def __init__(self, config: Config, stack: int | None = None, copies: bool = False) -> None:
        self.config = config
        self.copies = copies
        self.stack = config.limits.stack if stack is None else stack
        if type(self.stack) is not int or not MIN_STACK <= self.stack <= MAX_STACK_CEILING:
            raise InvalidConfig(f"wasm stack {self.stack!r} is outside {MIN_STACK}..{MAX_STACK_CEILING} bytes")
        wasm_config = wasmtime.Config()
        wasm_config.epoch_interruption = True
        wasm_config.cranelift_opt_level = "speed"
        wasm_config.max_wasm_stack = self.stack
        wasm_config.parallel_compilation = False  # see _COMPILE_SLOTS
        _raw.configure_engine(wasm_config, async_stack=self.stack + _native.HOST_HEADROOM)
        _raw.configure_pooling(
            wasm_config,
            instances=config.pool_instances,
            max_memory_size=config.max_memory_limit,
            # Images: slot affinity, each hot module keeps a warm slot of its own. Copies: a slot serves any
            # module, and with one warm slot the pool reuses the one freed last (warm in the CPU caches).
            warm_slots=1 if copies else config.warm_slots,
            keep_resident=config.keep_resident,
            copy_on_write=not copies,
        )
        reserved = engine_reservation(config)
        _reserve_address_space(reserved)
        try:
            self.engine = wasmtime.Engine(wasm_config)
        except BaseException:
            _release_address_space(reserved)
            raise
        weakref.finalize(self.engine, _release_address_space, reserved)
        _native.ensure_thread_stacks(self.stack)
        self.engine_ptr = _raw.engine_pointer(self.engine)
        self.fastpath: Any = _hostcalls.FASTPATH if config.native else None
        """The native request path (`_fastpath`), or None: the ctypes path in _isolate.py."""
        self.linker = build_linker(self.engine, native=self.fastpath is not None)
        self.ticker = EpochTicker(self.engine, config.epoch_tick, self.fastpath, self.engine_ptr)
        self.fingerprint = self.fingerprint_of(config, self.stack, copies)
        self.budget: MemoryBudget = budget_for(config)
        """Shared by every engine of one Config: guest memory reserved by the isolates running now."""
        self.log_records = config.log_records
        self.compile_cache = CompileCache(Path(config.compile_cache)) if config.compile_cache is not None else None
        """Compiled code shared with other data directories (`Config.compile_cache`), or None."""
        _shutdown.register(self)

    def interrupt(self) -> None:
        """Advance the epoch past every deadline this engine can have set, so running guests stop."""
        for _ in range(self.ticker.ticks_for(self.config.max_timeout) + 1):
            _raw.increment_epoch(self.engine_ptr)

    @staticmethod
    def fingerprint_of(config: Config, stack: int, copies: bool = False) -> str:
        """Identifies compiled code: an artifact from another fingerprint is recompiled, never loaded."""
        settings: dict[str, Any] = {
            "wasmtime": _WASMTIME_VERSION,
            "machine": platform.machine(),
            "opt": "speed",
            "epoch_interruption": True,
            "max_wasm_stack": stack,
            "pooling_max_memory": config.max_memory_limit,
        }
        if copies:  # compiled without memory images (kept out of the images' key: their artifacts stay valid)
            settings["memory_init_cow"] = False
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def compile(self, wasm: bytes) -> tuple[wasmtime.Module | wc.Component, ModuleShape, float]:
        """Validate, compile and check `wasm` (an ABI v1 module or a wasi:http component); returns
        the compile time in seconds (the load time when the compile cache had it)."""
        if len(wasm) < 8 or wasm[:4] != WASM_MAGIC:
            raise InvalidModule("not a WebAssembly binary: missing the \\0asm magic number")
        component = is_component(wasm)
        if not component and wasm[4:8] != b"\x01\x00\x00\x00":
            raise InvalidModule(
                f"unknown WebAssembly binary version {wasm[4:8].hex()}: expected a core module (01000000) or a "
                "component (0d000100)"
            )
        cache, digest = self.compile_cache, ""
        if cache is not None:
            started = time.perf_counter()
            digest = hashlib.sha256(wasm).hexdigest()
            cached = cache.load(self.engine, digest, self.fingerprint, component)
            if cached is not None:  # the same bytes were validated and compiled by this wasmtime and engine
                return cached, self.inspect(cached), time.perf_counter() - started
        with _COMPILE_SLOTS:
            started = time.perf_counter()
            try:
                code = wc.Component(self.engine, wasm) if component else wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                what = "component" if component else "WebAssembly"
                raise InvalidModule(f"invalid {what}: {_first_line(exc)}") from None
            finally:
                elapsed = time.perf_counter() - started
                # The compiler's heap peaks at hundreds of times the module (1.6 MB of wasm: 1.1 GB)
                # and glibc would keep it all: RSS stayed at 1 GB after the compile without this.
                _native.trim_heap()
        shape = self.inspect(code)  # checked first: only code this host accepts is cached
        if cache is not None:
            cache.store(digest, self.fingerprint, code)
        return code, shape, elapsed

    def inspect(self, code: wasmtime.Module | wc.Component) -> ModuleShape:
        if isinstance(code, wc.Component):
            shape = inspect_component(code, self.engine)
            # Every component imports poll, which waits only for a timer: one that did is known to wait
            # once it has run (Host marks it); one that can call out may wait from the start.
            return ModuleShape(abi_version=0, uses_wasi=False, has_initialize=False, memory_min=0,
                               may_block=shape.uses_io, uses_io=shape.uses_io, kind="component")
        return inspect_module(code)

    def serialize(self, module: wasmtime.Module | wc.Component) -> bytes:
        try:
            return bytes(module.serialize())
        finally:
            _native.trim_heap()

    def load(self, artifact: Path) -> wasmtime.Module | wc.Component:
        """Map a precompiled artifact; callers must have verified it was written by this host."""
        try:
            return wasmtime.Module.deserialize_file(self.engine, str(artifact))
        except wasmtime.WasmtimeError:  # a component's artifact
            return wc.Component.deserialize_file(self.engine, str(artifact))

    def prepare(self, digest: str, module: wasmtime.Module | wc.Component,
                shape: ModuleShape | None = None) -> Prepared:
        """Resolve imports once so each request only instantiates."""
        if isinstance(module, wc.Component):
            plan = ComponentPlan(self.engine, module, inspect_component(module, self.engine))
            # Instantiated once here: an import of the wrong kind, or a start function that fails, is a deploy
            # error, not a failure of every request (wasmtime checks kinds and resource types only then).
            try:
                instantiate_component(plan, self, self.config.limits, self.ticker.ticks_for(1.0))
            except IsolateError as exc:
                raise InvalidModule(f"component cannot be instantiated: {exc.detail}") from None
            return Prepared(self, digest, module, None, 0, shape or self.inspect(module), plan)
        shape = shape or inspect_module(module)
        try:
            pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"cannot link module: {_first_line(exc)}") from None
        return Prepared(self, digest, module, pre, _raw.instance_pre_pointer(pre), shape)

    def close(self) -> None:
        self.ticker.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(line.strip() for line in text.splitlines()[:4] if line.strip())


def wat_to_wasm(text: str) -> bytes:
    """Compile WebAssembly text to a binary (for `.wat` samples and user files)."""
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as exc:
        raise InvalidModule(f"invalid WebAssembly text: {_first_line(exc)}") from None
