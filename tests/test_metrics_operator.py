"""The metrics operators expect: versions, routes, methods and regions on request metrics, per-module caches,
process_* figures, peak memory, and no series left behind by a deleted module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from guests import HELLO, VISITS, module, response_bytes, wasm
from live import LiveServer

CACHED = module(response=response_bytes(body=b"cached", headers=[["cache-control", "max-age=300"]]))


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


@pytest.fixture
def server(tmp_path: Path) -> LiveServer:
    with LiveServer(tmp_path / "data") as live:
        yield live  # type: ignore[misc]


def test_request_metrics_carry_bounded_labels_and_versions(server: LiveServer) -> None:
    with server.admin() as admin, server.edge() as edge:
        admin.put("/v1/modules/users", content=wasm(HELLO)).raise_for_status()
        admin.put("/v1/routes", json={"routes": [{"path": "/users/:id", "module": "users"}]}).raise_for_status()
        for user in range(3):
            assert edge.get(f"/users/{user}").status_code == 200
        assert edge.request("PROPFIND", "/users/9").status_code == 200  # outside the fixed set: "other"
        admin.put("/v1/modules/users", content=wasm(HELLO)).raise_for_status()  # version 2: a rollout
        assert edge.post("/users/1").status_code == 200
        text = admin.get("/metrics").text
    requests = series(text, "isolate_requests_total")
    assert ('isolate_requests_total{method="GET",module="users",region="local",route="/users/:id",status="200",'
            'version="1"} 3.0') in requests
    assert any('method="other"' in line and 'version="1"' in line for line in requests)
    assert any('method="POST"' in line and 'version="2"' in line for line in requests)
    assert not any("/users/1" in line or "PROPFIND" in line for line in text.splitlines())  # patterns only
    assert 'isolate_module_active_version{module="users"} 2.0' in text
    assert any(line.startswith('isolate_request_duration_seconds_count{method="GET",module="users",region="local",'
                               'route="/users/:id"}') for line in text.splitlines())
    assert 'isolate_guest_memory_peak_bytes{module="users"} 65536.0' in text
    assert 'isolate_guest_memory_bytes{module="users"} 65536.0' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert series(text, name), name


def test_caches_per_module_and_a_deleted_module_leaves_no_series(server: LiveServer) -> None:
    with server.admin() as admin, server.edge() as edge:
        admin.put("/v1/modules/cached", content=wasm(CACHED)).raise_for_status()
        admin.put("/v1/modules/visits", content=wasm(VISITS)).raise_for_status()
        admin.put("/v1/routes", json={"routes": [{"path": "/c", "module": "cached"},
                                                 {"path": "/v", "module": "visits"}]}).raise_for_status()
        for _ in range(3):
            assert edge.get("/c").content == b"cached"
            edge.post("/v")
        assert edge.get("/nowhere").status_code == 404  # no module ran: a series, but no guest figures
        text = admin.get("/metrics").text
        assert ('isolate_requests_total{method="GET",module="-",region="",route="none",status="404",version=""} 1.0'
                in text)
        assert not [line for line in text.splitlines() if 'module="-"' in line and (
            line.startswith("isolate_guest_memory") or line.startswith("isolate_instantiate_seconds"))]
        assert 'isolate_response_cache_requests_total{module="cached",result="miss"} 1.0' in text
        assert 'isolate_response_cache_requests_total{module="cached",result="hit"} 2.0' in text
        assert 'isolate_response_cache_requests_total{module="visits",result="bypass"} 3.0' in text
        assert 'isolate_guest_cache_module_entries{module="visits"} 1.0' in text
        assert 'isolate_guest_cache_module_requests_total{module="visits",result="miss"} 1.0' in text
        assert 'isolate_guest_cache_module_requests_total{module="visits",result="hit"} 2.0' in text
        assert 'isolate_usage_invocations_total{module="visits"} 3.0' in text
        assert re.search(r'isolate_usage_stored_bytes\{module="visits"\} [1-9]', text)

        admin.delete("/v1/modules/visits").raise_for_status()
        text = admin.get("/metrics").text
    gone = [line for line in text.splitlines() if 'module="visits"' in line]
    assert gone == []
    assert 'isolate_response_cache_requests_total{module="cached",result="hit"} 2.0' in text  # the others stay
