"""Process-wide engine (pooling allocator, epoch interruption), compilation, and pre-linking."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import wasmtime

from ..config import Config
from ..errors import InvalidModule
from . import _raw
from ._linker import ModuleShape, build_linker, inspect_module
from ._ticker import EpochTicker

WASM_MAGIC = b"\0asm"


@dataclass(frozen=True, slots=True, eq=False)
class Prepared:
    """A module ready to instantiate per request: deserialized, checked, and pre-linked once."""

    runtime: Runtime
    digest: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    pre_ptr: int
    shape: ModuleShape


class Runtime:
    """Owns a wasmtime engine, its linker and epoch ticker: one per process and wasm stack size."""

    def __init__(self, config: Config, stack: int | None = None) -> None:
        self.config = config
        self.stack = config.limits.stack if stack is None else stack
        wasm_config = wasmtime.Config()
        wasm_config.epoch_interruption = True
        wasm_config.cranelift_opt_level = "speed"
        wasm_config.max_wasm_stack = self.stack
        _raw.configure_pooling(
            wasm_config,
            instances=config.pool_instances,
            max_memory_size=config.max_memory_limit,
            warm_slots=config.pool_instances,  # slot affinity: each module keeps a warm slot of its own
            keep_resident=config.keep_resident,
        )
        self.engine = wasmtime.Engine(wasm_config)
        self.engine_ptr = _raw.engine_pointer(self.engine)
        self.linker = build_linker(self.engine)
        self.ticker = EpochTicker(self.engine, config.epoch_tick)
        self.fingerprint = self._fingerprint(config, self.stack)

    @staticmethod
    def _fingerprint(config: Config, stack: int) -> str:
        """Identifies compiled code: an artifact from another fingerprint is recompiled, never loaded."""
        settings = {
            "wasmtime": version("wasmtime"),
            "machine": platform.machine(),
            "opt": "speed",
            "epoch_interruption": True,
            "max_wasm_stack": stack,
            "pooling_max_memory": config.max_memory_limit,
        }
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def compile(self, wasm: bytes) -> tuple[wasmtime.Module, ModuleShape, float]:
        """Validate, compile and check `wasm` against ABI v1; returns the compile time in seconds."""
        if len(wasm) < 8 or wasm[:4] != WASM_MAGIC:
            raise InvalidModule("not a WebAssembly binary: missing the \\0asm magic number")
        if wasm[4:8] != b"\x01\x00\x00\x00":
            raise InvalidModule(
                "not a core WebAssembly module (version field is not 1); components are not supported by ABI v1"
            )
        started = time.perf_counter()
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidModule(f"invalid WebAssembly: {_first_line(exc)}") from None
        elapsed = time.perf_counter() - started
        return module, inspect_module(module), elapsed

    def serialize(self, module: wasmtime.Module) -> bytes:
        return bytes(module.serialize())

    def load(self, artifact: Path) -> wasmtime.Module:
        """Map a precompiled artifact; callers must have verified it was written by this host."""
        return wasmtime.Module.deserialize_file(self.engine, str(artifact))

    def prepare(self, digest: str, module: wasmtime.Module, shape: ModuleShape | None = None) -> Prepared:
        """Resolve imports once so each request only instantiates."""
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
