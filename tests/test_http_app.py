"""The edge and admin apps in-process (Starlette's AsgiClient drives them over ASGI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import guests as g
import msgpack
import pytest
from conftest import AsgiClient

from isolate import Config
from isolate.config import ServerConfig
from isolate.http import Apps, build

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    built = build(Config(data_dir=tmp_path / "data", pool_instances=16),
                  ServerConfig(admin_token=TOKEN, max_body_size=1024, max_url_length=200, threads=2, queue_limit=1))
    built.state.ready = True
    yield built
    built.close()


def deploy(admin: AsgiClient, name: str, wat: str, **params: str) -> dict[str, object]:
    response = admin.put(f"/v1/modules/{name}", content=g.wasm(wat), params=params)
    assert response.status_code == 201, response.text
    return dict(response.json())


def route(admin: AsgiClient, *routes: dict[str, object]) -> None:
    response = admin.put("/v1/routes", json={"routes": list(routes)})
    assert response.status_code == 200, response.text


def test_every_answer_says_where_and_how_it_ran(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "hello", g.HELLO)
    route(admin, {"path": "/hello", "module": "hello"})
    response = edge.get("/hello")
    assert response.headers["x-isolate-region"] == "local" and response.headers["x-cache"] == "MISS"
    timing = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert list(timing) == ["routing", "queue", "instantiate", "guest"]
    assert all(float(value) >= 0 for value in timing.values())
    assert edge.get("/hello", headers={"x-isolate-region": "local"}).status_code == 200
    other = edge.get("/hello", headers={"x-isolate-region": "eu"})  # no region table: only "local" exists
    assert other.status_code == 400 and other.json()["error"] == "unknown_region"


def test_upload_route_call(admin: AsgiClient, edge: AsgiClient) -> None:
    info = deploy(admin, "echo", g.ECHO, var="greeting=hi")
    assert (info["name"], info["version"]) == ("echo", 1) and info["compile_ms"] and len(str(info["digest"])) == 64
    route(admin, {"path": "/users/:id", "module": "echo", "methods": ["POST"]})
    response = edge.post("/users/42?x=1", content=b"payload", headers={"x-request-id": "abc-1", "x-k": "v"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "abc-1"
    envelope = msgpack.unpackb(response.content)
    assert envelope["method"] == "POST" and envelope["path"] == "/users/42" and envelope["query"] == "x=1"
    assert envelope["params"] == {"id": "42"} and envelope["vars"] == {"greeting": "hi"}
    assert envelope["body"] == b"payload" and ["x-k", "v"] in envelope["headers"]
    assert envelope["request_id"] == "abc-1"


def test_the_edge_builds_the_request_the_guest_sees_field_by_field(apps: Apps) -> None:
    """The edge makes each Request without __init__ (`construct`, by field order): it must be the one the
    keywords make, with the Python fallback and the native one alike."""
    from isolate.abi import Request
    from isolate.engine import _hostcalls
    from isolate.routing import Match, Route

    scope = {"method": "PATCH", "path": "/a/b", "query_string": b"x=1&y=%20"}
    headers = [(b"host", b"edge.test"), (b"x-k", b"v\xe9")]
    match = Match(Route(path="/a/:id", module="m"), {"id": "b"})
    made = apps.edge._request(scope, headers, b"body", match, "eu", "req-1")
    assert made == Request(method="PATCH", path="/a/b", query="x=1&y=%20", headers=[("host", "edge.test"),
                           ("x-k", "v\xe9")], body=b"body", params={"id": "b"}, region="local",
                           client_region="eu", request_id="req-1")
    values = ("GET", "/", "", [], b"", {}, "local", None, "r")
    assert _hostcalls._construct(Request, *values) == Request(**dict(zip(Request.__slots__, values, strict=True)))
    with pytest.raises(ValueError):
        _hostcalls._construct(Request, "GET")  # every field, or none made


def test_unknown_route_is_404_json(edge: AsgiClient) -> None:
    response = edge.get("/nowhere")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found" and body["request_id"] == response.headers["x-request-id"]
    assert len(body["request_id"]) == 32  # generated when the client sent none
    assert response.headers["x-isolate-region"] == "local"
    assert response.headers["server-timing"].startswith("total;dur=")


def test_invalid_request_id_is_replaced(edge: AsgiClient) -> None:
    response = edge.get("/nowhere", headers={"x-request-id": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"


def test_body_and_url_limits(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "echo", g.ECHO)
    route(admin, {"path": "/...", "module": "echo"})
    assert edge.post("/x", content=b"a" * 1024).status_code == 200
    too_big = edge.post("/x", content=b"a" * 1025)
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"
    too_long = edge.get("/" + "a" * 300)
    assert too_long.status_code == 414 and too_long.json()["error"] == "uri_too_long"


@pytest.mark.parametrize(
    "wat, status, kind",
    [
        (g.module(g.LOOP), 504, "timeout"),
        (g.module("unreachable"), 500, "trap"),
        (g.module(g.GROW_BOMB), 500, "memory_limit"),
        (g.module(response=g.response_bytes(status=999)), 502, "abi"),
        (g.module(response=g.response_bytes(headers=[["x", "a\r\nb: c"]])), 502, "abi"),
    ],
)
def test_guest_failures_map_to_documented_statuses(admin: AsgiClient, edge: AsgiClient, wat: str, status: int,
                                                   kind: str) -> None:
    deploy(admin, "bad", wat, timeout="0.05", memory="16MiB")
    deploy(admin, "hello", g.HELLO)
    route(admin, {"path": "/bad", "module": "bad"}, {"path": "/hello", "module": "hello"})
    response = edge.get("/bad")
    assert response.status_code == status
    body = response.json()
    assert body["error"] == kind and body["module"] == "bad" and body["request_id"] and body["detail"]
    assert edge.get("/hello").text == "hello"


def test_guest_cannot_override_reserved_headers(admin: AsgiClient, edge: AsgiClient) -> None:
    headers = [["x-request-id", "forged"], ["connection", "close"], ["transfer-encoding", "chunked"],
               ["content-length", "999"], ["x-ok", "yes"], ["set-cookie", "a=1"], ["set-cookie", "b=2"]]
    deploy(admin, "h", g.module(response=g.response_bytes(headers=headers)))
    route(admin, {"path": "/", "module": "h"})
    response = edge.get("/", headers={"x-request-id": "mine"})
    assert response.headers["x-request-id"] == "mine" and response.headers["content-length"] == "5"
    assert response.headers["x-ok"] == "yes" and response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert "transfer-encoding" not in response.headers


def test_head_has_no_body(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "hello", g.HELLO)
    route(admin, {"path": "/", "module": "hello"})
    response = edge.head("/")
    assert response.status_code == 200 and response.content == b"" and response.headers["content-length"] == "5"


def test_auth(apps: Apps) -> None:
    with AsgiClient(apps.admin, "http://admin.test") as anonymous:
        for method, path in [("GET", "/v1/modules"), ("PUT", "/v1/modules/x"), ("GET", "/v1/routes"),
                             ("PUT", "/v1/routes"), ("DELETE", "/v1/modules/x")]:
            response = anonymous.request(method, path, content=g.wasm(g.HELLO))
            assert response.status_code == 401 and response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.get("/v1/modules", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
    assert apps.host.modules() == []  # nothing changed


def test_admin_module_lifecycle(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "site", g.module(response=g.response_bytes(body=b"one")))
    deploy(admin, "site", g.module(response=g.response_bytes(body=b"two")), memory="32MiB", timeout="250ms")
    route(admin, {"path": "/", "module": "site"})
    assert edge.get("/").text == "two"
    info = admin.get("/v1/modules/site").json()
    assert info["active_version"] == 2 and [v["version"] for v in info["versions"]] == [1, 2]
    assert info["limits"]["memory"] == 32 << 20 and info["limit_overrides"] == {"memory": 32 << 20, "timeout": 0.25}
    assert admin.post("/v1/modules/site/rollback").json()["active_version"] == 1
    assert edge.get("/").text == "one"
    assert admin.post("/v1/modules/site/rollback", json={"version": 2}).json()["active_version"] == 2
    patched = admin.patch("/v1/modules/site", json={"variables": {"a": "b"}, "limits": {"timeout": "1s"}}).json()
    assert patched["variables"] == {"a": "b"} and patched["limits"]["timeout"] == 1.0
    assert [m["name"] for m in admin.get("/v1/modules").json()["modules"]] == ["site"]
    assert admin.delete("/v1/modules/site").json() == {"deleted": "site", "routes_removed": 1}
    assert admin.get("/v1/modules/site").status_code == 404
    assert admin.get("/v1/routes").json() == {"routes": []}  # its routes went with it
    gone = edge.get("/")
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "method, path, kwargs, status, kind",
    [
        ("PUT", "/v1/modules/bad..name", {"content": b"\0asm"}, 400, "invalid_name"),
        ("PUT", "/v1/modules/ok", {"content": b"not wasm"}, 422, "invalid_module"),
        ("PUT", "/v1/modules/ok", {"content": b"\0asm\x01\0\0\0", "params": {"memory": "lots"}}, 400,
         "invalid_config"),
        ("PUT", "/v1/modules/ok", {"content": b"\0asm\x01\0\0\0", "params": {"var": "novalue"}}, 400,
         "invalid_request"),
        ("POST", "/v1/modules/nope/rollback", {}, 404, "not_found"),
        ("DELETE", "/v1/modules/nope", {}, 404, "not_found"),
        ("PATCH", "/v1/modules/nope", {"json": {"limits": {}}}, 404, "not_found"),
        ("PATCH", "/v1/modules/nope", {"content": b"{"}, 400, "invalid_request"),
        ("PUT", "/v1/routes", {"json": {"routes": [{"path": "/", "module": "missing"}]}}, 400, "invalid_config"),
        ("PUT", "/v1/routes", {"json": {"routes": "no"}}, 400, "invalid_request"),
        ("PUT", "/v1/routes", {"json": {"routes": [{"path": "x", "module": "m"}]}}, 400, "invalid_config"),
        ("GET", "/v1/unknown", {}, 404, "not_found"),
        ("POST", "/v1/modules", {}, 405, "method_not_allowed"),
    ],
)
def test_admin_errors(admin: AsgiClient, method: str, path: str, kwargs: dict[str, object], status: int,
                      kind: str) -> None:
    response = admin.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.json()["error"] == kind


def test_module_upload_over_the_cap_is_413(tmp_path: Path) -> None:
    built = build(Config(data_dir=tmp_path / "d", pool_instances=4, max_module_size=100),
                  ServerConfig(admin_token=TOKEN))
    try:
        with AsgiClient(built.admin, "http://admin.test", headers=AUTH) as admin:
            response = admin.put("/v1/modules/big", content=b"\0asm" + b"\0" * 200)
            assert response.status_code == 413 and response.json()["error"] == "module_too_large"
    finally:
        built.close()


def test_route_conflicts_name_the_pair_and_keep_the_old_table(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "a", g.HELLO)
    route(admin, {"path": "/x", "module": "a"})
    response = admin.put("/v1/routes", json={"routes": [{"path": "/u/:id", "module": "a"},
                                                        {"path": "/u/:name", "module": "a"}]})
    assert response.status_code == 409
    assert response.json()["error"] == "route_conflict" and response.json()["routes"] == [0, 1]
    assert admin.get("/v1/routes").json()["routes"] == [{"host": "*", "path": "/x", "module": "a", "origin": "api"}]
    assert edge.get("/x").status_code == 200


def test_metrics(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "hello", g.HELLO)
    deploy(admin, "bad", g.module("unreachable"))
    route(admin, {"path": "/", "module": "hello"}, {"path": "/bad", "module": "bad"})
    edge.get("/")
    edge.get("/")
    edge.get("/bad")
    text = admin.get("/metrics").text
    assert ('isolate_requests_total{method="GET",module="hello",region="local",route="/",status="200",version="1"} '
            '2.0') in text
    assert 'isolate_failures_total{kind="trap",module="bad"} 1.0' in text
    assert 'isolate_instantiate_seconds_count{module="hello"} 2.0' in text
    assert 'isolate_request_duration_seconds_count{method="GET",module="hello",region="local",route="/"} 2.0' in text
    assert 'isolate_guest_memory_bytes{module="hello"} 65536.0' in text
    assert "isolate_module_cache_hits_total" in text and "isolate_module_cache_misses_total" in text


def test_readyz_before_start(apps: Apps) -> None:
    apps.state.ready = False
    with AsgiClient(apps.admin, "http://admin.test") as client:
        assert client.get("/readyz").status_code == 503


def test_guest_logs_reach_the_host_log_cleaned(admin: AsgiClient, edge: AsgiClient,
                                               caplog: pytest.LogCaptureFixture) -> None:
    text = b"line\x1b[31m\nforged=1"
    wat = g.module(
        f"(call $log (i32.const 1) (i32.const 200) (i32.const {len(text)})) {g.returns(g.response_bytes())}",
        imports='(import "isolate" "log" (func $log (param i32 i32 i32)))',
        extra=f'(data (i32.const 200) "{g.data_string(text)}")',
    )
    deploy(admin, "noisy", wat)
    route(admin, {"path": "/", "module": "noisy"})
    caplog.set_level("INFO")
    response = edge.get("/", headers={"x-request-id": "rid-7"})
    guest = [r.getMessage() for r in caplog.records if r.name == "isolate.guest"]
    assert guest == ["request_id=rid-7 module=noisy stream=log line\\x1b[31m\\x0aforged=1"]
    access = [r.getMessage() for r in caplog.records if r.name == "isolate.access"]
    assert len(access) == 1 and "request_id=rid-7" in access[0] and "module=noisy" in access[0]
    assert "status=200" in access[0] and "version=1" in access[0] and "bytes=5" in access[0]
    assert response.status_code == 200
