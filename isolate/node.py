"""`Node`, the control plane: every change to modules, routes, regions and caches, and its rules.

The admin API, the CLI and the manifest are thin adapters over this object. Its rules:

- a deploy, reconfiguration, rollback or delete purges that module's cached responses;
- deleting a module removes its routes in the same step, so no route ever names a missing module;
- every route's target must be deployed when the table is set (checked and written in one step);
- a manifest applied at start-up deploys what changed and owns the routes it declares, while routes
  added through the admin API (`isolate deploy --route`) are kept, unless they now conflict or name
  a module that is gone: each route dropped is reported with its reason.

Control changes are serialised by one lock; the request path never takes it (it reads the tables,
which are swapped whole). Each change applied is announced, in order and under that lock, as a
`Change` to the node's subscribers (the worker processes of `serve --workers`), which `replay` it
from the data directory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .cache import ResponseCache
from .capabilities import Page, check_key, check_store_name
from .capabilities._kv import MAX_VALUE, PAGE_KEYS
from .errors import InvalidConfig, InvalidRequest, IsolateError, NotFound, PayloadTooLarge
from .host import Host, ModuleInfo, VersionInfo
from .routing import RegionTable, Route, RouteTable
from .state import ServerState

if TYPE_CHECKING:
    from .manifest import Manifest

log = logging.getLogger("isolate.server")

ORIGIN = "origin"
"""Route option naming who added a route: "manifest" (owned by the manifest) or "api" (kept)."""
MANIFEST, API = "manifest", "api"


@dataclass(frozen=True, slots=True)
class ManifestResult:
    deployed: tuple[str, ...]
    routes: int
    dropped: tuple[str, ...]
    """Routes added through the API that could not be kept, each with the reason."""


@dataclass(frozen=True, slots=True)
class Change:
    """One control change this node applied, as another process of the node replays it."""

    kind: str
    """MODULE (a deploy, configuration, secrets, rollback or delete of `name`), ROUTES, REGIONS or PURGE."""
    name: str = ""
    selector: Mapping[str, Any] | None = None
    """PURGE: the keyword arguments of `ResponseCache.purge`."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "selector": dict(self.selector or {})}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Change:
        kind = raw.get("kind")
        if kind not in CHANGES:
            raise InvalidConfig(f"unknown control change {kind!r}")
        return cls(str(kind), str(raw.get("name", "")), dict(raw.get("selector") or {}))


class ModuleWriter(Protocol):
    """Where module changes are written: the `Host` (one node), or a cluster (`isolate.backends`)."""

    def deploy(self, name: str, wasm: bytes | str, *, limits: Mapping[str, Any] | None = None,
               variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
               kv_stores: Sequence[str] | None = None,
               secrets: Mapping[str, str | None] | None = None) -> VersionInfo: ...
    def configure(self, name: str, *, limits: Mapping[str, Any] | None = None,
                  variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
                  kv_stores: Sequence[str] | None = None,
                  secrets: Mapping[str, str | None] | None = None) -> ModuleInfo: ...
    def set_secrets(self, name: str, secrets: Mapping[str, str | None]) -> list[str]: ...
    def rollback(self, name: str, version: int | None = None) -> ModuleInfo: ...
    def delete(self, name: str) -> None: ...


class Replicator(ModuleWriter, Protocol):
    """A cluster a node belongs to (`isolate.backends.Cluster`): module changes and tables are written
    there (compare-and-set) and applied here, purges are broadcast. Called under the control lock."""

    def update_routes(self, compute: Callable[[RouteTable], RouteTable]) -> RouteTable: ...
    def update_regions(self, compute: Callable[[RegionTable], RegionTable]) -> RegionTable: ...
    def broadcast_purge(self, selector: Mapping[str, Any]) -> None: ...
    @property
    def available(self) -> bool: ...


MODULE, ROUTES, REGIONS, PURGE = "module", "routes", "regions", "purge"
CHANGES = (MODULE, ROUTES, REGIONS, PURGE)
_PURGE_KEYS = frozenset({"module", "route", "url", "everything"})


class Node:
    """Owns the host, the live tables and the response cache; applies the control-plane rules."""

    def __init__(self, host: Host, state: ServerState, cache: ResponseCache | None = None) -> None:
        self.host = host
        self.state = state
        self.cache = cache
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[Change], int | None]] = []
        self.cluster: Replicator | None = None
        """Set by `isolate.backends.join_cluster` (`serve --cluster`): changes go through it."""

    # -- replication to the other processes of this node ---------------------------------------

    def subscribe(self, subscriber: Callable[[Change], int | None]) -> None:
        """Call `subscriber` with every change applied from now on, in order, under the control lock."""
        self._subscribers.append(subscriber)

    def _changed(self, change: Change) -> int:
        """Tell every subscriber; returns what they purged (PURGE), summed."""
        return sum(subscriber(change) or 0 for subscriber in self._subscribers)

    @contextlib.contextmanager
    def control(self) -> Iterator[None]:
        """Hold off control changes for the duration (a worker joining the subscribers catches up in it)."""
        with self._lock:
            yield

    def replay(self, change: Change) -> int:
        """Apply a change another process of this node made: re-read what it wrote to the data directory.
        Returns the responses purged (PURGE)."""
        with self._lock:
            if change.kind == MODULE:
                self.host.refresh(change.name)
            elif change.kind in (ROUTES, REGIONS):
                self.state.reload()
            elif change.kind == PURGE:
                selector = dict(change.selector or {})
                if not set(selector) <= _PURGE_KEYS:
                    raise InvalidConfig(f"unknown purge selector {sorted(set(selector) - _PURGE_KEYS)}")
                return self.purge(**selector)
            self._changed(change)
            return 0

    def resync(self) -> None:
        """Re-read every module and table from the data directory and drop every cached response."""
        with self._lock:
            for name in self.host.stored_names():
                self.host.refresh(name)
            self.state.reload()
            self.purge(everything=True)

    # -- other nodes of a cluster ----------------------------------------------------------------

    def attach(self, cluster: Replicator) -> None:
        """Write every change through `cluster` from now on (`isolate.backends.join_cluster`)."""
        with self._lock:
            self.cluster = cluster

    def apply_remote(self, apply: Callable[[], Change | None], announce: bool = True) -> None:
        """Take a change another node made: `apply` adopts it under the control lock and returns the change
        (None: nothing new), which is announced to the subscribers with the purge the rules ask for."""
        with self._lock:
            change = apply()
            if change is not None and announce:
                self._announce(change)

    def _announce(self, change: Change) -> None:
        """Tell the subscribers of a change applied here, with the purge of this node's cache the rules
        ask for (a module's answers; every answer when routes change); no cluster broadcast."""
        if change.kind == PURGE:
            self._purge_here(dict(change.selector or {}))
            return
        self._changed(change)
        if change.kind == MODULE:
            self._purge_here({"module": change.name})
        elif change.kind == ROUTES:
            self._purge_here({"everything": True})

    @contextlib.contextmanager
    def _announced_if_failed(self, *changes: Change) -> Iterator[None]:
        """Around a cluster write of several steps (secrets, then the record; the record, then the
        secrets): should a later step fail, an earlier one is applied here already, so `changes` are
        announced all the same (with their purges), and the subscribers never diverge from this process."""
        try:
            yield
        except BaseException:
            if self.cluster is not None:
                for change in changes:
                    with contextlib.suppress(Exception):
                        self._announce(change)
            raise

    def _writer(self) -> ModuleWriter:
        return self.cluster if self.cluster is not None else self.host

    def _replace_routes(self, compute: Callable[[RouteTable], RouteTable]) -> RouteTable:
        """The route table `compute` makes of the current one, stored (in a cluster: compare-and-set)."""
        if self.cluster is not None:
            return self.cluster.update_routes(compute)
        table = compute(self.state.routes)
        self.state.replace_routes(table)
        return table

    def _replace_regions(self, compute: Callable[[RegionTable], RegionTable]) -> RegionTable:
        if self.cluster is not None:
            return self.cluster.update_regions(compute)
        table = compute(self.state.regions)
        self.state.replace_regions(table)
        return table

    # -- modules ------------------------------------------------------------------------------

    def deploy(self, name: str, wasm: bytes | str, *, limits: Mapping[str, Any] | None = None,
               variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
               kv_stores: Sequence[str] | None = None,
               secrets: Mapping[str, str | None] | None = None) -> VersionInfo:
        with self._lock, self._announced_if_failed(Change(MODULE, name)):
            info = self._writer().deploy(name, wasm, limits=limits, variables=variables, allowed_hosts=allowed_hosts,
                                    kv_stores=kv_stores, secrets=secrets)
            self._changed(Change(MODULE, name))
            self.purge(module=name)  # cached answers came from the old version
            return info

    def configure(self, name: str, *, limits: Mapping[str, Any] | None = None,
                  variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
                  kv_stores: Sequence[str] | None = None,
                  secrets: Mapping[str, str | None] | None = None) -> ModuleInfo:
        with self._lock, self._announced_if_failed(Change(MODULE, name)):
            info = self._writer().configure(name, limits=limits, variables=variables, allowed_hosts=allowed_hosts,
                                       kv_stores=kv_stores, secrets=secrets)
            self._changed(Change(MODULE, name))
            self.purge(module=name)  # new variables, grants or secrets can change every answer
            return info

    def set_secrets(self, name: str, secrets: Mapping[str, str | None]) -> list[str]:
        """Set (or, with None, remove) secrets of `name`, deployed or not yet: `isolate deploy --secret`
        sets them first, so the new version's first request sees them. Returns the secret names."""
        with self._lock, self._announced_if_failed(Change(MODULE, name)):
            names = self._writer().set_secrets(name, secrets)
            self._changed(Change(MODULE, name))
            self.purge(module=name)
            return names

    def set_build_error(self, name: str, message: str | None) -> None:
        """`isolate dev`: `name`'s sources fail to build with `message` (None: they build again). Until
        then its requests answer 503 `build_broken` with that message, never a cached or older answer."""
        with self._lock:
            self.host.set_broken(name, message)
            self.purge(module=name)

    # -- key-value stores (the operators' view of what guests store) ---------------------------

    def kv_get(self, store: str, key: bytes) -> bytes:
        check_store_name(store)
        check_key(key)
        value = self.host.kv.get(store, key)
        if value is None:
            raise NotFound(f"store {store!r} has no key {_show_key(key)}", store=store)
        return value

    def kv_set(self, store: str, key: bytes, value: bytes) -> None:
        check_store_name(store)
        check_key(key)
        if len(value) > MAX_VALUE:
            raise PayloadTooLarge(f"values are at most {MAX_VALUE} bytes, got {len(value)}", limit=MAX_VALUE)
        self.host.kv.set(store, key, value)

    def kv_delete(self, store: str, key: bytes) -> bool:
        check_store_name(store)
        check_key(key)
        return self.host.kv.delete(store, key)

    def kv_list(self, store: str, prefix: bytes = b"", cursor: bytes = b"", limit: int = PAGE_KEYS) -> Page:
        check_store_name(store)
        check_key(prefix, prefix=True)
        check_key(cursor, prefix=True)
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be within 1-1000")
        return self.host.kv.list(store, prefix, cursor, limit)

    def rollback(self, name: str, version: int | None = None) -> ModuleInfo:
        with self._lock:
            info = self._writer().rollback(name, version)
            self._changed(Change(MODULE, name))
            self.purge(module=name)
            return info

    def delete(self, name: str) -> int:
        """Delete a module and its routes in one step; returns how many routes went with it."""
        with self._lock:
            self.host.module(name)  # NotFound before anything changes
            removed = 0

            def without(current: RouteTable) -> RouteTable:
                nonlocal removed
                kept = [route for route in current.routes if route.module != name]
                removed = len(current.routes) - len(kept)
                return RouteTable.build(kept)

            if any(route.module == name for route in self.state.routes.routes):
                # Routes first: were the module deleted first, a crash in between would leave a
                # stored table naming a missing module.
                self._replace_routes(without)
                self._changed(Change(ROUTES))
            before = self.state.routes.to_list()
            with self._announced_if_failed(Change(MODULE, name)):
                self._writer().delete(name)  # in a cluster, it may take out routes written meanwhile
            if self.state.routes.to_list() != before:
                removed += len(before) - len(self.state.routes.routes)
                self._changed(Change(ROUTES))
            self._changed(Change(MODULE, name))
            self.purge(module=name)
            return removed

    # -- tables -------------------------------------------------------------------------------

    def set_routes(self, routes: Iterable[Route | Mapping[str, Any]], origin: str = API) -> RouteTable:
        """Validate a whole table, check every target is deployed, persist and swap it, in one step."""
        table = RouteTable.build(_with_origin(routes, origin))

        def checked(current: RouteTable) -> RouteTable:
            self._check_targets(table.routes)
            return table

        with self._lock:
            self._replace_routes(checked)
            self._changed(Change(ROUTES))
            self.purge(everything=True)  # a URL may now belong to another module
        return table

    def add_routes(self, routes: Iterable[Route | Mapping[str, Any]]) -> tuple[RouteTable, list[str]]:
        """Add routes to the table (origin "api"); returns the table and a warning per shadowed route."""
        with self._lock:
            added = [_route(r, API) for r in routes]

            def extended(current: RouteTable) -> RouteTable:
                table = RouteTable.build([*current.routes, *added])
                self._check_targets(table.routes)
                return table

            table = self._replace_routes(extended)
            self._changed(Change(ROUTES))
            self.purge(everything=True)  # a URL may now belong to another module
        return table, _shadow_warnings(table, added)

    def set_regions(self, table: RegionTable) -> RegionTable:
        with self._lock:
            self._replace_regions(lambda current: table)
            self._changed(Change(REGIONS))
        return table

    def purge(self, **selector: Any) -> int:
        """Drop cached responses (`ResponseCache.purge`'s selectors), here and in every subscriber;
        returns how many went, subscribers' included."""
        with self._lock:
            count = self._purge_here(selector)
            if self.cluster is not None:
                self.cluster.broadcast_purge(selector)
            return count

    def _purge_here(self, selector: dict[str, Any]) -> int:
        count = self.cache.purge(**selector) if self.cache is not None else 0
        return count + self._changed(Change(PURGE, selector=selector))

    def _check_targets(self, routes: Sequence[Route]) -> None:
        deployed = set(self.host.module_names())
        for index, route in enumerate(routes):
            if route.module not in deployed:
                raise InvalidConfig(f"route {index} ({route.host}{route.path}) refers to module {route.module!r}, "
                                    "which is not deployed", route=index)

    # -- the manifest -------------------------------------------------------------------------

    def apply_manifest(self, manifest: Manifest, regions: RegionTable | None = None) -> ManifestResult:
        """Deploy what changed, then set the manifest's routes beside the API's, then the region table.

        Precedence of region tables: `regions` (serve --regions FILE), then the manifest's own
        [regions], then the stored table; the manifest's module placement is merged into it.
        """
        from . import manifest as manifests

        with self._lock:
            if self.cluster is not None and not self.cluster.available:
                # Writes need the cluster; the node keeps serving what it has (its data directory, as
                # last synced) rather than refusing to start. The next start, or a deploy, applies it.
                log.warning("manifest %s not applied: the cluster is not reachable or not caught up yet; "
                            "serving this node's copy (restart once the cluster is back to apply it)", manifest.path)
                return ManifestResult((), len(self.state.routes.routes), ())
            deployed = manifests.apply(manifest, self.host, self._writer())
            for name in deployed:
                self._changed(Change(MODULE, name))
                self.purge(module=name)
            declared = [_route(raw, MANIFEST) for raw in manifest.routes]
            dropped: list[str] = []
            here = self.state.routes
            merged_here = self._merge_api_routes(declared, here)

            def merged(current: RouteTable) -> RouteTable:
                same = current.to_list() == here.to_list()
                table, dropped[:] = merged_here if same else self._merge_api_routes(declared, current)
                self._check_targets(table.routes)
                return table

            if merged_here[0].to_list() == here.to_list():  # nothing to write (a restart, as a rule)
                table = merged(here)
            else:
                table = self._replace_routes(merged)
                self._changed(Change(ROUTES))
                self.purge(everything=True)
            region_table = regions or manifest.regions
            if region_table is None and manifest.placement and not self.state.regions.empty:
                region_table = self.state.regions  # the stored table (PUT /v1/regions) gets it too
            if region_table is not None and manifest.placement:
                region_table = manifests.with_placement(region_table, manifest.placement)
            elif manifest.placement and self.state.regions.empty:
                log.info("manifest %s pins modules to regions, but this node has no region table: placement "
                         "applies once one is set (--regions, [regions.ID] or PUT /v1/regions)", manifest.path)
            if region_table is not None:
                final = region_table
                self._replace_regions(lambda current: final)
                self._changed(Change(REGIONS))
        for reason in dropped:
            log.warning("route dropped at start-up: %s", reason)
        return ManifestResult(tuple(deployed), len(table.routes), tuple(dropped))

    def _merge_api_routes(self, declared: list[Route], current: RouteTable) -> tuple[RouteTable, list[str]]:
        """The manifest's routes plus each stored API route that still fits, and why others do not."""
        deployed = set(self.host.module_names())
        # The rule of RouteTable.build: same shape, and both take every method or their lists meet.
        every = {route.shape: route for route in declared if route.methods is None}
        some = {(route.shape, m): route for route in declared for m in route.methods or ()}
        kept = list(declared)
        dropped: list[str] = []
        still = {_identity(route) for route in declared}
        for route in current.routes:
            if route.options.get(ORIGIN, MANIFEST) != API:
                # The manifest's own routes are replaced by the manifest: say which ones it no longer has.
                if _identity(route) not in still:
                    log.info("route removed at start-up: %s%s -> %s is no longer in the manifest", route.host,
                             route.path, route.module)
                continue
            where = f"{route.host}{route.path} -> {route.module} (added through the admin API)"
            if route.module not in deployed:
                dropped.append(f"{where}: module {route.module!r} is no longer deployed")
                continue
            rival = every.get(route.shape) if route.methods is None else \
                next((some[route.shape, m] for m in sorted(route.methods) if (route.shape, m) in some), None)
            if rival is not None:
                dropped.append(f"{where}: conflicts with the manifest's route {rival.host}{rival.path} -> "
                               f"{rival.module}")
                continue
            kept.append(route)
        return RouteTable.build(kept), dropped


def _show_key(key: bytes) -> str:
    return repr(key.decode()) if key.isascii() and key.decode().isprintable() else f"0x{key[:64].hex()}"


def _identity(route: Route) -> tuple[Any, ...]:
    return route.host, route.path, route.module, route.methods


def _route(raw: Route | Mapping[str, Any], origin: str) -> Route:
    if isinstance(raw, Route):
        return raw
    return RouteTable.build(_with_origin([raw], origin)).routes[0]


def _with_origin(routes: Iterable[Route | Mapping[str, Any]], origin: str) -> list[Route | Mapping[str, Any]]:
    """Routes tagged with who added them, unless already tagged (a table read back keeps its tags)."""
    out: list[Route | Mapping[str, Any]] = []
    for raw in routes:
        if isinstance(raw, Mapping):
            if raw.get(ORIGIN, origin) not in (MANIFEST, API):
                raise InvalidConfig(f"route origin must be {MANIFEST!r} or {API!r}: {raw.get(ORIGIN)!r}")
            raw = {**raw, ORIGIN: raw.get(ORIGIN, origin)}
        out.append(raw)
    return out


def _shadow_warnings(table: RouteTable, added: Sequence[Route]) -> list[str]:
    """For each added route, the more specific routes that take some of its requests."""
    warnings = []
    for route in added:
        try:
            others = table.shadowed(route)
        except IsolateError:
            continue
        for other in others:
            warnings.append(f"route {route.host}{route.path} -> {route.module} is shadowed by the more specific "
                            f"{other.host}{other.path} -> {other.module} for the requests both match")
    return warnings
