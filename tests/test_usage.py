"""Usage metering: per-module figures, hourly buckets, persistence across restarts, /v1/usage and `isolate usage`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
from guests import HELLO, fetcher, io_call, module, wasm
from live import ROOT, LiveServer
from origin import Origin

from isolate import Config, Host, IsolateError, Request
from isolate.usage import ModuleUsage, Usage, parse_since

HOUR = 3600.0
T0 = 1_800_000_000.0  # a whole hour


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_figures_from_many_threads_fold_exactly_and_persist(tmp_path: Path) -> None:
    clock = Clock()
    usage = Usage(tmp_path / "usage", flush_interval=3600, clock=clock)

    def work() -> None:
        for _ in range(2000):
            usage.record("a", 1000, 2000, 1 << 20, 1, 100, 2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        usage.fold()  # while the threads add: nothing lost, nothing counted twice
    for thread in threads:
        thread.join()
    clock.now += HOUR
    usage.record("b", 5_000_000, 5_000_000, 2 << 20)
    usage.close()
    expected_a = ModuleUsage(8000, 8.0, 16.0, 8000 * 2e-6, 8000, 800_000, 16000)
    totals = usage.totals()
    assert totals["a"] == expected_a
    assert totals["b"] == ModuleUsage(1, 5.0, 5.0, 2 * 0.005, 0, 0, 0)
    files = sorted(p.name for p in (tmp_path / "usage").iterdir())
    assert files == ["2027-01-15T08.json", "2027-01-15T09.json"]

    again = Usage(tmp_path / "usage", clock=clock)
    try:
        assert again.totals() == totals
        start, hour = again.since(T0 + HOUR + 59)  # hourly: from the start of the hour holding `since`
        assert start == T0 + HOUR and set(hour) == {"b"}
        start, both = again.since(T0 - 10 * HOUR)  # nothing older was kept: from the oldest hour
        assert start == T0 and both["a"] == expected_a
    finally:
        again.close()


def test_a_damaged_hour_is_skipped_and_old_hours_expire(tmp_path: Path) -> None:
    clock = Clock()
    usage = Usage(tmp_path, flush_interval=3600, retention_hours=2, clock=clock)
    usage.record("a", 1, 1, 1)
    usage.flush()
    clock.now += HOUR
    usage.record("a", 1, 1, 1)
    usage.close()
    (tmp_path / "2027-01-15T08.json").write_text("{not json")
    again = Usage(tmp_path, flush_interval=3600, retention_hours=2, clock=clock)
    assert again.totals()["a"].invocations == 2  # the newest file carries the totals
    clock.now += 3 * HOUR
    again.record("a", 1, 1, 1)
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2027-01-15T08.json", "2027-01-15T12.json"]
    assert Usage(tmp_path, clock=clock).totals()["a"].invocations == 3


def test_since_takes_unix_and_iso_times() -> None:
    assert parse_since("1800000000") == T0
    assert parse_since("2027-01-15T08:00:00Z") == T0
    assert parse_since("2027-01-15T09:00:00+01:00") == T0
    assert parse_since("2027-01-15T08:00:00") == T0  # UTC when no zone is named
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_host_meters_requests_failures_outbound_and_kv(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data")
    with Origin() as origin:
        envelope = bytes(msgpack.packb({"url": f"{origin.url}/ok"}))
        with Host(config) as host:
            host.deploy("hello", HELLO)
            host.deploy("fetch", fetcher(envelope, calls=2), allowed_hosts=[origin.url])
            host.deploy("kv", io_call("(call $kv_open (i32.const 200) (i32.const 7))", b"default"))
            host.deploy("bad", module("unreachable"))
            for _ in range(3):
                host.invoke("hello", Request())
            assert host.invoke("fetch", Request()).status == 200
            host.invoke("kv", Request())
            with pytest.raises(IsolateError):
                host.invoke("bad", Request())
            with pytest.raises(IsolateError):
                host.invoke("missing", Request())  # no module ran: nothing to meter
            totals = host.usage_totals()
            stored = host.stored_bytes()
    assert set(totals) == {"hello", "fetch", "kv", "bad"}
    hello = totals["hello"]
    assert hello.invocations == 3 and hello.cpu_ms > 0 and hello.wall_ms >= hello.cpu_ms * 0.5
    assert hello.memory_mib_s > 0  # 64 KiB × its duration
    assert totals["fetch"].outbound_requests == 2 and totals["fetch"].outbound_bytes > 2 * len(envelope)
    assert totals["kv"].kv_operations == 1
    assert totals["bad"].invocations == 1
    assert stored["hello"] > 0 and "missing" not in stored
    with Host(config) as again:  # a restart: the figures were written at close
        assert again.usage_totals() == totals


@pytest.fixture
def server(tmp_path: Path) -> LiveServer:
    with LiveServer(tmp_path / "data") as live:
        yield live  # type: ignore[misc]


def test_usage_over_the_admin_api_and_the_cli_survives_a_restart(server: LiveServer) -> None:
    with server.admin() as admin, server.edge() as edge:
        admin.put("/v1/modules/hello", content=wasm(HELLO)).raise_for_status()
        admin.put("/v1/routes", json={"routes": [{"path": "/h", "module": "hello"}]}).raise_for_status()
        for _ in range(5):
            assert edge.post("/h").status_code == 200  # POST: no response cache, every request runs the guest
        body = admin.get("/v1/usage").json()
        assert body["since"] is None and body["granularity"] == "hour"
        (row,) = body["modules"]
        assert row["module"] == "hello" and row["invocations"] == 5 and row["deployed"] is True
        assert row["stored_bytes"] > 0 and row["cpu_ms"] > 0 and row["memory_mib_s"] > 0
        recent = admin.get("/v1/usage", params={"since": "2000-01-01T00:00:00Z"}).json()
        assert recent["modules"][0]["invocations"] == 5 and recent["from"].endswith("Z")
        future = admin.get("/v1/usage", params={"since": str(4_000_000_000)}).json()
        assert future["modules"][0]["invocations"] == 0  # still listed: it is deployed
        bad = admin.get("/v1/usage", params={"since": "soon"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
        assert admin.get("/v1/usage", headers={"authorization": "Bearer wrong"}).status_code == 401
    server.restart()  # SIGTERM: everything is written at close
    with server.admin() as admin:
        (row,) = admin.get("/v1/usage").json()["modules"]
        assert row["invocations"] == 5
        assert 'isolate_usage_invocations_total{module="hello"} 5.0' in admin.get("/metrics").text
        admin.delete("/v1/modules/hello").raise_for_status()
        (row,) = admin.get("/v1/usage").json()["modules"]  # what it used stays on the books
        assert row["invocations"] == 5 and row["deployed"] is False and row["stored_bytes"] == 0
    cli = [sys.executable, "-m", "isolate.cli", "usage", *server.cli_args()]
    table = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "MODULE" in table and "hello (deleted)" in table
    raw = json.loads(subprocess.run([*cli, "--json", "--since", "2000-01-01"], capture_output=True, text=True,
                                    cwd=ROOT, check=True).stdout)
    assert raw["modules"][0]["invocations"] == 5


def test_workers_usage_is_merged_by_the_supervisor_and_persisted(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", "--workers", "2", "--threads", "2") as server:
        with server.admin() as admin:
            admin.put("/v1/modules/hello", content=wasm(HELLO)).raise_for_status()
            admin.put("/v1/routes", json={"routes": [{"path": "/h", "module": "hello"}]}).raise_for_status()
            for _ in range(12):  # a connection each: SO_REUSEPORT spreads them over the workers
                with server.edge() as edge:
                    assert edge.post("/h").status_code == 200
            (row,) = admin.get("/v1/usage").json()["modules"]
            assert row["invocations"] == 12
            assert 'isolate_usage_invocations_total{module="hello"} 12.0' in admin.get("/metrics").text
        server.restart()
        with server.admin() as admin:
            (row,) = admin.get("/v1/usage").json()["modules"]
            assert row["invocations"] == 12
