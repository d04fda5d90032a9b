"""The edge listener: match a route, pick the region, answer from the cache or a fresh isolate, reply.

A raw ASGI app rather than Starlette routing: every microsecond here is per request, and the route
table, body limits and error mapping are all the framework this path needs. The steps (`_scan` the
header fields, `_match` a route, `_client_region`, run or look up, `_answer`, `_done`) are shared by
two entries: `__call__`, the ASGI app, and `answer_now`, which the HTTP protocol calls for a request
without a body before making it an ASGI cycle. When such a request needs no waiting (its module runs
inline on the loop, or the cache holds its answer), `answer_now` answers it then and there, with no
Task, no ASGI messages and no cycle: those cost more than the rest of the request together.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from .. import tracing
from ..abi import Request, Response
from ..cache import Entry, ResponseCache
from ..config import ServerConfig
from ..engine import construct
from ..errors import (
    ForwardFailed,
    ForwardingLoop,
    IsolateError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RegionUnavailable,
    UnknownRegion,
    UriTooLong,
)
from ..host import Host
from ..routing import REGION_PATTERN, Match
from ..state import ServerState
from ._dispatch import Dispatcher
from ._errors import REQUEST_ID, Reply, as_isolate_error, log_guest_failure, new_request_id, render
from ._forward import CLIENT_REGION, FORWARDED_BY, Forwarder, RelayBroken
from ._health import HEALTH_PATH
from ._hops import HOP, HOPS
from ._logs import clean, defer_log, guest_lines
from ._metrics import Metrics

access_log = logging.getLogger("isolate.access")
guest_log = logging.getLogger("isolate.guest")

# Guest headers that would break framing, or say where and how a request ran, are dropped: the
# server owns these (and every `x-isolate-*` name, see `_guest_headers`).
RESERVED_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "x-request-id",
    "x-cache", "server-timing", "server", "age", "date",
})
_RESERVED_PREFIX = "x-isolate-"
# Statuses whose responses never carry a body (RFC 9110 §6.4.1); HEAD answers carry none either.
_NO_BODY = frozenset({204, 304})
_JSON = (b"content-type", b"application/json")
_REGION = re.compile(REGION_PATTERN)
_HIT, _MISS, _BYPASS = b"HIT", b"MISS", b"BYPASS"
_HOP_HEADERS = frozenset({FORWARDED_BY, CLIENT_REGION, HOP, HOPS})
_now = time.perf_counter


# What `_scan` reads from the header fields: host, the client's request id ("" if none or invalid),
# content-length (None if none or not a number), x-isolate-region, the claimed forwarding node and
# client region, the hop signature (None: no hop header came; b"": only unsigned ones), authorization.
_Scanned = tuple[str, str, "int | None", str, str, str, "bytes | None", bool]


def _scan(headers: Any) -> _Scanned:
    """Parse step: what the edge reads from a request's header fields, in one pass."""
    host = request_id = asked_region = forwarded_by = client_region = ""
    declared: int | None = None
    hop: bytes | None = None
    private = False
    for key, value in headers:
        if key == b"host":
            host = value.decode("latin-1")
        elif key == b"x-request-id":
            if REQUEST_ID.fullmatch(value):
                request_id = value.decode("latin-1")
        elif key == b"content-length":
            declared = int(value) if value.isdigit() else None
        elif key[:10] == b"x-isolate-":
            if key == b"x-isolate-region":
                asked_region = value.decode("latin-1").strip().lower()
            elif key == FORWARDED_BY:
                forwarded_by = value.decode("latin-1")
                hop = hop or b""
            elif key == CLIENT_REGION:
                client_region = value.decode("latin-1")
                hop = hop or b""
            elif key == HOP:
                hop = value
            elif key == HOPS:
                hop = hop or b""
        elif key == b"authorization":
            private = True
    return host, request_id, declared, asked_region, forwarded_by, client_region, hop, private


def _guest_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """A guest's (or cached) headers without those the server owns."""
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname not in RESERVED_HEADERS and not lname.startswith(_RESERVED_PREFIX):
            out.append((lname.encode("latin-1"), value.encode("latin-1")))
    return out


def _framed(status: int, method: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Add the length and return what may be sent: no body (nor length) for 204/304, none for HEAD."""
    if status in _NO_BODY:
        return b""
    if status == 205:  # Reset Content: no content, said with a zero length (RFC 9110 §15.3.6)
        headers.append((b"content-length", b"0"))
        return b""
    headers.append((b"content-length", str(len(body)).encode()))
    return b"" if method == "HEAD" else body


class _Disconnected(Exception):
    pass


class EdgeApp:
    """Route → region (run here, or forward) → response cache → isolate → reply."""

    def __init__(self, host: Host, state: ServerState, config: ServerConfig, metrics: Metrics,
                 dispatcher: Dispatcher, cache: ResponseCache | None = None,
                 forwarder: Forwarder | None = None) -> None:
        self.host = host
        self.state = state
        self.config = config
        self.metrics = metrics
        self.dispatcher = dispatcher
        self.cache = cache
        self.forwarder = forwarder
        self.region = state.local_region
        self._region_header = (b"x-isolate-region", self.region.encode())
        self._health_body = json.dumps({"status": "ok", "region": self.region, "node": config.node_name}).encode()
        self.tracing = tracing.enabled()  # read once: when off, a request costs one check of this

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        started = _now()
        headers = scope["headers"]
        host, request_id, declared, asked_region, forwarded_by, client_region, hop, private = _scan(headers)
        if not request_id:
            request_id = new_request_id()
        if hop is not None:  # trusted only when signed by a node of this cluster, else the request is a client's
            forwarded_by, client_region, headers = self._hop(scope, hop, forwarded_by, client_region, request_id)
        span = None
        if self.tracing and scope["path"] != HEALTH_PATH:  # nodes check each other every second: not traced
            span, send = tracing.request(scope, request_id, started, send)
        method = scope["method"]
        path = scope["path"]
        module = "-"
        route = "none"  # the route's pattern, once one matched: a metrics label
        try:
            if path == HEALTH_PATH and not self._too_long(scope):
                await _send(send, self._health(request_id))
                return
            match = self._match(scope, host, path, method, declared)
            module = match.route.module
            route = match.route.path
            client_region = self._client_region(scope, module, asked_region, forwarded_by, client_region)
            if not forwarded_by and not self.state.regions.empty and await self._route_elsewhere(
                    scope, receive, send, module, client_region, request_id, started, span, route):
                return
            routed = _now()
            if span is not None:
                tracing.routed(span, started, module, route, self.region, client_region)
            # Read before the cache: a request that leads a coalesced miss must not wait on its client.
            body = await _read_body(receive, self.config.max_body_size)

            def request() -> Request:  # made when the guest runs, not for a cache hit
                return self._request(scope, headers, body, match, client_region, request_id)

            cache = self.cache
            if cache is None or not _cacheable(method, private, match):
                if cache is not None:
                    cache.bypass()
                response, queued = await self.dispatcher.run(module, self.host.invoke, module, request(), span)
                x_cache = _BYPASS
            else:
                waited = [0.0]

                async def invoke() -> Response:
                    response, waited[0] = await self.dispatcher.run(module, self.host.invoke, module, request(),
                                                                    span)
                    return response

                key, url = _cache_key(cache, scope, host, client_region)
                lookup = tracing.cache(span) if span is not None else None
                try:
                    entry, fresh = await cache.fetch(key, method, headers, invoke, module, route, url)
                except BaseException:
                    if lookup is not None:  # a miss whose guest failed (its own span says how)
                        tracing.cached(lookup, False)
                    raise
                if lookup is not None:
                    tracing.cached(lookup, entry is not None)
                if entry is not None:
                    await _send(send, self._from_cache(entry, request_id, method, routed - started))
                    self._done(module, entry.status, started, None, request_id, method, path, _HIT, route,
                               client_region)
                    return
                assert fresh is not None
                response, queued, x_cache = fresh, waited[0], _MISS
        except (_Disconnected, RelayBroken):
            if span is not None:
                tracing.fail(span, "disconnected")
            return
        except Exception as exc:  # an IsolateError, or a bug: either way the client gets the diagnostic
            await _send(send, self._failed(as_isolate_error(exc), request_id, module, method, path, started, route,
                                           client_region))
            return
        await _send(send, self._from_guest(response, method, request_id, x_cache, routed - started, queued))
        self._done(module, response.status, started, response, request_id, method, path, x_cache, route,
                   client_region)

    def answer_now(self, scope: Any) -> Reply | None:
        """The answer to a request without a body if it can be made without waiting, else None (it then
        goes through `__call__`, which makes the same checks in the same order).

        It can when the route's module runs here and inline (`Dispatcher.is_inline`), or the cache
        holds the answer. Traced requests, signed hops, a module for another region or on the worker
        pool, and a miss that another request is already running take the ASGI path.
        """
        if self.tracing:
            return None
        started = _now()
        headers = scope["headers"]
        host, request_id, declared, asked_region, _, _, hop, private = _scan(headers)
        method = scope["method"]
        path = scope["path"]
        if hop is not None or path == HEALTH_PATH:
            return None
        if not request_id:
            request_id = new_request_id()
        module = "-"
        route = "none"
        client_region = ""
        try:
            match = self._match(scope, host, path, method, declared)
            module = match.route.module
            route = match.route.path
            client_region = self._client_region(scope, module, asked_region, "", "")
            if not self.state.regions.empty and not self._runs_here(module, client_region):
                return None
            dispatcher = self.dispatcher
            inline = dispatcher.is_inline(module)
            routed = _now()

            def run() -> Response:  # the guest, on the loop: made only if it runs (not for a cache hit)
                return dispatcher.run_inline(module, self.host.invoke, module,
                                             self._request(scope, headers, b"", match, client_region, request_id))

            cache = self.cache
            if cache is None or not _cacheable(method, private, match):
                if not inline:
                    return None
                if cache is not None:
                    cache.bypass()
                response = run()
                x_cache = _BYPASS
            else:
                key, url = _cache_key(cache, scope, host, client_region)
                fetched = cache.fetch_now(key, method, headers, run if inline else None, module, route, url)
                if fetched is None:
                    return None
                entry, fresh = fetched
                if entry is not None:
                    reply = self._from_cache(entry, request_id, method, routed - started)
                    self._done(module, entry.status, started, None, request_id, method, path, _HIT, route,
                               client_region)
                    return reply
                assert fresh is not None
                response, x_cache = fresh, _MISS
        except Exception as exc:  # as in __call__
            return self._failed(as_isolate_error(exc), request_id, module, method, path, started, route,
                                client_region)
        reply = self._from_guest(response, method, request_id, x_cache, routed - started, 0.0)
        self._done(module, response.status, started, response, request_id, method, path, x_cache, route,
                   client_region)
        return reply

    def _too_long(self, scope: Any) -> bool:
        return len(scope.get("raw_path") or scope["path"]) + len(scope["query_string"]) > self.config.max_url_length

    def _match(self, scope: Any, host: str, path: str, method: str, declared: int | None) -> Match:
        """Plan step: the route, or why there is none; a body declared too large is refused here too."""
        if self._too_long(scope):
            raise UriTooLong(f"URL longer than {self.config.max_url_length} bytes", limit=self.config.max_url_length)
        routes = self.state.routes
        match = routes.match(host, path, method)
        if match is None:
            allowed = routes.allowed(host, path)
            if allowed:
                raise MethodNotAllowed(f"{method} is not allowed for {host or '-'}{path}", allow=sorted(allowed))
            raise NotFound(f"no route for {method} {host or '-'}{path}")
        if declared is not None and declared > self.config.max_body_size:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the "
                                  f"{self.config.max_body_size}-byte limit", limit=self.config.max_body_size)
        return match

    def _client_region(self, scope: Any, module: str, asked_region: str, forwarded_by: str,
                       client_region: str) -> str:
        """Plan step: the region the client is in (what the guest is told, and what placement decides by)."""
        regions = self.state.regions
        if forwarded_by:
            # One hop at most: a forwarded request runs here or nowhere, whatever this table says.
            # Without a table there is no other region a client could be in.
            known = _REGION.fullmatch(client_region) and client_region in regions.regions
            allowed = regions.placement.get(module)
            if allowed is not None and self.region not in allowed:
                raise ForwardingLoop(
                    f"{forwarded_by} forwarded this request to region {self.region!r}, where module "
                    f"{module!r} may not run (only in {', '.join(sorted(allowed))}); it is not forwarded "
                    "again", forwarded_by=forwarded_by, region=self.region)
            return client_region if known else self.region
        if regions.empty:
            if asked_region and asked_region != self.region:
                raise UnknownRegion(f"unknown region {asked_region!r}; this node serves only "
                                    f"{self.region!r} and has no region table", region=asked_region)
            return self.region
        if asked_region:
            return regions.check(asked_region)
        client = scope.get("client")
        return (regions.region_of(client[0]) if client else None) or self.region

    def _runs_here(self, module: str, client_region: str) -> bool:
        """Plan step, with a region table: whether the first choice of region for the request is this one."""
        forwarder = self.forwarder
        return forwarder is None or self.state.regions.decide(module, client_region, self.region,
                                                              forwarder.health.healthy).local

    def _request(self, scope: Any, headers: Any, body: bytes, match: Match, client_region: str,
                 request_id: str) -> Request:
        raw_query = scope["query_string"]
        # Request's fields in their order (tests/test_http_app.py holds it to Request(...) with keywords)
        request: Request = construct(Request, scope["method"], scope["path"],
                                     raw_query.decode("latin-1") if raw_query else "",
                                     [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], body,
                                     match.params, self.region, client_region, request_id)
        return request

    def _hop(self, scope: Any, hop: bytes, forwarded_by: str, client_region: str,
             request_id: str) -> tuple[str, str, list[tuple[bytes, bytes]]]:
        """(forwarded_by, client_region, the headers the guest sees): the claimed hop if its signature
        verifies, else ("", "", no hop headers); the signature and counter are never the guest's."""
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_HEADERS]
        if hop and forwarded_by and self.forwarder is not None:
            target = scope.get("raw_path") or scope["path"].encode()
            if scope["query_string"]:
                target += b"?" + scope["query_string"]
            if self.forwarder.hops.verify(hop, forwarded_by.encode("latin-1"), client_region.encode("latin-1"),
                                          scope["method"].encode(), target, request_id.encode()):
                headers += ((FORWARDED_BY, forwarded_by.encode("latin-1")),
                            (CLIENT_REGION, client_region.encode("latin-1")))
                return forwarded_by, client_region, headers
        return "", "", headers

    async def _route_elsewhere(self, scope: Any, receive: Any, send: Any, module: str, client_region: str,
                               request_id: str, started: float, span: Any = None, route: str = "") -> bool:
        """Forward the request if it should run in another region; False if it runs here."""
        forwarder = self.forwarder
        if forwarder is None:
            return False
        body = forwarder.body(receive)
        for _ in range(len(self.state.regions.regions) + 1):
            decision = self.state.regions.decide(module, client_region, self.region, forwarder.health.healthy)
            if decision.local:
                return False
            hop = trace = None
            if span is not None:
                tracing.routed(span, started, module, route, decision.region, client_region, forwarded=True)
                hop, trace = tracing.forward(span, decision.region)
            try:
                status = await forwarder.forward(scope, body, send, decision.nodes, decision.region, request_id,
                                                 client_region, started, trace)
            except ForwardFailed as exc:
                if hop is not None:
                    tracing.fail(hop, exc.kind)
                if exc.extra.get("reached") is False and not body.started:
                    continue  # every node of that region refused to connect and is now marked down
                raise
            except BaseException:
                if hop is not None:
                    tracing.fail(hop, "forward_failed")
                raise
            if hop is not None:
                tracing.forwarded(hop, status)
            self.metrics.forwarded(decision.region, status)
            if self.config.access_log and access_log.isEnabledFor(logging.INFO):
                defer_log(access_log, logging.INFO, "request_id=%s method=%s path=%s module=%s status=%d "
                          "forwarded_to=%s duration_us=%.1f", request_id, scope["method"], clean(scope["path"]),
                          module, status, decision.region, (time.perf_counter() - started) * 1e6)
            return True
        raise RegionUnavailable(f"no region could take the request for module {module!r}", module=module)

    def _done(self, module: str, status: int, started: float, response: Response | None, request_id: str,
              method: str, path: str, x_cache: bytes, route: str = "none", region: str = "") -> None:
        elapsed = time.perf_counter() - started
        info = response.info if response is not None else None
        self.metrics.observe(module, status, elapsed, info, route, method, region, x_cache)
        if response is not None and response.logs:
            guest_lines(guest_log, request_id, module, response.logs)
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            if info is None:
                defer_log(access_log, logging.INFO, "request_id=%s method=%s path=%s module=%s status=%d cache=%s "
                          "duration_us=%.1f", request_id, method, clean(path), module, status, x_cache.decode(),
                          elapsed * 1e6)
                return
            defer_log(
                access_log, logging.INFO, "request_id=%s method=%s path=%s module=%s version=%s status=%d "
                "isolate_us=%.1f bytes=%d cache=%s duration_us=%.1f", request_id, method, clean(path), module,
                info.get("version"), status, info.get("instantiate_us", 0) + info.get("run_us", 0),
                len(response.body), x_cache.decode(), elapsed * 1e6,  # type: ignore[union-attr]
            )

    def _health(self, request_id: str) -> Reply:
        headers = [_JSON, (b"content-length", str(len(self._health_body)).encode()),
                   (b"x-request-id", request_id.encode()), self._region_header]
        return 200, headers, self._health_body

    def _answer(self, status: int, guest_headers: Any, body: bytes, method: str, request_id: str,
                x_cache: bytes, *extra: tuple[bytes, bytes]) -> Reply:
        """Reply step, for an answer from a guest or the cache: the guest's headers without those the
        server owns, the length (_framed), then the server's own."""
        headers = _guest_headers(guest_headers)
        payload = _framed(status, method, body, headers)
        headers += ((b"x-request-id", request_id.encode()), self._region_header, (b"x-cache", x_cache), *extra)
        return status, headers, payload

    def _from_guest(self, response: Response, method: str, request_id: str, x_cache: bytes, routing: float,
                    queued: float) -> Reply:
        info = response.info
        # bytes % formatting: one call, no str to encode (0.8 -> 0.5 µs of every request)
        return self._answer(response.status, response.headers, response.body, method, request_id, x_cache,
                            (b"server-timing", b"routing;dur=%.3f, queue;dur=%.3f, instantiate;dur=%.3f, guest;dur=%.3f"
                             % (routing * 1000, queued * 1000, info.get("instantiate_us", 0) / 1000,
                                info.get("run_us", 0) / 1000)))

    def _from_cache(self, entry: Entry, request_id: str, method: str, routing: float) -> Reply:
        assert self.cache is not None
        return self._answer(entry.status, entry.headers, entry.body, method, request_id, _HIT,
                            (b"age", str(self.cache.age(entry)).encode()),
                            (b"server-timing", b'routing;dur=%.3f, cache;desc="hit"' % (routing * 1000)))

    def _failed(self, exc: IsolateError, request_id: str, module: str, method: str, path: str,
                started: float, route: str = "none", region: str = "") -> Reply:
        """Reply step for a failure: the diagnostic (`_errors.render`), counted and logged."""
        timing = f"total;dur={(time.perf_counter() - started) * 1000:.3f}".encode()
        log_guest_failure(exc, request_id)
        reply = render(exc, request_id, head_only=method == "HEAD",
                       extra=(self._region_header, (b"server-timing", timing)), dev=self.config.dev)
        elapsed = time.perf_counter() - started
        self.metrics.observe(module, exc.status, elapsed, None, route, method, region)
        self.metrics.failure(module, exc.kind)
        guest_lines(guest_log, request_id, module, getattr(exc, "logs", ()))
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            defer_log(access_log, logging.INFO, "request_id=%s method=%s path=%s module=%s status=%d error=%s "
                      "duration_us=%.1f", request_id, method, clean(path), module, exc.status, exc.kind, elapsed * 1e6)
        return reply


def _cacheable(method: str, private: bool, match: Match) -> bool:
    """Whether the response cache is consulted: GET or HEAD, no credentials, a route that allows it."""
    return not private and (method == "GET" or method == "HEAD") and match.route.options.get("cache", True)


def _cache_key(cache: ResponseCache, scope: Any, host: str, client_region: str) -> tuple[str, str]:
    """The request's cache key, and its URL as purges name it (path?query)."""
    path = scope["path"]
    raw_query = scope["query_string"]
    query = raw_query.decode("latin-1") if raw_query else ""
    return cache.key(host, path, query, client_region), f"{path}?{query}" if query else path


async def _send(send: Any, reply: Reply) -> None:
    status, headers, body = reply
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any, limit: int) -> bytes:
    """The whole request body, refusing (413) as soon as it passes `limit` instead of buffering it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit", limit=limit)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

