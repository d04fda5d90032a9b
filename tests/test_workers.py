"""`isolate serve --workers N`: worker processes on one port follow one control plane, and one lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from guests import module, response_bytes, wasm
from live import ROOT, LiveServer

from isolate.http._workers import merge_metrics

CONNECTIONS = 24  # fresh connections per check: SO_REUSEPORT spreads them, so every worker gets some


def answering(body: bytes, cache: bool = False) -> bytes:
    headers = [["cache-control", "max-age=300"]] if cache else []
    return wasm(module(response=response_bytes(body=body, headers=headers)))


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found |= {int(p) for p in text.split()}
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def answers(server: LiveServer, path: str) -> list[httpx.Response]:
    """One GET per fresh connection."""
    out = []
    for _ in range(CONNECTIONS):
        with httpx.Client(base_url=server.edge_url, timeout=30) as client:
            out.append(client.get(path))
    return out


def bodies(server: LiveServer, path: str) -> list[bytes]:
    return [answer.content for answer in answers(server, path)]


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> LiveServer:
    with LiveServer(tmp_path / "data", "--workers", "2", "--threads", "2") as live:
        yield live  # type: ignore[misc]


def test_every_change_reaches_every_worker_before_the_admin_call_answers(server: LiveServer) -> None:
    with server.admin() as admin:
        assert admin.put("/v1/modules/app", content=answering(b"v1")).status_code == 201
        assert admin.put("/v1/routes", json={"routes": [{"path": "/app", "module": "app"}]}).status_code == 200
        assert set(bodies(server, "/app")) == {b"v1"}
        assert admin.put("/v1/modules/app", content=answering(b"v2")).status_code == 201
        assert set(bodies(server, "/app")) == {b"v2"}  # no worker still serves v1
        assert admin.post("/v1/modules/app/rollback").status_code == 200
        assert set(bodies(server, "/app")) == {b"v1"}
        assert admin.post("/v1/routes", json={"routes": [{"path": "/other", "module": "app"}]}).status_code == 200
        assert set(bodies(server, "/other")) == {b"v1"}
        assert admin.delete("/v1/modules/app").status_code == 200
        assert {(a.status_code, a.json()["error"]) for a in answers(server, "/app")} == {(404, "not_found")}
    # Both workers served: each writes its own access-log lines.
    log = server.wait_for_log("[worker 0] INFO isolate.access", "[worker 1] INFO isolate.access")
    assert "[worker 0] INFO isolate.access" in log and "[worker 1] INFO isolate.access" in log


def test_purges_reach_every_worker_and_count_theirs(server: LiveServer) -> None:
    with server.admin() as admin:
        admin.put("/v1/modules/cached", content=answering(b"old", cache=True)).raise_for_status()
        admin.put("/v1/routes", json={"routes": [{"path": "/c", "module": "cached"}]}).raise_for_status()
        assert set(bodies(server, "/c")) == {b"old"}  # now cached in both workers
        purged = admin.post("/v1/cache/purge", json={"module": "cached"}).json()["purged"]
        assert purged == 2  # one entry in each worker's cache
        assert admin.post("/v1/cache/purge", json={"all": True}).json()["purged"] == 0


def test_metrics_and_stats_cover_every_worker(server: LiveServer) -> None:
    with server.admin() as admin:
        admin.put("/v1/modules/app", content=answering(b"x")).raise_for_status()
        admin.put("/v1/routes", json={"routes": [{"path": "/app", "module": "app"}]}).raise_for_status()
        bodies(server, "/app")
        metrics = admin.get("/metrics").text
        assert (f'isolate_requests_total{{method="GET",module="app",region="local",route="/app",status="200",'
                f'version="1"}} {float(CONNECTIONS)}') in metrics
        assert "isolate_modules 1.0" in metrics  # the same view in each worker: not summed
        stats = admin.get("/v1/stats").json()
        assert stats["invocations"] == CONNECTIONS
        assert stats["modules"] == 1
        assert stats["workers"] == {"configured": 2, "serving": 2}


def test_a_killed_worker_is_started_again_and_catches_up(server: LiveServer) -> None:
    assert server.process is not None
    workers = children(server.process.pid)
    assert len(workers) == 2
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    with server.admin() as admin:
        # A change made while it is down still reaches its successor.
        admin.put("/v1/modules/app", content=answering(b"after")).raise_for_status()
        admin.put("/v1/routes", json={"routes": [{"path": "/app", "module": "app"}]}).raise_for_status()
        wait_for(lambda: len(children(server.process.pid) - {victim}) == 2  # type: ignore[union-attr]
                 and admin.get("/v1/stats").json()["workers"]["serving"] == 2)
    assert set(bodies(server, "/app")) == {b"after"}
    assert "exited with status -9; starting it again" in server.log()


def test_sigint_stops_the_supervisor_and_every_worker(server: LiveServer) -> None:
    assert server.process is not None
    workers = children(server.process.pid)
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=20) == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10)


def test_a_second_server_on_the_data_directory_fails_before_writing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = tmp_path / "first.wat"
    first.write_bytes(answering(b"one"))
    manifest = tmp_path / "isolate.toml"
    manifest.write_text(f'[modules.app]\npath = "{first}"\n\n[[routes]]\npath = "/app"\nmodule = "app"\n')
    with LiveServer(data, "--manifest", str(manifest)) as live:
        metadata = (data / "modules" / "app.json").read_bytes()
        first.write_bytes(answering(b"two"))  # a second server would deploy this as version 2
        command = [sys.executable, "-m", "isolate.cli", "serve", "--data-dir", str(data), "--manifest", str(manifest),
                   "--port", "0", "--admin-port", "0"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=live.env)
        assert result.returncode != 0
        assert f"data directory {data} is in use by another isolate server (pid {live.process.pid})" in \
            result.stderr  # type: ignore[union-attr]
        assert (data / "modules" / "app.json").read_bytes() == metadata
        with live.edge() as edge:
            assert edge.get("/app").content == b"one"
    # Once the first has stopped, the directory is free again (the kernel drops the lock with it).
    with LiveServer(data) as again, again.edge() as edge:
        assert edge.get("/app").content == b"one"


def test_workers_flag_takes_auto_and_refuses_nonsense(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "isolate.cli", "serve", "--data-dir", str(tmp_path / "d"), "--workers", "none"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0 and "workers must be a whole number or 'auto'" in result.stderr
    assert not (tmp_path / "d" / "modules").exists()


def test_merged_metrics_sum_counters_and_histograms_but_not_shared_gauges() -> None:
    one = ('# HELP isolate_requests Edge requests\n# TYPE isolate_requests counter\n'
           'isolate_requests_total{module="a",status="200"} 3.0\n'
           '# HELP isolate_modules Deployed\n# TYPE isolate_modules gauge\nisolate_modules 2.0\n'
           '# HELP isolate_request_duration_seconds Latency\n# TYPE isolate_request_duration_seconds histogram\n'
           'isolate_request_duration_seconds_bucket{le="0.1",module="a"} 3.0\n'
           'isolate_request_duration_seconds_bucket{le="+Inf",module="a"} 3.0\n'
           'isolate_request_duration_seconds_count{module="a"} 3.0\n'
           'isolate_request_duration_seconds_sum{module="a"} 0.25\n')
    two = one.replace("} 3.0", "} 4.0").replace("0.25", "0.5")
    merged = merge_metrics([one, two]).decode()
    assert 'isolate_requests_total{module="a",status="200"} 7.0' in merged
    assert "isolate_modules 2.0" in merged
    assert 'isolate_request_duration_seconds_bucket{le="+Inf",module="a"} 7.0' in merged
    assert 'isolate_request_duration_seconds_sum{module="a"} 0.75' in merged




def test_replaying_a_change_never_shows_a_deployed_module_as_missing(tmp_path: Path) -> None:
    """A worker re-reads a module while requests to it run on other threads: none may see it gone."""
    import threading

    from isolate import Config, Host
    from isolate.errors import IsolateError

    host = Host(Config(data_dir=tmp_path / "data", pool_instances=16))
    try:
        host.deploy("app", answering(b"hi"))
        host.set_secrets("app", {"KEY": "v"})
        failures: list[str] = []
        done = threading.Event()

        def requests() -> None:
            while not done.is_set():
                try:
                    host.invoke("app")
                    if host.secrets.values("app") != {"KEY": "v"}:
                        failures.append("secrets")
                except IsolateError as exc:
                    failures.append(exc.kind)

        thread = threading.Thread(target=requests)
        thread.start()
        for _ in range(300):
            host.refresh("app")
        done.set()
        thread.join()
        assert failures == []
    finally:
        host.close()


def test_metrics_scrapes_during_changes_never_cost_a_worker(server: LiveServer) -> None:
    """Scrapes and changes share each worker's channel: neither may take the other's answer."""
    import threading

    assert server.process is not None
    workers = children(server.process.pid)
    with server.admin() as admin:
        admin.put("/v1/modules/app", content=answering(b"x")).raise_for_status()
        done = threading.Event()

        def scrape() -> None:
            with server.admin() as scraper:
                while not done.is_set():
                    scraper.get("/metrics").raise_for_status()

        scrapers = [threading.Thread(target=scrape) for _ in range(3)]
        for thread in scrapers:
            thread.start()
        try:
            for i in range(40):
                admin.patch("/v1/modules/app", json={"variables": {"N": str(i)}}).raise_for_status()
        finally:
            done.set()
            for thread in scrapers:
                thread.join()
    assert "did not take a change" not in server.log()
    assert children(server.process.pid) == workers  # none replaced
