"""Out of memory: a guest allocator that cannot grow memory tells the host (`isolate.out_of_memory`),
and whatever stops the guest after that is reported as `memory_limit` with the size it asked for."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import HostFactory
from guests import module, response_bytes, returns, wasm

from isolate import GuestError, Host, Request
from isolate.abi import LogRecord
from isolate.build import build

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "guest-sdk"
LIMIT = 16 << 20  # small, so a refused grow is quick to reach
OOM_IMPORT = '(import "isolate" "out_of_memory" (func $oom (param i32)))'


def failure(host: Host, name: str, path: str) -> GuestError:
    with pytest.raises(GuestError) as caught:
        host.invoke(name, Request(path=path))
    return caught.value


def host_notes(logs: Iterable[LogRecord]) -> list[str]:
    return [record.message for record in logs if record.stream == "host"]


# -- the host function, from hand-written guests, on both request paths ---------------------------

@pytest.mark.parametrize("native", [True, False])
def test_a_trap_after_a_reported_failure_is_memory_limit(make_host: HostFactory, native: bool) -> None:
    host = make_host(native=native)
    host.deploy("oom", wasm(module("(call $oom (i32.const 123456)) unreachable", imports=OOM_IMPORT)),
                limits={"memory": LIMIT})
    error = failure(host, "oom", "/")
    diagnostic = error.to_dict()
    assert diagnostic["error"] == "memory_limit" and error.status == 500
    assert diagnostic["limit"] == "memory" and diagnostic["memory_limit"] == LIMIT
    assert diagnostic["requested_bytes"] == 123456 and diagnostic["phase"] == "handle"
    assert "123456 bytes" in diagnostic["detail"] and "unreachable" in diagnostic["detail"]
    assert host_notes(error.logs) == [
        "guest allocator could not get 123456 bytes: the memory limit refused to grow memory"]


@pytest.mark.parametrize("native", [True, False])
def test_a_guest_that_recovers_answers_and_the_failure_is_only_logged(make_host: HostFactory, native: bool) -> None:
    host = make_host(native=native)
    handler = f"(call $oom (i32.const -1)) (call $oom (i32.const 7)) {returns(response_bytes())}"
    host.deploy("oom", wasm(module(handler, imports=OOM_IMPORT)), limits={"memory": LIMIT})
    response = host.invoke("oom", Request(path="/"))
    assert response.status == 200
    # the first failure is the one reported; sizes are unsigned (4 GiB - 1: "more than fits")
    assert host_notes(response.logs) == [
        "guest allocator could not get 4294967295 bytes: the memory limit refused to grow memory"]
    # the next request starts clean: a trap without a report stays a trap
    host.deploy("plain", wasm(module("unreachable")))
    assert failure(host, "plain", "/").to_dict()["error"] == "trap"


def test_a_timeout_after_a_reported_failure_stays_a_timeout(host: Host) -> None:
    host.deploy("oom", wasm(module("(call $oom (i32.const 1)) (loop $l (br $l)) unreachable", imports=OOM_IMPORT)),
                limits={"timeout": 0.05})
    assert failure(host, "oom", "/").to_dict()["error"] == "timeout"


def test_the_import_must_have_its_signature(host: Host) -> None:
    bad = '(import "isolate" "out_of_memory" (func $oom (param i32) (result i32)))'
    with pytest.raises(Exception, match="out_of_memory"):
        host.deploy("bad", wasm(module(imports=bad)))


# -- the SDKs: the three allocations -----------------------------------------------------

@pytest.mark.parametrize("language, requested", [
    ("c", 1 << 30),  # malloc(1 GiB), then a memset through the NULL it returned
    ("rust", 1 << 30),  # vec![1u8; 1 << 30]
    ("assemblyscript", None),  # new Uint8Array(1 << 29): the stub runtime asks for a block with its header
])
def test_sdk_allocation_failures_are_memory_limit(host: Host, language: str, requested: int | None) -> None:
    result = build(SDK / language / "tests" / "oom")
    host.deploy("oom", result.output.read_bytes(), limits={"memory": LIMIT})
    assert host.invoke("oom", Request(path="/")).status == 200
    error = failure(host, "oom", "/alloc")
    diagnostic = error.to_dict()
    assert diagnostic["error"] == "memory_limit", diagnostic
    assert diagnostic["limit"] == "memory" and diagnostic["memory_limit"] == LIMIT
    if requested is None:
        assert 1 << 29 <= diagnostic["requested_bytes"] < (1 << 29) + 64
    else:
        assert diagnostic["requested_bytes"] == requested
    assert len(host_notes(error.logs)) == 1
    if language != "assemblyscript":  # a handled failure answers; the host only logs it
        response = host.invoke("oom", Request(path="/recover"))
        assert response.status == 503 and len(host_notes(response.logs)) == 1


def test_crash_sample_malloc_is_memory_limit(host: Host) -> None:
    host.deploy("crash", build(ROOT / "samples" / "crash").output.read_bytes(), limits={"memory": LIMIT})
    diagnostic = failure(host, "crash", "/crash/malloc").to_dict()
    assert diagnostic["error"] == "memory_limit" and diagnostic["requested_bytes"] == 1 << 30
