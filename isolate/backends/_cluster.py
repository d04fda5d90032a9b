"""`Cluster`: a node's control changes through NATS JetStream, and every other node's applied here.

What lives where (one JetStream domain shared by every node):

    object store  isolate_modules   module bytes, named by their sha256 digest
    KV            isolate_control   module.<name>   a module's record (versions, active, limits, variables,
                                                    grants) or {"deleted": true, "next_version": N}
                                    secrets.<name>  a module's secrets (a JSON map)
                                    table.routes    the route table; table.regions: the region table
    subject       isolate.purge     purges, broadcast to every node

A write through any node reads the key's current entry, computes the new value from it (the version
number, a merged table) and writes it with compare-and-set on the entry's revision, retrying on a
conflict: two nodes deploying one name at once get one version order and lose nothing. It is then
applied here at once (written to the local data directory, so a restart without NATS still serves)
and announced by the `Node`. Every node watches the KV and applies each entry it has not applied
yet: module bytes are fetched when missing, checked against their digest, validated and compiled
here (never another node's artifact). On (re)connection a node reads every current entry again
before it counts as caught up; until then, and while NATS is unreachable, writes fail with 503
`cluster_unavailable` and the node serves what it has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nats.js.errors

from ..capabilities._secrets import MAX_SECRETS_SIZE, check_secret
from ..errors import ClusterUnavailable, InvalidConfig, IsolateError, NotFound, StorageError
from ..host import Host, ModuleInfo, StagedVersion, VersionInfo
from ..node import _PURGE_KEYS, MODULE, PURGE, REGIONS, ROUTES, Change, Node
from ..registry import ModuleRecord, validate_name
from ..registry._store import with_version
from ..routing import RegionTable, RouteTable
from ._nats import Connection, show_url

log = logging.getLogger("isolate.cluster")

CONTROL_BUCKET = "isolate_control"
MODULES_BUCKET = "isolate_modules"
PURGE_SUBJECT = "isolate.purge"
ROUTES_KEY, REGIONS_KEY = "table.routes", "table.regions"
TIMEOUT = 5.0  # seconds one NATS operation of a control change may take
CATCH_UP = 10.0  # seconds start-up waits for the first catch-up before serving degraded
ATTEMPTS = 50  # compare-and-set rounds before a write gives up (only under heavy contention)
RETRY_FIRST, RETRY_MAX = 0.5, 30.0  # seconds before an entry that failed to apply is tried again (doubling)
FETCH_RATE = 10e6  # bytes a second a module's bytes are given to arrive, on top of TIMEOUT


class Cluster:
    """A node's membership in a cluster: the write paths `Node` delegates to, and the watcher."""

    def __init__(self, node: Node, url: str, name: str) -> None:
        self.node = node
        self.host: Host = node.host
        self.url = url
        self.shown = show_url(url)  # what is displayed: without credentials
        self.name = name
        self.connection = Connection(url, name)
        self.connection.on_connect.append(self._catch_up)
        self.connection.on_disconnect.append(self._lost)
        self._control: Any = None  # the KV bucket
        self._objects: Any = None  # the object store
        self._watch: asyncio.Task[None] | None = None
        self._synced = threading.Event()
        # Per key, the revision and value last applied here (under the node's control lock).
        self._known: dict[str, tuple[int, bytes]] = {}
        # Remote changes are applied one at a time, in order, off the NATS loop (they take the
        # node's control lock, which a local write holds while it waits on the loop).
        self._applier = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="isolate-cluster")
        self._purges: Any = None
        # Entries that failed to apply here, per key: (value, revision, resync, attempts). Retried with
        # back-off (the applier thread only); while any is pending the node is not synced.
        self._failed: dict[str, tuple[bytes, int, bool, int]] = {}
        # Entries this node cannot take whatever the retries (a region table without its region), per
        # key: why. It keeps what it had, reports itself not synced, and takes the key's next entry.
        self._refused: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, wait: float = CATCH_UP) -> bool:
        """Connect and catch up with every current entry, waiting up to `wait` seconds; whether it did.
        If not, the node serves what it has and catches up in the background once NATS answers."""
        self.connection.start()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._synced.wait(0.02):
                return True
            if self.connection.attempted.is_set() and not self.connection.connected:
                break  # NATS refused the first attempt: no point waiting for it
        log.warning("cluster: not caught up with %s (%s); serving what this node has until it is", self.shown,
                    self.connection.last_error or f"no answer within {wait:g} s")
        return False

    def close(self) -> None:
        self.connection.close()
        self._applier.shutdown(wait=False, cancel_futures=True)

    @property
    def available(self) -> bool:
        """Connected and caught up: changes are taken."""
        return self.connection.connected and self._synced.is_set()

    def status(self) -> dict[str, Any]:
        pending, refused = sorted(self._failed), dict(self._refused)
        status: dict[str, Any] = {"url": self.shown, "connected": self.connection.connected,
                                  "synced": self._synced.is_set() and not pending and not refused,
                                  "error": None if self.available else self.connection.last_error}
        if refused:
            status["refused"] = refused
            status["error"] = status["error"] or "; ".join(refused.values())
        if pending:
            status["pending"] = pending
            status["error"] = status["error"] or f"cannot apply {', '.join(pending)} yet (retrying)"
        return status

    def _require(self) -> None:
        if not self.available:
            why = "catching up" if self.connection.connected else "unreachable"
            raise ClusterUnavailable(f"the cluster's NATS at {self.shown} is {why}: this node serves what it has "
                                     "but takes no change; try again once it is back", cluster=self.shown)

    # -- catching up and watching (on the NATS loop) ------------------------------------------

    def _lost(self) -> None:
        self._synced.clear()

    async def _catch_up(self) -> None:
        """After every (re)connection: open the buckets, then read every entry again and watch."""
        self._synced.clear()
        if self._watch is not None:  # every entry is read again: what failed is retried with it
            await asyncio.get_running_loop().run_in_executor(self._applier, self._clear_failures)
        js = self.connection.js
        self._control = await _bucket(js, CONTROL_BUCKET)
        try:
            self._objects = await js.object_store(MODULES_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self._objects = await js.create_object_store(MODULES_BUCKET)
        if self._purges is None:
            self._purges = await self.connection.client.subscribe(PURGE_SUBJECT, cb=self._purged)
        if self._watch is not None:
            self._watch.cancel()
        watcher = await self._control.watchall()
        self._watch = asyncio.get_running_loop().create_task(self._follow(watcher))

    async def _follow(self, watcher: Any) -> None:
        loop = asyncio.get_running_loop()
        resync = True  # until the first None: the current entries, compared by value
        try:
            async for entry in watcher:
                if entry is None:
                    if resync:
                        resync = False
                        self._synced.set()
                        log.info("cluster: caught up with %s (%d modules, %d routes)", self.shown,
                                 len(self.host.module_names()), len(self.node.state.routes.routes))
                    continue
                await loop.run_in_executor(self._applier, self._apply_entry, entry.key, entry.value or b"",
                                           int(entry.revision or 0), resync)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.connection.closed:
                return
            log.exception("cluster: watching %s failed; catching up again", self.shown)
            self._synced.clear()
            loop.call_later(1.0, lambda: loop.create_task(self._catch_up()))
        finally:
            with _suppress():
                await watcher.stop()

    async def _purged(self, msg: Any) -> None:
        try:
            body = json.loads(msg.data)
            if body.get("origin") == self.name:
                return
            change = Change.from_dict({"kind": PURGE, "selector": body.get("selector") or {}})
            if not set(change.selector or {}) <= _PURGE_KEYS:
                raise ValueError(f"unknown purge selector {sorted(change.selector or {})}")
        except (ValueError, AttributeError, IsolateError) as exc:
            log.warning("cluster: ignoring a malformed purge message: %s", exc)
            return
        await asyncio.get_running_loop().run_in_executor(
            self._applier, lambda: self.node.apply_remote(lambda: change))

    # -- applying an entry (the applier thread, or a local write under the control lock) ------

    def _apply_entry(self, key: str, value: bytes, revision: int, resync: bool, attempts: int = 0) -> None:
        try:
            self._fetch(key, value)
            self.node.apply_remote(lambda: self._adopt_if_new(key, value, revision, resync))
        except _Unservable as exc:  # no retry makes it servable: only a newer entry can
            log.error("cluster: not applying %s (revision %d): %s", key, revision, exc.detail)
            self._failed.pop(key, None)
            self._refused[key] = f"{key} (revision {revision}) not applied: {exc.detail}"
            return
        except Exception as exc:  # one bad entry must not stop the watcher: it is retried, with back-off
            detail = exc.detail if isinstance(exc, IsolateError) else repr(exc)
            delay = min(RETRY_FIRST * 2 ** attempts, RETRY_MAX)
            log.error("cluster: cannot apply %s (revision %d): %s; trying again in %g s", key, revision, detail,
                      delay)
            self._failed[key] = (value, revision, resync, attempts + 1)
            with _suppress():
                self.connection.loop.call_soon_threadsafe(self.connection.loop.call_later, delay,
                                                          self._retry_later, key, revision)
            return
        self._failed.pop(key, None)  # this entry, or a newer one, is applied
        self._refused.pop(key, None)

    def _clear_failures(self) -> None:
        self._failed.clear()
        self._refused.clear()

    def _retry_later(self, key: str, revision: int) -> None:
        with _suppress():  # the applier is shut down once the node closes
            self._applier.submit(self._retry, key, revision)

    def _retry(self, key: str, revision: int) -> None:
        failed = self._failed.get(key)
        if failed is None or failed[1] != revision:
            return  # applied since, or superseded by a newer entry (retried on its own schedule)
        value, _, resync, attempts = failed
        self._apply_entry(key, value, revision, resync, attempts)

    def _adopt_if_new(self, key: str, value: bytes, revision: int, resync: bool) -> Change | None:
        known = self._known.get(key)
        if known is not None and (known[1] == value if resync else revision <= known[0]):
            return None
        change = self._adopt(key, value)
        self._known[key] = (revision, value)
        return change

    def _fetch(self, key: str, value: bytes) -> None:
        """A module record whose bytes this node lacks: fetch them, check, validate and compile them here."""
        if not key.startswith("module.") or not value:
            return
        entry = _module_entry(value)
        if not isinstance(entry, ModuleRecord):
            return
        digest = entry.version().digest
        if self.host.has_wasm(digest):
            return
        size = entry.version().size  # a large module is given the time its bytes take to arrive
        result = self.connection.call(self._objects.get(digest), TIMEOUT + size / FETCH_RATE)
        self.host.receive(entry, bytes(result.data))

    def _adopt(self, key: str, value: bytes) -> Change | None:
        """Make this node's copy of `key` say `value`; the change to announce (None: it said so already,
        as after a restart or a reconnection: nothing is rewritten, nothing purged)."""
        kind, _, name = key.partition(".")
        if kind == "module":
            validate_name(name)
            entry = _module_entry(value) if value else _Tombstone(self._next_version(name))
            local = self.host.record(name)
            if isinstance(entry, ModuleRecord):
                if entry.name != name:
                    raise StorageError(f"cluster entry {key} holds module {entry.name!r}")
                if not self.host.has_wasm(entry.version().digest):
                    self._fetch(key, value)
                elif local == entry:
                    return None
                self.host.adopt(entry)
            else:
                if local is None and self.host.first_version(name) == entry.next_version:
                    return None
                self.host.forget(name, entry.next_version)
            return Change(MODULE, name)
        if kind == "secrets":
            validate_name(name)
            secrets = _secrets(value)
            try:
                if dict(self.host.secrets.values(name)) == secrets:
                    return None
            except IsolateError:
                pass  # damaged here: written again
            self.host.adopt_secrets(name, secrets)
            return Change(MODULE, name)
        if key == ROUTES_KEY:
            routes = _routes(value)
            if routes.to_list() == self.node.state.routes.to_list():
                return None
            self.node.state.replace_routes(routes)
            return Change(ROUTES)
        if key == REGIONS_KEY:
            regions = _regions(value)
            if regions.to_dict() == self.node.state.regions.to_dict():
                return None
            try:
                self.node.state.check_regions(regions)
            except InvalidConfig as exc:  # this node keeps its table, and says why it is not synced
                raise _Unservable(f"{exc.detail}; this node keeps its previous region table until one that "
                                  "defines its region is set") from None
            self.node.state.replace_regions(regions)
            return Change(REGIONS)
        log.warning("cluster: ignoring unknown key %s", key)
        return None

    def _next_version(self, name: str) -> int:
        record = self.host.record(name)
        return record.next_version if record is not None else self.host.first_version(name)

    # -- writes (called by Node, under its control lock) --------------------------------------

    def _cas(self, key: str, compute: Callable[[bytes | None], bytes]) -> bytes:
        """Compare-and-set `key` to `compute(current value)`, retried on conflict; applied here after."""
        self._require()
        call = self.connection.call
        for _ in range(ATTEMPTS):
            try:
                entry = call(self._control.get(key), TIMEOUT)
                current, revision = (entry.value or None), int(entry.revision)
            except nats.js.errors.KeyNotFoundError:  # KeyDeletedError is one too
                current, revision = None, 0
            value = compute(current)
            try:
                if revision:
                    new = call(self._control.update(key, value, last=revision), TIMEOUT)
                else:
                    new = call(self._control.create(key, value), TIMEOUT)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another node wrote first: compute again from its value
            except nats.js.errors.APIError as exc:
                if getattr(exc, "err_code", None) == 10071 or "wrong last sequence" in str(exc):
                    continue
                raise ClusterUnavailable(f"NATS refused the change of {key}: {exc}", cluster=self.shown) from None
            # Applied here before the caller answers, its bytes fetched first if this node lacks them (a
            # rollback or a PATCH through a node the deploy has not reached yet). The change is committed
            # now: failing to apply it here is not failing it (a client retrying a rollback would roll
            # back twice). The watcher applies it, with its retries, and status() says until it has.
            try:
                self._fetch(key, value)
                self.node.apply_remote(functools.partial(self._adopt_if_new, key, value, int(new), False),
                                       announce=False)
            except Exception as exc:
                detail = exc.detail if isinstance(exc, IsolateError) else repr(exc)
                log.warning("cluster: %s is written (revision %d) but not applied here yet: %s", key, int(new), detail)
            return value
        raise ClusterUnavailable(f"{key} kept changing under this write ({ATTEMPTS} attempts); try again",
                                 cluster=self.shown)

    def deploy(self, name: str, wasm: bytes | str, *, limits: Mapping[str, Any] | None = None,
               variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
               kv_stores: Sequence[str] | None = None,
               secrets: Mapping[str, str | None] | None = None) -> VersionInfo:
        self._require()
        validate_name(name)
        checked: tuple[ModuleRecord | None, StagedVersion] | None = None
        if secrets:  # first: the new version's first request already sees them
            # But only once the module is staged (checked, validated, compiled): a refused deploy
            # writes nothing, its secrets included.
            local = self.host.record(name)
            checked = (local, self.host.stage(name, wasm, previous=local, limits=limits, variables=variables,
                                              allowed_hosts=allowed_hosts, kv_stores=kv_stores, secrets=secrets))
            self.set_secrets(name, secrets)
        uploaded: set[str] = set()

        def compute(current: bytes | None) -> bytes:
            entry = _module_entry(current) if current else None
            previous = entry if isinstance(entry, ModuleRecord) else None
            if checked is not None and checked[0] == previous:
                staged = checked[1]  # staged against this very record above
            else:
                staged = self.host.stage(name, wasm, previous=previous, limits=limits, variables=variables,
                                         allowed_hosts=allowed_hosts, kv_stores=kv_stores)
            if staged.digest not in uploaded:
                self._upload(staged.digest, staged.wasm)
                self.host.install(staged)
                uploaded.add(staged.digest)
            first = entry.next_version if isinstance(entry, _Tombstone) else self.host.first_version(name)
            record = with_version(previous, first, name, staged.digest, staged.size, staged.compile_ms,
                                  staged.overrides, staged.variables, staged.kind, allowed_hosts=staged.allowed_hosts,
                                  kv_stores=staged.kv_stores)
            return record.to_json()

        record = ModuleRecord.from_json(self._cas(f"module.{name}", compute))
        version = record.version()
        return VersionInfo(name, version.version, version.digest, version.size, version.created, version.compile_ms,
                           version.kind)

    def _upload(self, digest: str, wasm: bytes) -> None:
        try:
            self.connection.call(self._objects.get_info(digest), TIMEOUT)
            return  # content-addressed: already there
        except nats.js.errors.NotFoundError:
            pass
        self.connection.call(self._objects.put(digest, wasm), TIMEOUT + len(wasm) / FETCH_RATE)

    def configure(self, name: str, *, limits: Mapping[str, Any] | None = None,
                  variables: Mapping[str, str] | None = None, allowed_hosts: Sequence[str] | None = None,
                  kv_stores: Sequence[str] | None = None,
                  secrets: Mapping[str, str | None] | None = None) -> ModuleInfo:
        self._require()

        def compute(current: bytes | None) -> bytes:
            record = self._live(name, current)
            return self.host.reconfigured(record, limits=limits, variables=variables, allowed_hosts=allowed_hosts,
                                          kv_stores=kv_stores, secrets=secrets).to_json()

        # A module deployed through another node a moment ago may not have reached this one yet: the
        # cluster's record is the one that counts (a PATCH right after a deploy elsewhere was a 404).
        local = self.host.record(name) or self._record_in_cluster(name)
        if local is None:
            raise NotFound(f"no module named {name!r}", module=name)
        if secrets:  # checked with the other settings before anything is written
            self.host.reconfigured(local, limits=limits, variables=variables, allowed_hosts=allowed_hosts,
                                   kv_stores=kv_stores, secrets=secrets)
            self.set_secrets(name, secrets)
        return self._info_of(name, self._cas(f"module.{name}", compute))

    def set_secrets(self, name: str, secrets: Mapping[str, str | None]) -> list[str]:
        validate_name(name)
        if not isinstance(secrets, Mapping):
            raise InvalidConfig("secrets must map names to values (or null to remove one)")
        local = self.host.record(name)
        if local is not None:  # a secret and a variable never share a name
            self.host.reconfigured(local, secrets=secrets)

        def compute(current: bytes | None) -> bytes:
            values = dict(_secrets(current or b"{}"))
            for key, value in secrets.items():
                check_secret(key, value)
                if value is None:
                    values.pop(key, None)
                else:
                    values[key] = value
            if sum(len(k) + len(v) for k, v in values.items()) > MAX_SECRETS_SIZE:
                raise InvalidConfig(f"secrets exceed {MAX_SECRETS_SIZE} bytes in all (they travel with every request)")
            return json.dumps(values, sort_keys=True).encode()

        return sorted(json.loads(self._cas(f"secrets.{name}", compute)))

    def rollback(self, name: str, version: int | None = None) -> ModuleInfo:
        return self._info_of(name, self._cas(
            f"module.{name}", lambda current: Host.rolled_back(self._live(name, current), version).to_json()))

    def _info_of(self, name: str, written: bytes) -> ModuleInfo:
        """The module as this node now serves it, or as written if it is not applied here yet."""
        try:
            return self.host.module(name)
        except NotFound:
            return self.host.describe(self._live(name, written))

    def delete(self, name: str) -> None:
        def compute(current: bytes | None) -> bytes:
            record = self._live(name, current)
            return json.dumps({"format": 1, "name": name, "deleted": True,
                               "next_version": record.next_version}).encode()

        self._cas(f"module.{name}", compute)
        if self.host.secrets.names(name):
            self._cas(f"secrets.{name}", lambda current: b"{}")
        # A node that had not applied this delete yet may have written routes to it meanwhile (its
        # check read the live record): taken out again now that the tombstone is there.
        def without(current: RouteTable) -> RouteTable:
            if not any(route.module == name for route in current.routes):
                raise _Unchanged
            return RouteTable.build([route for route in current.routes if route.module != name])

        try:
            self.update_routes(without)
        except _Unchanged:
            pass

    def update_routes(self, compute: Callable[[RouteTable], RouteTable]) -> RouteTable:
        def write(current: bytes | None) -> bytes:
            before = _routes(current or b"")
            table = compute(before)
            self._check_live(table, {route.module for route in before.routes})
            return _routes_json(table)

        return _routes(self._cas(ROUTES_KEY, write))

    def _check_live(self, table: RouteTable, named: set[str]) -> None:
        """Every module `table` names that the current table (naming `named`) did not is live in the
        cluster's KV, not only here: this node may not have applied another node's delete yet. A
        delete takes its module's routes out before its tombstone and again after it (`delete`), so
        no stored table keeps naming a deleted module: a write either reads the tombstone here, or
        lands before that second pass, which then takes the route out again."""
        seen = set(named)
        for index, route in enumerate(table.routes):
            if route.module in seen:
                continue
            try:
                entry = self.connection.call(self._control.get(f"module.{route.module}"), TIMEOUT)
                value = entry.value or b""
            except nats.js.errors.KeyNotFoundError:
                value = b""
            if not value or not isinstance(_module_entry(value), ModuleRecord):
                raise InvalidConfig(f"route {index} ({route.host}{route.path}) refers to module {route.module!r}, "
                                    "which is not deployed in the cluster", route=index)
            seen.add(route.module)

    def update_regions(self, compute: Callable[[RegionTable], RegionTable]) -> RegionTable:
        def write(current: bytes | None) -> bytes:
            table = self.node.state.check_regions(compute(_regions(current or b"")))
            return json.dumps(table.to_dict(), sort_keys=True).encode()

        return _regions(self._cas(REGIONS_KEY, write))

    def broadcast_purge(self, selector: Mapping[str, Any]) -> None:
        """Tell every other node to purge (best effort: a node that misses it catches up on its own)."""
        client = self.connection.client
        if client is None or not self.connection.connected:
            return
        body = json.dumps({"origin": self.name, "selector": dict(selector)}, default=str).encode()
        with _suppress():
            self.connection.call(client.publish(PURGE_SUBJECT, body), TIMEOUT)

    def _record_in_cluster(self, name: str) -> ModuleRecord | None:
        """`name`'s record as the cluster has it now (None: not deployed, or deleted)."""
        try:
            entry = self.connection.call(self._control.get(f"module.{name}"), TIMEOUT)
        except nats.js.errors.KeyNotFoundError:
            return None
        record = _module_entry(entry.value) if entry.value else None
        return record if isinstance(record, ModuleRecord) else None

    def _live(self, name: str, current: bytes | None) -> ModuleRecord:
        entry = _module_entry(current) if current else None
        if not isinstance(entry, ModuleRecord):
            raise NotFound(f"no module named {name!r}", module=name)
        return entry


class _Unservable(InvalidConfig):
    """A region table that does not define this node's region."""


class _Unchanged(Exception):
    """A compare-and-set with nothing to write."""


class _Tombstone:
    __slots__ = ("next_version",)

    def __init__(self, next_version: int) -> None:
        self.next_version = next_version


def _module_entry(value: bytes) -> ModuleRecord | _Tombstone:
    try:
        body = json.loads(value)
        if isinstance(body, dict) and body.get("deleted") is True:
            number = body.get("next_version")
            if type(number) is not int or number < 1:
                raise ValueError(f"bad next_version {number!r}")
            return _Tombstone(number)
        return ModuleRecord.from_json(value)
    except ValueError as exc:
        raise StorageError(f"a module entry in the cluster cannot be read: {exc}") from None


def _secrets(value: bytes) -> dict[str, str]:
    try:
        body = json.loads(value or b"{}")
    except ValueError as exc:
        raise StorageError(f"a secrets entry in the cluster cannot be read: {exc}") from None
    if not isinstance(body, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in body.items()):
        raise StorageError("a secrets entry in the cluster is not a map of strings")
    return body


def _routes(value: bytes) -> RouteTable:
    try:
        body = json.loads(value) if value else {}
    except ValueError as exc:
        raise StorageError(f"the cluster's route table cannot be read: {exc}") from None
    return RouteTable.build(body.get("routes", []) if isinstance(body, dict) else body)


def _routes_json(table: RouteTable) -> bytes:
    return json.dumps({"routes": table.to_list()}, sort_keys=True).encode()


def _regions(value: bytes) -> RegionTable:
    try:
        body = json.loads(value) if value else {}
    except ValueError as exc:
        raise StorageError(f"the cluster's region table cannot be read: {exc}") from None
    return RegionTable.build(body) if body else RegionTable()


async def _bucket(js: Any, name: str) -> Any:
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(bucket=name, history=1)
        except nats.js.errors.APIError:  # another node created it meanwhile
            return await js.key_value(name)


class _suppress:
    """Log and swallow the failures of best-effort work."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            log.debug("cluster: best-effort step failed: %r", exc)
            return True
        return False
