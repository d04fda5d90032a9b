"""The edge listener: match a route, run the request in a fresh isolate, reply.

A raw ASGI app rather than Starlette routing: every microsecond here is per request, and the route
table, body limits and error mapping are all the framework this path needs.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from typing import Any

from ..abi import Request, Response
from ..config import ServerConfig
from ..errors import IsolateError, NotFound, PayloadTooLarge, UriTooLong
from ..host import Host
from ._dispatch import Dispatcher
from ._metrics import Metrics
from ._state import ServerState

access_log = logging.getLogger("isolate.access")
guest_log = logging.getLogger("isolate.guest")

# Guest headers that would break framing or identity are dropped: the server owns these.
RESERVED_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "x-request-id",
})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}
_GUEST_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_JSON = (b"content-type", b"application/json")
# Generated request ids: a random per-process prefix and a counter (unique, and ~10x cheaper than uuid4).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def clean(text: str) -> str:
    """Escape control characters so guest output can never drive a terminal or forge log lines."""
    return text.translate(_CONTROL)


class _Disconnected(Exception):
    pass


class EdgeApp:
    def __init__(self, host: Host, state: ServerState, config: ServerConfig, metrics: Metrics,
                 dispatcher: Dispatcher, region: str = "local") -> None:
        self.host = host
        self.state = state
        self.config = config
        self.metrics = metrics
        self.dispatcher = dispatcher
        self.region = region

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        host = ""
        declared: int | None = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
            elif key == b"content-length":
                declared = int(value) if value.isdigit() else None
        if not request_id:
            request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        method = scope["method"]
        path = scope["path"]
        module = "-"
        try:
            if len(scope.get("raw_path") or path) + len(scope["query_string"]) > self.config.max_url_length:
                raise UriTooLong(f"URL longer than {self.config.max_url_length} bytes",
                                 limit=self.config.max_url_length)
            match = self.state.routes.match(host, path, method)
            if match is None:
                raise NotFound(f"no route for {method} {host or '-'}{path}")
            module = match.route.module
            if declared is not None and declared > self.config.max_body_size:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the "
                                      f"{self.config.max_body_size}-byte limit", limit=self.config.max_body_size)
            body = await _read_body(receive, self.config.max_body_size)
            request = Request(
                method=method,
                path=path,
                query=scope["query_string"].decode("latin-1"),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                body=body,
                params=match.params,
                region=self.region,
                request_id=request_id,
            )
            response: Response = await self.dispatcher.run(module, lambda: self.host.invoke(module, request))
        except _Disconnected:
            return
        except IsolateError as exc:
            await self._fail(send, exc, request_id, module, method, path, started)
            return
        await self._reply(send, response, request_id, method)
        elapsed = time.perf_counter() - started
        self.metrics.observe(module, response.status, elapsed, response.info)
        if response.logs:
            self._guest_logs(response, request_id, module)
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            info = response.info
            access_log.info(
                "request_id=%s method=%s path=%s module=%s version=%s status=%d isolate_us=%.1f bytes=%d "
                "duration_us=%.1f", request_id, method, clean(path), module, info.get("version"),
                response.status, info.get("instantiate_us", 0) + info.get("run_us", 0), len(response.body),
                elapsed * 1e6,
            )

    async def _reply(self, send: Any, response: Response, request_id: str, method: str) -> None:
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers
            if name.lower() not in RESERVED_HEADERS
        ]
        headers.append((b"content-length", str(len(response.body)).encode()))
        headers.append((b"x-request-id", request_id.encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else response.body})

    async def _fail(self, send: Any, exc: IsolateError, request_id: str, module: str, method: str, path: str,
                    started: float) -> None:
        diagnostic = {"error": exc.kind, "detail": exc.detail, "request_id": request_id}
        diagnostic.update((k, v) for k, v in exc.extra.items() if k not in diagnostic)
        body = json.dumps(diagnostic).encode()
        headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode())]
        if exc.status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        elapsed = time.perf_counter() - started
        self.metrics.observe(module, exc.status, elapsed, None)
        self.metrics.failure(module, exc.kind)
        for record in getattr(exc, "logs", ()):
            guest_log.log(_GUEST_LEVELS.get(record.level, logging.INFO), "request_id=%s module=%s stream=%s %s",
                          request_id, module, record.stream, clean(record.message.rstrip("\n")))
        if self.config.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info("request_id=%s method=%s path=%s module=%s status=%d error=%s duration_us=%.1f",
                            request_id, method, clean(path), module, exc.status, exc.kind, elapsed * 1e6)

    def _guest_logs(self, response: Response, request_id: str, module: str) -> None:
        for record in response.logs:
            level = _GUEST_LEVELS.get(record.level, logging.INFO)
            if guest_log.isEnabledFor(level):
                guest_log.log(level, "request_id=%s module=%s stream=%s %s", request_id, module, record.stream,
                              clean(record.message.rstrip("\n")))


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

