"""The edge's shared response cache for GET/HEAD: freshness from the guest's cache-control, vary, purge,
and request coalescing (concurrent misses for one key run the guest once).

What is stored (RFC 9111 for a shared cache, without revalidation, since the guest is the origin):
a response to GET whose status is cacheable by default, with `s-maxage` or `max-age` above 0
(`s-maxage` wins), and none of `no-store`, `private`, `no-cache`, `vary: *` or `set-cookie`.
Requests with `authorization` bypass the cache. HEAD is answered from a stored GET response; a HEAD
miss runs the guest and is not stored. Clients' own cache-control is ignored, as CDNs do, so a
client cannot make the guest run on every request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from ..abi import Response
from ._bounded import BoundedCache

# Statuses a shared cache may store given explicit freshness (RFC 9110 §15.1 "heuristically cacheable").
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
_ENTRY_OVERHEAD = 256  # bytes charged per entry besides body and headers
Headers = Sequence[tuple[bytes, bytes]]


@dataclass(slots=True)
class Entry:
    """One stored response, and what purges select it by."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    module: str
    route: str  # the route's path pattern, e.g. "/users/:id"
    url: str  # path and query as requested, e.g. "/users/7?full=1"
    stored: float
    expires: float
    size: int


@dataclass(frozen=True, slots=True)
class ResponseCacheStatistics:
    hits: int
    misses: int
    bypasses: int
    coalesced: int
    stores: int
    evictions: int
    purged: int
    entries: int
    bytes: int


def freshness(status: int, headers: Sequence[tuple[str, str]]) -> tuple[float, tuple[str, ...]] | None:
    """(seconds fresh, vary header names) if a shared cache may store this response, else None."""
    if status not in CACHEABLE_STATUSES:
        return None
    max_age: int | None = None
    s_maxage: int | None = None
    vary: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "cache-control":
            for directive in value.split(","):
                key, _, argument = directive.strip().partition("=")
                key = key.strip().lower()
                if key in ("no-store", "private", "no-cache"):
                    return None
                if key in ("max-age", "s-maxage"):
                    argument = argument.strip().strip('"')
                    if not (argument.isascii() and argument.isdigit()):
                        return None  # malformed freshness: RFC 9111 says treat as stale
                    if key == "max-age":
                        max_age = int(argument)
                    else:
                        s_maxage = int(argument)
        elif lowered == "vary":
            for field_name in value.split(","):
                field_name = field_name.strip().lower()
                if field_name == "*":
                    return None
                if field_name:
                    vary.append(field_name)
        elif lowered == "set-cookie":
            return None
    ttl = s_maxage if s_maxage is not None else max_age
    if not ttl:
        return None
    return float(ttl), tuple(sorted(set(vary)))


def _selector(vary: tuple[str, ...], headers: Headers) -> tuple[str, ...]:
    """The request's values of the vary headers (several fields of one name joined, as RFC 9110 allows)."""
    if not vary:
        return ()
    values: dict[str, list[str]] = {}
    wanted = {name.encode() for name in vary}
    for name, value in headers:
        if name in wanted:
            values.setdefault(name.decode(), []).append(value.decode("latin-1").strip())
    return tuple(", ".join(values.get(name, ())) for name in vary)


class ResponseCache:
    """Bounded by entries and bytes; used from the event loop only, so it needs no lock."""

    def __init__(self, max_entries: int, max_bytes: int, timer: Callable[[], float] = time.monotonic) -> None:
        self.timer = timer
        self._entries: BoundedCache[tuple[str, tuple[str, ...]], Entry] = BoundedCache(max_entries, max_bytes, timer)
        # key -> vary names of the response last stored. An LRU twice the entry bound: a key it drops
        # is one whose entries are older than any other's, and next in line for eviction anyway.
        self._vary: LRUCache[str, tuple[str, ...]] = LRUCache(2 * max_entries)
        # Keys whose last answer was not storable (no coalescing for them). A plain dict emptied when
        # full: it is consulted on every request, and losing it costs one round of waiting.
        self._max_keys = max_entries
        self._pass: dict[str, bool] = {}
        self._generation = 0  # bumped by every purge: an answer begun before a purge is not stored
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self.hits = self.misses = self.bypasses = self.coalesced = self.stores = self.purged = 0

    @staticmethod
    def key(host: str, path: str, query: str, client_region: str) -> str:
        # The client's region is part of the key: the guest sees it, so its answer may depend on it.
        return f"{host.lower()}\x00{path}\x00{query}\x00{client_region}"

    def lookup(self, key: str, headers: Headers) -> Entry | None:
        vary = self._vary.get(key)
        if vary is None:
            return None
        return self._entries.get((key, _selector(vary, headers)))

    def age(self, entry: Entry) -> int:
        return max(0, int(self.timer() - entry.stored))

    def store(self, key: str, headers: Headers, response: Response, module: str, route: str, url: str) -> bool:
        """Keep `response` if it may be shared; returns whether it was stored."""
        fresh = freshness(response.status, response.headers)
        if fresh is None:
            self._mark_pass(key)
            return False
        ttl, vary = fresh
        size = len(response.body) + sum(len(n) + len(v) for n, v in response.headers) + _ENTRY_OVERHEAD
        if size > self._entries.maxsize:
            self._mark_pass(key)
            return False
        now = self.timer()
        entry = Entry(response.status, list(response.headers), response.body, module, route, url, now, now + ttl, size)
        previous = self._vary.get(key)
        if previous != vary:
            if previous is not None:
                self._forget(key)  # entries under the old vary names can no longer be selected
            self._vary[key] = vary
        self._entries[(key, _selector(vary, headers))] = entry
        self._pass.pop(key, None)
        self.stores += 1
        return True

    def fetch_now(
        self, key: str, method: str, headers: Headers, run: Callable[[], Response] | None, module: str,
        route: str, url: str,
    ) -> tuple[Entry | None, Response | None] | None:
        """`fetch` for a guest run on the event loop (`run` returns at once; None: only a hit is wanted).
        None, without running it, on a miss when `run` is None or a miss for `key` is in progress,
        since this request should then wait for that one (`fetch`)."""
        entry = self.lookup(key, headers)
        if entry is not None:
            self.hits += 1
            return entry, None
        if run is None or (key not in self._pass and key in self._inflight):
            return None
        self.misses += 1
        generation = self._generation
        try:
            response = run()
        except BaseException:
            if method == "GET":
                self._mark_pass(key)
            raise
        if method == "GET" and generation == self._generation:
            self.store(key, headers, response, module, route, url)
        return None, response

    async def fetch(
        self, key: str, method: str, headers: Headers, run: Callable[[], Awaitable[Response]],
        module: str, route: str, url: str,
    ) -> tuple[Entry | None, Response | None]:
        """A stored entry (a hit), or the response of running the guest (a miss), which is stored if
        it may be. While one miss for `key` runs, others wait for it and then look again."""
        entry = self.lookup(key, headers)
        if entry is not None:
            self.hits += 1
            return entry, None
        passing = key in self._pass
        waiting = None if passing else self._inflight.get(key)
        if waiting is not None:
            await asyncio.shield(waiting)
            entry = self.lookup(key, headers)
            if entry is not None:
                self.hits += 1
                self.coalesced += 1
                return entry, None
        self.misses += 1
        if method != "GET":
            return None, await run()  # HEAD: no body to store
        leader = not passing and key not in self._inflight
        if leader:
            self._inflight[key] = asyncio.get_running_loop().create_future()
        generation = self._generation
        try:
            try:
                response = await run()
            except BaseException:
                self._mark_pass(key)  # a failing guest: let concurrent requests run rather than queue
                raise
            if generation == self._generation:  # else a purge (deploy, rollback, routes) came meanwhile
                self.store(key, headers, response, module, route, url)
            return None, response
        finally:
            if leader:
                self._inflight.pop(key).set_result(None)

    def _mark_pass(self, key: str) -> None:
        if key not in self._pass:
            if len(self._pass) >= self._max_keys:
                self._pass.clear()
            self._pass[key] = True

    def bypass(self) -> None:
        self.bypasses += 1

    def purge(self, *, module: str | None = None, route: str | None = None, url: str | None = None,
              everything: bool = False) -> int:
        """Drop the entries of a module, of a route (its path pattern) or of one URL (path?query)."""
        self._generation += 1
        if everything:
            count = len(self._entries)
            self._entries.clear()
            self._vary.clear()
        else:
            doomed = [k for k, e in self._entries.scan()
                      if (module is not None and e.module == module) or (route is not None and e.route == route)
                      or (url is not None and e.url == url)]
            for k in doomed:
                self._entries.pop(k, None)
            count = len(doomed)
        self.purged += count
        return count

    def _forget(self, key: str) -> None:
        for k in [k for k, _ in self._entries.scan() if k[0] == key]:
            self._entries.pop(k, None)

    def statistics(self) -> ResponseCacheStatistics:
        return ResponseCacheStatistics(
            self.hits, self.misses, self.bypasses, self.coalesced, self.stores, self._entries.evictions,
            self.purged, len(self._entries), int(self._entries.currsize),
        )
