"""isolate: an edge-style WebAssembly runtime that runs every request in a fresh, limited isolate."""

from .abi import ABI_VERSION, LogRecord, Request, Response
from .cache import CacheStatistics
from .config import Config, Limits, ServerConfig
from .errors import (
    AbiViolation,
    GuestError,
    InvalidConfig,
    InvalidModule,
    InvalidName,
    InvalidRequest,
    IsolateError,
    MemoryLimit,
    ModuleTooLarge,
    NotFound,
    Overloaded,
    ResponseTooLarge,
    StackOverflow,
    StorageError,
    Timeout,
    Trap,
)
from .host import Host, HostStatistics, ModuleInfo, VersionInfo
from .registry import NAME_PATTERN

__version__ = "0.1.0"

__all__ = [
    "ABI_VERSION",
    "NAME_PATTERN",
    "AbiViolation",
    "CacheStatistics",
    "Config",
    "GuestError",
    "Host",
    "HostStatistics",
    "InvalidConfig",
    "InvalidModule",
    "InvalidName",
    "InvalidRequest",
    "IsolateError",
    "Limits",
    "LogRecord",
    "MemoryLimit",
    "ModuleInfo",
    "ModuleTooLarge",
    "NotFound",
    "Overloaded",
    "Request",
    "Response",
    "ResponseTooLarge",
    "ServerConfig",
    "StackOverflow",
    "StorageError",
    "Timeout",
    "Trap",
    "VersionInfo",
]
