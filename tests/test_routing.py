"""The route table: patterns, precedence, conflicts."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from isolate.errors import InvalidConfig, IsolateError, RouteConflict
from isolate.routing import HTTP_METHODS, Route, RouteTable


def table(*routes: dict[str, object]) -> RouteTable:
    return RouteTable.build(routes)


def target(t: RouteTable, path: str, host: str = "example.com", method: str = "GET") -> str | None:
    match = t.match(host, path, method)
    return None if match is None else f"{match.route.module}{match.params or ''}"


def test_exact_param_and_prefix_patterns() -> None:
    t = table(
        {"path": "/", "module": "root"},
        {"path": "/users/:id", "module": "user"},
        {"path": "/users/:id/posts/:post", "module": "post"},
        {"path": "/static/...", "module": "static"},
    )
    assert target(t, "/") == "root"
    assert target(t, "/users/7") == "user{'id': '7'}"
    assert target(t, "/users/7/") == "user{'id': '7'}"
    assert target(t, "/users/7/posts/9") == "post{'id': '7', 'post': '9'}"
    assert target(t, "/users") is None
    assert target(t, "/users/7/x") is None
    assert target(t, "/static") == "static"
    assert target(t, "/static/css/a.css") == "static"
    assert target(t, "/staticx") is None


def test_most_specific_match_wins() -> None:
    t = table(
        {"path": "/...", "module": "catchall"},
        {"path": "/api/...", "module": "api"},
        {"path": "/api/:version/users", "module": "users-any"},
        {"path": "/api/v1/users", "module": "users-v1"},
        {"path": "/api/v1/:thing", "module": "v1-thing"},
        {"path": "/api/v1/users", "module": "users-post", "methods": ["POST"]},
        {"path": "/api/v1/users", "module": "users-tenant", "host": "tenant.example.com"},
        {"path": "/api/v1/users", "module": "users-wild", "host": "*.example.com"},
    )
    assert target(t, "/api/v1/users", host="other.org") == "users-v1"
    assert target(t, "/api/v1/users", host="other.org", method="POST") == "users-post"
    assert target(t, "/api/v1/users", host="tenant.example.com") == "users-tenant"
    assert target(t, "/api/v1/users", host="TENANT.example.com:8787") == "users-tenant"
    assert target(t, "/api/v1/users", host="a.example.com") == "users-wild"
    assert target(t, "/api/v1/users", host="example.com") == "users-v1"  # *.x does not match x itself
    assert target(t, "/api/v2/users", host="o") == "users-any{'version': 'v2'}"
    assert target(t, "/api/v1/other", host="o") == "v1-thing{'thing': 'other'}"
    assert target(t, "/api/x", host="o") == "api"
    assert target(t, "/anything/else", host="o") == "catchall"


def test_methods_filter() -> None:
    t = table({"path": "/w", "module": "w", "methods": ["get", "HEAD"]})
    assert target(t, "/w", method="HEAD") == "w"
    assert target(t, "/w", method="POST") is None


@pytest.mark.parametrize(
    "routes",
    [
        [{"path": "/a", "module": "x"}, {"path": "/a/", "module": "y"}],
        [{"path": "/u/:id", "module": "x"}, {"path": "/u/:name", "module": "y"}],
        [{"path": "/s/...", "module": "x"}, {"path": "/s/...", "module": "y"}],
        [{"path": "/a", "module": "x", "methods": ["GET", "PUT"]}, {"path": "/a", "module": "y", "methods": ["PUT"]}],
        [{"path": "/a", "module": "x", "host": "Ex.com"}, {"path": "/a", "module": "y", "host": "ex.com"}],
    ],
)
def test_conflicts_name_both_routes(routes: list[dict[str, object]]) -> None:
    with pytest.raises(RouteConflict) as info:
        RouteTable.build(routes)
    assert info.value.status == 409 and info.value.to_dict()["routes"] == [0, 1]
    assert "route 1" in info.value.detail and "route 0" in info.value.detail


def test_not_conflicts() -> None:
    table(
        {"path": "/a", "module": "x", "methods": ["GET"]},
        {"path": "/a", "module": "y", "methods": ["POST"]},
        {"path": "/a", "module": "z"},
        {"path": "/a", "module": "h", "host": "h.com"},
        {"path": "/a/...", "module": "p"},
    )


@pytest.mark.parametrize(
    "route, match",
    [
        ({"path": "a", "module": "x"}, "must start with"),
        ({"path": "/a?b", "module": "x"}, "may not contain"),
        ({"path": "/a/.../b", "module": "x"}, "only end"),
        ({"path": "/a//b", "module": "x"}, "empty segment"),
        ({"path": "/:1x", "module": "x"}, "bad parameter"),
        ({"path": "/:a/:a", "module": "x"}, "repeated"),
        ({"path": "/a", "module": "../x"}, "invalid module name"),
        ({"path": "/a"}, "missing module"),
        ({"path": "/a", "module": "x", "methods": "GET"}, "must be a list"),
        ({"path": "/a", "module": "x", "methods": []}, "non-empty"),
        ({"path": "/a", "module": "x", "methods": ["G E T"]}, "HTTP methods"),
        ({"path": "/a", "module": "x", "host": "a/b"}, "route host"),
        ({"path": "/a", "module": "x", "host": "*.*.com"}, "route host"),
        ({"path": "/a", "module": "x", "cache": "false"}, "route cache must be true or false"),
    ],
)
def test_invalid_routes(route: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidConfig, match=match) as info:
        RouteTable.build([{"path": "/ok", "module": "ok"}, route])
    assert info.value.detail.startswith("route 1:")


def test_round_trip() -> None:
    routes = [{"host": "*", "path": "/a/:b", "module": "m", "methods": ["GET"], "cache": False}]
    assert RouteTable.build(routes).to_list() == routes


# --- methods and field types: every bad input is an InvalidConfig that names it ---------------------


def test_methods_are_standard_and_upper_cased() -> None:
    t = table({"path": "/w", "module": "w", "methods": ["get", "Patch", "OPTIONS"]})
    assert t.routes[0].methods == frozenset({"GET", "PATCH", "OPTIONS"})
    assert t.to_list()[0]["methods"] == ["GET", "OPTIONS", "PATCH"]
    assert Route("/w", "w", methods=frozenset({"head"})).methods == frozenset({"HEAD"})
    assert HTTP_METHODS == {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


@pytest.mark.parametrize(
    "methods, named",
    [
        (["GTE"], "'GTE'"),
        (["GET", "PROPFIND"], "'PROPFIND'"),
        ([1], "1"),
        ([None], "None"),
        ([["GET"]], "['GET']"),
        ([{"GET": 1}], "{'GET': 1}"),
        ([True], "True"),
        ([" GET"], "' GET'"),
        (["GET\n"], "'GET\\n'"),
        ({"GET": True}, "{'GET': True}"),
        (b"GET", "b'GET'"),
        (7, "7"),
        (["G" * 10_000], "'GGGG"),
    ],
)
def test_bad_methods_name_the_value(methods: object, named: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        RouteTable.build([{"path": "/ok", "module": "ok"}, {"path": "/a", "module": "x", "methods": methods}])
    assert info.value.detail.startswith("route 1: route methods") and named in info.value.detail
    assert len(info.value.detail) < 300  # a huge value is quoted, not copied


@pytest.mark.parametrize(
    "route, match",
    [
        ({"path": 5, "module": "x"}, "route path must be a string: 5"),
        ({"path": None, "module": "x"}, "route path must be a string: None"),
        ({"path": ["/a"], "module": "x"}, r"route path must be a string: \['/a'\]"),
        ({"path": "/a", "module": 5}, "route module must be a module name"),
        ({"path": "/a", "module": ["x"]}, "route module must be a module name"),
        ({"path": "/a", "module": "x" * 100}, "invalid module name"),
        ({"path": "/a", "module": "X"}, "invalid module name 'X'"),
        ({"path": "/a", "module": "x", "host": 5}, "route host must be"),
        ({"path": "/a", "module": "x", "host": None}, "route host must be"),
        ({"path": "/a", "module": "x", "host": ["a.com"]}, "route host must be"),
        ({"path": "/a", "module": "x", "host": "a" * 64 + ".com"}, "route host must be"),
        ({"path": "/a", "module": "x", "host": ".".join(["abcdefghi"] * 26)}, "route host must be"),
        ({"path": "/a", "module": "x", "host": "*:8080"}, "wildcard route host takes no port"),
        ({"path": "/a", "module": "x", "host": "*.a.com:8080"}, "wildcard route host takes no port"),
        ({"path": "/a", "module": "x", "host": "a.com:0"}, "port must be 1-65535"),
        ({"path": "/a", "module": "x", "host": "a.com:70000"}, "port must be 1-65535"),
        ({"path": "/a", "module": "x", "host": "a.com:123456"}, "route host must be"),
        ({"path": "/a\x7f", "module": "x"}, "control characters"),
        ({"path": "/a", "module": "x", "cache": None}, "route cache must be true or false: None"),
        ({"path": "/a", "module": "x", "cache": 1}, "route cache must be true or false: 1"),
        ({"path": "/a", "module": "x", "origin": {"url": "x"}}, "route option 'origin' must be a string, number"),
        ({"path": "/a", "module": "x", "origin": ["x"]}, "route option 'origin' must be"),
        ({"path": "/a", "module": "x", "weight": float("nan")}, "route option 'weight' must be"),
        ({"path": "/a", "module": "x", "weight": float("inf")}, "route option 'weight' must be"),
        ({"path": "/a", "module": "x", "": 1}, "bad route option name: ''"),
        ({"path": "/a", "module": "x", 5: 1}, "route keys must be strings: 5"),
        ({"path": "/a", "module": "x", "methods": None, "host": "*", None: 1}, "route keys must be strings: None"),
        (["/a", "x"], "a route must be an object, got list"),
        ("/a", "a route must be an object, got str"),
        (None, "a route must be an object, got NoneType"),
    ],
)
def test_wrong_types_are_invalid_config(route: object, match: str) -> None:
    with pytest.raises(InvalidConfig, match=match) as info:
        RouteTable.build([{"path": "/ok", "module": "ok"}, route])  # type: ignore[list-item]
    assert info.value.detail.startswith("route 1:") and info.value.to_dict()["route"] == 1


@pytest.mark.parametrize("routes", ["routes", b"x", {"path": "/a"}, 5, None])
def test_a_table_must_be_a_list(routes: object) -> None:
    with pytest.raises(InvalidConfig, match="routes must be a list"):
        RouteTable.build(routes)  # type: ignore[arg-type]


def test_unknown_keys_pass_through_as_json_scalars() -> None:
    raw = {"host": "*", "path": "/a", "module": "m", "cache": False, "origin": "https://o.example",
           "weight": 1.5, "retries": 3, "note": None}
    t = RouteTable.build([raw])
    assert t.routes[0].options == {"cache": False, "origin": "https://o.example", "weight": 1.5, "retries": 3,
                                   "note": None}
    assert t.to_list() == [raw]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": "GET"}, "must be a list"),
        ({"methods": [1]}, "HTTP methods"),
        ({"options": {"path": "/b"}}, "bad route option name: 'path'"),
        ({"options": ["cache"]}, "route options must be a mapping"),
        ({"options": {"cache": "no"}}, "route cache must be true or false"),
    ],
)
def test_route_constructor_validates_too(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        Route("/a", "m", **kwargs)


class _Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")


_ODD: list[object] = [None, True, 0, -1, 1.5, float("nan"), "", "GET", "/a", "*", "a.com", "/a/:b/...", [], ["GET"],
                      [None], [[]], {}, {"a": 1}, b"/a", ("GET",), frozenset({"GET"}), _Hostile(), [_Hostile()],
                      "x" * 5000, "/" + "a/" * 3000, "\x00", "é", "/é", "*.", "..."]


def test_any_input_raises_only_isolate_errors() -> None:
    rng = random.Random(7)
    keys = ["path", "module", "host", "methods", "cache", "origin", "x"]
    for _ in range(3000):
        raw: dict[str, object] = {"path": "/a", "module": "m"}
        for key in rng.sample(keys, rng.randint(1, 4)):
            if rng.random() < 0.2:
                raw.pop(key, None)
            else:
                raw[key] = rng.choice(_ODD)
        try:
            t = RouteTable.build([raw])
        except IsolateError:
            continue
        json.dumps(t.to_list())  # whatever is accepted can be stored and served as JSON
        t.match("a.com", "/a", "GET")


# --- allowed(): what a 405 answers with -------------------------------------------------------------


def test_allowed_methods_for_a_path() -> None:
    t = table(
        {"path": "/users/:id", "module": "read", "methods": ["GET", "HEAD"]},
        {"path": "/users/:id", "module": "write", "methods": ["PUT"]},
        {"path": "/users/me", "module": "me", "methods": ["POST"]},
        {"path": "/users/me", "module": "tenant", "methods": ["DELETE"], "host": "t.example.com"},
        {"path": "/open", "module": "open"},
        {"path": "/files/...", "module": "files", "methods": ["GET"], "host": "*.example.com"},
    )
    assert t.allowed("example.com", "/users/7") == frozenset({"GET", "HEAD", "PUT"})
    assert t.allowed("example.com", "/users/me/") == frozenset({"GET", "HEAD", "PUT", "POST"})
    assert t.allowed("T.example.com:8080", "/users/me") == frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
    assert t.allowed("example.com", "/open") == HTTP_METHODS  # takes every method: a 405 is impossible
    assert t.allowed("a.example.com", "/files/x/y") == frozenset({"GET"})
    assert t.allowed("example.com", "/files/x") is None  # the wildcard host does not match
    assert t.allowed("example.com", "/users") is None
    assert t.allowed("example.com", "/nowhere") is None
    assert t.match("example.com", "/users/7", "POST") is None  # what the edge asks allowed() after


# --- shadowed(): which routes win over a route for some of its requests ----------------------------


def shadows(t: RouteTable, index: int) -> list[str]:
    return [f"{r.host}{r.path}" + (f" {','.join(sorted(r.methods))}" if r.methods else "")
            for r in t.shadowed(t.routes[index])]


def test_shadowed_by_more_specific_routes() -> None:
    t = table(
        {"path": "/users/:id", "module": "user"},  # 0
        {"path": "/users/me", "module": "me"},  # 1
        {"path": "/users/...", "module": "users", "host": "api.example.com"},  # 2
        {"path": "/users/:id", "module": "get", "methods": ["GET"]},  # 3
        {"path": "/users/:id/posts", "module": "posts"},  # 4
        {"path": "/users/me", "module": "other-host", "host": "other.org"},  # 5
        {"path": "/...", "module": "all"},  # 6
        {"path": "/a/:x", "module": "ax"},  # 7
        {"path": "/:y/b", "module": "yb"},  # 8: ties with 7 (same precedence), listed later
        {"path": "/users/:id", "module": "post", "methods": ["POST"], "host": "*.example.com"},  # 9
    )
    api, other, post = "api.example.com/users/...", "other.org/users/me", "*.example.com/users/:id POST"
    assert shadows(t, 0) == [api, other, post, "*/users/me", "*/users/:id GET"]
    assert shadows(t, 3) == [api, other, "*/users/me"]  # route 9 takes only POST
    assert shadows(t, 1) == [api, other, post]  # a better host wins whatever its path kind
    # /a/:x and /:y/b tie on precedence: for /a/b the one listed first wins.
    assert shadows(t, 8) == [api, post, "*/users/:id GET", "*/users/:id", "*/a/:x"] and shadows(t, 7) == []
    assert shadows(t, 9) == [api]
    assert shadows(t, 4) == [api]
    assert shadows(t, 6) == [api, other, post, "*/users/me", "*/users/:id/posts", "*/users/:id GET", "*/users/:id",
                             "*/a/:x", "*/:y/b"]
    assert shadows(t, 2) == []
    # A route not in the table is judged as if appended: an equal-precedence route already there wins.
    assert [r.module for r in t.shadowed(Route("/users/:id", "new"))] == ["users", "other-host", "post", "me", "get",
                                                                          "user", "yb"]
    assert [r.module for r in t.shadowed(Route("/users/:id", "new", host="a.example.com"))] == []
    assert [r.module for r in t.shadowed(Route("/users/:id", "new", host="*.api.example.com"))] == []
    assert [r.module for r in t.shadowed(Route("/users/:id", "new", host="*.example.com"))] == ["users", "post"]


def test_shadowed_examples() -> None:
    t = table(
        {"path": "/users/:id", "module": "user"},
        {"path": "/users/me", "module": "me"},
        {"path": "/a/...", "module": "a"},
        {"path": "/a/b", "module": "ab"},
        {"path": "/a/b", "module": "ab-get", "methods": ["GET"]},
        {"path": "/x/:id", "module": "x", "methods": ["POST"]},
        {"path": "/x/:id", "module": "x-get", "methods": ["GET"]},
    )
    assert shadows(t, 0) == ["*/users/me"]
    assert shadows(t, 1) == []
    assert shadows(t, 2) == ["*/a/b GET", "*/a/b"]
    assert shadows(t, 3) == ["*/a/b GET"]
    assert shadows(t, 5) == [] and shadows(t, 6) == []  # disjoint methods never overlap


# --- the index against a brute-force reference on random tables --------------------------------------

_HOSTS = ["*", "*", "*", "a.com", "a.com:8080", "b.a.com", "*.a.com", "*.b.a.com", "*.com", "x.org"]
_SEGMENTS = ["a", "b", "c", ":p", ":q", ":r"]
_METHOD_SETS: list[list[str] | None] = [None, None, ["GET"], ["POST"], ["GET", "HEAD"], ["PUT", "POST"]]
# Every overlap between two of those patterns has a witness among these (a host per pattern, any
# path over {a, b, c, v} as long as the longest pattern), so the references below are exhaustive.
_REQUEST_HOSTS = ["a.com", "A.com:8080", "a.com:9", "b.a.com", "b.a.com:8080", "c.b.a.com", "z.com", "x.org",
                  "q.net", ".a.com", "a..a.com", "[::1]:8080"]
_REQUEST_PATHS = ["/" + "/".join(p) for n in range(4) for p in itertools.product("abcv", repeat=n)]
_ODD_PATHS = ["/a/", "/a//b", "//", "/a/b/c/", "/v/v/v/v/v", "", "*", "/:p", "/a/..."]


def random_route(rng: random.Random) -> Route:
    segments = []
    for _ in range(rng.randint(0, 3)):
        segment = rng.choice(_SEGMENTS)
        segments.append(segment if segment not in segments else rng.choice("abc"))
    path = "/" + "/".join(segments + (["..."] if rng.random() < 0.3 else []))
    methods = rng.choice(_METHOD_SETS)
    return Route(path, "m", host=rng.choice(_HOSTS), methods=None if methods is None else frozenset(methods))


def host_ok(pattern: str, host: str) -> bool:
    host = host.lower()
    bare = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return bare.endswith(pattern[1:]) and len(bare) > len(pattern) - 1
    return pattern in (host, bare)


def path_params(route: Route, path: str) -> dict[str, str] | None:
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()
    if len(parts) < len(route.segments) or (not route.prefix and len(parts) != len(route.segments)):
        return None
    params = {}
    for segment, part in zip(route.segments, parts, strict=False):
        if segment.startswith(":") and part:
            params[segment[1:]] = part
        elif segment != part:
            return None
    return params


def by_precedence(routes: tuple[Route, ...]) -> list[tuple[int, Route]]:
    return sorted(enumerate(routes), key=lambda pair: (pair[1].rank, pair[0]))


def reference_match(routes: tuple[Route, ...], host: str, path: str, method: str) -> tuple[int, dict[str, str]] | None:
    for index, route in by_precedence(routes):
        if host_ok(route.host, host) and (route.methods is None or method in route.methods):
            params = path_params(route, path)
            if params is not None:
                return index, params
    return None


def reference_allowed(routes: tuple[Route, ...], host: str, path: str) -> frozenset[str] | None:
    matching = [r for r in routes if host_ok(r.host, host) and path_params(r, path) is not None]
    if not matching:
        return None
    if any(r.methods is None for r in matching):
        return HTTP_METHODS
    return frozenset().union(*(r.methods or () for r in matching))


def requests_of(route: Route) -> tuple[set[str], set[str], frozenset[str]]:
    """The witness requests a route matches, as hosts × paths × methods."""
    return ({h for h in _REQUEST_HOSTS if host_ok(route.host, h)},
            {p for p in _REQUEST_PATHS if path_params(route, p) is not None},
            route.methods or HTTP_METHODS)


def reference_shadowed(routes: tuple[Route, ...], requests: list[tuple[set[str], set[str], frozenset[str]]],
                       route: Route, position: int) -> list[Route]:
    mine = requests_of(route)
    return [other for index, other in by_precedence(routes)
            if (other.rank, index) < (route.rank, position) and all(a & b for a, b in zip(mine, requests[index],
                                                                                          strict=True))]


def random_tables(seed: int, count: int) -> Iterator[tuple[random.Random, tuple[Route, ...]]]:
    rng = random.Random(seed)
    for round_ in range(count):
        routes = tuple(random_route(rng) for _ in range(rng.randint(1, 30)))
        if round_ % 2:
            yield rng, routes  # unchecked, duplicates and all: the index still agrees with the reference
            continue
        while True:  # a valid table: drop the later route of each conflict
            try:
                yield rng, RouteTable.build(routes).routes
                break
            except RouteConflict as exc:
                drop = exc.extra["routes"][1]
                routes = routes[:drop] + routes[drop + 1:]


def test_match_and_allowed_agree_with_brute_force() -> None:
    for rng, routes in random_tables(seed=2024, count=300):
        t = RouteTable(routes)
        for _ in range(40):
            host = rng.choice(_REQUEST_HOSTS)
            path = rng.choice(_ODD_PATHS) if rng.random() < 0.1 else rng.choice(_REQUEST_PATHS)
            path += "/" if rng.random() < 0.1 else ""
            method = rng.choice(["GET", "HEAD", "POST", "PUT", "DELETE", "FOO"])
            got = t.match(host, path, method)
            expected = reference_match(routes, host, path, method)
            assert (None if got is None else (routes.index(got.route), got.params)) == expected, (host, path, method)
            if expected is not None:
                assert got is not None and got.route is routes[expected[0]]
            assert t.allowed(host, path) == reference_allowed(routes, host, path), (host, path)


def test_shadowed_agrees_with_brute_force() -> None:
    for rng, routes in random_tables(seed=99, count=150):
        t = RouteTable(routes)
        requests = [requests_of(route) for route in routes]
        for index, route in enumerate(routes):
            assert t.shadowed(route) == reference_shadowed(routes, requests, route, index), (index, route)
        outsider = random_route(rng)  # an equal route in the table stands for it, else it comes last
        position = next((index for index, route in enumerate(routes) if route == outsider), len(routes))
        assert t.shadowed(outsider) == reference_shadowed(routes, requests, outsider, position)
