"""The route table: patterns, precedence, conflicts."""

from __future__ import annotations

import pytest

from isolate.errors import InvalidConfig, RouteConflict
from isolate.routing import RouteTable


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
