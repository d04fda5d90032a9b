"""A standard wasi:http component's outbound calls go through the module's grants and outbound limits.

tests/components/outbound-http.wat (a hand-written guest, built with real jco by tests/components/build.mjs)
calls `wasi:http/outgoing-handler.handle` for the target its request names (x-target-authority,
x-target-path, optionally x-timeout-ms as a first-byte timeout), waits with
future-incoming-response.subscribe + pollable.block, and answers the upstream's status and body (with
x-upstream-status and x-upstream-origin), or 502 with the error-code's case name. The origin is a real one
on loopback (tests/origin.py). In-process through `Host`, then once through a real `isolate serve`; the same
component under `wasmtime serve` (the reference, no allow-list) answers the cases both allow the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from guests import jco_component
from live import LiveServer
from origin import Origin, closed_port
from wasmtime_serve import serving

from isolate import Host, Request, Response
from isolate.config import Config
from isolate.errors import Timeout


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return jco_component("outbound-http", tmp_path_factory.mktemp("component")).read_bytes()


@pytest.fixture(scope="module")
def host(component: bytes, origin: Origin, down: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """One host with the component deployed under several grants and limits."""
    with Host(Config(data_dir=tmp_path_factory.mktemp("host"))) as running:
        running.deploy("granted", component, allowed_hosts=[origin.url, f"http://127.0.0.1:{down}"],
                       limits={"timeout": 5.0})
        running.deploy("ungranted", component, limits={"timeout": 5.0})
        running.deploy("elsewhere", component, allowed_hosts=["http://127.0.0.1:1", "https://example.com"],
                       limits={"timeout": 5.0})
        running.deploy("no-calls", component, allowed_hosts=[origin.url], limits={"outbound_requests": 0})
        running.deploy("short-outbound", component, allowed_hosts=[origin.url],
                       limits={"timeout": 5.0, "outbound_timeout": 0.3})
        running.deploy("small-answers", component, allowed_hosts=[origin.url],
                       limits={"timeout": 5.0, "outbound_response_size": 1024})
        running.deploy("short-request", component, allowed_hosts=[origin.url], limits={"timeout": 0.3})
        yield running


def fetch(host: Host, module: str, authority: str | None, path: str | None = None,
          timeout_ms: int | None = None, request_id: str = "") -> Response:
    headers = []
    if authority is not None:
        headers.append(("x-target-authority", authority))
    if path is not None:
        headers.append(("x-target-path", path))
    if timeout_ms is not None:
        headers.append(("x-timeout-ms", str(timeout_ms)))
    return host.invoke(module, Request(path="/fetch", headers=headers, request_id=request_id))


def header(response: Response, name: str) -> list[str]:
    return [value for key, value in response.headers if key == name]


def refused(response: Response) -> str:
    """The error-code's case name the guest answered with (its 502), after checking it is one."""
    assert response.status == 502, (response.status, response.body)
    assert header(response, "x-upstream-status") == []
    return response.body.decode()


def authority(origin: Origin) -> str:
    return f"127.0.0.1:{origin.port}"


def outbound(host: Host, module: str) -> dict[str, int]:
    return {result: count for (name, result), count in host.statistics().outbound.items() if name == module}


# -- granted: the call reaches the origin ---------------------------------------------------------

def test_a_granted_call_answers_the_origins_status_and_body(host: Host, origin: Origin) -> None:
    before = origin.hits("/ok")
    response = fetch(host, "granted", authority(origin), "/ok", request_id="rid-outbound-1")
    assert response.status == 200, response.body
    assert response.body == b"hello from origin"
    assert header(response, "x-upstream-status") == ["200"]
    assert header(response, "x-upstream-origin") == ["test-origin"]
    assert header(response, "x-guest") == ["outbound-wat"]
    assert origin.hits("/ok") == before + 1
    seen = [request for request in origin.seen if request["path"] == "/ok"][-1]
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert seen["method"] == "GET"
    assert headers["x-probe"] == "outbound-wat"  # the header the guest set on its outgoing-request
    assert headers["host"] == authority(origin)
    assert headers["x-request-id"] == "rid-outbound-1"  # the host adds the request's id, as for ABI v1 guests


def test_the_origins_error_status_is_an_answer_not_an_error_code(host: Host, origin: Origin) -> None:
    response = fetch(host, "granted", authority(origin), "/status?code=503")
    assert (response.status, response.body, header(response, "x-upstream-status")) == (503, b"status", ["503"])


def test_a_large_body_is_read_to_its_end(host: Host, origin: Origin) -> None:
    response = fetch(host, "granted", authority(origin), "/huge?n=200000")  # ~49 reads of 4 KiB
    assert response.status == 200
    assert response.body == b"x" * 200_000


def test_no_path_is_the_root(host: Host, origin: Origin) -> None:
    """path-with-query none is sent as "/". (`wasmtime serve`, 50, answers HTTP-protocol-error instead: the
    WIT calls none an empty path, which it cannot send.)"""
    before = len(origin.seen)
    response = fetch(host, "granted", authority(origin))
    assert response.status == 404 and response.body == b"no such origin route"  # the origin's 404 for "/"
    assert origin.seen[before]["path"] == "/"


# -- the allow-list -------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["ungranted", "elsewhere"])
def test_a_call_outside_the_allow_list_is_http_request_denied(host: Host, origin: Origin, module: str) -> None:
    before = len(origin.seen)
    response = fetch(host, module, authority(origin), "/ok")
    assert refused(response) == "HTTP-request-denied"
    assert len(origin.seen) == before  # never sent
    assert any("is not in the module's allowed_hosts" in record.message for record in response.logs)
    assert outbound(host, module).get("denied", 0) >= 1


def test_a_granted_module_is_denied_another_port(host: Host, origin: Origin) -> None:
    """The grant is scheme, host and port: the same host on another port is someone else."""
    response = fetch(host, "granted", f"127.0.0.1:{closed_port()}", "/ok")
    assert refused(response) == "HTTP-request-denied"


def test_a_redirect_is_the_guests_to_follow(host: Host, origin: Origin) -> None:
    """As in wasmtime, outgoing-handler does not follow redirects: the guest gets the 302 (a location outside
    the grant is never contacted, so the allow-list cannot be walked around by the origin)."""
    before = origin.hits("/ok")
    response = fetch(host, "granted", authority(origin), "/redirect?code=302&to=/ok")
    assert (response.status, response.body, header(response, "x-upstream-status")) == (302, b"", ["302"])
    assert origin.hits("/ok") == before


def test_a_request_without_authority_is_uri_invalid(host: Host) -> None:
    assert refused(fetch(host, "granted", None, "/ok")) == "HTTP-request-URI-invalid"


def test_a_granted_origin_that_is_down_is_connection_refused(host: Host, down: int) -> None:
    assert refused(fetch(host, "granted", f"127.0.0.1:{down}", "/")) == "connection-refused"


# -- outbound limits ------------------------------------------------------------------------------

def test_outbound_requests_zero_is_connection_limit_reached(host: Host, origin: Origin) -> None:
    before = len(origin.seen)
    response = fetch(host, "no-calls", authority(origin), "/ok")
    assert refused(response) == "connection-limit-reached"
    assert len(origin.seen) == before
    assert any("limit outbound_requests" in record.message for record in response.logs)
    assert outbound(host, "no-calls") == {"too_many_requests": 1}


def test_the_modules_outbound_timeout_is_http_response_timeout(host: Host, origin: Origin) -> None:
    """The origin answers after 1.5 s, well within the request's 5 s: only the module's 0.3 s
    outbound_timeout can turn that answer into an error-code."""
    response = fetch(host, "short-outbound", authority(origin), "/slow?s=1.5")
    assert refused(response) == "HTTP-response-timeout"
    assert outbound(host, "short-outbound").get("timeout", 0) >= 1


def test_the_guests_first_byte_timeout_is_http_response_timeout(host: Host, origin: Origin) -> None:
    """request-options' first-byte timeout bounds the call below the module's outbound_timeout (10 s):
    without it the origin's answer after 1.5 s would come back (as the next test shows)."""
    response = fetch(host, "granted", authority(origin), "/slow?s=1.5", timeout_ms=200)
    assert refused(response) == "HTTP-response-timeout"


def test_a_first_byte_timeout_longer_than_the_call_lets_it_answer(host: Host, origin: Origin) -> None:
    response = fetch(host, "granted", authority(origin), "/slow?s=0.2", timeout_ms=3000)
    assert (response.status, response.body) == (200, b"slow answer")


def test_the_modules_outbound_response_size_is_http_response_body_size(host: Host, origin: Origin) -> None:
    assert refused(fetch(host, "small-answers", authority(origin), "/huge?n=5000")) == "HTTP-response-body-size"
    fits = fetch(host, "small-answers", authority(origin), "/huge?n=1000")
    assert (fits.status, fits.body) == (200, b"x" * 1000)


def test_the_modules_timeout_still_bounds_the_request(host: Host, origin: Origin) -> None:
    """A call longer than the request's own time limit fails the request (the guest never answers), and
    the call is still counted, as cut by the deadline."""
    with pytest.raises(Timeout):
        fetch(host, "short-request", authority(origin), "/slow?s=1.5")
    assert host.statistics().outbound[("short-request", "deadline")] == 1


def test_the_hosts_counters_name_each_result(host: Host, origin: Origin) -> None:
    before = outbound(host, "granted")
    fetch(host, "granted", authority(origin), "/ok")
    fetch(host, "granted", f"127.0.0.1:{closed_port()}", "/ok")
    after = outbound(host, "granted")
    assert after.get("ok", 0) == before.get("ok", 0) + 1
    assert after.get("denied", 0) == before.get("denied", 0) + 1


# -- a real `isolate serve` -----------------------------------------------------------------------

def test_isolate_serve_applies_the_grant(component: bytes, origin: Origin, tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin:
        grants: list[tuple[str, list[tuple[str, str | int | float | bool | None]]]] = [
            ("granted", [("allow_host", origin.url), ("timeout", "3s")]),
            ("ungranted", [("timeout", "3s")]),
            ("no-calls", [("allow_host", origin.url), ("outbound_requests", "0")])]
        for name, params in grants:
            deployed = admin.put(f"/v1/modules/{name}", content=component, params=params)
            assert deployed.status_code == 201, deployed.text
        routes = [{"host": f"{name}.test", "path": "/...", "module": name}
                  for name in ("granted", "ungranted", "no-calls")]
        assert admin.post("/v1/routes", json={"routes": routes}).status_code == 200
        target = {"x-target-authority": authority(origin), "x-target-path": "/ok"}
        with httpx.Client(base_url=server.edge_url, timeout=30) as edge:
            ok = edge.get("/fetch", headers={"host": "granted.test", **target})
            denied = edge.get("/fetch", headers={"host": "ungranted.test", **target})
            limited = edge.get("/fetch", headers={"host": "no-calls.test", **target})
        assert (ok.status_code, ok.content, ok.headers["x-upstream-status"]) == (200, b"hello from origin", "200")
        assert (denied.status_code, denied.text) == (502, "HTTP-request-denied")
        assert (limited.status_code, limited.text) == (502, "connection-limit-reached")
        metrics = admin.get("/metrics").text
        assert 'isolate_outbound_requests_total{module="granted",result="ok"} 1.0' in metrics
        assert 'isolate_outbound_requests_total{module="ungranted",result="denied"} 1.0' in metrics
        assert 'isolate_outbound_requests_total{module="no-calls",result="too_many_requests"} 1.0' in metrics


# -- the reference: `wasmtime serve` --------------------------------------------------------------

@pytest.fixture(scope="module")
def wasmtime_serve(component: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`wasmtime serve` on the component (which may call anywhere), on a free loopback port: its base URL."""
    scratch = tmp_path_factory.mktemp("wasmtime-serve")
    wasm = scratch / "outbound-http.wasm"
    wasm.write_bytes(component)
    with serving(wasm, scratch) as served:
        yield served.url


@pytest.mark.parametrize("path", ["/ok", "/status?code=503", "/huge?n=200000", "/redirect?code=302&to=/ok"])
def test_a_granted_call_answers_as_under_wasmtime_serve(host: Host, origin: Origin, wasmtime_serve: str,
                                                        path: str | None) -> None:
    """Where the grant allows the call, isolate's answer is the reference's (which checks the guest's
    canonical-ABI offsets against wasmtime's own lowering, too)."""
    headers = {"x-target-authority": authority(origin)}
    if path is not None:
        headers["x-target-path"] = path
    reference = httpx.get(f"{wasmtime_serve}/fetch", headers=headers, timeout=30)
    ours = fetch(host, "granted", authority(origin), path)
    assert (ours.status, ours.body, header(ours, "x-upstream-status"), header(ours, "x-upstream-origin")) == (
        reference.status_code, reference.content, reference.headers.get_list("x-upstream-status"),
        reference.headers.get_list("x-upstream-origin"))


@pytest.mark.parametrize("target", ["no-authority", "down"])
def test_a_failed_call_names_the_error_code_wasmtime_serve_names(host: Host, wasmtime_serve: str, down: int,
                                                                target: str) -> None:
    headers = {"x-target-path": "/"}
    if target == "down":
        headers["x-target-authority"] = f"127.0.0.1:{down}"
    reference = httpx.get(f"{wasmtime_serve}/fetch", headers=headers, timeout=30)
    ours = fetch(host, "granted", headers.get("x-target-authority"), headers.get("x-target-path"))
    assert reference.status_code == 502
    assert refused(ours) == reference.text
