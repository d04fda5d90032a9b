"""The edge response cache with an injected clock: real guests behind the edge app, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import guests as g
import httpx
import pytest
from conftest import AsgiClient

from isolate import Config
from isolate.abi import Response
from isolate.cache import ResponseCache, freshness
from isolate.config import ServerConfig
from isolate.http import Apps, build

AUTH = {"authorization": "Bearer t"}


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_apps(tmp_path: Path, clock: Clock, **server: object) -> Apps:
    built = build(Config(data_dir=tmp_path / "data", pool_instances=16),
                  ServerConfig(admin_token="t", threads=4, **server), timer=clock)  # type: ignore[arg-type]
    built.state.ready = True
    return built


@pytest.fixture
def apps(tmp_path: Path, clock: Clock) -> Iterator[Apps]:
    built = make_apps(tmp_path, clock)
    yield built
    built.close()


def guest(headers: list[list[str]], body: bytes = b"hello", handler_prefix: str = "") -> bytes:
    response = g.response_bytes(headers=headers, body=body)
    return g.wasm(g.module(handler_prefix + g.returns(response), response=response))


def setup(admin: AsgiClient, name: str, wasm: bytes, path: str = "/...", **route: object) -> None:
    assert admin.put(f"/v1/modules/{name}", content=wasm).status_code == 201
    routes = [r for r in admin.get("/v1/routes").json()["routes"] if r["path"] != path]
    response = admin.put("/v1/routes", json={"routes": [*routes, {"path": path, "module": name, **route}]})
    assert response.status_code == 200, response.text


def runs(apps: Apps) -> int:
    """Guest invocations so far: the ground truth of whether the cache answered."""
    return apps.host.statistics().invocations


def test_hit_then_expiry(apps: Apps, admin: AsgiClient, edge: AsgiClient, clock: Clock) -> None:
    setup(admin, "fresh", guest([["cache-control", "public, max-age=60"]]))
    first = edge.get("/a?x=1")
    assert first.headers["x-cache"] == "MISS" and "age" not in first.headers and runs(apps) == 1
    clock.now += 59
    second = edge.get("/a?x=1")
    assert second.headers["x-cache"] == "HIT" and second.headers["age"] == "59" and second.text == "hello"
    assert second.headers["cache-control"] == "public, max-age=60" and second.headers["x-isolate-region"] == "local"
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert 'cache;desc="hit"' in second.headers["server-timing"]
    assert runs(apps) == 1
    assert edge.get("/a?x=2").headers["x-cache"] == "MISS"  # the query is part of the key
    clock.now += 1
    assert edge.get("/a?x=1").headers["x-cache"] == "MISS" and runs(apps) == 3  # expired at 60 s


def test_s_maxage_wins_over_max_age(apps: Apps, admin: AsgiClient, edge: AsgiClient, clock: Clock) -> None:
    setup(admin, "shared", guest([["cache-control", "max-age=0, s-maxage=10"]]))
    edge.get("/s")
    clock.now += 9
    assert edge.get("/s").headers["x-cache"] == "HIT"
    clock.now += 1
    assert edge.get("/s").headers["x-cache"] == "MISS"


@pytest.mark.parametrize("headers", [
    [["cache-control", "no-store, max-age=60"]],
    [["cache-control", "private, max-age=60"]],
    [["cache-control", "max-age=60, no-cache"]],
    [["cache-control", "max-age=60"], ["vary", "*"]],
    [["cache-control", "max-age=60"], ["set-cookie", "a=b"]],
    [],  # no explicit freshness: never stored
])
def test_responses_that_are_never_stored(apps: Apps, admin: AsgiClient, edge: AsgiClient,
                                         headers: list[list[str]]) -> None:
    setup(admin, "nostore", guest(headers))
    assert [edge.get("/n").headers["x-cache"] for _ in range(3)] == ["MISS"] * 3
    assert runs(apps) == 3


def test_vary(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "varied", guest([["cache-control", "max-age=60"], ["vary", "Accept-Language"]]))
    assert edge.get("/v", headers={"accept-language": "en"}).headers["x-cache"] == "MISS"
    assert edge.get("/v", headers={"accept-language": "de"}).headers["x-cache"] == "MISS"
    assert edge.get("/v", headers={"accept-language": "en"}).headers["x-cache"] == "HIT"
    assert edge.get("/v", headers={"accept-language": "de"}).headers["x-cache"] == "HIT"
    assert edge.get("/v").headers["x-cache"] == "MISS"  # absent is a value of its own
    assert runs(apps) == 3


def test_bypasses(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "fresh", guest([["cache-control", "max-age=60"]]))
    setup(admin, "optout", guest([["cache-control", "max-age=60"]]), path="/off", cache=False)
    edge.get("/a")
    assert edge.get("/a").headers["x-cache"] == "HIT"
    assert edge.post("/a").headers["x-cache"] == "BYPASS"
    assert edge.get("/a", headers={"authorization": "Bearer x"}).headers["x-cache"] == "BYPASS"
    assert [edge.get("/off").headers["x-cache"] for _ in range(2)] == ["BYPASS", "BYPASS"]
    assert runs(apps) == 5


def test_head_is_answered_from_a_stored_get(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "fresh", guest([["cache-control", "max-age=60"]]))
    assert edge.head("/h").headers["x-cache"] == "MISS"  # a HEAD miss is not stored (no body to keep)
    edge.get("/h")
    head = edge.head("/h")
    assert head.headers["x-cache"] == "HIT" and head.content == b"" and head.headers["content-length"] == "5"
    assert runs(apps) == 2


def test_purge_by_url_route_module_and_all(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "one", guest([["cache-control", "max-age=60"]]), path="/one/:id")
    setup(admin, "two", guest([["cache-control", "max-age=60"]]), path="/two/...")
    urls = ["/one/1", "/one/2?q=1", "/two/x", "/two/y"]

    def fill() -> None:
        for url in urls:
            edge.get(url)
        assert all(edge.get(url).headers["x-cache"] == "HIT" for url in urls)

    def states() -> list[str]:
        return [edge.get(url).headers["x-cache"] for url in urls]

    fill()
    assert admin.post("/v1/cache/purge", json={"url": "/one/2?q=1"}).json() == {"purged": 1}
    assert states() == ["HIT", "MISS", "HIT", "HIT"]
    assert admin.post("/v1/cache/purge", json={"route": "/one/:id"}).json() == {"purged": 2}
    assert states() == ["MISS", "MISS", "HIT", "HIT"]
    assert admin.post("/v1/cache/purge", json={"module": "two"}).json() == {"purged": 2}
    assert states() == ["HIT", "HIT", "MISS", "MISS"]
    assert admin.post("/v1/cache/purge", json={"all": True}).json() == {"purged": 4}
    assert states() == ["MISS"] * 4
    for bad in ({}, {"module": "a", "url": "/b"}, {"everything": True}, {"all": 1}, {"url": ""}):
        response = admin.post("/v1/cache/purge", json=bad)
        assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_deploy_and_rollback_purge_the_module(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "site", guest([["cache-control", "max-age=600"]], body=b"v1"), path="/site")
    setup(admin, "other", guest([["cache-control", "max-age=600"]], body=b"other"), path="/other")
    assert edge.get("/site").text == "v1" and edge.get("/other").text == "other"
    assert admin.put("/v1/modules/site", content=guest([["cache-control", "max-age=600"]], body=b"v2")).is_success
    assert edge.get("/site").text == "v2"  # not the cached v1
    assert edge.get("/other").headers["x-cache"] == "HIT"  # other modules keep their entries
    assert admin.post("/v1/modules/site/rollback").is_success
    response = edge.get("/site")
    assert response.text == "v1" and response.headers["x-cache"] == "MISS"


def test_concurrent_misses_run_the_guest_once(apps: Apps, admin: AsgiClient) -> None:
    # A guest that burns a few milliseconds, so the requests overlap while the first one runs.
    spin = "(local $i i32) (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) " \
           "(br_if $l (i32.lt_u (local.get $i) (i32.const 3000000))))"
    slow = g.response_bytes(headers=[["cache-control", "max-age=60"]], body=b"slow")
    setup(admin, "slow", g.wasm(g.module(spin + g.returns(slow), response=slow)))

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=apps.edge)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
            return await asyncio.gather(*(client.get("/c") for _ in range(20)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 and r.text == "slow" for r in responses)
    assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 19 + ["MISS"]
    assert runs(apps) == 1
    assert apps.cache is not None and apps.cache.statistics().coalesced == 19


def test_uncacheable_keys_do_not_queue_behind_each_other(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "plain", guest([]))
    edge.get("/p")  # learnt: this key is not cacheable

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=apps.edge)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
            return await asyncio.gather(*(client.get("/p") for _ in range(10)))

    asyncio.run(burst())
    assert apps.cache is not None and apps.cache.statistics().coalesced == 0 and runs(apps) == 11


def test_byte_bound_evicts_least_recently_used(tmp_path: Path, clock: Clock) -> None:
    apps = make_apps(tmp_path, clock, cache_bytes=3000)
    try:
        with AsgiClient(apps.admin, base_url="http://admin.test", headers=AUTH) as admin, \
                AsgiClient(apps.edge, base_url="http://edge.test") as edge:
            setup(admin, "big", guest([["cache-control", "max-age=60"]], body=b"x" * 1000))
            for url in ("/1", "/2"):
                assert edge.get(url).headers["x-cache"] == "MISS"
            assert edge.get("/1").headers["x-cache"] == "HIT"  # /1 is now the most recently used
            edge.get("/3")  # 3 × ~1.3 KB > 3,000 bytes: /2 goes
            assert [edge.get(u).headers["x-cache"] for u in ("/1", "/3", "/2")] == ["HIT", "HIT", "MISS"]
            stats = apps.cache.statistics()  # type: ignore[union-attr]
            assert stats.evictions >= 1 and stats.bytes <= 3000
    finally:
        apps.close()


def test_cache_can_be_turned_off(tmp_path: Path, clock: Clock) -> None:
    apps = make_apps(tmp_path, clock, cache=False)
    try:
        with AsgiClient(apps.admin, base_url="http://admin.test", headers=AUTH) as admin, \
                AsgiClient(apps.edge, base_url="http://edge.test") as edge:
            setup(admin, "fresh", guest([["cache-control", "max-age=60"]]))
            assert [edge.get("/a").headers["x-cache"] for _ in range(2)] == ["BYPASS", "BYPASS"]
    finally:
        apps.close()


def test_statistics_reach_metrics_and_stats(apps: Apps, admin: AsgiClient, edge: AsgiClient) -> None:
    setup(admin, "fresh", guest([["cache-control", "max-age=60"]]))
    edge.get("/m")
    edge.get("/m")
    text = admin.get("/metrics").text
    assert "isolate_response_cache_hits_total 1.0" in text and "isolate_response_cache_misses_total 1.0" in text
    assert "isolate_module_cache_hits_total" in text and "isolate_guest_cache_entries" in text
    stats = admin.get("/v1/stats").json()
    assert stats["response_cache"]["hits"] == 1 and stats["response_cache"]["entries"] == 1
    assert stats["module_cache"]["capacity"] == apps.host.config.module_cache_size


@pytest.mark.parametrize(("status", "headers", "expected"), [
    (200, [("Cache-Control", "max-age=5")], (5.0, ())),
    (200, [("cache-control", 'max-age="7"')], (7.0, ())),
    (200, [("cache-control", "max-age=abc")], None),
    (200, [("cache-control", "max-age=\u00b2")], None),  # a Unicode digit is not a number of seconds
    (200, [("cache-control", "max-age=5"), ("Vary", "B, a"), ("vary", "a")], (5.0, ("a", "b"))),
    (404, [("cache-control", "max-age=5")], (5.0, ())),
    (500, [("cache-control", "max-age=5")], None),
    (201, [("cache-control", "max-age=5")], None),
])
def test_freshness_rules(status: int, headers: list[tuple[str, str]],
                         expected: tuple[float, tuple[str, ...]] | None) -> None:
    assert freshness(status, headers) == expected


def test_a_purge_during_a_miss_keeps_its_answer_out() -> None:
    cache = ResponseCache(100, 1 << 20, Clock())
    answer = Response(200, (("cache-control", "max-age=60"),), b"old", (), {})

    async def scenario() -> None:
        started = asyncio.Event()
        release = asyncio.Event()

        async def run() -> Response:
            started.set()
            await release.wait()
            return answer

        miss = asyncio.create_task(cache.fetch("k", "GET", [], run, "m", "/r", "/u"))
        await started.wait()
        assert cache.purge(module="m") == 0  # a deploy, while the old version is still answering
        release.set()
        await miss

    asyncio.run(scenario())
    assert cache.lookup("k", []) is None and cache.statistics().stores == 0


def test_many_distinct_urls_stay_reachable() -> None:
    cache = ResponseCache(10, 1 << 20, Clock())
    answer = Response(200, (("cache-control", "max-age=60"),), b"x", (), {})
    for i in range(50):
        assert cache.store(f"k{i}", [], answer, "m", "/r", f"/u?{i}")
    assert all(cache.lookup(f"k{i}", []) is not None for i in range(40, 50))  # the 10 most recent
    assert cache.statistics().entries == 10


def test_a_client_slow_to_send_its_body_holds_up_no_one(apps: Apps, admin: AsgiClient) -> None:
    setup(admin, "fresh", guest([["cache-control", "max-age=60"]]))
    scope = {"type": "http", "method": "GET", "path": "/slow", "raw_path": b"/slow", "query_string": b"",
             "headers": [(b"host", b"edge.test"), (b"content-length", b"10")], "client": ("127.0.0.1", 1)}

    async def scenario() -> httpx.Response:
        never = asyncio.Event()

        async def stalled() -> dict[str, object]:
            await never.wait()  # the body never comes
            return {}

        async def send(message: dict[str, object]) -> None:
            pass

        stuck = asyncio.create_task(apps.edge(scope, stalled, send))
        await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=apps.edge)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
            response = await asyncio.wait_for(client.get("/slow"), 10)
        stuck.cancel()
        return response

    assert asyncio.run(scenario()).status_code == 200


def test_a_purge_does_not_reorder_what_is_least_recently_used() -> None:
    cache = ResponseCache(3, 1 << 20, Clock())
    answer = Response(200, (("cache-control", "max-age=60"),), b"x", (), {})
    for key in ("a", "b", "c"):
        cache.store(key, [], answer, "m", "/r", f"/{key}")
    assert cache.lookup("a", []) is not None  # a is now the most recently used
    assert cache.purge(url="/elsewhere") == 0
    cache.store("d", [], answer, "m", "/r", "/d")  # one must go: b, the least recently used
    assert cache.lookup("b", []) is None and cache.lookup("a", []) is not None
