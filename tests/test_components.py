"""wasi:http components beside ABI v1 modules: deploy-time checks, and requests through the Host."""

from __future__ import annotations

import pytest
import wasmtime

from isolate import Host, InvalidModule
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
