"""Forwarding a request to a node of another region and relaying its answer, both streamed.

The request keeps its method, path, query, headers (Host included, so host routes still match) and
request id; hop-by-hop headers are dropped, and `x-isolate-forwarded-by` (this node),
`x-isolate-client-region`, `x-forwarded-for`, the hop signature `x-isolate-hop` and the forward
count `x-isolate-hops` are added (`_hops`); a request that already made MAX_HOPS hops is refused
with 508 `forwarding_loop` instead. A node that cannot be reached before any of the body was sent
is marked down and the next healthy node of the region is tried; a failure after that is a 502
`forward_failed` (or, once the answer has started, a dropped connection).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import yarl

from ..errors import ForwardFailed, ForwardingLoop, PayloadTooLarge
from ._health import NodeHealth
from ._hops import HOP, HOPS, MAX_HOPS, HopSigner, hops_of

FORWARDED_BY = b"x-isolate-forwarded-by"
CLIENT_REGION = b"x-isolate-client-region"
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", FORWARDED_BY, CLIENT_REGION, b"x-request-id", HOP, HOPS,
})
_RESPONSE_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"server-timing", b"date", b"server",  # this node sends its own date
})
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RelayBroken(Exception):
    """The answer broke off after its status line was relayed: nothing left to do but close."""


class Body:
    """The client's request body as an async stream for the forwarding client, bounded; `started` once read."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.started = False
        self.error: Exception | None = None  # why reading stopped; the client library wraps it

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.error = ForwardFailed("client disconnected while sending the body")
                raise self.error
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                self.error = PayloadTooLarge(f"request body exceeds the {self._limit}-byte limit", limit=self._limit)
                raise self.error
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class Forwarder:
    def __init__(self, node_name: str, health: NodeHealth, max_body_size: int, timeout: float,
                 hops: HopSigner) -> None:
        self.node_name = node_name
        self.hops = hops  # also what the edge verifies arriving hops with
        self.health = health
        self.max_body_size = max_body_size
        # connect fails fast so failover is quick; an answer may take as long as a guest may run
        self._timeout = aiohttp.ClientTimeout(total=None, connect=min(1.0, timeout), sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on the serving loop, on first use
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, enable_cleanup_closed=True),
                timeout=self._timeout, trust_env=False, auto_decompress=False,
                # relay the client's headers as they are: no User-Agent, Accept or Accept-Encoding of ours
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def body(self, receive: Receive) -> Body:
        return Body(receive, self.max_body_size)

    async def forward(self, scope: dict[str, Any], body: Body, send: Send, nodes: tuple[str, ...],
                      region: str, request_id: str, client_region: str, started: float,
                      trace: tuple[bytes, bytes | None] | None = None) -> int:
        """Send the request to the first reachable of `nodes`, relay the answer; returns its status.

        `trace`: the `traceparent` and `tracestate` naming this hop's span, in place of the client's
        (which, without tracing, go on as they came, like any other header).

        Raises ForwardFailed with `reached=False` when no node could be connected to, so the caller
        may choose another region (as long as `body.started` is false), and ForwardingLoop when the
        request already made MAX_HOPS hops.
        """
        hops = max((hops_of(v) for k, v in scope["headers"] if k == HOPS), default=0)
        if hops >= MAX_HOPS:
            raise ForwardingLoop(f"this request was already forwarded {hops} times; it is not forwarded again to "
                                 f"region {region!r} (do the nodes share one cluster secret and one region table?)",
                                 hops=hops, region=region)
        named = {t.strip().lower().encode() for k, v in scope["headers"] if k == b"connection"
                 for t in v.decode("latin-1").split(",")}  # headers the client marked hop-by-hop
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP and k not in named]
        if trace is not None:
            headers = [(k, v) for k, v in headers if k != b"traceparent" and k != b"tracestate"]
            headers.append((b"traceparent", trace[0]))
            if trace[1]:
                headers.append((b"tracestate", trace[1]))
        client = scope.get("client")
        forwarded_for = [v for k, v in headers if k == b"x-forwarded-for"]
        headers = [(k, v) for k, v in headers if k != b"x-forwarded-for"]
        if client:
            chain = b", ".join([*forwarded_for, client[0].encode()])
            headers.append((b"x-forwarded-for", chain))
        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        node_name, region_name, rid = self.node_name.encode(), client_region.encode(), request_id.encode()
        signature = self.hops.sign(node_name, region_name, scope["method"].encode(), target, rid)
        headers += [(b"x-request-id", rid), (FORWARDED_BY, node_name), (CLIENT_REGION, region_name),
                    (HOP, signature), (HOPS, str(hops + 1).encode())]
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        http = self._http()
        text_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        errors: list[str] = []
        for node in nodes:
            try:
                # encoded=True: the path goes as the client sent it (no dot-segment or escape rewriting)
                url = yarl.URL(node + target.decode("latin-1"), encoded=True)
                response = await http.request(scope["method"], url,
                                              headers=text_headers, data=body if has_body else None,
                                              allow_redirects=False, compress=None)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self.health.mark_down(node, f"forward failed to connect: {exc}")
                errors.append(f"{node}: {exc}")
                if body.started:
                    break  # the body is partly consumed: it cannot be sent again
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                if body.error is not None:
                    raise body.error from None  # the client's fault (e.g. 413), not the other node's
                raise ForwardFailed(f"forwarding to {node} (region {region}) failed: {exc or type(exc).__name__}",
                                    region=region, node=node) from None
            try:
                timing = (f'forward;dur={(time.perf_counter() - started) * 1000:.3f};desc="{region}"').encode()
                upstream = response.headers.get("server-timing")
                out = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in _RESPONSE_HOP_BY_HOP]
                out.append((b"server-timing", timing + (b", " + upstream.encode("latin-1") if upstream else b"")))
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                try:
                    async for chunk in response.content.iter_any():
                        if chunk and scope["method"] != "HEAD":
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.health.mark_down(node, f"answer broke off: {exc or type(exc).__name__}")
                    raise RelayBroken from exc
                await send({"type": "http.response.body", "body": b""})
            finally:
                response.release()
            return response.status
        raise ForwardFailed(f"no node of region {region} could be reached: {'; '.join(errors)}", region=region,
                            nodes=list(nodes), reached=False)
