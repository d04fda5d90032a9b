"""`Host`: the library entry point that deploys, versions and invokes modules in fresh isolates."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import tracing
from .abi import Request, Response, decode_response, encode_request
from .cache import CacheStatistics, GuestCache, GuestCacheStatistics, ModuleCache
from .capabilities import (
    AllowedHost,
    GuestIO,
    KeyValue,
    Outbound,
    SecretStore,
    SqliteKeyValue,
    check_store_name,
    parse_allowed_hosts,
)
from .config import MIN_STACK, Config, Limits
from .engine import (
    MemoryBudgetStatistics,
    Prepared,
    Runtime,
    address_space_free,
    copies_data,
    engine_reservation,
    is_stopping,
    run,
    run_component,
    wat_to_wasm,
)
from .engine import resume as engine_resume
from .engine import shutdown as engine_shutdown
from .errors import (
    BrokenBuild,
    GuestError,
    InvalidConfig,
    InvalidModule,
    IsolateError,
    ModuleTooLarge,
    NotFound,
    StorageError,
)
from .registry import ModuleRecord, ModuleStore, VersionRecord, sha256, validate_name
from .usage import CPU_CLOCK_FROM_US, ModuleUsage, Usage

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("isolate.host")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One immutable deployed version of a module."""

    name: str
    version: int
    digest: str
    size: int
    created: float
    compile_ms: float
    kind: str = "module"  # "module" (ABI v1) or "component" (wasi:http)


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """A module name: its versions, the active one, and its effective settings."""

    name: str
    active_version: int
    versions: tuple[VersionInfo, ...]
    limits: Limits
    limit_overrides: Mapping[str, Any]
    variables: Mapping[str, str]
    allowed_hosts: tuple[str, ...] = ()
    kv_stores: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()  # names only: values never leave the host except towards the guest

    @property
    def active(self) -> VersionInfo:
        return next(v for v in self.versions if v.version == self.active_version)


@dataclass(frozen=True, slots=True)
class StagedVersion:
    """A deploy checked, validated and compiled, before it is recorded (`Host.stage`)."""

    name: str
    wasm: bytes
    digest: str
    size: int
    compile_ms: float
    overrides: dict[str, Any]
    limits: Limits
    variables: dict[str, str] | None
    allowed_hosts: tuple[str, ...] | None
    kv_stores: tuple[str, ...] | None
    prepared: Prepared
    artifact: bytes
    fingerprint: str
    stack: int
    may_block: bool
    kind: str = "module"  # "module" (ABI v1) or "component" (wasi:http)


@dataclass(frozen=True, slots=True)
class HostStatistics:
    modules: int
    invocations: int
    failures: Mapping[str, int]
    module_cache: CacheStatistics
    guest_cache: GuestCacheStatistics
    artifact_recompiles: int
    pool_instances: int
    engine_fingerprint: str  # of the engine for the default stack size
    engines: int  # one per distinct wasm stack size in use
    memory_budget: MemoryBudgetStatistics  # guest memory reserved by running isolates, of Config.memory_budget
    outbound: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (module, result) -> outbound calls
    kv_operations: Mapping[str, int] = field(default_factory=dict)  # module -> key-value calls


class Host:
    """Deploys modules into a data directory and runs each request in a fresh, limited isolate.

    Thread-safe: `invoke` may run on many threads at once (guests run with the GIL released).
    """

    def __init__(self, config: Config | None = None, *, usage: Usage | None = None) -> None:
        """`usage`: where per-module usage goes (default: kept in `<data_dir>/usage`; a worker of
        `serve --workers` passes one without a directory, drained by its supervisor)."""
        self.config = config or Config()
        self._store = ModuleStore(self.config.data_dir)
        for problem in self._store.skipped:
            log.error("module metadata %s: the module answers `storage` until the file is fixed", problem)
        self._runtime = Runtime(self.config, engine_stack(self.config.limits.stack))
        # (engine stack size, copies data) -> engine; made on demand
        self._runtimes = {(self._runtime.stack, False): self._runtime}
        self._copying: dict[str, bool] = {}  # wasm digest -> whether its data is copied (`copies_data`)
        self._cache: ModuleCache[Prepared] = ModuleCache(self.config.module_cache_size)
        self.guest_cache = GuestCache(self.config.guest_cache_entries, self.config.guest_cache_bytes,
                                      module_share=self.config.guest_cache_module_share)
        self._limits: dict[str, Limits] = {}  # effective limits per module name, derived from records
        self._grants: dict[str, tuple[AllowedHost, ...]] = {}  # parsed allowed_hosts per module name
        self.secrets = SecretStore(self.config.data_dir)
        self.kv: KeyValue = SqliteKeyValue(self.config.data_dir / "kv.sqlite3", self.config.kv_store_size)
        self.outbound = Outbound()
        # Whether a module's active code can wait in the host (e.g. WASI poll_oneoff): such code must
        # never run on an event loop. Unknown names count as blocking until they have run once.
        self._blocking: dict[str, bool] = {}
        # Whether it is known to wait (it imports such a function): it then runs on the I/O pool.
        # Unknown names (not run since start-up) are taken not to, so unknown code never floods that pool.
        self._waits: dict[str, bool] = {}
        # Components that waited in the host once (a timer, an outbound call), by digest: every
        # component imports poll, so only running one shows whether it waits; from then on it does.
        self._waited: set[str] = set()
        self._lock = threading.Lock()  # counters and lazily created engines: held for nanoseconds
        self._control = threading.RLock()  # deploy, configure, rollback, delete: held across fsyncs
        # Invocations, counted by next(): atomic without a lock (a lock round trip per request costs
        # ~0.2 µs). Reading it takes a number too; `_count_reads` says how many reads took one.
        self._invocations = itertools.count()
        self._count_reads = 0
        self._failures: Counter[str] = Counter()
        self._outbound: Counter[tuple[str, str]] = Counter()
        self._kv_operations: Counter[str] = Counter()
        self._recompiles = 0
        self._closed = False
        # `isolate dev`: modules whose sources fail to build -> the compiler's message, answered (503)
        # instead of the last good version, so the developer sees the error. Empty outside dev.
        self._broken: dict[str, str] = {}
        # Every engine the stored modules need, made now: made on a module's first request instead,
        # its epoch ticker thread would inherit the lowered priority of the guest worker thread
        # that happened to make it (see isolate.http._dispatch), and timeouts would fire late.
        for record in self._store.records():
            with contextlib.suppress(IsolateError):
                self._engine_of(record)
        # Last: its flusher thread starts here, and must not outlive a Host that failed to start.
        self.usage = usage if usage is not None else Usage(self.config.data_dir / "usage")

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for runtime in set(self._runtimes.values()):
                runtime.close()
            self.outbound.close()
            self.kv.close()
            self.usage.close()

    def stop_guests(self) -> None:
        """Stop every guest of this process now (on SIGTERM): sleeping host calls wake and fail, running
        wasm is interrupted, and new requests are refused as `overloaded` until `resume_guests()`."""
        engine_shutdown()

    def resume_guests(self) -> None:
        engine_resume()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    # -- control plane ------------------------------------------------------------------------

    def deploy(
        self,
        name: str,
        wasm: bytes | str,
        *,
        limits: Mapping[str, Any] | Limits | None = None,
        variables: Mapping[str, str] | None = None,
        allowed_hosts: Sequence[str] | None = None,
        kv_stores: Sequence[str] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> VersionInfo:
        """Validate, compile and store `wasm` (a binary, or WebAssembly text) as a new active version.

        `limits` changes only the limits it names (a `None` value returns that one to the host
        default; a `Limits` value sets all of them); `variables`, `allowed_hosts` and `kv_stores`
        replace the module's; `secrets` sets the secrets it names (None removes one). Settings not
        given carry over from the previous version.
        """
        staged = self.stage(name, wasm, previous=self._store.find(name), limits=limits, variables=variables,
                            allowed_hosts=allowed_hosts, kv_stores=kv_stores, secrets=secrets)
        with self._control:
            if secrets:  # first: the new version's first request already sees them
                self.secrets.update(name, secrets)
            self.install(staged)
            record = self._store.add_version(name, staged.digest, staged.size, staged.compile_ms, staged.overrides,
                                             staged.variables, staged.kind, allowed_hosts=staged.allowed_hosts,
                                             kv_stores=staged.kv_stores)
            self._limits[name] = staged.limits
            self._grants.pop(name, None)
        return _version_info(name, record.version(record.active))

    def stage(
        self,
        name: str,
        wasm: bytes | str,
        *,
        previous: ModuleRecord | None,
        limits: Mapping[str, Any] | Limits | None = None,
        variables: Mapping[str, str] | None = None,
        allowed_hosts: Sequence[str] | None = None,
        kv_stores: Sequence[str] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> StagedVersion:
        """Everything of a deploy before it is recorded: checked, validated and compiled against the
        module's `previous` record (a cluster passes its own). Nothing is written."""
        wasm = _binary(wasm)
        if len(wasm) > self.config.max_module_size:
            raise ModuleTooLarge(
                f"module of {len(wasm)} bytes exceeds the {self.config.max_module_size}-byte limit",
                limit=self.config.max_module_size,
            )
        validate_name(name)
        overrides = self._overrides(limits, previous.limits if previous else {})
        effective = self._effective(overrides)
        if variables is not None:
            variables = _check_variables(variables)
        hosts = _check_hosts(allowed_hosts)
        stores = _check_stores(kv_stores)
        self._check_names(name, variables, secrets)
        wasm = bytes(wasm)
        digest = sha256(wasm)
        runtime = self._runtime_for(effective.stack, self._copies(digest, wasm))
        module, shape, compile_s = runtime.compile(wasm)
        if shape.memory_min > effective.memory:
            raise InvalidModule(
                f"module declares {shape.memory_min} bytes of initial memory, over its memory limit of "
                f"{effective.memory} bytes",
                limit="memory",
            )
        return StagedVersion(name, wasm, digest, len(wasm), compile_s * 1000, overrides, effective, variables, hosts,
                             stores, runtime.prepare(digest, module, shape), runtime.serialize(module),
                             runtime.fingerprint, runtime.stack, shape.may_block, shape.kind)

    def install(self, staged: StagedVersion) -> None:
        """Store a staged version's bytes and artifact (content-addressed) and keep its code hot."""
        with self._control:
            self._store.put_wasm(staged.digest, staged.wasm)
            self._store.put_artifact(staged.digest, staged.fingerprint, staged.artifact)
            self._cache.put(_cache_key(staged.digest, staged.stack), staged.prepared)
            self._blocking[staged.name] = True  # until the new version has run once, it may wait in the host
            self._waits[staged.name] = staged.may_block

    # -- a cluster's changes, taken as they are (isolate.backends) ------------------------------

    def has_wasm(self, digest: str) -> bool:
        return self._store.has_wasm(digest)

    def receive(self, record: ModuleRecord, wasm: bytes) -> None:
        """Validate and compile another node's module bytes here (never its artifact) and store them."""
        digest = record.version().digest
        if sha256(wasm) != digest:
            raise StorageError(f"module bytes for {record.name!r} do not match their digest {digest[:12]}",
                               module=record.name)
        runtime = self._runtime_for(self._effective(record.limits).stack, self._copies(digest, wasm))
        module, shape, _ = runtime.compile(wasm)
        with self._control:
            self._store.put_wasm(digest, wasm)
            self._store.put_artifact(digest, runtime.fingerprint, runtime.serialize(module))
            self._cache.put(_cache_key(digest, runtime.stack), runtime.prepare(digest, module, shape))

    def adopt(self, record: ModuleRecord) -> None:
        """Make `record` the module's record as it is (a cluster computed it); its bytes are here."""
        with self._control:
            self._store.adopt(record)
            self._limits.pop(record.name, None)
            self._grants.pop(record.name, None)
            self._blocking.pop(record.name, None)  # unknown again: may block until it has run once
            self._waits.pop(record.name, None)
            with contextlib.suppress(IsolateError):  # made now, for the reason given in __init__
                self._engine_of(record)

    def forget(self, name: str, next_version: int) -> None:
        """Delete `name` as a cluster did, its numbering to go on from `next_version`."""
        with self._control:
            self._store.forget(name, next_version)
            self._limits.pop(name, None)
            self._grants.pop(name, None)
            self._blocking.pop(name, None)
            self._waits.pop(name, None)
        self.guest_cache.clear(name)

    def adopt_secrets(self, name: str, values: Mapping[str, str]) -> None:
        """Make `values` all of `name`'s secrets (a cluster's copy)."""
        with self._control:
            self.secrets.replace(name, values)

    def record(self, name: str) -> ModuleRecord | None:
        """`name`'s stored record, None if not deployed."""
        return self._store.find(name)

    def first_version(self, name: str) -> int:
        return self._store.first_version(name)

    def reconfigured(self, record: ModuleRecord, *, limits: Mapping[str, Any] | Limits | None = None,
                     variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
                     kv_stores: Sequence[str] | None = None,
                     secrets: Mapping[str, str | None] | None = None) -> ModuleRecord:
        """`record` with `configure`'s changes, checked; nothing is written."""
        changes: dict[str, Any] = {}
        if variables is not None:
            changes["variables"] = _check_variables(variables)
        if allowed_hosts is not None:
            changes["allowed_hosts"] = _check_hosts(allowed_hosts)
        if kv_stores is not None:
            changes["kv_stores"] = _check_stores(kv_stores)
        self._check_names(record.name, changes.get("variables"), secrets)
        if limits is not None:
            changes["limits"] = self._overrides(limits, record.limits)
            self._engine_of(record, changes["limits"])
        return dataclasses.replace(record, **changes)

    @staticmethod
    def rolled_back(record: ModuleRecord, version: int | None = None) -> ModuleRecord:
        """`record` with `version` (default: the one before the active one) active; nothing is written."""
        if version is None:
            older = [v.version for v in record.versions if v.version < record.active]
            if not older:
                raise NotFound(f"module {record.name!r} has no version before {record.active}", module=record.name)
            version = max(older)
        record.version(version)  # raises NotFound for an unknown version
        return dataclasses.replace(record, active=version)

    def configure(
        self,
        name: str,
        *,
        limits: Mapping[str, Any] | Limits | None = None,
        variables: Mapping[str, str] | None = None,
        allowed_hosts: Sequence[str] | None = None,
        kv_stores: Sequence[str] | None = None,
        secrets: Mapping[str, str | None] | None = None,
    ) -> ModuleInfo:
        """Change a module's limit overrides, variables, grants or secrets without a new version."""
        changes: dict[str, Any] = {}
        if variables is not None:
            changes["variables"] = _check_variables(variables)
        if allowed_hosts is not None:
            changes["allowed_hosts"] = _check_hosts(allowed_hosts)
        if kv_stores is not None:
            changes["kv_stores"] = _check_stores(kv_stores)
        with self._control:
            self._store.get(name)  # NotFound before anything is written
            self._check_names(name, changes.get("variables"), secrets)
            if secrets:
                self.secrets.update(name, secrets)
            if limits is not None:
                changes["limits"] = self._overrides(limits, self._store.get(name).limits)
                # The engine for the new stack size must exist before the setting is stored.
                self._engine_of(self._store.get(name), changes["limits"])
            record = self._store.update(name, **changes)
            self._limits.pop(name, None)
            self._grants.pop(name, None)
        return self._info(record)

    def set_secrets(self, name: str, secrets: Mapping[str, str | None]) -> list[str]:
        """Set (None: remove) secrets of module `name`, which need not be deployed yet."""
        validate_name(name)
        with self._control:
            self._check_names(name, None, secrets)
            return self.secrets.update(name, secrets)

    def rollback(self, name: str, version: int | None = None) -> ModuleInfo:
        """Make `version` (default: the one before the active version) active again."""
        with self._control:
            record = self._store.get(name)
            if version is None:
                older = [v.version for v in record.versions if v.version < record.active]
                if not older:
                    raise NotFound(f"module {name!r} has no version before {record.active}", module=name)
                version = max(older)
            record.version(version)  # raises NotFound for an unknown version
            self._engine_of(dataclasses.replace(record, active=version))  # made now, as in __init__
            self._blocking[name] = True  # the older code may wait in the host: learn again
            self._waits.pop(name, None)
            record = self._store.update(name, active=version)
        return self._info(record)

    def delete(self, name: str) -> None:
        with self._control:
            self._store.delete(name)
            self._limits.pop(name, None)
            self._grants.pop(name, None)
            self._blocking.pop(name, None)
            self._waits.pop(name, None)
            self.secrets.delete(name)
        self.guest_cache.clear(name)

    def refresh(self, name: str) -> None:
        """Take `name`'s record and secrets from the data directory again: another process of this node
        (the supervisor of `serve --workers`) deployed, reconfigured, rolled back or deleted it."""
        with self._control:
            before = self._store.find(name)
            record = self._store.reload(name)
            self.secrets.reload(name)
            self._limits.pop(name, None)
            self._grants.pop(name, None)
            if _active_digest(before) != _active_digest(record):
                self._blocking.pop(name, None)  # other code: it may block until it has run once
                self._waits.pop(name, None)
            if record is not None:
                with contextlib.suppress(IsolateError):  # made now, for the reason given in __init__
                    self._engine_of(record)
        if record is None:
            self.guest_cache.clear(name)

    def set_broken(self, name: str, message: str | None) -> None:
        """Answer `name`'s requests with `BrokenBuild(message)` from now on (None: serve it again)."""
        if message is None:
            self._broken.pop(name, None)
        else:
            self._broken[name] = message

    def stored_names(self) -> list[str]:
        """Every module name known here or written to the data directory (by another process)."""
        return sorted(set(self._store.names()) | set(self._store.names_on_disk()))

    def modules(self) -> list[ModuleInfo]:
        return [self._info(record) for record in self._store.records()]

    def module_names(self) -> list[str]:
        return self._store.names()

    def describe(self, record: ModuleRecord) -> ModuleInfo:
        """What `module` says of a record this host has not applied (yet): another node's, say."""
        return self._info(record)

    def module(self, name: str) -> ModuleInfo:
        return self._info(self._store.get(name))

    def may_block(self, name: str) -> bool:
        """Whether `name`'s active code can wait in the host (unknown until it has run: True)."""
        return self._blocking.get(name, True)

    def waits(self, name: str) -> bool:
        """Whether `name`'s active code is known to wait in the host (False until known): such code
        runs where waiting holds up nobody (the I/O pool)."""
        return self._waits.get(name, False)

    def timeout_of(self, name: str) -> float | None:
        """`name`'s effective timeout once it has run (None before)."""
        limits = self._limits.get(name)
        return limits.timeout if limits is not None else None

    # -- data plane ---------------------------------------------------------------------------

    def invoke(self, name: str, request: Request | None = None, trace: Span | None = None) -> Response:
        """Run `request` through module `name`'s active version in a fresh isolate.

        `trace`: the request's span when traces are on (`isolate.tracing`): the `guest` span and the
        guest's `outbound` spans become its children."""
        request = request or Request()
        started = time.perf_counter()
        # The thread's CPU clock is a syscall pair (~1.2 µs, a sixth of a quick request): read only for
        # modules whose last run was long; a short run's CPU time is taken as its wall time (an upper bound).
        cpu_started = time.thread_time_ns() if name in self.usage.timed else 0
        io: GuestIO | None = None
        metered = False
        guest: Span | None = None
        try:
            # dev only (a falsy dict costs nothing otherwise); one get: the dev watcher may pop it meanwhile
            broken = self._broken.get(name) if self._broken else None
            if broken is not None:
                raise BrokenBuild(broken, module=name)
            record = self._store.get(name)
            version = record.version()
            limits = self._limits.get(name) or self._limits_for(record)
            prepared = self._cache.get(_engine_key(version.digest, limits.stack), self._load)
            shape = prepared.shape
            self._blocking[name] = self._waits[name] = shape.may_block
            secrets = self.secrets.values(name)
            variables = {**record.variables, **secrets} if secrets else record.variables
            if trace is not None:
                guest, guest_start = tracing.guest(trace, name)
            io = self._guest_io(record, limits, request, guest) if shape.uses_io else None
            metered = True
            if prepared.plan is None:
                # The engine's native envelope codec where it runs natively (abi's encoders otherwise, and
                # wherever the native one declines: the Python ones are the reference and name every error).
                codec = prepared.runtime.fastpath
                payload = (codec.encode_request(request, variables) if codec is not None else None) or encode_request(
                    request, variables)
                try:
                    # Unpacked at once: each attribute of a NamedTuple is a Python-level property.
                    out, logs, instantiate_us, run_us, memory_bytes = run(
                        prepared, payload, limits, self.config.log_limit, (self.guest_cache, name), io)
                finally:
                    if io is not None:
                        self._count_io(name, io)
                try:
                    status, headers, body = (codec.decode_response(out) if codec is not None else None
                                             ) or decode_response(out)
                except GuestError as exc:
                    exc.logs = logs
                    raise
            else:  # a wasi:http component: no envelope, the request as it is
                codec = None
                try:
                    if version.digest in self._waited:
                        self._blocking[name] = self._waits[name] = True
                    status, headers, body, logs, instantiate_us, run_us, memory_bytes = run_component(
                        prepared.runtime, prepared.plan, request, list(variables.items()), limits,
                        self.config.log_limit, io, functools.partial(self._waited.add, version.digest))
                finally:
                    if io is not None:
                        self._count_io(name, io)
        except IsolateError as exc:
            exc.extra.setdefault("module", name)
            if guest is not None:
                tracing.fail(guest, exc.kind)
            next(self._invocations)
            with self._lock:
                self._failures[exc.kind] += 1
            if metered:  # a guest that failed used what it used; a request for no module used nothing
                memory = exc.extra.get("memory_bytes")
                self._meter(name, cpu_started, (time.perf_counter() - started) * 1e6,
                            memory if isinstance(memory, int) else 0, io)
            raise
        next(self._invocations)
        if guest is not None:
            tracing.guest_done(guest, guest_start, version.version, instantiate_us, status)
        total_us = (time.perf_counter() - started) * 1e6
        if cpu_started or io is not None or total_us >= CPU_CLOCK_FROM_US:
            self._meter(name, cpu_started, total_us, memory_bytes, io)
        else:  # the common case, inline: a quick run without I/O (its CPU time taken as its wall time)
            wall_ns = int(total_us * 1000)
            self.usage.record(name, wall_ns, wall_ns, memory_bytes)
        info = {
            "module": name,
            "version": version.version,
            "digest": version.digest,
            "instantiate_us": instantiate_us,
            "run_us": run_us,
            "total_us": total_us,
            "memory_bytes": memory_bytes,
        }
        if codec is not None:  # every field given: skips the frozen __init__'s five object.__setattr__ calls
            response: Response = codec.construct(Response, status, headers, body, logs, info)
            return response
        return Response(status, headers, body, logs, info)

    def statistics(self) -> HostStatistics:
        with self._lock:
            invocations = next(self._invocations) - self._count_reads
            self._count_reads += 1
            failures = dict(self._failures)
            outbound = dict(self._outbound)
            kv_operations = dict(self._kv_operations)
        return HostStatistics(
            modules=len(self._store.names()),
            invocations=invocations,
            failures=failures,
            module_cache=self._cache.statistics(),
            guest_cache=self.guest_cache.statistics(),
            artifact_recompiles=self._recompiles,
            pool_instances=self.config.pool_instances,
            engine_fingerprint=self._runtime.fingerprint,
            engines=len(set(self._runtimes.values())),  # two keys may share one engine (`_runtime_for`)
            memory_budget=self._runtime.budget.statistics(),
            outbound=outbound,
            kv_operations=kv_operations,
        )

    def usage_totals(self) -> dict[str, ModuleUsage]:
        """Every metered module's usage since metering began (deleted modules included)."""
        return self.usage.totals()

    def stored_bytes(self) -> dict[str, int]:
        """Bytes of module code each deployed module keeps stored: its versions' distinct `.wasm` files."""
        return {record.name: sum({v.digest: v.size for v in record.versions}.values())
                for record in self._store.records()}

    def active_version(self, name: str) -> int | None:
        record = self._store.find(name)
        return record.active if record is not None else None

    # -- internals ----------------------------------------------------------------------------

    def _meter(self, name: str, cpu_started: int, wall_us: float, memory_bytes: int, io: GuestIO | None) -> None:
        """One request's usage: CPU from the thread's clock when it was read, else the wall time."""
        usage = self.usage
        wall_ns = int(wall_us * 1000)
        cpu_ns = time.thread_time_ns() - cpu_started if cpu_started else wall_ns
        if wall_us >= CPU_CLOCK_FROM_US:
            usage.timed.add(name)
        elif cpu_started:
            usage.timed.discard(name)
        if io is None:
            usage.record(name, cpu_ns, wall_ns, memory_bytes)
        else:
            usage.record(name, cpu_ns, wall_ns, memory_bytes, sum(io.results.values()), io.outbound_bytes,
                         io.kv_operations)

    def _count_io(self, name: str, io: GuestIO) -> None:
        with self._lock:
            for result, count in io.results.items():
                self._outbound[(name, result)] += count
            if io.kv_operations:
                self._kv_operations[name] += io.kv_operations

    def _guest_io(self, record: ModuleRecord, limits: Limits, request: Request, span: Span | None = None) -> GuestIO:
        """What this request's guest may reach: the module's grants, limits and the request's ids."""
        hosts = self._grants.get(record.name)
        if hosts is None:
            try:
                hosts = parse_allowed_hosts(record.allowed_hosts)
            except IsolateError as exc:  # edited by hand: this module fails, never the process
                raise StorageError(f"stored allowed_hosts of module {record.name!r} are invalid: {exc.detail}; set "
                                   "them again with PATCH /v1/modules/NAME", module=record.name) from None
            self._grants[record.name] = hosts
        trace = {k: v for k, v in request.headers if k in ("traceparent", "tracestate")}
        return GuestIO(outbound=self.outbound, kv=self.kv, allowed_hosts=hosts, stores=record.kv_stores,
                     outbound_requests=limits.outbound_requests, outbound_timeout=limits.outbound_timeout,
                     outbound_response_size=limits.outbound_response_size, kv_operations=limits.kv_operations,
                     deadline=time.perf_counter() + limits.timeout, request_id=request.request_id,
                     traceparent=trace.get("traceparent"), tracestate=trace.get("tracestate"),
                     stopping=is_stopping, note=_no_note, module=record.name, trace=span)

    def _check_names(self, name: str, variables: Mapping[str, str] | None,
                     secrets: Mapping[str, str | None] | None) -> None:
        """A secret and a variable never share a name: the guest reads both from one map."""
        record = self._store.find(name)
        names = set(variables if variables is not None else (record.variables if record else {}))
        secret_names = set(self.secrets.names(name))
        for key, value in (secrets or {}).items():
            if value is None:
                secret_names.discard(key)
            else:
                secret_names.add(key)
        clash = sorted(names & secret_names)
        if clash:
            raise InvalidConfig(f"{', '.join(map(repr, clash))} is both a variable and a secret of module "
                                f"{name!r}; a guest reads both by name, so use distinct names")

    def _runtime_for(self, stack: int, copies: bool) -> Runtime:
        """The engine for a module's stack limit and way of initialising memory (engine._images), created
        on first need; `InvalidConfig` if it cannot be.

        Either engine runs any module (the way only decides speed). So a copying engine is made only
        while the address space keeps room for an image engine of every stack size that has none yet
        (one per stack size always fits, as before there were two kinds); otherwise the stack size's
        image engine serves both kinds."""
        key = (engine_stack(stack), copies)
        runtime = self._runtimes.get(key)
        if runtime is None:
            with self._lock:
                runtime = self._runtimes.get(key)
                if runtime is None and (not copies or self._room_for_copying()):
                    try:
                        runtime = self._new_runtime(key)
                    except InvalidConfig:  # for a copying one: taken meanwhile by another host of this process
                        if not copies:
                            raise
                if runtime is None:  # a copying engine without room: the stack size's image engine
                    image = (key[0], False)
                    runtime = self._runtimes[key] = self._runtimes.get(image) or self._new_runtime(image)
        return runtime

    def _new_runtime(self, key: tuple[int, bool]) -> Runtime:
        runtime = self._runtimes[key] = Runtime(self.config, key[0], key[1])
        return runtime

    def _room_for_copying(self) -> bool:
        """Whether a copying engine leaves room for an image engine of each stack size without one."""
        sizes = [1 << bits for bits in range(MIN_STACK.bit_length() - 1,
                                             engine_stack(self.config.max_stack_limit).bit_length())]
        missing = sum(1 for size in sizes if (size, False) not in self._runtimes)
        return address_space_free() >= engine_reservation(self.config) * (1 + missing)

    def _copies(self, digest: str, wasm: bytes | None = None, stack: int | None = None) -> bool:
        """Whether the module `digest` (whose bytes are `wasm`, or stored) runs on an engine that copies
        its initial data into each isolate (`copies_data`); remembered, since the bytes never change.

        Without the bytes, the engine its stored artifact was sealed for (for `stack`) says, so a
        restart does not read and hash every module; else the bytes do. Stored bytes that cannot be
        read answer False (images: either engine runs any module), not remembered."""
        copies = self._copying.get(digest)
        if copies is None:
            if wasm is None and stack is not None:
                for kind in (True, False):
                    if self._store.has_artifact(digest, Runtime.fingerprint_of(self.config, stack, kind)):
                        self._copying[digest] = kind
                        return kind
            if wasm is None:
                try:
                    wasm = self._store.read_wasm(digest)
                except StorageError:  # whoever needs the bytes themselves reports it
                    return False
            copies = self._copying[digest] = copies_data(wasm)
        return copies

    def _engine_of(self, record: ModuleRecord, overrides: Mapping[str, Any] | None = None) -> Runtime:
        """The engine `record`'s active version runs on (with these limit overrides), made now if need be."""
        stack = engine_stack(self._effective(record.limits if overrides is None else overrides).stack)
        return self._runtime_for(stack, self._copies(record.version().digest, stack=stack))

    def _load(self, key: str) -> Prepared:
        """Cache miss: map the verified artifact, or recompile from the stored `.wasm` and reseal."""
        digest, stack = key.split("/")
        try:
            runtime = self._runtime_for(int(stack), self._copies(digest, stack=int(stack)))
        except InvalidConfig as exc:  # a stored stack limit this process can no longer give an engine
            raise StorageError(f"the module's stored stack limit cannot run here: {exc.detail}") from None
        path = self._store.verified_artifact(digest, runtime.fingerprint)
        module = None
        if path is not None:
            try:
                module = runtime.load(path)
            except Exception:  # wasmtime refuses an artifact from another build: recompile below
                module = None
        if module is None:
            module, shape, _ = runtime.compile(self._store.read_wasm(digest))
            self._store.put_artifact(digest, runtime.fingerprint, runtime.serialize(module))
            with self._lock:
                self._recompiles += 1
            return runtime.prepare(digest, module, shape)
        return runtime.prepare(digest, module)

    def _overrides(self, limits: Mapping[str, Any] | Limits | None, current: Mapping[str, Any]) -> dict[str, Any]:
        """The module's new overrides: `current` with the limits named in `limits` changed."""
        if limits is None:
            overrides = dict(current)
        elif isinstance(limits, Limits):
            overrides = {k: v for k, v in limits.as_dict().items() if v != self.config.limits.as_dict()[k]}
        else:
            overrides = {k: v for k, v in {**current, **limits}.items() if v is not None}
        self._effective(overrides)
        return overrides

    def _effective(self, overrides: Mapping[str, Any]) -> Limits:
        return self.config.check_limits(self.config.limits.merged(overrides))

    def _limits_for(self, record: ModuleRecord) -> Limits:
        try:
            limits = self._effective(record.limits)
        except IsolateError as exc:
            # A stored setting this host no longer accepts (edited by hand, or a lower ceiling since)
            # fails this module's requests with a diagnostic; it never reaches an engine.
            raise StorageError(f"stored limits of module {record.name!r} are invalid: {exc.detail}; set them "
                               "again with PATCH /v1/modules/NAME", module=record.name) from None
        self._limits[record.name] = limits
        return limits

    def _info(self, record: ModuleRecord) -> ModuleInfo:
        try:
            limits = self._effective(record.limits)
        except IsolateError:
            limits = self.config.limits  # shown as the defaults; requests fail until fixed (_limits_for)
        return ModuleInfo(
            name=record.name,
            active_version=record.active,
            versions=tuple(_version_info(record.name, v) for v in record.versions),
            limits=limits,
            limit_overrides=dict(record.limits),
            variables=dict(record.variables),
            allowed_hosts=tuple(record.allowed_hosts),
            kv_stores=tuple(record.kv_stores),
            secrets=tuple(self.secrets.names(record.name)),
        )


def engine_stack(stack: int) -> int:
    """The wasm stack of the engine that runs a module: its limit rounded up to a power of two.

    wasmtime fixes the stack per engine and each engine reserves address space for its pool of
    isolates, so distinct values must stay few: 64 KiB to 4 MiB makes at most seven engines.
    """
    return 1 << (stack - 1).bit_length()


def _active_digest(record: ModuleRecord | None) -> str | None:
    return record.version(record.active).digest if record is not None else None


def _cache_key(digest: str, stack: int) -> str:
    """Pre-linked code belongs to one engine, and there is one engine per stack size."""
    return f"{digest}/{stack}"


@functools.lru_cache(maxsize=4096)
def _engine_key(digest: str, stack_limit: int) -> str:
    """`_cache_key` for a module's stack limit, remembered: every request looks it up."""
    return _cache_key(digest, engine_stack(stack_limit))


def _version_info(name: str, v: VersionRecord) -> VersionInfo:
    return VersionInfo(name, v.version, v.digest, v.size, v.created, v.compile_ms, v.kind)


MAX_VARIABLE_NAME = 256
MAX_VARIABLES_SIZE = 64 * 1024  # characters of names and values together: every request carries them


def _binary(wasm: bytes | str) -> bytes:
    """A module's binary: WebAssembly text (a str, or bytes that are not a binary) is compiled first."""
    if isinstance(wasm, str):
        return wat_to_wasm(wasm)
    if wasm[:4] != b"\0asm" and wasm.lstrip()[:1] in (b"(", b";"):
        try:
            text = bytes(wasm).decode()
        except UnicodeDecodeError:
            return bytes(wasm)  # not text either: the validator names what is wrong
        return wat_to_wasm(text)
    return bytes(wasm)


def _no_note(level: str, text: str) -> None:
    """Until the engine binds a request's log capture to its GuestIO."""


def _check_hosts(entries: Sequence[str] | None) -> tuple[str, ...] | None:
    """allowed_hosts as stored: each entry checked, trimmed, duplicates dropped."""
    if entries is None:
        return None
    parsed = parse_allowed_hosts(entries)
    return tuple(dict.fromkeys(entry.text for entry in parsed))


def _check_stores(stores: Sequence[str] | None) -> tuple[str, ...] | None:
    if stores is None:
        return None
    if isinstance(stores, (str, bytes)) or not isinstance(stores, Sequence):
        raise InvalidConfig("key_value_stores must be a list of store names")
    return tuple(dict.fromkeys(check_store_name(store) for store in stores))


def _check_variables(variables: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(variables, Mapping):
        raise InvalidConfig(f"variables must be a mapping of strings, got {type(variables).__name__}")
    for key, value in variables.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidConfig(f"variables must map non-empty strings to strings; got {key!r}: {value!r}")
        try:
            (key + value).encode()
        except UnicodeEncodeError:  # an unpaired surrogate could never be handed to the guest
            raise InvalidConfig(f"variable {key!r} is not valid Unicode text") from None
        if len(key) > MAX_VARIABLE_NAME or any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise InvalidConfig(f"variable names are 1-{MAX_VARIABLE_NAME} characters without control "
                                f"characters: {key[:40]!r}")
    if sum(len(k) + len(v) for k, v in variables.items()) > MAX_VARIABLES_SIZE:
        raise InvalidConfig(f"variables exceed {MAX_VARIABLES_SIZE} bytes in all (they travel with every request)")
    return dict(variables)
