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


BIG = "1" + "0" * 400
DAMAGED = {  # file body -> why it is skipped
    '{"hour": 1e999, "sequence": 9, "modules": {}, "totals": {}}': "infinite hour",
    '{"hour": -100000000000000000000, "sequence": 9, "modules": {}, "totals": {}}': "negative hour",
    '{"hour": 100000000000000000000, "sequence": 9, "modules": {}, "totals": {}}': "hour past year 9999",
    '{"hour": 1800003600, "sequence": 9, "modules": {}, "totals": {}}': "not the hour of its name",
    '{"hour": 1800000001, "sequence": 9, "modules": {}, "totals": {}}': "not a whole hour",
    '{"hour": 1800000000, "sequence": 9, "modules": {"m": [1e999, 0, 0, 0, 0, 0, 0]}, "totals": {}}': "inf",
    '{"hour": 1800000000, "sequence": 9, "modules": {}, "totals": {"m": [1, ' + BIG + ', 0, 0, 0, 0, 0]}}': "huge",
    '{"hour": 1800000000, "sequence": 9, "modules": {}, "totals": {"m": [-1, 0, 0, 0, 0, 0, 0]}}': "negative",
    '{"hour": 1800000000, "sequence": 9, "modules": {}, "totals": {"m": [0.5, 0, 0, 0, 0, 0, 0]}}': "fraction",
    '{"hour": 1800000000, "sequence": 9, "modules": {"m": "1234567"}, "totals": {}}': "a string row",
    '{"hour": 1800000000, "sequence": NaN, "modules": {}, "totals": {}}': "nan sequence",
    '{"hour": 1800000000, "sequence": 9, "modules": [], "totals": {}}': "modules not an object",
    '[1, 2]': "not an object",
}


@pytest.mark.parametrize("body", list(DAMAGED), ids=list(DAMAGED.values()))
def test_a_damaged_number_skips_the_file_and_later_flushes_persist(tmp_path: Path, body: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    directory = tmp_path / "data" / "usage"
    directory.mkdir(parents=True)
    (directory / "2027-01-15T08.json").write_text(body)
    with caplog.at_level("ERROR", logger="isolate.usage"):
        usage = Usage(directory, flush_interval=3600, clock=clock)  # starts: the file is logged and skipped
    assert "skipping" in caplog.text and "2027-01-15T08.json" in caplog.text
    assert usage.totals() == {} and usage.since(0.0)[1] == {}
    for _ in range(2):  # every flush writes: the bad hour never blocks one
        clock.now += HOUR
        usage.record("a", 1, 1, 1)
        usage.flush()
    usage.close()
    again = Usage(directory, flush_interval=3600, clock=clock)
    try:
        assert again.totals()["a"].invocations == 2
    finally:
        again.close()
    fresh = tmp_path / "fresh"
    (fresh / "usage").mkdir(parents=True)
    (fresh / "usage" / "2027-01-15T08.json").write_text(body)
    with Host(Config(data_dir=fresh)) as host:  # a server with the damaged file starts, and writes
        host.usage.record("a", 1, 1, 1)
        host.usage.flush()
    assert len(list((fresh / "usage").iterdir())) == 2


def test_files_past_the_retention_keep_their_totals(tmp_path: Path) -> None:
    clock = Clock()
    usage = Usage(tmp_path, flush_interval=3600, retention_hours=2, clock=clock)
    usage.record("a", 1, 1, 1)
    usage.close()
    clock.now += 10 * HOUR  # stopped longer than the retention: the hours expire, the totals stay
    again = Usage(tmp_path, flush_interval=3600, retention_hours=2, clock=clock)
    assert again.since(0.0)[1] == {} and again.totals()["a"].invocations == 1
    again.close()  # nothing recorded: the totals are written in this hour's file before the old one goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2027-01-15T18.json"]
    assert Usage(tmp_path, clock=clock).totals()["a"].invocations == 1


def test_readers_never_wait_on_a_flush_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import isolate.usage as usage_module

    usage = Usage(tmp_path, flush_interval=3600)
    writing, release = threading.Event(), threading.Event()
    real_write = usage_module.atomic_write

    def slow_write(path: Path, data: bytes) -> None:  # an fsync that takes its time
        writing.set()
        assert release.wait(10)
        real_write(path, data)

    monkeypatch.setattr(usage_module, "atomic_write", slow_write)
    usage.record("a", 1, 1, 1)
    first = threading.Thread(target=usage.flush)
    first.start()
    assert writing.wait(10)
    usage.record("a", 1, 1, 1)
    done = threading.Event()
    reader = threading.Thread(target=lambda: (usage.totals(), usage.since(0.0), done.set()))
    reader.start()
    assert done.wait(5), "totals() waited on the disk"
    second = threading.Thread(target=usage.flush)  # waits for the first write, then writes the newer totals
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    usage.close()
    assert Usage(tmp_path).totals()["a"].invocations == 2


def test_since_takes_unix_and_iso_times() -> None:
    assert parse_since("1800000000") == T0
    assert parse_since("2027-01-15T08:00:00Z") == T0
    assert parse_since("2027-01-15T09:00:00+01:00") == T0
    assert parse_since("2027-01-15T08:00:00") == T0  # UTC when no zone is named
    for bad in ("yesterday", "inf", "-inf", "nan", "1e18", "-1e18", "1e999", "0001-01-01", "9999-12-31T23:00Z"):
        with pytest.raises(ValueError):
            parse_since(bad)


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


def test_cli_invoke_leaves_the_usage_files_to_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Host(Config(data_dir=data)) as host:
        host.deploy("hello", HELLO)
        host.invoke("hello", Request())
    (written,) = (data / "usage").iterdir()
    before = written.read_bytes()
    result = subprocess.run([sys.executable, "-m", "isolate.cli", "invoke", "hello", "--data-dir", str(data)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "HTTP 200" in result.stdout, result.stderr
    assert list((data / "usage").iterdir()) == [written] and written.read_bytes() == before


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
        for since in ("soon", "inf", "nan", "1e18", "-1e18"):
            bad = admin.get("/v1/usage", params={"since": since})
            assert bad.status_code == 400 and bad.json()["error"] == "invalid_request", since
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
