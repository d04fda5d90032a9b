"""Configuration as values: `Config` for the host, `Limits` for one request, and the defaults."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InvalidConfig
from .routing import validate_region

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_MEMORY_LIMIT = 128 * MiB
DEFAULT_TIMEOUT = 0.100  # seconds of wall time per request, enforced by epoch interruption
DEFAULT_RESPONSE_LIMIT = 10 * MiB
DEFAULT_MAX_MODULE_SIZE = 64 * MiB
DEFAULT_STACK_LIMIT = 512 * KiB  # wasmtime's own default
DEFAULT_MAX_STACK_LIMIT = 4 * MiB  # stays well inside the 8 MiB native stack of the calling thread
DEFAULT_EPOCH_TICK = 0.005  # seconds; a timeout fires within one tick after it is due
# Concurrent isolates the pooling allocator reserves: twice Spin's 1,000, so that each module the module cache
# keeps hot (1,024) keeps a warm slot of its own. With 1,000 slots, 1,000 tenants took other modules' slots on
# every other request (an mmap each: 22.6 µs per invoke against 14.5 µs with 2,000).
DEFAULT_POOL_INSTANCES = 2000
DEFAULT_MAX_MEMORY_LIMIT = 1 * GiB  # the largest per-module memory override accepted
DEFAULT_MAX_TIMEOUT = 60.0
# The encoded response is copied out of the guest, decoded and sent: about three copies live at
# once, so 64 MiB keeps one request's peak near 200 MB (a 200 MB answer once took 380 MB of RSS).
DEFAULT_MAX_RESPONSE_SIZE = 64 * MiB
DEFAULT_MODULE_CACHE_SIZE = 1024  # pre-linked modules kept hot (1,000 tenants fit)
DEFAULT_LOG_LIMIT = 64 * KiB  # guest log bytes kept per request (stdout + stderr + log calls)
DEFAULT_LOG_RECORDS = 256  # guest log records kept per request: each becomes a log line
DEFAULT_KEEP_RESIDENT = 1 * MiB  # per pooled slot: reset by memset, not madvise (measured: 22 -> 16 µs invoke)
DEFAULT_GUEST_CACHE_ENTRIES = 100_000  # guest cache (cache_get/cache_put), all modules together
DEFAULT_GUEST_CACHE_BYTES = 64 * MiB
DEFAULT_OUTBOUND_REQUESTS = 16  # outbound HTTP calls per incoming request
DEFAULT_OUTBOUND_RESPONSE_SIZE = 10 * MiB  # body bytes of one outbound answer
DEFAULT_OUTBOUND_TIMEOUT = 10.0  # seconds per outbound call (the module's timeout still bounds the request)
DEFAULT_KV_OPERATIONS = 1000  # key-value calls per request
DEFAULT_KV_STORE_SIZE = 1 * GiB  # bytes of keys and values per key-value store
DEFAULT_GUEST_CACHE_MODULE_SHARE = 0.25  # of each guest cache bound, the most one module may hold

# Hard ceilings, checked before any engine exists: wasmtime aborts the process (its C API does not
# return the error) on engine settings it cannot honour, and some values would exhaust the machine.
MIN_STACK = 64 * KiB  # the smallest wasm stack limit a module may have
MAX_STACK_CEILING = 4 * MiB  # the calling thread's native stack must hold it plus host frames
MAX_MEMORY_CEILING = 4 * GiB  # a 32-bit memory's whole range; wasmtime's pooling slot reservation
MAX_POOL_INSTANCES = 10_000  # each pooled slot reserves ~4 GiB of address space: 40 TiB of 128
MAX_KEEP_RESIDENT = 64 * MiB  # per slot, faulted in and memset on every reuse: 4 GiB took 8 s per request
MIN_EPOCH_TICK = 0.001  # a faster ticker thread would spend a core waking up
MAX_TIMEOUT_CEILING = 3600.0  # shutdown() advances every epoch past the longest deadline, tick by tick
MAX_RESPONSE_CEILING = 4 * GiB - 1  # a response is a (ptr, len) pair of u32 into guest memory
MAX_COUNT = 1 << 32  # entries, records, cache sizes: anything beyond is a typo, not a plan


def default_memory_budget() -> int:
    """Half of the memory this process can use (the cgroup limit or physical RAM), at least 1 GiB.

    Guests may only reserve memory that exists: 8 guests touching 500 MiB each once took RSS to
    3.7 GB. Half leaves room for the host itself, its caches and compiled code.
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        total = 8 * GiB
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return max(1 * GiB, total // 2 // (64 * KiB) * (64 * KiB))


DEFAULT_DATA_DIR = Path(".isolate")

DEFAULT_EDGE_PORT = 8787
DEFAULT_ADMIN_PORT = 8788
DEFAULT_MAX_BODY_SIZE = 10 * MiB
DEFAULT_MAX_URL_LENGTH = 16 * KiB
DEFAULT_MAX_HEADER_SIZE = 128 * KiB  # request header fields, as Cloudflare (431 beyond)
DEFAULT_HEAD_TIMEOUT = 10.0  # seconds a connection has to send a whole request head (408 or closed beyond)
DEFAULT_MAX_CONNECTIONS = 10_000  # open edge connections; lowered at start-up to fit the open-file limit
DEFAULT_ADMIN_MAX_CONNECTIONS = 64  # open admin connections, counted apart so an edge flood cannot lock it out
DEFAULT_FD_RESERVE = 256  # descriptors kept from client connections (data dir, logs, forwards), + 1 per hot module
DEFAULT_IO_THREADS = 256  # threads for guests that wait on I/O: made on demand, each mostly asleep
DEFAULT_QUEUE_LIMIT = 64  # guests waiting for a worker thread before requests get 503
DEFAULT_INLINE_MAX_TIMEOUT = 0.100  # seconds: modules allowed a longer run never run on the event loop
DEFAULT_INLINE_THRESHOLD = 0.001  # seconds: guests consistently faster run on the event loop
DEFAULT_REGION = "local"  # the local node's region when no region table says otherwise
DEFAULT_CACHE_ENTRIES = 10_000  # response cache
DEFAULT_CACHE_BYTES = 64 * MiB
DEFAULT_HEALTH_INTERVAL = 1.0  # seconds between health checks of each remote node
DEFAULT_HEALTH_TIMEOUT = 0.5  # seconds a node has to answer a health check

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": KiB, "mib": MiB, "gib": GiB}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "us": 0.000001, "µs": 0.000001}
_QUANTITY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zµ]*)\s*", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "64MiB", "512 KiB", "10MB", "4096"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _QUANTITY.fullmatch(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise InvalidConfig(f"not a size: {value!r} (use bytes or a unit: KiB, MiB, GiB, KB, MB, GB)")
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(size):
        raise InvalidConfig(f"not a size: {value!r} (too large)")
    if size != int(size):  # 1.5 bytes: refuse rather than silently truncate
        raise InvalidConfig(f"not a size: {value!r} (not a whole number of bytes)")
    return int(size)


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number or a string such as "200ms", "1.5s", "250us"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise InvalidConfig(f"not a duration: {_show(value)} (too large)") from None
    match = _QUANTITY.fullmatch(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _TIME_UNITS:
        raise InvalidConfig(f"not a duration: {value!r} (use seconds or a unit: s, ms, us)")
    seconds = float(match.group(1)) * _TIME_UNITS[unit]
    if not math.isfinite(seconds):
        raise InvalidConfig(f"not a duration: {value!r} (too large)")
    return seconds


def parse_count(value: int | str) -> int:
    """A whole number from an int or its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not text.isdigit() or len(text) > 18:
        raise InvalidConfig(f"not a count: {value!r} (use a whole number)")
    return int(text)


def parse_workers(value: int | str) -> int:
    """A worker-process count: a whole number from 1, or `auto` for one per core (uvicorn's convention)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise InvalidConfig(f"workers must be a whole number or 'auto', got {value!r}") from None
    if not 1 <= count <= 1024:
        raise InvalidConfig(f"workers must be within 1-1024 or 'auto', got {count}")
    return count


def parse_bool(value: bool | str) -> bool:
    """A switch from a bool or its text: 1/true/yes/on or 0/false/no/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidConfig(f"not a switch: {value!r} (use true or false)")


LIMIT_PARSERS: dict[str, Any] = {
    "memory": parse_size,
    "timeout": parse_duration,
    "response_size": parse_size,
    "stack": parse_size,
    "outbound_requests": parse_count,
    "outbound_response_size": parse_size,
    "outbound_timeout": parse_duration,
    "kv_operations": parse_count,
}
"""How each limit is read from text (CLI flags, query parameters, manifests)."""


def parse_limits(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Limit overrides from text or numbers, keyed by limit name; unknown names are an error."""
    unknown = set(raw) - set(LIMIT_PARSERS)
    if unknown:
        raise InvalidConfig(f"unknown limit(s): {', '.join(sorted(unknown))}; known: {', '.join(LIMIT_PARSERS)}")
    return {key: LIMIT_PARSERS[key](value) for key, value in raw.items()}


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # Any int is finite (and compares with float ceilings exactly); math.isfinite would overflow on a huge one.
    return isinstance(value, int) or math.isfinite(value)


def _show(value: Any) -> str:
    """`repr`, except for integers too long to print (Python refuses over 4,300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return repr(value)


def _check_int(where: str, value: Any, low: int, high: int) -> None:
    """`value` must be an int (not a bool) within [low, high]: stored JSON may hold anything."""
    if not _integer(value):
        raise InvalidConfig(f"{where} must be an integer, got {_show(value)}")
    _check_range(where, value, low, high)


def _check_number(where: str, value: Any, low: float, high: float, *, open_low: bool = False) -> None:
    if not _number(value):
        raise InvalidConfig(f"{where} must be a finite number, got {_show(value)}")
    if open_low and not low < value:
        raise InvalidConfig(f"{where} must be above {low}, got {value!r}")
    _check_range(where, value, low, high)


def _check_range(where: str, value: float, low: float, high: float) -> None:
    if value < low:
        raise InvalidConfig(f"{where} must be at least {low}, got {_show(value)}")
    if value > high:
        raise InvalidConfig(f"{where} {_show(value)} exceeds the host maximum {high}")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Hard limits applied to every request of a module; per-module overrides replace fields.

    Each field is checked for its type and against the hard ceilings here; `Config.check_limits`
    then holds it to the host's own (lower) maximums.
    """

    memory: int = DEFAULT_MEMORY_LIMIT
    """Bytes of linear memory the guest may have, declared or grown."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds of wall time from instantiation until the response is read back, host calls included."""
    response_size: int = DEFAULT_RESPONSE_LIMIT
    """Bytes of the encoded response envelope the guest may hand back."""
    stack: int = DEFAULT_STACK_LIMIT
    """Bytes of wasm stack; each distinct value gets its own engine, since wasmtime fixes it per engine."""
    outbound_requests: int = DEFAULT_OUTBOUND_REQUESTS
    """Outbound HTTP calls (`http_send`) one request may make."""
    outbound_response_size: int = DEFAULT_OUTBOUND_RESPONSE_SIZE
    """Body bytes one outbound answer may have."""
    outbound_timeout: float = DEFAULT_OUTBOUND_TIMEOUT
    """Seconds one outbound call may take; `timeout` bounds the whole request, calls included."""
    kv_operations: int = DEFAULT_KV_OPERATIONS
    """Key-value calls one request may make."""

    def __post_init__(self) -> None:
        _check_int("limits.memory", self.memory, 64 * KiB, MAX_MEMORY_CEILING)
        _check_number("limits.timeout", self.timeout, 0.0, MAX_TIMEOUT_CEILING, open_low=True)
        object.__setattr__(self, "timeout", float(self.timeout))
        _check_int("limits.response_size", self.response_size, 16, MAX_RESPONSE_CEILING)
        _check_int("limits.stack", self.stack, MIN_STACK, MAX_STACK_CEILING)
        _check_int("limits.outbound_requests", self.outbound_requests, 0, 1000)
        _check_int("limits.outbound_response_size", self.outbound_response_size, 0, MAX_RESPONSE_CEILING)
        _check_number("limits.outbound_timeout", self.outbound_timeout, 0.0, MAX_TIMEOUT_CEILING, open_low=True)
        object.__setattr__(self, "outbound_timeout", float(self.outbound_timeout))
        _check_int("limits.kv_operations", self.kv_operations, 0, 1_000_000)

    def merged(self, overrides: Mapping[str, Any] | None) -> Limits:
        """These limits with the fields named in `overrides` replaced (unknown names are an error)."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise InvalidConfig(f"limits must be a mapping, got {type(overrides).__name__}")
        known = {f.name for f in fields(self)}
        unknown = {str(name) for name in overrides} - known
        if unknown:
            raise InvalidConfig(f"unknown limit(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return replace(self, **dict(overrides))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a `Host` needs; fields mirror the CLI flags and `ISOLATE_*` variables.

    Every field is validated here, types included, before any engine is built: wasmtime aborts the
    process on settings it cannot honour, so nothing that passes these checks may reach it unchecked.
    """

    data_dir: Path = DEFAULT_DATA_DIR
    limits: Limits = field(default_factory=Limits)
    """Defaults for every module; a module's own overrides replace single fields."""
    max_module_size: int = DEFAULT_MAX_MODULE_SIZE
    max_memory_limit: int = DEFAULT_MAX_MEMORY_LIMIT
    """Ceiling for per-module memory overrides; also the size of one pooled memory slot (≤ 4 GiB)."""
    max_timeout: float = DEFAULT_MAX_TIMEOUT
    max_stack_limit: int = DEFAULT_MAX_STACK_LIMIT
    """Ceiling for per-module stack overrides (≤ 4 MiB)."""
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    """Ceiling for per-module response_size overrides."""
    epoch_tick: float = DEFAULT_EPOCH_TICK
    pool_instances: int = DEFAULT_POOL_INSTANCES
    """Concurrent isolates per engine (≤ 10,000); each slot reserves ~4 GiB of address space. Of the idle
    ones, `warm_slots` keep their module's memory and up to keep_resident bytes resident (on engines with
    memory images; where modules' data is copied, any slot serves any module: engine/_images.py)."""
    module_cache_size: int = DEFAULT_MODULE_CACHE_SIZE
    log_limit: int = DEFAULT_LOG_LIMIT
    """Bytes of guest output kept per request; each record is charged 32 bytes on top of its text."""
    log_records: int = DEFAULT_LOG_RECORDS
    """Guest output records (log calls, stdout/stderr writes) kept per request."""
    keep_resident: int = DEFAULT_KEEP_RESIDENT
    """Bytes of each pooled memory and table slot kept resident and reset with memset between
    isolates, instead of returned to the kernel (a syscall and page faults per request)."""
    guest_cache_entries: int = DEFAULT_GUEST_CACHE_ENTRIES
    guest_cache_bytes: int = DEFAULT_GUEST_CACHE_BYTES
    """Bounds of the guest cache behind `cache_get`/`cache_put`, shared by all modules."""
    guest_cache_module_share: float = DEFAULT_GUEST_CACHE_MODULE_SHARE
    """The fraction of each guest cache bound one module may hold; beyond it, its own oldest go."""
    kv_store_size: int = DEFAULT_KV_STORE_SIZE
    """Bytes of keys and values each key-value store may hold (`kv_set` beyond: store_full)."""
    memory_budget: int = field(default_factory=default_memory_budget)
    """Bytes of guest linear memory all concurrent isolates of this process may reserve together:
    each request reserves its memory limit before it is instantiated, or fails as overloaded."""
    compile_cache: str | os.PathLike[str] | None = None
    """A directory of compiled code shared by data directories (nodes on one machine, `isolate dev`
    restarts): a module compiled once is loaded from there. Off (None) by default; it must be as trusted
    as the data directory, since its code is run. Kept as a str: `--workers` sends the Config as JSON."""
    native: bool = True
    """Run requests on the native path (isolate/engine/_fastpath.c) when it was built; False, or a
    build without it, takes the ctypes path: the same semantics, about 2× the host overhead."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        except TypeError:
            raise InvalidConfig(f"data_dir must be a path, got {self.data_dir!r}") from None
        if "\0" in str(self.data_dir):
            raise InvalidConfig(f"data_dir may not contain NUL: {str(self.data_dir)!r}")
        if self.compile_cache is not None:
            cache = self.compile_cache
            path = os.fspath(cache) if isinstance(cache, (str, os.PathLike)) else None
            if not isinstance(path, str) or not path or "\0" in path:
                raise InvalidConfig(f"compile_cache must be a directory path or None, got {cache!r}")
            object.__setattr__(self, "compile_cache", path)
        if not isinstance(self.limits, Limits):
            raise InvalidConfig(f"limits must be a Limits, got {type(self.limits).__name__}")
        limits = self.limits
        _check_int("max_module_size", self.max_module_size, 1, 1 * GiB)
        _check_int("max_memory_limit", self.max_memory_limit, limits.memory, MAX_MEMORY_CEILING)
        if self.max_memory_limit % (64 * KiB):
            raise InvalidConfig("max_memory_limit must be a multiple of 64 KiB")
        _check_number("max_timeout", self.max_timeout, limits.timeout, MAX_TIMEOUT_CEILING)
        _check_int("max_stack_limit", self.max_stack_limit, limits.stack, MAX_STACK_CEILING)
        _check_int("max_response_size", self.max_response_size, limits.response_size, MAX_RESPONSE_CEILING)
        _check_number("epoch_tick", self.epoch_tick, MIN_EPOCH_TICK, 1.0)
        if limits.timeout < self.epoch_tick:
            raise InvalidConfig(f"limits.timeout {limits.timeout} is below epoch_tick {self.epoch_tick}, the finest "
                                "deadline the host can enforce")
        _check_int("pool_instances", self.pool_instances, 1, MAX_POOL_INSTANCES)
        _check_int("module_cache_size", self.module_cache_size, 1, MAX_COUNT)
        _check_int("log_limit", self.log_limit, 0, 1 * GiB)
        _check_int("log_records", self.log_records, 0, MAX_COUNT)
        _check_int("keep_resident", self.keep_resident, 0, min(self.max_memory_limit, MAX_KEEP_RESIDENT))
        _check_int("guest_cache_entries", self.guest_cache_entries, 1, MAX_COUNT)
        _check_int("guest_cache_bytes", self.guest_cache_bytes, 1, 1 << 40)
        _check_number("guest_cache_module_share", self.guest_cache_module_share, 0.0, 1.0, open_low=True)
        _check_int("kv_store_size", self.kv_store_size, 0, 1 << 50)
        _check_int("memory_budget", self.memory_budget, limits.memory, 1 << 50)
        if type(self.native) is not bool:
            raise InvalidConfig(f"native must be true or false, got {self.native!r}")

    @property
    def warm_slots(self) -> int:
        """Idle pooled slots that stay warm: each keeps its module's memory image mapped and up to
        keep_resident bytes faulted in, so that module's next isolate reuses it (slot affinity). Idle
        slots beyond it are returned to the kernel. At most half the memory budget stays resident
        this way, so a small machine keeps fewer warm slots instead of refusing the pool size."""
        if self.keep_resident == 0:
            return self.pool_instances
        return max(1, min(self.pool_instances, self.memory_budget // 2 // self.keep_resident))

    def check_limits(self, limits: Limits) -> Limits:
        """Reject per-module limits above what this host allows."""
        if limits.memory > self.max_memory_limit:
            raise InvalidConfig(f"limits.memory {limits.memory} exceeds the host maximum {self.max_memory_limit}")
        if limits.memory > self.memory_budget:
            raise InvalidConfig(f"limits.memory {limits.memory} exceeds the host's memory budget {self.memory_budget}")
        if limits.timeout > self.max_timeout:
            raise InvalidConfig(f"limits.timeout {limits.timeout} exceeds the host maximum {self.max_timeout}")
        if limits.timeout < self.epoch_tick:
            raise InvalidConfig(f"limits.timeout {limits.timeout} is below the host's epoch tick {self.epoch_tick} s, "
                                "the finest deadline it can enforce")
        if limits.stack > self.max_stack_limit:
            raise InvalidConfig(f"limits.stack {limits.stack} exceeds the host maximum {self.max_stack_limit}")
        if limits.response_size > self.max_response_size:
            raise InvalidConfig(
                f"limits.response_size {limits.response_size} exceeds the host maximum {self.max_response_size}"
            )
        return limits

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """A config from `ISOLATE_*` variables (read here only), then explicit overrides.

        Sizes take units ("64MiB") and durations too ("5ms"); every value is then validated as a
        field would be.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "ISOLATE_DATA_DIR" in env:
            values["data_dir"] = Path(env["ISOLATE_DATA_DIR"])
        for name, conv in _ENV_FIELDS.items():
            key = "ISOLATE_" + name.upper()
            if key in env:
                try:
                    values[name] = conv(env[key])
                except (ValueError, OverflowError, InvalidConfig) as exc:
                    raise InvalidConfig(f"{key}={env[key]!r}: {exc}") from None
        from_env = {name for name in values if name != "data_dir"}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except InvalidConfig as exc:
            culprit = next((n for n in from_env - set(overrides) if exc.detail.startswith(n + " ")), None)
            if culprit is None:
                raise
            variable = "ISOLATE_" + culprit.upper()
            raise InvalidConfig(f"{variable}={env[variable]!r}: {exc.detail}") from None


_ENV_FIELDS: dict[str, Any] = {
    "max_module_size": parse_size,
    "max_memory_limit": parse_size,
    "max_timeout": parse_duration,
    "max_stack_limit": parse_size,
    "max_response_size": parse_size,
    "epoch_tick": parse_duration,
    "pool_instances": int,
    "module_cache_size": int,
    "log_limit": parse_size,
    "log_records": int,
    "keep_resident": parse_size,
    "guest_cache_entries": int,
    "guest_cache_bytes": parse_size,
    "guest_cache_module_share": float,
    "kv_store_size": parse_size,
    "memory_budget": parse_size,
    "native": parse_bool,
    "compile_cache": lambda text: text or None,  # empty: off
}
"""Every `Config` field read from an `ISOLATE_<NAME>` variable, and how its text is parsed."""


LOG_FORMATS = ("logfmt", "json")
"""How `isolate serve` writes log lines: logfmt (the default), or one JSON object a line."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The HTTP side: two listeners (edge and admin), request bounds and the guest thread pool."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_EDGE_PORT
    admin_host: str = "127.0.0.1"
    admin_port: int = DEFAULT_ADMIN_PORT
    admin_token: str | None = None
    """None: read the token from the data directory, generating it on first start."""
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    max_url_length: int = DEFAULT_MAX_URL_LENGTH
    """Bytes of a request target; 414 as soon as that many arrived."""
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    """Bytes of a request's header fields (name, value, `: ` and CRLF each); 431 beyond."""
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    """Seconds a connection has to deliver a whole request head once it is ready for one (accepted, or
    the previous answer sent): 408 if part of it came, else the connection is closed silently. Also
    the longest a request body being read may stall (408)."""
    max_connections: int | None = None
    """Open edge connections; one over is answered 503 `overloaded` and closed. None: DEFAULT_MAX_CONNECTIONS,
    lowered at start-up so both caps and a reserve of descriptors fit the open-file limit."""
    admin_max_connections: int = DEFAULT_ADMIN_MAX_CONNECTIONS
    """Open admin connections, counted apart from the edge's."""
    threads: int = field(default_factory=lambda: min(32, (os.cpu_count() or 1) * 4))
    """Threads that run guests off the event loop (wasm releases the GIL, so they run in parallel)."""
    workers: int = 1
    """Server processes sharing the edge port (SO_REUSEPORT), each with `threads` guest threads; one
    supervisor process runs the admin API and the control plane for all of them (`isolate.http._workers`)."""
    cluster: str = ""
    """A NATS JetStream URL (nats://host:port): modules, tables and purges shared with every node on it."""
    cluster_secret: str | None = None
    """The secret nodes sign forwarded requests with (HMAC); None: read from the data directory or
    ISOLATE_CLUSTER_SECRET. Never taken from a command line."""
    io_threads: int = DEFAULT_IO_THREADS
    """Threads for guests that can wait in the host (outbound HTTP, key-value, WASI sleeps): most of
    their time is spent waiting, so they get a pool of their own and never hold up the others."""
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    inline_threshold: float = DEFAULT_INLINE_THRESHOLD
    inline_max_timeout: float = DEFAULT_INLINE_MAX_TIMEOUT
    """Only modules whose timeout is at most this may run on the event loop: the longest one freeze."""
    access_log: bool = True
    log_format: str = "logfmt"
    """How log lines are written (`--log-format`, ISOLATE_LOG_FORMAT): one of LOG_FORMATS."""
    region: str = DEFAULT_REGION
    """The region this node serves (`isolate serve --region`); must be in the region table, if any."""
    node_name: str = ""
    """How this node names itself in `x-isolate-forwarded-by` and health answers; default host:port."""
    cache: bool = True
    """The edge response cache (routes can still opt out with `cache = false`)."""
    dev: bool = False
    """Dev mode (`isolate dev`): a guest failure's diagnostic also carries the guest's own message
    (`guest_message`) and its wasm `backtrace`, for every kind of failure. Off, clients get neither
    beyond a trap's frames; the server log has them in both modes."""
    cache_entries: int = DEFAULT_CACHE_ENTRIES
    cache_bytes: int = DEFAULT_CACHE_BYTES
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    """A dead node is skipped at most health_interval + health_timeout after it stops answering
    (at once when a forward to it fails to connect), and used again after its next good check."""

    def __post_init__(self) -> None:
        validate_region(self.region, "region")
        if self.cache_entries < 1 or self.cache_bytes < 1:
            raise InvalidConfig("cache_entries and cache_bytes must be at least 1")
        if not 0 < self.health_timeout <= self.health_interval:
            raise InvalidConfig("health_timeout must be positive and at most health_interval")
        for name in ("port", "admin_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise InvalidConfig(f"{name} must be a TCP port, got {value!r}")
        if self.max_body_size < 0 or self.max_url_length < 1:
            raise InvalidConfig("max_body_size and max_url_length must be positive")
        if self.threads < 1 or self.queue_limit < 0:
            raise InvalidConfig("threads must be at least 1 and queue_limit not negative")
        _check_int("workers", self.workers, 1, 1024)
        if self.log_format not in LOG_FORMATS:
            raise InvalidConfig(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        _check_int("io_threads", self.io_threads, 1, 4096)
        _check_int("max_header_size", self.max_header_size, 1 * KiB, 1 * GiB)
        _check_number("head_timeout", self.head_timeout, 0.0, 3600.0, open_low=True)
        if self.max_connections is not None:
            _check_int("max_connections", self.max_connections, 1, MAX_COUNT)
        _check_int("admin_max_connections", self.admin_max_connections, 1, MAX_COUNT)
