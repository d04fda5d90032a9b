"""The only package that imports wasmtime: engine, linker, host functions and per-request isolates."""

from ._budget import MemoryBudget, MemoryBudgetStatistics
from ._component import is_component, run_component
from ._hostcalls import construct
from ._images import copies_data
from ._isolate import Outcome, instantiate_once, run
from ._linker import BLOCKING_IMPORTS, HOST_FUNCTIONS, WASI_NAMESPACE, ModuleShape
from ._runtime import Prepared, Runtime, address_space_free, engine_reservation, wat_to_wasm
from ._shutdown import is_stopping, resume, shutdown

__all__ = [
    "is_stopping",
    "BLOCKING_IMPORTS",
    "address_space_free",
    "engine_reservation",
    "HOST_FUNCTIONS",
    "WASI_NAMESPACE",
    "construct",
    "copies_data",
    "MemoryBudget",
    "MemoryBudgetStatistics",
    "ModuleShape",
    "Outcome",
    "Prepared",
    "Runtime",
    "instantiate_once",
    "is_component",
    "resume",
    "run",
    "run_component",
    "shutdown",
    "wat_to_wasm",
]
