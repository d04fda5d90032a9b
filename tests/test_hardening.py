"""Hostile guests and clients against the edge and admin apps: framing, owned headers, admin input,
control-plane races, regions without a table. In-process over ASGI; the live tier is below."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import guests as g
import pytest
from conftest import AsgiClient
from live import LiveServer

from isolate import Config
from isolate.config import ServerConfig
from isolate.http import Apps, build

TOKEN = "test-token"


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    built = build(Config(data_dir=tmp_path / "data", pool_instances=16), ServerConfig(admin_token=TOKEN, threads=2))
    built.state.ready = True
    yield built
    built.close()


def answering(status: int, headers: list[list[str]] | None = None, body: bytes = b"guest body") -> str:
    return g.module(response=g.response_bytes(status=status, headers=headers, body=body))


def deploy(admin: AsgiClient, name: str, wat: str) -> None:
    assert admin.put(f"/v1/modules/{name}", content=g.wasm(wat)).status_code == 201


def route(admin: AsgiClient, *routes: dict[str, object]) -> None:
    response = admin.put("/v1/routes", json={"routes": list(routes)})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("status", [100, 101, 103, 199, 0, 600, -1])
def test_a_guest_cannot_send_an_interim_or_invalid_status(admin: AsgiClient, edge: AsgiClient, status: int) -> None:
    deploy(admin, "g", answering(status))
    route(admin, {"path": "/g", "module": "g"})
    response = edge.get("/g")
    assert response.status_code == 502 and response.json()["error"] == "abi"
    assert response.json()["field"] == "status"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_with_204_and_304(admin: AsgiClient, edge: AsgiClient, status: int) -> None:
    deploy(admin, "g", answering(status, [["cache-control", "max-age=60"]]))
    route(admin, {"path": "/g", "module": "g"})
    for _ in range(2):  # a miss, then (204 is cacheable) possibly a hit: neither carries the body
        response = edge.get("/g")
        assert response.status_code == status and response.content == b""
        assert "content-length" not in response.headers


def test_head_gets_the_length_but_no_body(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "g", answering(200))
    route(admin, {"path": "/g", "module": "g"})
    response = edge.head("/g")
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == str(len(b"guest body"))


def test_the_server_owns_where_and_how_headers(admin: AsgiClient, edge: AsgiClient) -> None:
    forged = [["x-isolate-region", "mars"], ["x-cache", "HIT"], ["server-timing", "fake;dur=0"],
              ["server", "evil"], ["age", "999"], ["date", "yesterday"], ["x-isolate-forwarded-by", "x"],
              ["X-Cache", "HIT"], ["content-length", "1"], ["transfer-encoding", "chunked"], ["x-mine", "kept"]]
    deploy(admin, "g", answering(200, forged))
    route(admin, {"path": "/g", "module": "g", "cache": False})
    response = edge.get("/g")
    assert response.status_code == 200 and response.content == b"guest body"
    assert response.headers["x-isolate-region"] == "local" and response.headers["x-cache"] == "BYPASS"
    assert response.headers.get_list("x-cache") == ["BYPASS"]
    assert "fake" not in response.headers["server-timing"]
    assert "server" not in response.headers and "age" not in response.headers
    assert "x-isolate-forwarded-by" not in response.headers and response.headers["x-mine"] == "kept"


def test_a_client_cannot_claim_a_region_when_there_is_no_table(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "echo", g.ECHO)
    route(admin, {"path": "/e", "module": "echo"})
    import msgpack

    response = edge.get("/e", headers={"x-isolate-forwarded-by": "me", "x-isolate-client-region": "mars"})
    assert response.status_code == 200
    assert msgpack.unpackb(response.content)["client_region"] == "local"


@pytest.mark.parametrize("routes", [
    [{"path": "/x", "module": "a", "methods": [1]}],
    [{"path": "/x", "module": "a", "methods": [None]}],
    [{"path": "/x", "module": "a", "methods": [["GET"]]}],
    [{"path": "/x", "module": "a", "methods": {"GET": 1}}],
    [{"path": 7, "module": "a"}],
    [{"path": "/x", "module": ["a"]}],
    [{"path": "/x", "module": "a", "host": 3}],
    [{"path": "/x", "module": "a", "cache": "yes"}],
    ["/x"],
    [None],
])
def test_bad_route_input_is_a_400_diagnostic(admin: AsgiClient, routes: list[object]) -> None:
    deploy(admin, "a", g.HELLO)
    response = admin.put("/v1/routes", json={"routes": routes})
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "invalid_config" and response.json()["request_id"]


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"limits":' * 50_000, b"\xff\xfe", b"{"])
def test_malformed_admin_json_is_a_400_diagnostic(admin: AsgiClient, body: bytes) -> None:
    deploy(admin, "a", g.HELLO)
    for method, path in (("PUT", "/v1/routes"), ("PATCH", "/v1/modules/a"), ("POST", "/v1/cache/purge"),
                         ("PUT", "/v1/regions")):
        response = admin.request(method, path, content=body)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"] == "invalid_request" and response.headers["x-request-id"]


def test_every_admin_error_is_the_json_diagnostic(apps: Apps, admin: AsgiClient) -> None:
    missing = admin.get("/v1/nothing-here", headers={"x-request-id": "mine-1"})
    assert missing.status_code == 404 and missing.json() == {
        "error": "not_found", "detail": "no admin endpoint /v1/nothing-here", "request_id": "mine-1"}
    wrong = admin.request("DELETE", "/v1/routes")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PUT"}
    with AsgiClient(apps.admin, base_url="http://admin.test") as anonymous:
        denied = anonymous.get("/v1/modules")
        assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
        assert denied.json()["request_id"] == denied.headers["x-request-id"]
        assert denied.headers["www-authenticate"].startswith("Bearer")
    bad = admin.patch("/v1/modules/nope", json={"limits": {"memory": "1MiB"}})
    assert bad.status_code == 404 and bad.json()["error"] == "not_found"
    for limits in ({"memory": [1]}, {"memory": True}, {"timeout": -1}, {"stack": "64GiB"}, {"bogus": 1}):
        deploy(admin, "a", g.HELLO)
        response = admin.patch("/v1/modules/a", json={"limits": limits})
        assert response.status_code == 400 and response.json()["error"] == "invalid_config", (limits, response.text)


def test_405_with_allow_when_only_the_method_is_wrong(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "a", g.HELLO)
    route(admin, {"path": "/only-get", "module": "a", "methods": ["GET", "HEAD"]},
          {"path": "/items/:id", "module": "a", "methods": ["PUT"]})
    response = edge.post("/only-get")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, HEAD"
    assert edge.get("/items/3").headers["allow"] == "PUT"
    assert edge.get("/nowhere").status_code == 404


def test_a_delete_racing_a_route_table_never_leaves_a_dangling_route(apps: Apps, admin: AsgiClient) -> None:
    """Deletes and route-table writes from many threads: afterwards every route names a module."""
    wasm = g.wasm(g.HELLO)
    errors: list[BaseException] = []

    def churn(i: int) -> None:
        try:
            for round_ in range(15):
                name = f"m{i}-{round_ % 3}"
                apps.node.deploy(name, wasm)
                try:
                    apps.node.set_routes([{"path": f"/r/{name}/{n}", "module": n} for n in apps.host.module_names()])
                except Exception as exc:  # a module deleted meanwhile: the whole table is refused
                    if getattr(exc, "kind", "") != "invalid_config":
                        raise
                apps.node.delete(name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    deployed = set(apps.host.module_names())
    assert all(route.module in deployed for route in apps.state.routes.routes)


def test_api_routes_survive_a_restart_with_a_manifest(tmp_path: Path) -> None:
    wat = tmp_path / "hello.wat"
    wat.write_text(g.HELLO)
    manifest = tmp_path / "isolate.toml"
    manifest.write_text('[modules.hello]\npath = "hello.wat"\n\n[[routes]]\npath = "/hello"\nmodule = "hello"\n')
    with LiveServer(tmp_path / "data", "--manifest", str(manifest)) as server, server.admin() as admin:
        assert admin.put("/v1/modules/extra", content=g.wasm(g.HELLO)).status_code == 201
        added = admin.post("/v1/routes", json={"routes": [{"path": "/extra", "module": "extra"},
                                                          {"path": "/hello", "module": "extra", "methods": ["POST"]},
                                                          {"path": "/gone", "module": "extra"}]})
        assert added.status_code == 200, added.text
        # The manifest now claims /gone with every method: that API route must be dropped, and said so.
        manifest.write_text(manifest.read_text() + '\n[[routes]]\npath = "/gone"\nmodule = "hello"\n')
        server.restart()
        with server.admin() as again:
            table = {(r["path"], tuple(r.get("methods", ())), r["module"], r["origin"])
                     for r in again.get("/v1/routes").json()["routes"]}
        assert table == {("/hello", (), "hello", "manifest"), ("/gone", (), "hello", "manifest"),
                         ("/extra", (), "extra", "api"), ("/hello", ("POST",), "extra", "api")}
        assert "route dropped at start-up: */gone -> extra" in server.wait_for_log("route dropped at start-up")


def test_keep_alive_204_carries_no_smuggled_answer(tmp_path: Path) -> None:
    """On one keep-alive connection, a guest's 204 with a body must not become the next answer."""
    forged = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged"
    with LiveServer(tmp_path / "data") as server, server.admin() as admin:
        assert admin.put("/v1/modules/nc", content=g.wasm(answering(204, body=forged))).status_code == 201
        assert admin.put("/v1/routes", json={"routes": [{"path": "/nc", "module": "nc", "cache": False}]}
                         ).status_code == 200
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /nc HTTP/1.1\r\nhost: a\r\n\r\nGET /.isolate/health HTTP/1.1\r\nhost: a\r\n\r\n")
            received = b""
            while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"HTTP/1.1 204 ") and b"forged" not in received
        assert received.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200 OK" in received.split(b"\r\n\r\n", 1)[1]


def test_stored_tables_this_version_refuses_do_not_stop_a_node(tmp_path: Path) -> None:
    from isolate.state import ServerState

    data = tmp_path / "data"
    data.mkdir()
    good = {"path": "/ok", "module": "a"}
    (data / "routes.json").write_text(json.dumps({"routes": [
        good, {"path": "/x", "module": "a", "methods": ["GTE"]}, {"path": "/ok", "module": "b"}, "junk"]}))
    (data / "regions.json").write_text(json.dumps({"regions": [{"id": "BAD ID"}]}))
    state = ServerState(data)
    assert [r.path for r in state.routes.routes] == ["/ok"] and state.routes.routes[0].module == "a"
    assert state.regions.empty
    assert (data / "routes.json.bak").exists() and (data / "regions.json.bak").exists()


@pytest.mark.parametrize("limits", [{"stack": 64 << 20}, {"memory": "lots"}, {"timeout": -1}, {"memory": [1]},
                                    {"response_size": 1 << 40}, {"bogus": 1}, {"timeout": True}])
def test_a_stored_limit_the_host_refuses_fails_requests_not_the_process(tmp_path: Path,
                                                                        limits: dict[str, object]) -> None:
    from isolate import Host, StorageError

    data = tmp_path / "data"
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        host.deploy("m", g.wasm(g.HELLO))
    record = json.loads((data / "modules" / "m.json").read_text())
    record["limits"] = limits
    (data / "modules" / "m.json").write_text(json.dumps(record))
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        with pytest.raises(StorageError, match="stored limits of module 'm' are invalid"):
            host.invoke("m")
        assert host.module("m").name == "m"  # still listed, so it can be fixed
        host.configure("m", limits={k: None for k in limits if k != "bogus"} | ({"bogus": None} if "bogus" in limits
                                                                               else {}))
        assert host.invoke("m").status == 200


def test_sleeping_guests_neither_outlive_their_deadline_nor_freeze_the_node(tmp_path: Path) -> None:
    """A guest sleeping in poll_oneoff: cut at its deadline, never promoted onto the event loop, and
    SIGTERM stops a server whose guests are all asleep at once."""
    import concurrent.futures
    import time

    import httpx
    from test_hostile import clock, poller

    sleeper = g.wasm(poller([clock(5_000_000_000)]))  # asks to sleep 5 s
    with LiveServer(tmp_path / "data", "--threads", "4") as server, server.admin() as admin:
        assert admin.put("/v1/modules/sleep", content=sleeper, params={"timeout": "50ms"}).status_code == 201
        assert admin.put("/v1/modules/long", content=sleeper, params={"timeout": "20s"}).status_code == 201
        assert admin.put("/v1/modules/hello", content=g.wasm(g.HELLO)).status_code == 201
        assert admin.put("/v1/routes", json={"routes": [
            {"path": "/sleep", "module": "sleep", "cache": False}, {"path": "/long", "module": "long", "cache": False},
            {"path": "/hello", "module": "hello", "cache": False}]}).status_code == 200
        with server.edge() as edge:
            for _ in range(6):  # quick-looking runs (test_a_module_that_can_wait_never_runs_inline: the gate)
                started = time.monotonic()
                response = edge.get("/sleep")
                assert response.status_code == 504 and response.json()["error"] == "timeout"
                assert time.monotonic() - started < 2
            for _ in range(3):
                edge.get("/hello")
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                # Three of the four worker threads asleep in the host: the event loop must stay free
                # (a sleeper promoted inline would hold it for the whole sleep).
                sleeping = [pool.submit(httpx.get, f"{server.edge_url}/long", timeout=30) for _ in range(3)]
                time.sleep(0.5)
                started = time.monotonic()
                assert edge.get("/hello").status_code == 200
                assert admin.get("/v1/stats").status_code == 200
                assert time.monotonic() - started < 2
                stopping = time.monotonic()
                assert server.stop() == 0
                assert time.monotonic() - stopping < 5  # not the 5 s sleep, nor the 20 s timeout
                for future in sleeping:
                    try:
                        answer = future.result(timeout=10)
                    except httpx.HTTPError:
                        continue  # the connection closed with the server: also an answer
                    assert answer.status_code == 503 and answer.json()["limit"] == "shutdown"


def test_any_number_of_stack_settings_maps_to_a_few_engines(tmp_path: Path) -> None:
    """Each stack size needs an engine; limits are rounded up to powers of two, so settings never run out."""
    from isolate import Host

    with Host(Config(data_dir=tmp_path / "data", pool_instances=16)) as host:
        host.deploy("s", g.wasm(g.HELLO))
        for stack in range(64 << 10, (4 << 20) + 1, 97 << 10):
            assert host.configure("s", limits={"stack": stack}).limits.stack == stack
            assert host.invoke("s").status == 200
        assert host.statistics().engines <= 7


def test_a_module_allowed_a_long_run_never_runs_inline(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    """Quick runs do not promote a module whose timeout is above the inline ceiling: a guest quick for
    small requests and spinning for big ones could otherwise hold the loop for its whole timeout."""
    flip = g.module("(if (i32.gt_u (local.get $len) (i32.const 2000)) (then (loop $l (br $l)))) "
                    + g.returns(g.response_bytes()))
    for name, timeout in (("long", "2s"), ("short", "100ms")):
        assert admin.put(f"/v1/modules/{name}", content=g.wasm(flip), params={"timeout": timeout}).status_code == 201
    route(admin, {"path": "/long", "module": "long", "cache": False},
          {"path": "/short", "module": "short", "cache": False})
    inline: dict[str, bool] = {"long": False, "short": False}
    for _ in range(200):
        for name in inline:
            assert edge.get(f"/{name}").status_code == 200
            inline[name] |= apps.dispatcher.is_inline(name)
    assert inline == {"long": False, "short": True}  # the control: at the ceiling, quick runs promote


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/v1/routes", b'{"routes":[{"path":"/\\ud800","module":"a"}]}'),
    ("POST", "/v1/routes", b'{"routes":[{"path":"/h\\udfff","module":"a"}]}'),
    ("PUT", "/v1/routes", b'{"routes":[{"path":"/x","module":"a","note":"\\ud800"}]}'),
    ("PATCH", "/v1/modules/a", b'{"variables":{"k":"\\udc00"}}'),
    ("PUT", "/v1/regions", b'{"regions":[{"id":"local","nodes":["http://[::1"]}]}'),
    ("PUT", "/v1/regions", b'{"regions":[{"id":"local","name":"\\ud800"}]}'),
])
def test_unencodable_or_malformed_admin_input_is_refused_and_nothing_is_stored(
        apps: Apps, admin: AsgiClient, method: str, path: str, body: bytes) -> None:
    deploy(admin, "a", g.HELLO)
    route(admin, {"path": "/ok", "module": "a"})
    before = (apps.state.routes.to_list(), apps.state.regions.to_dict(), admin.get("/v1/modules/a").json())
    response = admin.request(method, path, content=body)
    assert response.status_code == 400 and response.json()["error"] in ("invalid_request", "invalid_config")
    assert (apps.state.routes.to_list(), apps.state.regions.to_dict(), admin.get("/v1/modules/a").json()) == before
    assert admin.get("/v1/routes").status_code == 200


def test_routes_added_with_post_are_the_apis(admin: AsgiClient) -> None:
    deploy(admin, "a", g.HELLO)
    forged = admin.post("/v1/routes", json={"routes": [{"path": "/f", "module": "a", "origin": "manifest"}]})
    assert forged.status_code == 400
    added = admin.post("/v1/routes", json={"routes": [{"path": "/f", "module": "a"}]})
    assert added.status_code == 200 and added.json()["routes"][0]["origin"] == "api"


def test_deploy_refuses_unknown_parameters_and_fractional_or_sub_tick_limits(admin: AsgiClient) -> None:
    wasm = g.wasm(g.HELLO)
    for params in ({"bogus": "1"}, {"stack ": "1MiB"}, {"memory": "1.5"}, {"timeout": "0.0001ms"}):
        response = admin.put("/v1/modules/a", content=wasm, params=params)
        assert response.status_code == 400, params
    assert admin.get("/v1/modules/a").status_code == 404  # nothing deployed


def test_205_sends_no_content(admin: AsgiClient, edge: AsgiClient) -> None:
    deploy(admin, "g", answering(205))
    route(admin, {"path": "/g", "module": "g"})
    response = edge.get("/g")
    assert response.status_code == 205 and response.content == b"" and response.headers["content-length"] == "0"


def test_cli_deploy_checks_routes_before_deploying(tmp_path: Path) -> None:
    import subprocess
    import sys

    wat = tmp_path / "h.wat"
    wat.write_text(g.HELLO)
    with LiveServer(tmp_path / "data") as server:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "isolate.cli", *args, *server.cli_args()],
                                  capture_output=True, text=True, timeout=60)

        assert cli("deploy", "one", str(wat), "--route", "/x").returncode == 0
        for bad in ("GTE /y", "/x"):  # an unknown method; a conflict with one's route
            result = cli("deploy", "two", str(wat), "--route", bad)
            assert result.returncode == 1 and "nothing was deployed" in result.stderr, result.stderr
        with server.admin() as admin:
            assert admin.get("/v1/modules/two").status_code == 404


DAMAGE = {
    "not an object": b"[]",
    "a number": b"1",
    "garbage": b"garbage",
    "nested": b"[" * 100_000,
    "huge active": None,  # filled in below from the real record
    "next below a version": None,
    "negative next": None,
    "digest escapes": None,
    "variables not strings": None,
}


def _damaged(record: dict[str, object], case: str) -> bytes:
    record = json.loads(json.dumps(record))
    versions = record["versions"]
    assert isinstance(versions, list)
    if case == "huge active":
        return json.dumps(record).replace('"active": 2', '"active": 1e400').encode()
    if case == "next below a version":
        record["next_version"] = 1
    elif case == "negative next":
        record["next_version"] = -3
    elif case == "digest escapes":
        versions[0]["digest"] = "../admin-token"
    elif case == "variables not strings":
        record["variables"] = {"a": {"b": [1]}}
    return json.dumps(record).encode()


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_metadata_never_stops_the_host_nor_reuses_versions(tmp_path: Path, case: str) -> None:
    from isolate import Host, StorageError

    data = tmp_path / "data"
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        host.deploy("m", g.wasm(g.HELLO))
        host.deploy("m", g.wasm(g.HELLO))
        host.deploy("ok", g.wasm(g.HELLO))
    path = data / "modules" / "m.json"
    path.write_bytes(DAMAGE[case] or _damaged(json.loads(path.read_bytes()), case))
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        assert host.invoke("ok").status == 200  # the others serve
        with pytest.raises(StorageError, match="m.json"):
            host.invoke("m")
        with pytest.raises(StorageError):
            host.deploy("m", g.wasm(g.HELLO))  # would restart the numbering
        assert "m" not in host.module_names()
    path.unlink()  # removed by hand: the name is free again (the operator's choice)
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        assert host.deploy("m", g.wasm(g.HELLO)).version >= 1


@pytest.mark.parametrize("content", [b"[" * 100_000, b'{"next_version": 1e400}', b'{"next_version": -5}',
                                     b'{"next_version": 1180591620717411303424}', b"{}"])
def test_a_damaged_tombstone_blocks_the_name_instead_of_reusing_versions(tmp_path: Path, content: bytes) -> None:
    from isolate import Host, StorageError

    data = tmp_path / "data"
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        host.deploy("m", g.wasm(g.HELLO))
        host.delete("m")
    (data / "modules" / "m.deleted").write_bytes(content)
    with Host(Config(data_dir=data, pool_instances=4)) as host, pytest.raises(StorageError, match="m.deleted"):
        host.deploy("m", g.wasm(g.HELLO))


def test_a_damaged_seal_recompiles(tmp_path: Path) -> None:
    from isolate import Host

    data = tmp_path / "data"
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        host.deploy("m", g.wasm(g.HELLO))
    for seal in (data / "compiled").glob("*/*.json"):
        seal.write_bytes(b"[" * 100_000)
    with Host(Config(data_dir=data, pool_instances=4)) as host:
        assert host.invoke("m").status == 200 and host.statistics().artifact_recompiles == 1


def test_huge_numbers_anywhere_are_400s(admin: AsgiClient) -> None:
    deploy(admin, "a", g.HELLO)
    huge = "1" + "0" * 400
    for body in (f'{{"limits": {{"timeout": {huge}}}}}', f'{{"limits": {{"memory": {huge}}}}}',
                 f'{{"limits": {{"timeout": "{huge}ms"}}}}'):
        response = admin.patch("/v1/modules/a", content=body.encode())
        assert response.status_code == 400 and response.json()["error"] == "invalid_config", response.text
    assert admin.put("/v1/modules/b", content=g.wasm(g.HELLO), params={"timeout": huge}).status_code == 400


def test_admin_input_that_was_silently_accepted(admin: AsgiClient) -> None:
    deploy(admin, "a", g.HELLO)
    deploy(admin, "a", g.HELLO)
    assert admin.post("/v1/modules/a/rollback", json={"verison": 1}).status_code == 400
    assert admin.get("/v1/modules/a").json()["active_version"] == 2
    assert admin.post("/v1/cache/purge", json={"route": "nopath"}).status_code == 400
    assert admin.post("/v1/cache/purge", json={"url": "http://x/y"}).status_code == 400
    assert admin.patch("/v1/modules/a", content=b"null").status_code == 400
    assert admin.put("/v1/modules/b", content=g.wasm(g.HELLO),
                     params=[("memory", "1MiB"), ("memory", "2MiB")]).status_code == 400
    for var in ("\x00=1", "x" * 300 + "=1"):
        assert admin.put("/v1/modules/b", content=g.wasm(g.HELLO), params={"var": var}).status_code == 400
    assert admin.get("/v1/modules/b").status_code == 404
    assert admin.patch("/v1/modules/a", json={"variables": {"k": "v" * 70_000}}).status_code == 400


def test_a_module_that_can_wait_never_runs_inline(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    """Promotion by capability: however quick its runs look (sleeping costs no CPU), never on the loop."""
    from test_hostile import clock, poller

    assert admin.put("/v1/modules/nap", content=g.wasm(poller([clock(1_000_000)]))).status_code == 201  # 1 ms
    deploy(admin, "quick", g.HELLO)
    route(admin, {"path": "/nap", "module": "nap", "cache": False},
          {"path": "/quick", "module": "quick", "cache": False})
    inline = {"nap": False, "quick": False}
    for _ in range(200):
        for name in inline:
            assert edge.get(f"/{name}").status_code == 200
            inline[name] |= apps.dispatcher.is_inline(name)
    assert apps.host.may_block("nap")
    assert inline == {"nap": False, "quick": True}  # the control: quick code without waits is promoted


def test_a_wat_file_that_is_not_text_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    from isolate.errors import InvalidModule
    from isolate.manifest import read_module

    path = tmp_path / "bad.wat"
    path.write_bytes(b"(module \x80\xff)")
    with pytest.raises(InvalidModule, match="must be UTF-8"):
        read_module(path)
    path.write_bytes(g.wasm(g.module()))  # a binary under a .wat name is still a module
    assert read_module(path).startswith(b"\0asm")
