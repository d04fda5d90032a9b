"""The edge listener: match a route, pick the region, answer from the cache or a fresh isolate, reply.

A raw ASGI app rather than Starlette routing: every microsecond here is per request, and the route
table, body limits and error mapping are all the framework this path needs.
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
from ..routing import REGION_PATTERN
from ..state import ServerState
from ._dispatch import Dispatcher
from ._errors import REQUEST_ID, as_isolate_error, new_request_id, send_error
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
        request_id = ""
        host = ""
        declared: int | None = None
        asked_region = forwarded_by = client_region = ""
        hop: bytes | None = None  # the hop signature; b"" when only other hop headers came
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
            if len(scope.get("raw_path") or path) + len(scope["query_string"]) > self.config.max_url_length:
                raise UriTooLong(f"URL longer than {self.config.max_url_length} bytes",
                                 limit=self.config.max_url_length)
            if path == HEALTH_PATH:
                await self._health(send, request_id)
                return
            routes = self.state.routes
            match = routes.match(host, path, method)
            if match is None:
                allowed = routes.allowed(host, path)
                if allowed:
                    raise MethodNotAllowed(f"{method} is not allowed for {host or '-'}{path}",
                                           allow=sorted(allowed))
                raise NotFound(f"no route for {method} {host or '-'}{path}")
            module = match.route.module
            route = match.route.path
            if declared is not None and declared > self.config.max_body_size:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the "
                                      f"{self.config.max_body_size}-byte limit", limit=self.config.max_body_size)
            regions = self.state.regions
            if forwarded_by:
                # One hop at most: a forwarded request runs here or nowhere, whatever this table says.
                # Without a table there is no other region a client could be in.
                known = _REGION.fullmatch(client_region) and client_region in regions.regions
                client_region = client_region if known else self.region
                allowed = regions.placement.get(module)
                if allowed is not None and self.region not in allowed:
                    raise ForwardingLoop(
                        f"{forwarded_by} forwarded this request to region {self.region!r}, where module "
                        f"{module!r} may not run (only in {', '.join(sorted(allowed))}); it is not forwarded "
                        "again", forwarded_by=forwarded_by, region=self.region)
            elif regions.empty:
                if asked_region and asked_region != self.region:
                    raise UnknownRegion(f"unknown region {asked_region!r}; this node serves only "
                                        f"{self.region!r} and has no region table", region=asked_region)
                client_region = self.region
            else:
                if asked_region:
                    client_region = regions.check(asked_region)
                else:
                    client = scope.get("client")
                    client_region = (regions.region_of(client[0]) if client else None) or self.region
                if await self._route_elsewhere(scope, receive, send, module, client_region, request_id, started,
                                               span, route):
                    return
            routed = _now()
            if span is not None:
                tracing.routed(span, started, module, route, self.region, client_region)
            # Read before the cache: a request that leads a coalesced miss must not wait on its client.
            body = await _read_body(receive, self.config.max_body_size)
            raw_query = scope["query_string"]
            query = raw_query.decode("latin-1") if raw_query else ""

            def request() -> Request:  # made when the guest runs, not for a cache hit
                return Request(method=method, path=path, query=query,
                               headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], body=body,
                               params=match.params, region=self.region, client_region=client_region,
                               request_id=request_id)

            cache = self.cache
            if cache is None or private or (method != "GET" and method != "HEAD") \
                    or not match.route.options.get("cache", True):
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

                url = f"{path}?{query}" if query else path
                key = cache.key(host, path, query, client_region)
                lookup = tracing.cache(span) if span is not None else None
                try:
                    entry, fresh = await cache.fetch(key, method, headers, invoke, module, match.route.path, url)
                except BaseException:
                    if lookup is not None:  # a miss whose guest failed (its own span says how)
                        tracing.cached(lookup, False)
                    raise
                if lookup is not None:
                    tracing.cached(lookup, entry is not None)
                if entry is not None:
                    await self._reply_cached(send, entry, request_id, method, routed - started)
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
            await self._fail(send, as_isolate_error(exc), request_id, module, method, path, started, route,
                             client_region)
            return
        info = response.info
        await self._reply(send, response.status, response.headers, response.body, method, request_id, x_cache,
                          (b"server-timing", f"routing;dur={(routed - started) * 1000:.3f}, "
                                             f"queue;dur={queued * 1000:.3f}, "
                                             f"instantiate;dur={info.get('instantiate_us', 0) / 1000:.3f}, "
                                             f"guest;dur={info.get('run_us', 0) / 1000:.3f}".encode()))
        self._done(module, response.status, started, response, request_id, method, path, x_cache, route,
                   client_region)

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

    async def _health(self, send: Any, request_id: str) -> None:
        headers = [_JSON, (b"content-length", str(len(self._health_body)).encode()),
                   (b"x-request-id", request_id.encode()), self._region_header]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self._health_body})

    async def _reply(self, send: Any, status: int, guest_headers: Any, body: bytes, method: str, request_id: str,
                     x_cache: bytes, *extra: tuple[bytes, bytes]) -> None:
        """An answer from a guest or the cache: the guest's headers without those the server owns, the
        length (_framed), then the server's own."""
        headers = _guest_headers(guest_headers)
        payload = _framed(status, method, body, headers)
        headers += ((b"x-request-id", request_id.encode()), self._region_header, (b"x-cache", x_cache), *extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _reply_cached(self, send: Any, entry: Entry, request_id: str, method: str, routing: float) -> None:
        assert self.cache is not None
        await self._reply(send, entry.status, entry.headers, entry.body, method, request_id, _HIT,
                          (b"age", str(self.cache.age(entry)).encode()),
                          (b"server-timing", f'routing;dur={routing * 1000:.3f}, cache;desc="hit"'.encode()))

    async def _fail(self, send: Any, exc: IsolateError, request_id: str, module: str, method: str, path: str,
                    started: float, route: str = "none", region: str = "") -> None:
        timing = f"total;dur={(time.perf_counter() - started) * 1000:.3f}".encode()
        await send_error(send, exc, request_id, head_only=method == "HEAD",
                         extra=(self._region_header, (b"server-timing", timing)), dev=self.config.dev)
        elapsed = time.perf_counter() - started
        self.metrics.observe(module, exc.status, elapsed, None, route, method, region)
        self.metrics.failure(module, exc.kind)
        guest_lines(guest_log, request_id, module, getattr(exc, "logs", ()))
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            defer_log(access_log, logging.INFO, "request_id=%s method=%s path=%s module=%s status=%d error=%s "
                      "duration_us=%.1f", request_id, method, clean(path), module, exc.status, exc.kind, elapsed * 1e6)


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

