"""The admin listener: the versioned control plane under /v1 (bearer token), health and metrics."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..cache import ResponseCache
from ..config import parse_limits
from ..errors import InvalidConfig, InvalidRequest, IsolateError, ModuleTooLarge
from ..host import Host, ModuleInfo, VersionInfo
from ..registry import validate_name
from ..routing import RegionTable, RouteTable
from ._auth import BearerAuth
from ._health import NodeHealth
from ._metrics import Metrics
from ._state import ServerState

LIMIT_QUERY = ("memory", "timeout", "response_size", "stack")


def version_json(v: VersionInfo) -> dict[str, Any]:
    return {"name": v.name, "version": v.version, "digest": v.digest, "size": v.size, "created": v.created,
            "compile_ms": v.compile_ms}


def module_json(info: ModuleInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "active_version": info.active_version,
        "versions": [version_json(v) for v in info.versions],
        "limits": info.limits.as_dict(),
        "limit_overrides": dict(info.limit_overrides),
        "variables": dict(info.variables),
    }


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def build_admin_app(host: Host, state: ServerState, metrics: Metrics, token: str,
                    cache: ResponseCache | None = None, health: NodeHealth | None = None) -> Any:
    max_module = host.config.max_module_size

    def purge(**selector: Any) -> int:
        return cache.purge(**selector) if cache is not None else 0

    async def put_module(request: Request) -> Response:
        name = validate_name(request.path_params["name"])
        query = request.query_params
        limits = parse_limits({k: query[k] for k in LIMIT_QUERY if k in query}) or None
        pairs = query.getlist("var")
        if any("=" not in pair for pair in pairs):
            raise InvalidRequest("each var query parameter must be KEY=VALUE")
        variables = dict(pair.split("=", 1) for pair in pairs) or None
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_module:
            raise ModuleTooLarge(f"module of {declared} bytes exceeds the {max_module}-byte limit", limit=max_module)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_module:
                raise ModuleTooLarge(f"module exceeds the {max_module}-byte limit", limit=max_module)
            chunks.append(chunk)
        wasm = b"".join(chunks)
        # Compiling takes milliseconds of CPU: keep it off the event loop.
        info = await run_in_threadpool(host.deploy, name, wasm, limits=limits, variables=variables)
        purge(module=name)  # cached answers came from the old version
        return JSONResponse(version_json(info), status_code=201)

    async def list_modules(request: Request) -> Response:
        return JSONResponse({"modules": [module_json(m) for m in host.modules()]})

    async def get_module(request: Request) -> Response:
        return JSONResponse(module_json(host.module(request.path_params["name"])))

    async def patch_module(request: Request) -> Response:
        body = await _json_body(request)
        unknown = set(body) - {"limits", "variables"}
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}; use limits and variables")
        limits = body.get("limits")
        if limits is not None and not isinstance(limits, dict):
            raise InvalidRequest("limits must be an object")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise InvalidRequest("variables must be an object")
        parsed = parse_limits(limits) if limits is not None else None
        info = await run_in_threadpool(host.configure, request.path_params["name"], limits=parsed, variables=variables)
        purge(module=info.name)  # new variables can change every answer
        return JSONResponse(module_json(info))

    async def rollback(request: Request) -> Response:
        body = await _json_body(request)
        version = body.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise InvalidRequest("version must be an integer")
        info = await run_in_threadpool(host.rollback, request.path_params["name"], version)
        purge(module=info.name)
        return JSONResponse(module_json(info))

    async def delete_module(request: Request) -> Response:
        name = request.path_params["name"]
        await run_in_threadpool(host.delete, name)
        purge(module=name)
        # Its routes go too: a dangling route would make every later PUT /v1/routes of the table fail.
        kept = [route for route in state.routes.routes if route.module != name]
        removed = len(state.routes.routes) - len(kept)
        if removed:
            await run_in_threadpool(state.replace_routes, RouteTable.build(kept))
        return JSONResponse({"deleted": name, "routes_removed": removed})

    async def get_routes(request: Request) -> Response:
        return JSONResponse({"routes": state.routes.to_list()})

    async def put_routes(request: Request) -> Response:
        body = await _json_body(request)
        routes = body.get("routes")
        if not isinstance(routes, list):
            raise InvalidRequest('body must be {"routes": [...]}')
        table = RouteTable.build(routes)
        deployed = set(m.name for m in host.modules())
        for index, route in enumerate(table.routes):
            if route.module not in deployed:
                raise InvalidConfig(f"route {index} ({route.host}{route.path}) refers to module {route.module!r}, "
                                    "which is not deployed", route=index)
        await run_in_threadpool(state.replace_routes, table)
        purge(everything=True)  # a URL may now belong to another module
        return JSONResponse({"routes": table.to_list()})

    def regions_json() -> dict[str, Any]:
        return {"local_region": state.local_region, **state.regions.to_dict(),
                "health": health.snapshot() if health is not None else {}}

    async def get_regions(request: Request) -> Response:
        return JSONResponse(regions_json())

    async def put_regions(request: Request) -> Response:
        body = await _json_body(request)
        body.pop("local_region", None)  # read-only fields a client may send back from GET
        body.pop("health", None)
        table = state.check_regions(RegionTable.build(body))
        await run_in_threadpool(state.replace_regions, table)
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
            return JSONResponse({"purged": purge(everything=True)})
        if not isinstance(value, str) or not value:
            raise InvalidRequest(f"{kind} must be a non-empty string")
        return JSONResponse({"purged": purge(**{kind: value})})

    async def stats(request: Request) -> Response:
        s = host.statistics()
        body: dict[str, Any] = {
            "modules": s.modules, "invocations": s.invocations, "failures": dict(s.failures),
            "module_cache": asdict(s.module_cache), "guest_cache": asdict(s.guest_cache),
            "response_cache": asdict(cache.statistics()) if cache is not None else None,
            "artifact_recompiles": s.artifact_recompiles, "engines": s.engines, "region": state.local_region,
            "forwarded": [{"region": r, "status": st, "count": n} for (r, st), n in sorted(metrics.forwards.items())],
        }
        return JSONResponse(body)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "ready", "modules": len(host.modules()), "routes": len(state.routes.routes)})
        return JSONResponse({"status": "starting"}, status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def isolate_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, IsolateError)
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": kind, "detail": exc.detail}, status_code=exc.status_code)

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
        Route("/v1/routes", get_routes, methods=["GET"]),
        Route("/v1/routes", put_routes, methods=["PUT"]),
        Route("/v1/regions", get_regions, methods=["GET"]),
        Route("/v1/regions", put_regions, methods=["PUT"]),
        Route("/v1/cache/purge", purge_cache, methods=["POST"]),
        Route("/v1/stats", stats, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={IsolateError: isolate_error, HTTPException: http_error})
    return BearerAuth(app, token)
