"""wasi:http components beside ABI v1 modules: deploy-time checks, and requests through the Host."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import wasmtime
from conftest import HostFactory
from live import ROOT

from isolate import Host, InvalidModule, Request
from isolate.engine import is_component


def component(body: str) -> bytes:
    return bytes(wasmtime.wat2wasm(f"(component {body})"))


def test_components_are_told_apart_from_modules_by_their_header() -> None:
    assert is_component(component(""))
    assert not is_component(bytes(wasmtime.wat2wasm("(module)")))
    assert not is_component(b"\0asm\x0d\x00")  # too short to be either


def test_a_component_must_export_the_incoming_handler(host: Host) -> None:
    with pytest.raises(InvalidModule, match=r"does not export wasi:http/incoming-handler@0\.2\.x") as caught:
        host.deploy("c", component(""))
    assert caught.value.extra["problems"] == ["missing export wasi:http/incoming-handler@0.2.x"]
    assert host.modules() == []


@pytest.mark.parametrize("name", [
    "acme:thing/foo@1.0.0",  # not WASI
    "wasi:http/types@0.3.0",  # WASI, but not a 0.2 version this host speaks
    "wasi:keyvalue/store@0.2.0",  # WASI 0.2, but not an interface the host provides
    "unversioned",
])
def test_the_first_unsupported_import_is_named(host: Host, name: str) -> None:
    wasm = component(f'(import "{name}" (instance (export "f" (func))))')
    with pytest.raises(InvalidModule, match=f"component imports {name}, which this host does not provide") as caught:
        host.deploy("c", wasm)
    assert caught.value.extra["unsupported_import"] == name


def test_a_malformed_component_is_invalid(host: Host) -> None:
    wasm = component('(import "wasi:io/error@0.2.0" (instance (export "error" (type (sub resource)))))')
    with pytest.raises(InvalidModule, match="invalid component"):
        host.deploy("c", wasm[:-3])


@pytest.fixture(scope="module")
def hello_http(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """bench/guests/hello-http.wat (the benchmark's hand-written wasi:http guest), made a component by jco."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: jco builds the component (make toolchains)")
    out = tmp_path_factory.mktemp("hello-http") / "hello-http.wasm"
    built = subprocess.run(["node", str(ROOT / "tests/components/build.mjs"), str(ROOT / "bench/guests/hello-http.wat"),
                            str(out)], capture_output=True, text=True, timeout=120)
    if built.returncode == 3:
        pytest.skip(f"jco is not installed: {built.stderr.strip()}")
    assert built.returncode == 0, built.stderr
    return out.read_bytes()


HELLO = b"Hello, world! (from C, region local, client in local)\n"


def test_a_component_is_stored_versioned_and_reloaded_after_a_restart(make_host: HostFactory,
                                                                      hello_http: bytes) -> None:
    host = make_host()
    module = host.deploy("greet", bytes(wasmtime.wat2wasm('''(module (memory (export "memory") 1)
        (func (export "isolate_abi_v1")) (func (export "isolate_alloc") (param i32) (result i32) i32.const 0)
        (func (export "isolate_handle") (param i32 i32) (result i64) unreachable))''')))
    assert module.kind == "module"
    info = host.deploy("greet", hello_http)
    assert (info.version, info.kind) == (2, "component")
    assert [v.kind for v in host.module("greet").versions] == ["module", "component"]
    response = host.invoke("greet", Request(path="/"))
    assert (response.status, response.body) == (200, HELLO)
    assert response.info["version"] == 2
    host.close()
    again = make_host()  # a restart: the stored artifact is mapped, as a component
    assert [v.kind for v in again.module("greet").versions] == ["module", "component"]
    assert again.invoke("greet", Request(path="/")).body == HELLO
    assert again.statistics().artifact_recompiles == 0
    assert again.rollback("greet").active_version == 1  # versions of either kind roll back alike

