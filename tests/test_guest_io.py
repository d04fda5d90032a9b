"""Guests reach the world, end to end: each SDK's features guest on a real `isolate serve`, calling a
real origin on loopback, using key-value stores and reading secrets (ABI.md, "Outbound HTTP",
"Key-value stores", "Secrets")."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer
from origin import Origin, closed_port

from isolate.build import build

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "guest-sdk"
LANGUAGES = ["c", "rust", "assemblyscript"]
SECRET = "s3cr3t-value-7f3a9c"  # grepped for in every output below


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, origin: Origin, down: int) -> Iterator[LiveServer]:
    """One server with each language's features guest behind host `<language>.test`."""
    with LiveServer(tmp_path_factory.mktemp("io") / "data") as live, live.admin() as admin:
        routes = []
        for language in LANGUAGES:
            wasm = build(SDK / language / "tests" / "features").output.read_bytes()
            name = f"features-{language}"
            assert admin.put(f"/v1/modules/{name}/secrets", json={"api_key": SECRET}).status_code == 200
            params = [("timeout", "3s"), ("outbound_response_size", "64KiB"), ("kv_operations", "50"),
                      ("allow_host", origin.url), ("allow_host", f"http://127.0.0.1:{down}"),
                      ("kv_store", "default"), ("kv_store", "shared")]
            deployed = admin.put(f"/v1/modules/{name}", content=wasm, params=params)
            assert deployed.status_code == 201, deployed.text
            routes.append({"host": f"{language}.test", "path": "/...", "module": name})
        assert admin.post("/v1/routes", json={"routes": routes}).status_code == 200
        yield live


def call(server: LiveServer, language: str, path: str, **kwargs: Any) -> httpx.Response:
    with server.edge() as edge:
        return edge.request(kwargs.pop("method", "GET"), path, headers={"host": f"{language}.test"}, **kwargs)


# -- outbound HTTP ------------------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_fetch_reaches_an_allowed_origin_with_the_request_id(server: LiveServer, origin: Origin,
                                                             language: str) -> None:
    response = call(server, language, f"/fetch?url={origin.url}/echo&method=POST", method="POST", content=b"payload")
    assert response.status_code == 200, response.text
    assert response.headers["x-fetch-status"] == "200"
    assert response.headers["x-fetch-origin"] == "test-origin"
    assert response.headers["x-fetch-url"] == f"{origin.url}/echo"
    seen = json.loads(response.content)
    assert seen["method"] == "POST" and seen["body"] == "payload"
    assert seen["headers"]["x-probe"] == "features"
    assert seen["headers"]["x-request-id"] == response.headers["x-request-id"]  # the call carries the request's id


@pytest.mark.parametrize("language", LANGUAGES)
def test_fetch_failures_are_codes_the_guest_sees(server: LiveServer, origin: Origin, down: int,
                                                 language: str) -> None:
    other = closed_port()
    before = len(origin.seen)
    cases = {
        f"url=http://127.0.0.1:{other}/x": "-2 denied",  # same address, port not allowed
        f"url=http://localhost:{origin.port}/ok": "-2 denied",  # a name is not its address
        "url=ftp://example.com/": "-1 bad_request",
        "url=not-a-url": "-1 bad_request",
        f"url=http://127.0.0.1:{down}/": "-5 unreachable",
        f"url={origin.url}/slow%3Fs%3D3&timeout_ms=300": "-6 timeout",
        f"url={origin.url}/huge%3Fn%3D100000": "-7 too_large",  # over outbound_response_size (64 KiB)
        f"url={origin.url}/garbage": "-8 protocol",
        f"url={origin.url}/redirect%3Fto%3D%2Fredirect&redirects=1": "-9 too_many_redirects",
        f"url={origin.url}/redirect%3Fto%3Dhttp%3A%2F%2F127.0.0.1%3A{other}%2F&redirects=2": "-2 denied",
    }
    for query, expected in cases.items():
        response = call(server, language, f"/fetch?{query}")
        assert (response.status_code, response.text) == (502, expected), query
    # Refused calls never connect: only the timeout, too-large, garbage and redirect cases reached the origin.
    assert {s["path"] for s in origin.seen[before:]} <= {"/slow", "/huge", "/garbage", "/redirect"}
    log = server.wait_for_log(f"http://127.0.0.1:{other} is not in the module's allowed_hosts")
    assert f"http://127.0.0.1:{other} is not in the module's allowed_hosts" in log


@pytest.mark.parametrize("language", LANGUAGES)
def test_redirects_are_followed_only_when_asked(server: LiveServer, origin: Origin, language: str) -> None:
    plain = call(server, language, f"/fetch?url={origin.url}/redirect%3Fto%3D%2Fok")
    assert plain.status_code == 200 and plain.headers["x-fetch-status"] == "302"
    followed = call(server, language, f"/fetch?url={origin.url}/redirect%3Fto%3D%2Fok&redirects=1")
    assert followed.headers["x-fetch-status"] == "200" and followed.content == b"hello from origin"
    assert followed.headers["x-fetch-url"] == f"{origin.url}/ok"


@pytest.mark.parametrize("language", LANGUAGES)
def test_outbound_calls_per_request_are_capped(server: LiveServer, origin: Origin, language: str) -> None:
    assert call(server, language, f"/fetch-many?url={origin.url}/ok&n=16").text == "ok 16"
    response = call(server, language, f"/fetch-many?url={origin.url}/ok&n=17")
    assert (response.status_code, response.text) == (502, "-4 too_many_requests after 16")


def test_origin_connections_are_kept_alive(server: LiveServer, origin: Origin) -> None:
    opened = origin.connections
    for _ in range(20):
        assert call(server, "c", f"/fetch?url={origin.url}/ok").status_code == 200
    assert origin.connections - opened <= 2  # pooled: not one connection per call


def test_an_endless_origin_ends_at_the_deadline(server: LiveServer, origin: Origin) -> None:
    with server.admin() as admin:
        assert admin.patch("/v1/modules/features-c", json={"limits": {"timeout": "300ms"}}).status_code == 200
        try:
            response = call(server, "c", f"/fetch?url={origin.url}/endless%3Fevery%3D0.001")
            assert response.status_code == 504 and response.json()["error"] == "timeout"
            response = call(server, "c", f"/fetch?url={origin.url}/endless%3Fevery%3D0.05")  # a trickle
            assert response.status_code == 504 and response.json()["error"] == "timeout"
        finally:
            assert admin.patch("/v1/modules/features-c", json={"limits": {"timeout": "3s"}}).status_code == 200


def test_guests_waiting_on_a_slow_origin_hold_up_nobody(tmp_path: Path, origin: Origin) -> None:
    """100 requests wait on an origin that holds its answers; meanwhile other guests answer at once.
    The origin answers only when the test says so, so nothing here depends on timing."""
    wasm = build(SDK / "c" / "tests" / "features").output.read_bytes()
    hello = (ROOT / "samples" / "hello-wat" / "hello.wat").read_bytes()
    with LiveServer(tmp_path / "data", "--threads", "2") as live, live.admin() as admin:
        # 16 MiB each: a hundred isolates at once fit the host's memory budget (each reserves its limit).
        for name, wasm_bytes, params in (("slow", wasm, [("allow_host", origin.url), ("timeout", "30s")]),
                                         ("hello", hello, []), ("busy", wasm, [])):
            deployed = admin.put(f"/v1/modules/{name}", content=wasm_bytes, params=[*params, ("memory", "16MiB")])
            assert deployed.status_code == 201, deployed.text
            routed = admin.post("/v1/routes", json={"routes": [{"path": "/...", "module": name,
                                                                "host": f"{name}.test"}]})
            assert routed.status_code == 200, routed.text
        slow_done: list[int] = []
        origin.release.clear()

        def slow(i: int) -> None:
            with httpx.Client(base_url=live.edge_url, timeout=60) as client:
                # Distinct URLs: identical GETs would be collapsed by the response cache into one call.
                response = client.get(f"/fetch?url={origin.url}/hold&n={i}", headers={"host": "slow.test"})
                slow_done.append(response.status_code)

        threads = [threading.Thread(target=slow, args=(i,)) for i in range(100)]
        try:
            for thread in threads:
                thread.start()
            waited = 0
            while origin.hits("/hold") < 100 and waited < 3000:  # every one of them waits on the origin
                threading.Event().wait(0.01)
                waited += 1
            assert origin.hits("/hold") == 100, slow_done
            quick = []
            with live.edge() as edge:
                for _ in range(20):
                    quick.append(edge.get("/", headers={"host": "hello.test"}).status_code)
                    quick.append(edge.get("/query?name=q&q=x", headers={"host": "busy.test"}).status_code)
            assert quick == [200] * 40  # answered while all 100 guests still waited on the origin
            assert slow_done == []
        finally:
            origin.release.set()
            for thread in threads:
                thread.join(timeout=60)
        assert slow_done == [200] * 100


# -- key-value stores ----------------------------------------------------------------------------

@pytest.mark.parametrize("language", LANGUAGES)
def test_kv_operations(server: LiveServer, language: str) -> None:
    def kv(op: str, store: str = "default", body: bytes | None = None, **query: str) -> httpx.Response:
        params = "&".join(f"{k}={v}" for k, v in {"store": store, **query}.items())
        return call(server, language, f"/kv/{op}?{params}", method="POST" if body is not None else "GET",
                    content=body)

    prefix = f"{language}-"
    assert kv("set", key=f"{prefix}a", body=b"alpha").text == "ok"
    assert kv("get", key=f"{prefix}a").content == b"alpha"
    assert kv("exists", key=f"{prefix}a").text == "1"
    assert (kv("get", key=f"{prefix}zz").status_code, kv("get", key=f"{prefix}zz").text) == (404, "-1 not_found")
    assert kv("exists", key=f"{prefix}zz").text == "0"
    big = os.urandom(300_000)  # larger than any first buffer: the second read returns the same bytes
    assert kv("set", key=f"{prefix}big", body=big).text == "ok"
    assert kv("get", key=f"{prefix}big").content == big
    for i in range(5):
        assert kv("set", key=f"{prefix}item{i}", body=b"v").text == "ok"
    page = kv("list", prefix=f"{prefix}item")
    assert page.text.split("\n") == [f"{prefix}item{i}" for i in range(5)] and "x-cursor" not in page.headers
    after = kv("list", prefix=f"{prefix}item", cursor=f"{prefix}item2")
    assert after.text.split("\n") == [f"{prefix}item3", f"{prefix}item4"]
    assert kv("delete", key=f"{prefix}a").text == "ok"
    assert kv("get", key=f"{prefix}a").status_code == 404
    assert kv("delete", key=f"{prefix}a").text == "ok"  # deleting what is not there is not an error
    # errors
    assert kv("get", store="forbidden", key="k").text == "-4 no_such_store"  # not granted
    assert kv("long-key").text == "-2 bad_key"
    assert kv("get", key="").text == "-2 bad_key"
    assert kv("big", key=f"{prefix}huge", size=str(1024 * 1024 + 1)).text == "-3 too_large"
    assert kv("big", key=f"{prefix}max", size=str(1024 * 1024)).text == "ok"
    assert kv("count", n="49").text == "ok 49"  # kv_open is a call too: 50 in all
    assert kv("count", n="50").text == "-7 too_many_operations after 49"


def test_a_store_is_shared_by_the_modules_granted_it(server: LiveServer) -> None:
    assert call(server, "c", "/kv/set?store=shared&key=greeting", method="POST", content=b"from C").text == "ok"
    assert call(server, "rust", "/kv/get?store=shared&key=greeting").content == b"from C"
    assert call(server, "assemblyscript", "/kv/get?store=shared&key=greeting").content == b"from C"
    with server.admin() as admin:
        assert admin.get("/v1/kv/shared/greeting").content == b"from C"


@pytest.mark.parametrize("language", LANGUAGES)
def test_secrets_and_helpers(server: LiveServer, language: str) -> None:
    assert call(server, language, "/secret?name=api_key").text == SECRET
    assert call(server, language, "/secret?name=nope").status_code == 404
    assert call(server, language, "/query?name=q&q=a%20b+c").text == "a b c"
    assert call(server, language, "/query?name=none").status_code == 404
    response = call(server, language, '/json?q=say%20%22hi%22%0A%5C')
    assert response.status_code == 201 and response.headers["content-type"].startswith("application/json")
    assert response.json() == {"echo": 'say "hi"\n\\'}


def test_secrets_never_leave_the_host(server: LiveServer, tmp_path: Path) -> None:
    import subprocess
    import sys

    with server.admin() as admin:
        answers = [admin.get("/v1/modules").text, admin.get("/v1/modules/features-c").text, admin.get("/metrics").text,
                   admin.get("/v1/stats").text]
        listed = admin.get("/v1/modules/features-c").json()
    assert listed["secrets"] == ["api_key"]
    cli = subprocess.run([sys.executable, "-m", "isolate.cli", "modules", *server.cli_args()], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    assert "secrets: api_key" in cli.stdout
    call(server, "c", "/secret?name=api_key")  # the guest reads it: it is in no log line either
    for output in [*answers, cli.stdout, cli.stderr, server.wait_for_log("/secret")]:
        assert SECRET not in output
    stored = server.data_dir / "secrets" / "features-c.json"
    assert stored.stat().st_mode & 0o777 == 0o600 and (stored.parent.stat().st_mode & 0o777) == 0o700
    assert SECRET not in (server.data_dir / "modules" / "features-c.json").read_text()


def test_kv_writes_survive_restart_and_kill(tmp_path: Path) -> None:
    wasm = build(SDK / "c" / "tests" / "features").output.read_bytes()
    with LiveServer(tmp_path / "data") as live, live.admin() as admin:
        admin.put("/v1/modules/kv", content=wasm, params=[("kv_store", "default"), ("timeout", "2s")])
        admin.post("/v1/routes", json={"routes": [{"path": "/...", "module": "kv"}]})
        with live.edge() as edge:
            for i in range(20):
                assert edge.post(f"/kv/set?store=default&key=k{i}", content=f"v{i}".encode()).text == "ok"
        live.restart()
        with live.edge() as edge:
            assert [edge.get(f"/kv/get?store=default&key=k{i}").text for i in range(20)] == [f"v{i}" for i in range(20)]
            for i in range(20, 40):
                assert edge.post(f"/kv/set?store=default&key=k{i}", content=f"v{i}".encode()).text == "ok"
        assert live.process is not None
        live.process.send_signal(signal.SIGKILL)  # no shutdown at all: every acknowledged write must be on disk
        live.process.wait()
        live.start()
        with live.edge() as edge:
            assert [edge.get(f"/kv/get?store=default&key=k{i}").text for i in range(40)] == [f"v{i}" for i in range(40)]


def test_metrics_count_guest_io(server: LiveServer, origin: Origin) -> None:
    call(server, "c", f"/fetch?url={origin.url}/ok")
    call(server, "c", f"/fetch?url=http://127.0.0.1:{closed_port()}/")
    call(server, "c", "/kv/exists?store=default&key=k")
    with server.admin() as admin:
        text = admin.get("/metrics").text
    assert 'isolate_outbound_requests_total{module="features-c",result="ok"}' in text
    assert 'isolate_outbound_requests_total{module="features-c",result="denied"}' in text
    assert 'isolate_kv_operations_total{module="features-c"}' in text
