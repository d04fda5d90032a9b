"""`isolate_http.fetch` in a real Python component: built with `isolate build`, deployed on a real `isolate serve`
with an allow-list, calling a real origin on loopback (tests/origin.py).

The guest (GUEST below) fetches the URL its request names in x-target (with x-method, its request's body, and
the header x-probe) and answers, as JSON, what it got: the origin's status, headers and body, or the
FetchError's case name and message with a 502. fetch waits with `pollable.block()` on its one future: the
host cannot run wasi:io/poll.poll (componentize-py's poll_loop and asyncio helpers), so this is the way a
Python guest makes outbound calls here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from live import LiveServer
from origin import Origin, closed_port

from isolate.build import build

GUEST = '''\
import json

from isolate_http import FetchError, Request, Response, fetch, serve


def handle(request: Request) -> Response:
    target = request.header("x-target") or ""
    try:
        got = fetch(target, method=request.header("x-method") or "GET",
                    headers=[("x-probe", "python-fetch"), ("x-probe-2", "two")], body=request.body)
    except FetchError as exc:
        return Response(502, {"content-type": "application/json"},
                        json.dumps({"error": exc.name, "message": str(exc), "url": exc.url}))
    assert isinstance(got.body, bytes) and isinstance(got.headers, list)
    seen = {"status": got.status, "headers": got.headers, "origin": got.header("X-Origin"),
            "length": len(got.body), "body": got.body[:2000].decode("latin-1")}
    return Response(200, {"content-type": "application/json", "x-guest": "python-fetch"}, json.dumps(seen))


IncomingHandler = serve(handle)
'''


@dataclass
class Deployed:
    server: LiveServer
    origin: Origin
    down: int
    """A granted loopback port nothing listens on."""


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The guest, built once for the module (componentize-py: ~10-20 s)."""
    project = tmp_path_factory.mktemp("fetch-py") / "fetch-py"
    project.mkdir()
    (project / "app.py").write_text(GUEST)
    wasm = build(project).output.read_bytes()
    assert wasm[:8] == b"\0asm\x0d\0\x01\0", "not a component"
    return wasm


@pytest.fixture(scope="module")
def deployed(component: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """One `isolate serve` with the guest deployed twice: `granted` may call the origin (and a closed port),
    `ungranted` has no allow-list."""
    down = closed_port()
    with Origin() as origin, LiveServer(tmp_path_factory.mktemp("fetch-serve") / "data") as server, \
            server.admin() as admin:
        grants: dict[str, list[tuple[str, str | int | float | bool | None]]] = {
            "granted": [("allow_host", origin.url), ("allow_host", f"http://127.0.0.1:{down}"), ("timeout", "10s")],
            "ungranted": [("timeout", "10s")]}
        for name, params in grants.items():
            answer = admin.put(f"/v1/modules/{name}", content=component, params=params)
            assert answer.status_code == 201, answer.text
        routes = [{"host": f"{name}.test", "path": "/...", "module": name} for name in grants]
        assert admin.post("/v1/routes", json={"routes": routes}).status_code == 200
        yield Deployed(server, origin, down)


def call(deployed: Deployed, module: str, target: str, method: str = "GET", body: bytes = b"") -> httpx.Response:
    with httpx.Client(base_url=deployed.server.edge_url, timeout=60) as edge:
        return edge.post("/fetch", content=body, headers={"host": f"{module}.test", "x-target": target,
                                                           "x-method": method})


def seen(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["x-guest"] == "python-fetch"
    result: dict[str, Any] = response.json()
    return result


def test_the_guest_gets_the_origins_status_headers_and_body(deployed: Deployed) -> None:
    origin = deployed.origin
    before = origin.hits("/ok")
    got = seen(call(deployed, "granted", f"{origin.url}/ok?a=1#fragment"))
    assert (got["status"], got["body"], got["origin"]) == (200, "hello from origin", "test-origin")
    headers = {name.lower(): value for name, value in got["headers"]}
    assert headers["x-origin"] == "test-origin" and headers["content-length"] == str(len("hello from origin"))
    assert origin.hits("/ok") == before + 1
    request = [entry for entry in origin.seen if entry["path"] == "/ok"][-1]
    sent = {name.lower(): value for name, value in request["headers"].items()}
    assert request["method"] == "GET" and request["body"] == b""
    assert (sent["x-probe"], sent["x-probe-2"]) == ("python-fetch", "two")
    assert sent["host"] == f"127.0.0.1:{origin.port}"


def test_a_put_sends_its_body_in_chunks_and_reads_the_answer(deployed: Deployed) -> None:
    body = bytes(range(256)) * 40  # 10240 bytes: three writes of at most 4096
    got = seen(call(deployed, "granted", f"{deployed.origin.url}/echo", "PUT", body))
    request = [entry for entry in deployed.origin.seen if entry["path"] == "/echo"][-1]
    assert request["method"] == "PUT" and request["body"] == body
    assert {name.lower(): value for name, value in request["headers"].items()}["content-length"] == str(len(body))
    headers = {name.lower(): value for name, value in got["headers"]}
    assert got["status"] == 200 and headers["content-type"] == "application/json"
    assert got["length"] == int(headers["content-length"]) > len(body)  # the echo: the body, as JSON


def test_a_large_answer_is_read_to_its_end(deployed: Deployed) -> None:
    got = seen(call(deployed, "granted", f"{deployed.origin.url}/huge?n=300000"))  # several 64 KiB reads
    assert (got["status"], got["length"], got["body"]) == (200, 300_000, "x" * 2000)


def test_an_error_status_is_a_response_not_a_fetch_error(deployed: Deployed) -> None:
    got = seen(call(deployed, "granted", f"{deployed.origin.url}/status?code=503"))
    assert (got["status"], got["body"]) == (503, "status")


def test_a_host_outside_the_allow_list_is_a_fetch_error(deployed: Deployed) -> None:
    origin = deployed.origin
    before = len(origin.seen)
    answer = call(deployed, "ungranted", f"{origin.url}/ok")
    assert answer.status_code == 502, answer.text
    said = answer.json()
    assert said["error"] == "HTTP-request-denied" and said["url"] == f"{origin.url}/ok"
    assert said["message"] == f"fetch {origin.url}/ok: HTTP-request-denied"
    assert len(origin.seen) == before  # never sent
    # The granted module is denied another port of the same host: the grant is scheme, host and port.
    other = call(deployed, "granted", f"http://127.0.0.1:{closed_port()}/ok")
    assert (other.status_code, other.json()["error"]) == (502, "HTTP-request-denied")


def test_a_granted_origin_that_is_down_is_connection_refused(deployed: Deployed) -> None:
    answer = call(deployed, "granted", f"http://127.0.0.1:{deployed.down}/")
    assert (answer.status_code, answer.json()["error"]) == (502, "connection-refused")


def test_the_calls_are_counted_per_result(deployed: Deployed) -> None:
    with deployed.server.admin() as admin:
        metrics = admin.get("/metrics").text
    assert 'isolate_outbound_requests_total{module="ungranted",result="denied"}' in metrics
    assert 'isolate_outbound_requests_total{module="granted",result="ok"}' in metrics


def test_no_host_is_a_value_error_the_guest_does_not_catch(deployed: Deployed) -> None:
    """A relative URL is the caller's mistake: ValueError, not FetchError (uncaught here: the host's 500)."""
    answer = call(deployed, "granted", "/ok")
    assert answer.status_code == 500
    assert "not an absolute URL" in deployed.server.wait_for_log("not an absolute URL")
