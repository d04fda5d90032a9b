"""The guest cache: `isolate.cache_get`/`cache_put` from real wasm, namespaced per module, bounded."""

from __future__ import annotations

import pytest

from isolate import AbiViolation
from isolate.cache import GuestCache
from tests.conftest import HostFactory
from tests.guests import VISITS, cache_call, wasm


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_state_survives_fresh_isolates_and_is_per_module(make_host: HostFactory) -> None:
    host = make_host()
    host.deploy("visits", wasm(VISITS))
    host.deploy("other", wasm(VISITS))
    assert [host.invoke("visits").body for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]
    assert host.invoke("other").body == b"\x01"  # same key, other module: its own namespace
    stats = host.statistics().guest_cache
    assert stats.entries == 2 and stats.stores == 4 and stats.hits == 2 and stats.misses == 2


def test_deleting_a_module_drops_its_entries(make_host: HostFactory) -> None:
    host = make_host()
    host.deploy("visits", wasm(VISITS))
    host.invoke("visits")
    host.delete("visits")
    host.deploy("visits", wasm(VISITS))
    assert host.invoke("visits").body == b"\x01"


@pytest.mark.parametrize(("call", "expected"), [
    ("(call $cache_get (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))", -2),  # empty key
    ("(call $cache_get (i32.const 0) (i32.const 1025) (i32.const 0) (i32.const 0))", -2),  # key over 1 KiB
    ("(call $cache_get (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 0))", -1),  # absent
    ("(call $cache_put (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 4) (i32.const 0))", -4),  # ttl 0
    ("(call $cache_put (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 4) (i32.const 86400001))", -4),
    ("(call $cache_put (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 1048577) (i32.const 10))", -3),
    ("(call $cache_put (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 4) (i32.const 10))", 0),
])
def test_results_of_bad_and_good_calls(make_host: HostFactory, call: str, expected: int) -> None:
    host = make_host()
    host.deploy("calls", wasm(cache_call(call)))
    assert int.from_bytes(host.invoke("calls").body, "little", signed=True) == expected


def test_get_copies_at_most_the_buffer_and_returns_the_full_length(make_host: HostFactory) -> None:
    host = make_host()
    host.deploy("put", wasm(cache_call(
        "(call $cache_put (i32.const 0) (i32.const 5) (i32.const 100) (i32.const 1000) (i32.const 60000))")))
    host.deploy("put", wasm(cache_call(  # same module, new version: same namespace
        "(call $cache_get (i32.const 0) (i32.const 5) (i32.const 100) (i32.const 10))")))
    assert int.from_bytes(host.invoke("put").body, "little", signed=True) == -1
    host.rollback("put")
    assert int.from_bytes(host.invoke("put").body, "little", signed=True) == 0
    host.rollback("put", 2)
    assert int.from_bytes(host.invoke("put").body, "little", signed=True) == 1000


@pytest.mark.parametrize("call", [
    "(call $cache_get (i32.const 65530) (i32.const 100) (i32.const 0) (i32.const 0))",
    "(call $cache_put (i32.const 0) (i32.const 5) (i32.const 65530) (i32.const 100) (i32.const 10))",
    "(call $cache_put (i32.const -1) (i32.const 5) (i32.const 0) (i32.const 1) (i32.const 10))",
])
def test_pointers_outside_memory_are_abi_violations(make_host: HostFactory, call: str) -> None:
    host = make_host()
    host.deploy("bad", wasm(cache_call(call)))
    with pytest.raises(AbiViolation, match="outside guest memory"):
        host.invoke("bad")
    host.deploy("good", wasm(VISITS))
    assert host.invoke("good").body == b"\x01"


def test_get_with_an_output_buffer_outside_memory_is_an_abi_violation(make_host: HostFactory) -> None:
    host = make_host()
    host.deploy("m", wasm(cache_call(
        "(i32.add (call $cache_put (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 4) (i32.const 60000))"
        " (call $cache_get (i32.const 0) (i32.const 5) (i32.const 65534) (i32.const 4)))")))
    with pytest.raises(AbiViolation, match="output buffer"):
        host.invoke("m")


def test_ttl_expiry_and_bounds_with_an_injected_clock() -> None:
    clock = Clock()
    cache = GuestCache(max_entries=2, max_bytes=10_000, timer=clock)
    assert cache.put("m", b"a", b"1", ttl_ms=1000)
    clock.now += 0.999
    assert cache.get("m", b"a") == b"1"
    clock.now += 0.001
    assert cache.get("m", b"a") is None
    for key in (b"x", b"y", b"z"):
        cache.put("m", key, b"v", ttl_ms=60_000)
    assert cache.get("m", b"x") is None and cache.get("m", b"z") == b"v"  # entry bound: LRU out
    assert cache.statistics().evictions == 1
    small = GuestCache(max_entries=100, max_bytes=200, timer=clock)
    assert small.put("m", b"k1", b"v" * 60, ttl_ms=60_000)
    assert small.put("m", b"k2", b"v" * 60, ttl_ms=60_000)  # 2 * (2 + 60 + 64) > 200: k1 goes
    assert small.get("m", b"k1") is None and small.get("m", b"k2") is not None
    assert not small.put("m", b"k3", b"v" * 500, ttl_ms=60_000)  # larger than the whole cache
