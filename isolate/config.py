"""Configuration as values: `Config` for the host, `Limits` for one request, and the defaults."""

from __future__ import annotations

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
DEFAULT_POOL_INSTANCES = 1000  # as Spin: concurrent isolates the pooling allocator reserves
DEFAULT_MAX_MEMORY_LIMIT = 1 * GiB  # the largest per-module memory override accepted
DEFAULT_MAX_TIMEOUT = 60.0
DEFAULT_MODULE_CACHE_SIZE = 1024  # pre-linked modules kept hot (1,000 tenants fit)
DEFAULT_LOG_LIMIT = 64 * KiB  # guest log bytes kept per request (stdout + stderr + log calls)
DEFAULT_KEEP_RESIDENT = 1 * MiB  # per pooled slot: reset by memset, not madvise (measured: 22 -> 16 µs invoke)
DEFAULT_GUEST_CACHE_ENTRIES = 100_000  # guest cache (cache_get/cache_put), all modules together
DEFAULT_GUEST_CACHE_BYTES = 64 * MiB
DEFAULT_DATA_DIR = Path(".isolate")

DEFAULT_EDGE_PORT = 8787
DEFAULT_ADMIN_PORT = 8788
DEFAULT_MAX_BODY_SIZE = 10 * MiB
DEFAULT_MAX_URL_LENGTH = 16 * KiB
DEFAULT_QUEUE_LIMIT = 64  # guests waiting for a worker thread before requests get 503
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
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: float | int | str) -> float:
    """Seconds from a number or a string such as "200ms", "1.5s", "250us"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.fullmatch(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _TIME_UNITS:
        raise InvalidConfig(f"not a duration: {value!r} (use seconds or a unit: s, ms, us)")
    return float(match.group(1)) * _TIME_UNITS[unit]


LIMIT_PARSERS: dict[str, Any] = {
    "memory": parse_size,
    "timeout": parse_duration,
    "response_size": parse_size,
    "stack": parse_size,
}
"""How each limit is read from text (CLI flags, query parameters, manifests)."""


def parse_limits(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Limit overrides from text or numbers, keyed by limit name; unknown names are an error."""
    unknown = set(raw) - set(LIMIT_PARSERS)
    if unknown:
        raise InvalidConfig(f"unknown limit(s): {', '.join(sorted(unknown))}; known: {', '.join(LIMIT_PARSERS)}")
    return {key: LIMIT_PARSERS[key](value) for key, value in raw.items()}


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Hard limits applied to every request of a module; per-module overrides replace fields."""

    memory: int = DEFAULT_MEMORY_LIMIT
    """Bytes of linear memory the guest may have, declared or grown."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds of wall time from instantiation until the response is read back."""
    response_size: int = DEFAULT_RESPONSE_LIMIT
    """Bytes of the encoded response envelope the guest may hand back."""
    stack: int = DEFAULT_STACK_LIMIT
    """Bytes of wasm stack; each distinct value gets its own engine, since wasmtime fixes it per engine."""

    def __post_init__(self) -> None:
        if not isinstance(self.memory, int) or self.memory < 64 * KiB:
            raise InvalidConfig(f"limits.memory must be an integer of at least 65536 bytes, got {self.memory!r}")
        if not isinstance(self.timeout, (int, float)) or not 0 < self.timeout:
            raise InvalidConfig(f"limits.timeout must be a positive number of seconds, got {self.timeout!r}")
        if not isinstance(self.response_size, int) or self.response_size < 16:
            raise InvalidConfig(
                f"limits.response_size must be an integer of at least 16 bytes, got {self.response_size!r}"
            )
        if not isinstance(self.stack, int) or self.stack < 64 * KiB:
            raise InvalidConfig(f"limits.stack must be an integer of at least 65536 bytes, got {self.stack!r}")

    def merged(self, overrides: Mapping[str, Any] | None) -> Limits:
        """These limits with the fields named in `overrides` replaced (unknown names are an error)."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise InvalidConfig(f"unknown limit(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        return replace(self, **dict(overrides))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a `Host` needs; fields mirror the CLI flags and `ISOLATE_*` variables."""

    data_dir: Path = DEFAULT_DATA_DIR
    limits: Limits = field(default_factory=Limits)
    """Defaults for every module; a module's own overrides replace single fields."""
    max_module_size: int = DEFAULT_MAX_MODULE_SIZE
    max_memory_limit: int = DEFAULT_MAX_MEMORY_LIMIT
    """Ceiling for per-module memory overrides; also the size of one pooled memory slot."""
    max_timeout: float = DEFAULT_MAX_TIMEOUT
    max_stack_limit: int = DEFAULT_MAX_STACK_LIMIT
    """Ceiling for per-module stack overrides."""
    epoch_tick: float = DEFAULT_EPOCH_TICK
    pool_instances: int = DEFAULT_POOL_INSTANCES
    module_cache_size: int = DEFAULT_MODULE_CACHE_SIZE
    log_limit: int = DEFAULT_LOG_LIMIT
    keep_resident: int = DEFAULT_KEEP_RESIDENT
    """Bytes of each pooled memory and table slot kept resident and reset with memset between
    isolates, instead of returned to the kernel (a syscall and page faults per request)."""
    guest_cache_entries: int = DEFAULT_GUEST_CACHE_ENTRIES
    guest_cache_bytes: int = DEFAULT_GUEST_CACHE_BYTES
    """Bounds of the guest cache behind `cache_get`/`cache_put`, shared by all modules."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        checks = [
            (self.max_module_size > 0, "max_module_size must be positive"),
            (self.max_memory_limit >= self.limits.memory, "max_memory_limit must be at least limits.memory"),
            (self.max_memory_limit % (64 * KiB) == 0, "max_memory_limit must be a multiple of 64 KiB"),
            (self.max_timeout >= self.limits.timeout, "max_timeout must be at least limits.timeout"),
            (self.max_stack_limit >= self.limits.stack, "max_stack_limit must be at least limits.stack"),
            (0 < self.epoch_tick <= 1, "epoch_tick must be within (0, 1] seconds"),
            (self.pool_instances >= 1, "pool_instances must be at least 1"),
            (self.module_cache_size >= 1, "module_cache_size must be at least 1"),
            (self.log_limit >= 0, "log_limit must not be negative"),
            (self.keep_resident >= 0, "keep_resident must not be negative"),
            (self.guest_cache_entries >= 1, "guest_cache_entries must be at least 1"),
            (self.guest_cache_bytes >= 1, "guest_cache_bytes must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidConfig(message)

    def check_limits(self, limits: Limits) -> Limits:
        """Reject per-module limits above what this host allows."""
        if limits.memory > self.max_memory_limit:
            raise InvalidConfig(f"limits.memory {limits.memory} exceeds the host maximum {self.max_memory_limit}")
        if limits.timeout > self.max_timeout:
            raise InvalidConfig(f"limits.timeout {limits.timeout} exceeds the host maximum {self.max_timeout}")
        if limits.stack > self.max_stack_limit:
            raise InvalidConfig(f"limits.stack {limits.stack} exceeds the host maximum {self.max_stack_limit}")
        return limits

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """A config from `ISOLATE_*` variables (read here only), then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "ISOLATE_DATA_DIR" in env:
            values["data_dir"] = Path(env["ISOLATE_DATA_DIR"])
        for name, conv in (
            ("max_module_size", int),
            ("max_memory_limit", int),
            ("max_timeout", float),
            ("max_stack_limit", int),
            ("epoch_tick", float),
            ("pool_instances", int),
            ("module_cache_size", int),
            ("log_limit", int),
            ("keep_resident", int),
            ("guest_cache_entries", int),
            ("guest_cache_bytes", int),
        ):
            key = "ISOLATE_" + name.upper()
            if key in env:
                try:
                    values[name] = conv(env[key])
                except ValueError as exc:
                    raise InvalidConfig(f"{key}={env[key]!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


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
    workers: int = field(default_factory=lambda: min(32, (os.cpu_count() or 1) * 4))
    """Threads that run guests off the event loop (wasm releases the GIL, so they run in parallel)."""
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    inline_threshold: float = DEFAULT_INLINE_THRESHOLD
    access_log: bool = True
    region: str = DEFAULT_REGION
    """The region this node serves (`isolate serve --region`); must be in the region table, if any."""
    node_name: str = ""
    """How this node names itself in `x-isolate-forwarded-by` and health answers; default host:port."""
    cache: bool = True
    """The edge response cache (routes can still opt out with `cache = false`)."""
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
        if self.workers < 1 or self.queue_limit < 0:
            raise InvalidConfig("workers must be at least 1 and queue_limit not negative")
