"""wasi:http components beside ABI v1 modules: deploy-time checks, and requests through the Host."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import wasmtime
from conftest import HostFactory
from live import ROOT

from isolate import AbiViolation, Host, InvalidModule, Request
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



HANDLER_TYPES = '''(import "wasi:http/types@0.2.0" (instance $types
     (export "incoming-request" (type (sub resource))) (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))'''


def test_the_handle_export_must_have_the_wasi_signature(host: Host) -> None:
    wasm = component('''(core module $m (func (export "h") (param i32) (result i32) local.get 0))
      (core instance $i (instantiate $m))
      (func $handle (param "x" u32) (result u32) (canon lift (core func $i "h")))
      (instance $h (export "handle" (func $handle)))
      (export "wasi:http/incoming-handler@0.2.0" (instance $h))''')
    with pytest.raises(InvalidModule, match=r"must have a function `handle\(request: own<incoming-request>"):
        host.deploy("c", wasm)


def test_an_import_of_the_wrong_kind_fails_the_deploy_not_each_request(host: Host) -> None:
    wasm = component(f'''{HANDLER_TYPES}
      (import "wasi:cli/exit@0.2.0" (func $exit))
      (core func $f (canon lower (func $exit)))
      (core module $m (import "" "f" (func)) (func (export "h") (param i32 i32) unreachable))
      (core instance $i (instantiate $m (with "" (instance (export "f" (func $f))))))
      (func $handle (param "request" (own $req)) (param "response-out" (own $out)) (canon lift (core func $i "h")))
      (instance $h (export "handle" (func $handle)))
      (export "wasi:http/incoming-handler@0.2.0" (instance $h))''')
    with pytest.raises(InvalidModule, match="component cannot be instantiated"):
        host.deploy("c", wasm)
    assert host.modules() == []


def test_a_pre_release_wasi_version_is_not_0_2(host: Host) -> None:
    wasm = component('(import "wasi:io/error@0.2.0-rc-2023-11-10" (instance (export "f" (func))))')
    with pytest.raises(InvalidModule, match="wasi:io/error@0.2.0-rc-2023-11-10, which this host does not provide"):
        host.deploy("c", wasm)


def test_a_host_function_imported_with_other_types_is_the_guests_fault(host: Host) -> None:
    """A guest declares the types of what it imports; the host converts by them, so a mismatch shows at the
    call: an `abi` diagnostic naming the function, with no host detail in it."""
    wasm = component(f'''{HANDLER_TYPES}
      (import "wasi:random/random@0.2.0" (instance $r (export "get-random-u64" (func (result bool)))))
      (core func $f (canon lower (func $r "get-random-u64")))
      (core module $m (import "" "f" (func $f (result i32)))
        (func (export "h") (param i32 i32) call $f drop unreachable))
      (core instance $i (instantiate $m (with "" (instance (export "f" (func $f))))))
      (func $handle (param "request" (own $req)) (param "response-out" (own $out)) (canon lift (core func $i "h")))
      (instance $h (export "handle" (func $handle)))
      (export "wasi:http/incoming-handler@0.2.0" (instance $h))''')
    host.deploy("c", wasm)
    with pytest.raises(AbiViolation, match="call to get-random-u64 failed: its import does not match") as caught:
        host.invoke("c")
    assert "TypeError" not in caught.value.detail and caught.value.status == 502
    with pytest.raises(AbiViolation):  # the host keeps serving: the next request fails the same way
        host.invoke("c")
