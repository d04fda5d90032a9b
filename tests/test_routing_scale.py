"""The route table at scale: work per build grows linearly, work per lookup not at all.

Counted, never timed: `work()` counts the lines the route table's module executes, which is
deterministic and shows a quadratic loop or a table scan as plainly as a stopwatch would.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

import pytest

from isolate.errors import RouteConflict
from isolate.routing import HTTP_METHODS, Route, RouteTable, _table

TABLE_SOURCE = _table.__file__
METHODS = sorted(HTTP_METHODS)

Shape = Callable[[int], list[dict[str, Any]]]
SHAPES: dict[str, Shape] = {
    "literal paths": lambda n: [{"path": f"/a{i}/b{i % 97}/c", "module": "m"} for i in range(n)],
    ":param paths": lambda n: [{"path": f"/p{i}/:id/x{i % 7}", "module": "m"} for i in range(n)],
    "one path, many hosts": lambda n: [{"path": "/api/v1/users", "host": f"h{i}.example.com", "module": "m"}
                                       for i in range(n)],
    "wildcard hosts": lambda n: [{"path": "/api", "host": f"*.a{i}.example.com", "module": "m"} for i in range(n)],
    "one shape, method sets": lambda n: [{"path": f"/q{i // 9}/:id", "module": "m", "methods": [METHODS[i % 9]]}
                                         for i in range(n)],
    "prefixes": lambda n: [{"path": f"/s{i}/...", "module": "m"} for i in range(n)],
    "nested prefixes": lambda n: [{"path": "".join(f"/n{j}" for j in range(i % 40)) + f"/e{i}/...",
                                   "module": "m"} for i in range(n)],
}


def work(call: Callable[[], object]) -> int:
    """Lines executed in the route table's module while `call` runs."""
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code.co_filename == TABLE_SOURCE else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


@pytest.mark.parametrize("shape", SHAPES)
def test_build_is_linear(shape: str) -> None:
    small, large = SHAPES[shape](1000), SHAPES[shape](4000)
    assert work(lambda: RouteTable.build(large)) <= 4.4 * work(lambda: RouteTable.build(small))


def test_a_conflict_at_the_end_of_a_large_table_is_found() -> None:
    routes = SHAPES["one shape, method sets"](20_000)
    routes.append({"path": "/q7/:name", "module": "late", "methods": ["put", "GET"]})
    with pytest.raises(RouteConflict) as info:
        RouteTable.build(routes)
    assert info.value.to_dict()["routes"] == [65, 20_000]  # /q7/:id with GET, before the one with PUT


REQUESTS = {
    "literal paths": [("example.com", "/a5/b5/c"), ("example.com", "/a5/b6/c"), ("x", "/nope")],
    ":param paths": [("example.com", "/p5/42/x5"), ("example.com", "/p5/42/x6"), ("example.com", "/nope/1/x1")],
    "one path, many hosts": [("h5.example.com", "/api/v1/users"), ("nope.example.com", "/api/v1/users")],
    "wildcard hosts": [("w.a5.example.com", "/api"), ("w.a5.example.com", "/nope"), ("a5.example.com", "/api"),
                       ("a." * 4000 + "a5.example.com", "/api")],
    "one shape, method sets": [("example.com", "/q5/1"), ("example.com", "/q5/1/2")],
    "prefixes": [("example.com", "/s5/x/y"), ("example.com", "/s5"), ("example.com", "/nope/x")],
    "nested prefixes": [("example.com", "/n0/n1/n2/e3/x"), ("example.com", "/n0/n1/n2/n3/n4/x")],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_lookups_do_not_grow_with_the_table(shape: str) -> None:
    small, large = RouteTable.build(SHAPES[shape](500)), RouteTable.build(SHAPES[shape](8000))
    for (host, path), method in itertools.product(REQUESTS[shape], ["GET", "POST"]):
        assert (small.match(host, path, method) is None) == (large.match(host, path, method) is None)
        assert work(partial(large.match, host, path, method)) <= work(partial(small.match, host, path, method)) + 10
        assert work(partial(large.allowed, host, path)) <= work(partial(small.allowed, host, path)) + 10
    small.shadowed(small.routes[0]), large.shadowed(large.routes[0])  # the first call indexes the trie's edges
    for index in (5, 400):
        route, twin = small.routes[index], large.routes[index]
        if not route.host.startswith("*"):  # a wildcard or any-host route is compared with every host
            assert work(partial(large.shadowed, twin)) <= work(partial(small.shadowed, route)) + 10


def test_a_huge_host_costs_no_more_than_a_short_one() -> None:
    t = RouteTable.build(SHAPES["wildcard hosts"](1000))
    short, huge = "w.a5.example.com", "w." * 4000 + "a5.example.com"
    assert t.match(huge, "/api", "GET") is not None
    assert work(lambda: t.match(huge, "/api", "GET")) <= work(lambda: t.match(short, "/api", "GET")) + 10


def test_deep_paths_do_not_recurse() -> None:
    deep = "/" + "/".join(f"s{i}" for i in range(5000))
    t = RouteTable.build([{"path": deep + "/:last", "module": "deep"}, {"path": deep + "/...", "module": "below"},
                          {"path": "/" + "/".join([":p"] + [f"s{i}" for i in range(1, 5000)]), "module": "p"}])
    hit = t.match("h", deep + "/x", "GET")
    assert hit is not None and hit.route.module == "deep" and hit.params == {"last": "x"}
    below = t.match("h", deep + "/x/y" * 5000, "GET")
    assert below is not None and below.route.module == "below"
    assert t.allowed("h", deep + "/x/y") == HTTP_METHODS
    assert [r.module for r in t.shadowed(t.routes[2])] == []  # "below" overlaps it but ranks lower
    assert [r.module for r in t.shadowed(Route(deep + "/...", "new"))] == ["deep", "p", "below"]


def test_large_tables_match_like_small_ones() -> None:
    routes = [route for shape in SHAPES.values() for route in shape(3000)]
    t = RouteTable.build(routes)
    assert len(t.to_list()) == len(routes) == len(t.routes)
    assert t.match("w.a7.example.com", "/api", "GET").route.host == "*.a7.example.com"  # type: ignore[union-attr]
    assert t.match("h7.example.com", "/api/v1/users", "GET").route.host == "h7.example.com"  # type: ignore[union-attr]
    hit = t.match("example.com", "/p2999/7/x3", "GET")
    assert hit is not None and hit.params == {"id": "7"}
    assert t.match("example.com", "/q2/7", "DELETE").route.methods == {"DELETE"}  # type: ignore[union-attr]
    assert t.allowed("example.com", "/q2/7") == HTTP_METHODS  # all nine, one route each
    assert t.allowed("example.com", "/q333/7") == frozenset({"CONNECT", "DELETE", "GET"})
