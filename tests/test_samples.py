"""Every sample, built from source and served from the repository's isolate.toml, as its README shows."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
from live import ROOT, LiveServer, repository_manifest

from isolate.build import build

SAMPLES = ["hello", "echo", "router", "transform", "crash", "proxy", "todo", "hello-py", "hello-js"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    for sample in SAMPLES:  # built (or found up to date) before the server starts
        build(ROOT / "samples" / sample)
    where = tmp_path_factory.mktemp("samples")
    # Its first start compiles the Python and JavaScript components (an interpreter each: ~10 s of a core
    # apiece on a quiet machine), so it may take longer than other servers to be ready.
    live = LiveServer(where / "data", "--manifest", str(where / "isolate.toml"), ready_within=240)
    repository_manifest(live, where / "isolate.toml", components=True)
    with live:
        yield live


@pytest.fixture
def edge(server: LiveServer) -> Iterator[httpx.Client]:
    with server.edge() as client:
        yield client


def test_every_sample_is_deployed(server: LiveServer) -> None:
    names = [m["name"] for m in server.admin().get("/v1/modules").json()["modules"]]
    assert names == sorted(["crash", "echo", "hello", "hello-eu", "hello-wat", "proxy", "router", "todo", "transform",
                            "hello-py", "hello-js"])


def test_hello_c(edge: httpx.Client) -> None:
    assert edge.get("/hello/ada").text == "Hello, ada! (from C, region local, client in local)\n"
    assert edge.get("/").text == "Hello, world! (from C, region local, client in local)\n"
    assert edge.get("/wat").text == "hello from isolate\n"
    # pinned to eu, but a single node without a region table runs everything itself
    assert edge.get("/eu/hello").text == "Hallo, world! (from C, region local, client in local)\n"


def test_echo_rust(edge: httpx.Client) -> None:
    response = edge.post("/echo/x?y=1", content=b'say "hi"\n', headers={"x-request-id": "r-1"})
    body = response.json()
    assert response.headers["content-type"] == "application/json"
    assert (body["method"], body["path"], body["query"], body["body"]) == ("POST", "/echo/x", "y=1", 'say "hi"\n')
    assert ["x-request-id", "r-1"] in body["headers"] and body["request_id"] == "r-1"
    failed = edge.get("/echo/fail")
    assert (failed.status_code, failed.text) == (418, "asked to fail")
    not_utf8 = edge.post("/echo/x", content=b"\xff\xfe")
    assert (not_utf8.status_code, not_utf8.text) == (400, "request body is not UTF-8")


def test_router_assemblyscript(edge: httpx.Client) -> None:
    assert edge.get("/users").json() == {"site": "demo", "users": ["ada", "grace", "linus"]}
    assert edge.get("/users/1").json() == {"site": "demo", "id": 1, "name": "grace", "region": "local"}
    missing = edge.get("/users/9")
    assert missing.status_code == 404 and missing.json() == {"error": "no such user", "id": "9"}


def test_transform_c(edge: httpx.Client) -> None:
    data = (ROOT / "README.md").read_bytes()
    assert edge.post("/transform/sha256", content=data).text == hashlib.sha256(data).hexdigest() + "\n"
    assert edge.post("/transform/sha256", content=b"").text == hashlib.sha256(b"").hexdigest() + "\n"
    big = bytes(range(256)) * 4000
    assert edge.post("/transform/sha256", content=big).text == hashlib.sha256(big).hexdigest() + "\n"
    assert edge.post("/transform/upper", content=b"make it loud").text == "MAKE IT LOUD"
    missing = edge.get("/transform/sha256")  # the route takes POST only
    assert missing.status_code == 405 and missing.headers["allow"] == "POST"


def test_proxy_c(server: LiveServer, edge: httpx.Client) -> None:
    first = edge.get("/proxy/hello/ada")
    assert first.status_code == 200 and first.headers["x-proxied-by"] == "isolate-proxy"
    assert first.json() == {"status": 200, "url": f"http://127.0.0.1:{server.port}/hello/ada", "length": 52,
                            "body": "HELLO, ADA! (FROM C, REGION LOCAL, CLIENT IN LOCAL)\n"}
    assert first.headers["x-cache"] == "MISS"
    assert edge.get("/proxy/hello/ada").headers["x-cache"] == "HIT"  # cache-control lets the response cache help
    missing = edge.get("/proxy/nope")
    assert missing.status_code == 404 and missing.json()["status"] == 404


def test_todo_rust(server: LiveServer, edge: httpx.Client) -> None:
    created = edge.post("/todos", json={"title": "buy milk"})
    assert created.status_code == 201
    item = created.json()
    assert item["title"] == "buy milk" and item["done"] is False
    second = edge.post("/todos", content=b"write the report", headers={"content-type": "text/plain"}).json()
    assert [t["title"] for t in edge.get("/todos").json()][-2:] == ["buy milk", "write the report"]
    assert edge.get(f"/todos/{item['id']}").json() == item
    assert edge.delete(f"/todos/{item['id']}").status_code == 204
    assert edge.get(f"/todos/{item['id']}").status_code == 404
    bad = edge.post("/todos", json={"title": ""})
    assert bad.status_code == 400 and "error" in bad.json()
    server.restart()  # the store is in the data directory: items outlive the server
    with server.edge() as again:
        assert again.get(f"/todos/{second['id']}").json() == second


@pytest.mark.parametrize(
    "path, status, kind, extra",
    [
        ("/crash/abort", 500, "trap", {"trap_code": "unreachable"}),
        ("/crash/loop", 504, "timeout", {}),
        ("/crash/oom", 500, "memory_limit", {"limit": "memory"}),
        ("/crash/malloc", 500, "memory_limit", {"limit": "memory", "requested_bytes": 1 << 30}),
        ("/crash/stack", 500, "stack_overflow", {}),
        ("/crash/shadow", 500, "trap", {"trap_code": "memory_out_of_bounds"}),
        ("/crash/null", 500, "trap", {"trap_code": "memory_out_of_bounds"}),
        ("/crash/header", 502, "abi", {}),
        ("/crash/exit", 500, "trap", {"trap_code": "exit", "exit_code": 3}),
        ("/echo/panic", 500, "trap", {"trap_code": "unreachable"}),
        ("/users/boom", 500, "trap", {"trap_code": "unreachable"}),
        # wasi:http components: the same diagnostics (CPython aborts on an uncaught exception;
        # SpiderMonkey catches it, and out of memory, and answers 500 itself, saying why on stderr)
        ("/hello-py/throw", 500, "trap", {"trap_code": "unreachable"}),
        ("/hello-py/loop", 504, "timeout", {}),
        ("/hello-py/oom", 500, "memory_limit", {"limit": "memory"}),
        ("/hello-js/throw", 500, "trap", {"trap_code": "uncaught_exception"}),
        ("/hello-js/loop", 504, "timeout", {}),
        ("/hello-js/oom", 500, "memory_limit", {"limit": "memory"}),
    ],
)
def test_failures_reach_the_client_as_diagnostics(server: LiveServer, edge: httpx.Client, path: str, status: int,
                                                  kind: str, extra: dict[str, object]) -> None:
    module = path.split("/")[1]
    if kind == "memory_limit" and module in ("hello-py", "hello-js"):
        # An interpreter filling 64 MiB takes ~40 ms of a guest thread, which yields the CPU to everything
        # else (http/_dispatch.py): on a machine the rest of the suite keeps busy it could take over the
        # sample's 1 s. The time limit is not what this checks, so it is raised for this request.
        with server.admin() as admin:
            assert admin.patch(f"/v1/modules/{module}", json={"limits": {"timeout": "30s"}}).status_code == 200
        try:
            response = edge.get(path, timeout=60)
        finally:
            with server.admin() as admin:
                assert admin.patch(f"/v1/modules/{module}", json={"limits": {"timeout": "1s"}}).status_code == 200
    else:
        response = edge.get(path)
    assert response.status_code == status, (response.text, response.headers.get("server-timing"))
    body = response.json()
    assert body["error"] == kind and body["request_id"] == response.headers["x-request-id"]
    for key, value in extra.items():
        assert body[key] == value, body
    assert edge.get("/hello/still").status_code == 200


def test_python_and_javascript_components(edge: httpx.Client) -> None:
    for sample, language in (("hello-py", "Python"), ("hello-js", "JavaScript")):
        assert edge.get(f"/{sample}/").text == f"Hi from {language}!\n"  # greeting from the module's variables
        echoed = edge.post(f"/{sample}/echo", content=b'{"a": 1}', headers={"content-type": "application/json"})
        assert (echoed.status_code, echoed.content) == (200, b'{"a": 1}')
        assert echoed.headers["content-type"] == "application/json"


def test_component_error_messages_reach_the_host_log(server: LiveServer, edge: httpx.Client) -> None:
    assert edge.get("/hello-py/throw", headers={"x-request-id": "py-1"}).status_code == 500
    assert edge.get("/hello-js/throw", headers={"x-request-id": "js-1"}).status_code == 500
    # The guest's lines, not just its request ids: a failure's lines are written one by one, by a thread.
    log = server.wait_for_log("RuntimeError: boom from python", "boom from javascript")
    assert "RuntimeError: boom from python" in log
    assert "boom from javascript" in log


def test_sdk_error_messages_reach_the_host_log(server: LiveServer, edge: httpx.Client) -> None:
    rust = edge.get("/echo/panic", headers={"x-request-id": "panic-1"})
    script = edge.get("/users/boom", headers={"x-request-id": "boom-1"})
    assert rust.status_code == script.status_code == 500
    panicked = "request_id=panic-1 module=echo stream=log panic: panicked at 'asked to panic on /echo/panic'"
    failed = "request_id=boom-1 module=router stream=log asked to fail at"
    # The guest's lines, not just its request ids: a failure's lines are written one by one, by a thread.
    log = server.wait_for_log(panicked, failed)
    assert panicked in log
    assert failed in log


def test_readme_lists_every_sample_url() -> None:
    readme = (ROOT / "README.md").read_text()
    for url in ["/hello/ada", "/eu/hello", "/wat", "/echo/", "/users/1", "/transform/sha256", "/crash/oom",
                "/proxy/hello/ada", "/todos", "/hello-py/", "/hello-js/"]:
        assert url in readme, url
    manifest = (ROOT / "isolate.toml").read_text()
    for sample in SAMPLES:
        assert f'path = "samples/{sample}"' in manifest
        assert (ROOT / "samples" / sample / "README.md").exists()
