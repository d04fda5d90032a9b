"""The only package that imports wasmtime: engine, linker, host functions and per-request isolates."""

from ._isolate import Outcome, instantiate_once, run
from ._linker import HOST_FUNCTIONS, WASI_NAMESPACE, ModuleShape
from ._runtime import Prepared, Runtime, wat_to_wasm

__all__ = [
    "HOST_FUNCTIONS",
    "WASI_NAMESPACE",
    "ModuleShape",
    "Outcome",
    "Prepared",
    "Runtime",
    "instantiate_once",
    "run",
    "wat_to_wasm",
]
