"""The admin listener: the versioned control plane under /v1 (bearer token), health and metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol
from urllib.parse import quote, unquote_to_bytes

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Match, Route

from ..backends import cluster_status
from ..capabilities._kv import MAX_VALUE
from ..config import LIMIT_PARSERS, parse_limits
from ..errors import InvalidRequest, IsolateError, MethodNotAllowed, ModuleTooLarge, NotFound, PayloadTooLarge
from ..host import ModuleInfo, VersionInfo
from ..node import Node
from ..registry import loads_json, validate_name
from ..routing import RegionTable, RouteTable
from ._auth import BearerAuth
from ._errors import as_isolate_error, new_request_id, render, request_id_of, send_error
from ._health import NodeHealth
from ._metrics import Metrics
from ._tail import logs_endpoint
from ._usage import usage_endpoint

LIMIT_QUERY = tuple(LIMIT_PARSERS)
GRANT_QUERY = {"allow_host": "allowed_hosts", "kv_store": "key_value_stores"}
_KEY_SAFE = "!$&'()*+,-.:;=@_~/"  # printable ASCII that stays as it is in a listed key (and in a URL path)


def version_json(v: VersionInfo) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "digest": v.digest, "size": v.size, "created": v.created,
            "compile_ms": v.compile_ms, "kind": v.kind}


def module_json(info: ModuleInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "active_version": info.active_version,
        "versions": [version_json(v) for v in info.versions],
        "limits": info.limits.as_dict(),
        "limit_overrides": dict(info.limit_overrides),
        "variables": dict(info.variables),
        "allowed_hosts": list(info.allowed_hosts),
        "key_value_stores": list(info.kv_stores),
        "secrets": list(info.secrets),  # names only: a secret's value is never shown again
    }


def show_key(key: bytes) -> str:
    """A key as listed: percent-encoded UTF-8, so it can be pasted into /v1/kv/STORE/KEY as it is."""
    return quote(key, safe=_KEY_SAFE)


def _raw_query(request: Request, name: bytes) -> bytes:
    """A query parameter as bytes, percent-decoded once from the raw query string (keys are bytes)."""
    for pair in (request.scope.get("query_string") or b"").split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return unquote_to_bytes(value.replace(b"+", b" "))
    return b""


def _key_of(request: Request) -> bytes:
    """The key of /v1/kv/{store}/{key}, as bytes: percent-decoded from the raw path, not as text."""
    raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
    raw = raw.split(b"?", 1)[0]
    prefix = f"/v1/kv/{request.path_params['store']}/".encode()
    if not raw.startswith(prefix):
        raise InvalidRequest("the key must follow /v1/kv/STORE/ (percent-encoded)")
    return unquote_to_bytes(raw[len(prefix):])


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _table_response(table: RouteTable, **extra: Any) -> Response:
    """A route table as JSON, encoded off the event loop: 50k routes take tens of milliseconds."""
    body = await run_in_threadpool(lambda: json.dumps({"routes": table.to_list(), **extra}).encode())
    return Response(body, media_type="application/json")


async def _bounded_body(request: Request, limit: int, too_large: Callable[[], IsolateError]) -> bytes:
    """The request body, refused (`too_large()`) as soon as more than `limit` bytes arrived."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    if raw.strip() == b"null":
        raise InvalidRequest("request body must be a JSON object, not null")
    try:
        # A big body (a route table) is parsed off the event loop.
        body = loads_json(raw) if len(raw) < 65536 else await run_in_threadpool(loads_json, raw)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        # JSON can spell unpaired surrogates (\ud800), which no UTF-8 file or answer can hold: refuse
        # them here, before a setting is stored that could never be written back out. Only a body
        # with such an escape at all is walked.
        if _ESCAPED_SURROGATE.search(raw):
            json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidRequest("request body holds an unpaired UTF-16 surrogate (e.g. \\ud800)") from None
    return body


class Telemetry(Protocol):
    """Where /metrics and /v1/stats come from when this process does not serve the edge itself: the
    supervisor of `serve --workers` gathers them from its workers (`isolate.http._workers.Fleet`)."""

    def metrics(self) -> bytes: ...

    def stats(self) -> dict[str, Any]: ...


def stats_body(node: Node, metrics: Metrics) -> dict[str, Any]:
    """The /v1/stats answer of one edge process."""
    s = node.host.statistics()
    cache = node.cache
    return {
        "modules": s.modules, "invocations": s.invocations, "failures": dict(s.failures),
        "module_cache": asdict(s.module_cache), "guest_cache": asdict(s.guest_cache),
        "response_cache": asdict(cache.statistics()) if cache is not None else None,
        "artifact_recompiles": s.artifact_recompiles, "engines": s.engines, "region": node.state.local_region,
        "memory_budget": asdict(s.memory_budget),
        "forwarded": [{"region": r, "status": st, "count": n} for (r, st), n in sorted(metrics.forwards.items())],
    }


def build_admin_app(node: Node, metrics: Metrics, token: str, health: NodeHealth | None = None,
                    telemetry: Telemetry | None = None) -> Any:
    host, state = node.host, node.state
    max_module = host.config.max_module_size

    async def put_module(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        query = request.query_params
        unknown = sorted(set(query) - {*LIMIT_QUERY, "var", *GRANT_QUERY})
        if unknown:
            raise InvalidRequest(f"unknown query parameter(s) {', '.join(map(repr, unknown))}; use "
                                 f"{', '.join(LIMIT_QUERY)}, var=KEY=VALUE, allow_host=URL and kv_store=NAME "
                                 "(secrets: PUT /v1/modules/NAME/secrets)")
        repeated = sorted(k for k in LIMIT_QUERY if len(query.getlist(k)) > 1)
        if repeated:
            raise InvalidRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")
        limits = parse_limits({k: query[k] for k in LIMIT_QUERY if k in query}) or None
        pairs = query.getlist("var")
        if any("=" not in pair for pair in pairs):
            raise InvalidRequest("each var query parameter must be KEY=VALUE")
        variables = dict(pair.split("=", 1) for pair in pairs) or None
        # Given (even once, empty) replaces the module's grants; absent keeps them.
        grants = {GRANT_QUERY[k]: [v for v in query.getlist(k) if v] for k in GRANT_QUERY if k in query}
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_module:
            raise ModuleTooLarge(f"module of {declared} bytes exceeds the {max_module}-byte limit", limit=max_module)
        wasm = await _bounded_body(request, max_module, lambda: ModuleTooLarge(
            f"module exceeds the {max_module}-byte limit", limit=max_module))
        # Compiling takes milliseconds of CPU: keep it off the event loop.
        info = await run_in_threadpool(lambda: node.deploy(
            name, wasm, limits=limits, variables=variables, allowed_hosts=grants.get("allowed_hosts"),
            kv_stores=grants.get("key_value_stores")))
        return JSONResponse(version_json(info), status_code=201)

    async def list_modules(request: Request) -> Response:
        return JSONResponse({"modules": [module_json(m) for m in host.modules()]})

    async def get_module(request: Request) -> Response:
        return JSONResponse(module_json(host.module(request.path_params["name"])))

    async def patch_module(request: Request) -> Response:
        body = await _json_body(request)
        fields = {"limits", "variables", "allowed_hosts", "key_value_stores", "secrets"}
        unknown = set(body) - fields
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}; use {', '.join(sorted(fields))}")
        for key in ("allowed_hosts", "key_value_stores"):
            if body.get(key) is not None and not isinstance(body[key], list):
                raise InvalidRequest(f"{key} must be a list of strings")
        secrets = body.get("secrets")
        if secrets is not None and not isinstance(secrets, dict):
            raise InvalidRequest("secrets must be an object of names to values (null removes one)")
        limits = body.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise InvalidRequest("limits must be an object")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise InvalidRequest("variables must be an object")
        # A null limit goes back to the host default; the others named are parsed from text or numbers.
        parsed = ({**parse_limits({k: v for k, v in limits.items() if v is not None}),
                   **{k: None for k, v in limits.items() if v is None}} if limits is not None else None)
        info = await run_in_threadpool(lambda: node.configure(
            request.path_params["name"], limits=parsed, variables=variables, allowed_hosts=body.get("allowed_hosts"),
            kv_stores=body.get("key_value_stores"), secrets=secrets))
        return JSONResponse(module_json(info))

    async def put_secrets(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        body = await _json_body(request)
        names = await run_in_threadpool(node.set_secrets, name, body)
        return JSONResponse({"module": name, "secrets": names})

    async def list_stores(request: Request) -> Response:
        stores = await run_in_threadpool(host.kv.stores)
        return JSONResponse({"stores": [{"name": n, "keys": k, "bytes": b} for n, (k, b) in stores.items()]})

    async def list_keys(request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit", "100")
        if not limit.isdigit():
            raise InvalidRequest("limit must be a whole number within 1-1000")
        page = await run_in_threadpool(node.kv_list, request.path_params["store"],
                                       _raw_query(request, b"prefix"), _raw_query(request, b"cursor"), int(limit))
        return JSONResponse({"store": request.path_params["store"], "keys": [show_key(k) for k in page.keys],
                             "cursor": None if page.cursor is None else show_key(page.cursor)})

    async def get_key(request: Request) -> Response:
        value = await run_in_threadpool(node.kv_get, request.path_params["store"], _key_of(request))
        return Response(value, media_type="application/octet-stream")

    async def put_key(request: Request) -> Response:
        key = _key_of(request)
        value = await _bounded_body(request, MAX_VALUE, lambda: PayloadTooLarge(
            f"values are at most {MAX_VALUE} bytes", limit=MAX_VALUE))
        await run_in_threadpool(node.kv_set, request.path_params["store"], key, value)
        return JSONResponse({"store": request.path_params["store"], "key": show_key(key), "bytes": len(value)})

    async def delete_key(request: Request) -> Response:
        key = _key_of(request)
        existed = await run_in_threadpool(node.kv_delete, request.path_params["store"], key)
        return JSONResponse({"store": request.path_params["store"], "key": show_key(key), "deleted": existed})

    async def rollback(request: Request) -> Response:
        body = await _json_body(request)
        if set(body) - {"version"}:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(set(body) - {'version'}))}; use version")
        version = body.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise InvalidRequest("version must be an integer")
        info = await run_in_threadpool(node.rollback, request.path_params["name"], version)
        return JSONResponse(module_json(info))

    async def delete_module(request: Request) -> Response:
        name = request.path_params["name"]
        removed = await run_in_threadpool(node.delete, name)
        return JSONResponse({"deleted": name, "routes_removed": removed})

    async def get_routes(request: Request) -> Response:
        return await _table_response(state.routes)

    async def routes_body(request: Request) -> list[Any]:
        body = await _json_body(request)
        routes = body.get("routes")
        if not isinstance(routes, list) or set(body) != {"routes"}:
            raise InvalidRequest('body must be {"routes": [...]}')
        return routes

    async def put_routes(request: Request) -> Response:
        # Validating a big table takes a while: off the event loop, like every control change.
        table = await run_in_threadpool(node.set_routes, await routes_body(request))
        return await _table_response(table)

    async def add_routes(request: Request) -> Response:
        routes = await routes_body(request)
        if any(isinstance(r, dict) and r.get("origin", "api") != "api" for r in routes):
            raise InvalidRequest('routes added with POST are the API\'s: "origin" may only be "api"')
        table, warnings = await run_in_threadpool(node.add_routes, routes)
        return await _table_response(table, warnings=warnings)

    def regions_json() -> dict[str, Any]:
        return {"local_region": state.local_region, **state.regions.to_dict(),
                "health": health.snapshot() if health is not None else {}}

    async def get_regions(request: Request) -> Response:
        return JSONResponse(regions_json())

    async def put_regions(request: Request) -> Response:
        body = await _json_body(request)
        body.pop("local_region", None)  # read-only fields a client may send back from GET
        body.pop("health", None)

        def set_regions() -> None:
            node.set_regions(state.check_regions(RegionTable.build(body)))

        await run_in_threadpool(set_regions)
        return JSONResponse(regions_json())

    async def purge_cache(request: Request) -> Response:
        body = await _json_body(request)
        selectors = {"module", "route", "url", "all"}
        unknown = set(body) - selectors
        if unknown or len(body) != 1:
            raise InvalidRequest('give exactly one of {"module": NAME}, {"route": "/path/:pattern"}, '
                                 '{"url": "/path?query"}, {"all": true}')
        (kind, value), = body.items()
        if kind == "all":
            if value is not True:
                raise InvalidRequest('"all" must be true')
            # In threads: a purge reaches the worker processes and waits for their answers.
            return JSONResponse({"purged": await run_in_threadpool(lambda: node.purge(everything=True))})
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{kind} must be a non-empty string")
        if kind in ("route", "url") and not value.startswith("/"):
            raise InvalidRequest(f"{kind} must be a path starting with '/', e.g. /users/:id or /users/7?full=1")
        return JSONResponse({"purged": await run_in_threadpool(lambda: node.purge(**{kind: value}))})

    async def stats(request: Request) -> Response:
        if telemetry is not None:
            return JSONResponse(await run_in_threadpool(telemetry.stats))
        return JSONResponse(stats_body(node, metrics))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready:
            body: dict[str, Any] = {"status": "ready", "modules": len(host.modules()),
                                    "routes": len(state.routes.routes)}
            cluster = cluster_status(node)
            if cluster is not None:
                # Degraded (NATS unreachable, or catching up): still 200, as it serves what it has;
                # admin writes answer 503 cluster_unavailable meanwhile.
                body["cluster"] = cluster
                if not (cluster["connected"] and cluster["synced"]):
                    body["status"] = "degraded"
            return JSONResponse(body)
        return JSONResponse({"status": "starting"}, status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        text = await run_in_threadpool(telemetry.metrics) if telemetry is not None else metrics.render()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def error(request: Request, exc: Exception) -> Response:
        """Every failure of the admin API, rendered by the one renderer (`_errors.render`)."""
        if isinstance(exc, HTTPException):
            if exc.status_code == 405:
                # Starlette's `Allow` names only the first route of the path; every route counts.
                matching = [r for r in routes if r.matches(request.scope)[0] != Match.NONE]
                allow = sorted({m for r in matching for m in r.methods or ()})
                exc = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}", allow=allow)
            elif exc.status_code == 404:
                exc = NotFound(f"no admin endpoint {request.url.path}")
            else:
                exc = InvalidRequest(str(exc.detail))
        failure = as_isolate_error(exc)
        status, headers, body = render(failure, request_id(request), head_only=request.method == "HEAD")
        return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/v1/modules", list_modules, methods=["GET"]),
        Route("/v1/modules/{name}", put_module, methods=["PUT"]),
        Route("/v1/modules/{name}", get_module, methods=["GET"]),
        Route("/v1/modules/{name}", patch_module, methods=["PATCH"]),
        Route("/v1/modules/{name}", delete_module, methods=["DELETE"]),
        Route("/v1/modules/{name}/rollback", rollback, methods=["POST"]),
        Route("/v1/modules/{name}/secrets", put_secrets, methods=["PUT"]),
        Route("/v1/kv", list_stores, methods=["GET"]),
        Route("/v1/kv/{store}", list_keys, methods=["GET"]),
        Route("/v1/kv/{store}/{key:path}", get_key, methods=["GET"]),
        Route("/v1/kv/{store}/{key:path}", put_key, methods=["PUT"]),
        Route("/v1/kv/{store}/{key:path}", delete_key, methods=["DELETE"]),
        Route("/v1/routes", get_routes, methods=["GET"]),
        Route("/v1/routes", put_routes, methods=["PUT"]),
        Route("/v1/routes", add_routes, methods=["POST"]),
        Route("/v1/regions", get_regions, methods=["GET"]),
        Route("/v1/regions", put_regions, methods=["PUT"]),
        Route("/v1/cache/purge", purge_cache, methods=["POST"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/logs", logs_endpoint(telemetry), methods=["GET"]),
        Route("/v1/usage", usage_endpoint(host), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: error, HTTPException: error, IsolateError: error})
    return RequestIds(BearerAuth(app, token))


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or new_request_id())


class RequestIds:
    """Gives every admin request an id (the client's, if valid), answers with it, and renders any
    failure that escapes the app (Starlette re-raises after its error handler has answered)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope["headers"])
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                return  # answered already (by the error handler); Starlette re-raised it for servers to log
            await send_error(send_with_id, as_isolate_error(exc), rid, head_only=scope["method"] == "HEAD")
