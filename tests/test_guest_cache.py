"""The guest cache: `isolate.cache_get`/`cache_put` from real wasm, namespaced per module, bounded."""

from __future__ import annotations

import pytest

from isolate import AbiViolation, Request
from isolate.cache import GuestCache
from tests.conftest import HostFactory
from tests.guests import CACHE_IMPORTS, RESPONSE_AT, VISITS, cache_call, module, response_bytes, returns, wasm


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


def test_a_module_over_its_share_evicts_only_its_own_entries() -> None:
    clock = Clock()
    cache = GuestCache(max_entries=100, max_bytes=100_000, timer=clock, module_share=0.1)  # 10 entries each
    for i in range(5):
        assert cache.put("quiet", b"q%d" % i, b"v", ttl_ms=60_000)
    for i in range(1000):  # a noisy module writes far past its share
        assert cache.put("noisy", b"n%d" % i, b"v", ttl_ms=60_000)
    assert all(cache.get("quiet", b"q%d" % i) == b"v" for i in range(5))  # untouched
    assert cache.usage("noisy") == (10, 10 * (4 + 1 + 64))
    assert [cache.get("noisy", b"n%d" % i) for i in (989, 990, 999)] == [None, b"v", b"v"]  # its newest stay
    stats = cache.statistics()
    assert (stats.entries, stats.share_evictions, stats.evictions, stats.namespaces) == (15, 990, 990, 2)


def test_the_byte_share_too_and_least_recently_used_first() -> None:
    cache = GuestCache(max_entries=1000, max_bytes=1000, timer=Clock(), module_share=0.5)  # 500 bytes each
    assert cache.put("a", b"x", b"1" * 100, ttl_ms=60_000)  # 165 bytes charged
    assert cache.put("a", b"y", b"2" * 100, ttl_ms=60_000)
    assert cache.put("b", b"x", b"3" * 300, ttl_ms=60_000)  # 365 bytes: within b's share
    assert cache.get("a", b"x") == b"1" * 100  # x is now a's most recently used
    assert cache.put("a", b"z", b"4" * 100, ttl_ms=60_000)  # 3 × 165 = 495: still within 500
    assert cache.put("a", b"w", b"5" * 100, ttl_ms=60_000)  # over 500: a's least recently used (y) goes
    assert [cache.get("a", k) is not None for k in (b"x", b"y", b"z", b"w")] == [True, False, True, True]
    assert cache.get("b", b"x") == b"3" * 300
    assert not cache.put("a", b"big", b"6" * 500, ttl_ms=60_000)  # larger than a whole share
    assert cache.put("a", b"x", b"7", ttl_ms=60_000)  # replacing a value gives back its old size
    assert cache.usage("a") == (3, 66 + 2 * 165)


def test_expired_and_cleared_entries_leave_the_share() -> None:
    clock = Clock()
    cache = GuestCache(max_entries=10, max_bytes=10_000, timer=clock, module_share=0.2)  # 2 entries each
    cache.put("m", b"a", b"1", ttl_ms=1000)
    cache.put("m", b"b", b"1", ttl_ms=60_000)
    clock.now += 2
    assert cache.put("m", b"c", b"1", ttl_ms=60_000)  # a expired: no eviction needed
    assert cache.get("m", b"b") == b"1" and cache.statistics().share_evictions == 0
    assert cache.clear("m") == 2 and cache.usage("m") == (0, 0)
    assert cache.statistics().namespaces == 0


def test_whole_cache_full_still_evicts_the_least_recently_used_of_any_module() -> None:
    cache = GuestCache(max_entries=4, max_bytes=10_000, timer=Clock(), module_share=0.5)
    for namespace in ("a", "b"):
        for key in (b"1", b"2"):
            cache.put(namespace, key, b"v", ttl_ms=60_000)
    cache.put("c", b"1", b"v", ttl_ms=60_000)  # the cache is full: a's oldest entry goes
    assert cache.get("a", b"1") is None and cache.get("b", b"1") == b"v" and cache.get("c", b"1") == b"v"


def test_two_modules_through_the_host(make_host: HostFactory) -> None:
    """A module filling the guest cache from wasm cannot push out another module's entries."""
    host = make_host(guest_cache_entries=40, guest_cache_module_share=0.25)  # 10 entries per module
    host.deploy("visits", wasm(VISITS))
    for _ in range(3):
        host.invoke("visits")
    body = response_bytes(body=b"\0" * 4)
    at = RESPONSE_AT + len(body) - 4
    # Stores its whole request envelope under itself: a new key for every distinct request body.
    filler = module(
        f"(i32.store (i32.const {at}) (call $cache_put (local.get $ptr) (local.get $len) (local.get $ptr) "
        f"(local.get $len) (i32.const 60000))) {returns(body)}", response=body, imports=CACHE_IMPORTS)
    host.deploy("filler", wasm(filler))
    assert all(host.invoke("filler", Request(body=b"%d" % i)).body == b"\0" * 4 for i in range(50))
    assert host.guest_cache.usage("filler")[0] == 10 and host.guest_cache.usage("visits")[0] == 1
    assert host.invoke("visits").body == b"\x04"  # its counter survived the flood
    assert host.statistics().guest_cache.share_evictions == 40
