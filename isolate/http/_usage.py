"""`GET /v1/usage?since=`: each module's usage (isolate.usage) as JSON, for the admin API and `isolate usage`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequest
from ..host import Host
from ..usage import ModuleUsage, parse_since


def usage_body(host: Host, since: str | None) -> dict[str, Any]:
    """Every module with usage in the period or deployed now: totals since metering began, or, with
    `since`, the hours from the one holding `since` on (`from` says when the first of them began)."""
    if since is None:
        start: float | None = None
        figures = host.usage_totals()
    else:
        try:
            when = parse_since(since)
        except (ValueError, OverflowError):
            raise InvalidRequest(f"since must be a unix time or an ISO 8601 time, got {since[:64]!r}") from None
        start, figures = host.usage.since(when)
    stored = host.stored_bytes()
    modules = []
    for name in sorted(set(figures) | set(stored)):
        row: dict[str, Any] = {"module": name, **asdict(figures.get(name, ModuleUsage()))}
        row["cpu_ms"] = round(row["cpu_ms"], 3)
        row["wall_ms"] = round(row["wall_ms"], 3)
        row["memory_mib_s"] = round(row["memory_mib_s"], 6)
        row["stored_bytes"] = stored.get(name, 0)
        row["deployed"] = name in stored
        modules.append(row)
    return {"since": since, "from": _iso(start) if start is not None else None, "until": _iso(time.time()),
            "granularity": "hour", "modules": modules}


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def usage_endpoint(host: Host) -> Callable[[Request], Awaitable[Response]]:
    async def usage(request: Request) -> Response:
        # In a thread: folding may ask the workers of `serve --workers` for their figures.
        return JSONResponse(await run_in_threadpool(usage_body, host, request.query_params.get("since")))

    return usage
