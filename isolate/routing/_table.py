"""The route table: host + path pattern + methods → module, built and validated whole, then immutable.

Patterns:
    host    "*" (any), "example.com" (exact, case-insensitive), "*.example.com" (any subdomain)
    path    "/hello" (exact), "/users/:id" (a `:param` matches one segment),
            "/static/..." (prefix: "/static" and everything below it; may follow `:param`s)
    methods a list such as ["GET", "HEAD"], or absent for every method

Precedence when several routes match (the most specific wins), compared in this order:
    1. host: exact, then wildcard (longer suffix first), then any
    2. path: exact, then `:param` patterns, then prefix patterns; within a kind, more literal
       segments first, then more segments
    3. methods: a route that lists methods before one that takes every method
Two routes that tie on all three and share a method are a conflict, rejected with both named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidConfig, InvalidName, RouteConflict
from ..registry import validate_name

_METHOD = re.compile(r"[A-Z]+")
_HOST = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)(:\d+)?")
_PARAM = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_WILDCARD = "..."


@dataclass(frozen=True, slots=True)
class Route:
    """One validated route; `options` carries per-route settings (e.g. caching) untouched."""

    path: str
    module: str
    host: str = "*"
    methods: frozenset[str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # derived at construction
    segments: tuple[str, ...] = field(init=False)
    prefix: bool = field(init=False)
    params: tuple[str, ...] = field(init=False)
    rank: tuple[int, ...] = field(init=False, compare=False)  # precedence(), computed once

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise InvalidConfig(f"route path must start with '/': {self.path!r}")
        if any(c in self.path for c in "?#\x00 ") or any(ord(c) < 32 for c in self.path):
            raise InvalidConfig(f"route path may not contain '?', '#', spaces or control characters: {self.path!r}")
        if not isinstance(self.host, str) or not _HOST.fullmatch(self.host.lower()):
            raise InvalidConfig(f"route host must be '*', 'name.example' or '*.example': {self.host!r}")
        object.__setattr__(self, "host", self.host.lower())
        try:
            validate_name(self.module)
        except InvalidName as exc:
            raise InvalidConfig(exc.detail) from None
        parts = [p for p in self.path.split("/")[1:]]
        prefix = bool(parts) and parts[-1] == _WILDCARD
        if prefix:
            parts = parts[:-1]
        if parts and parts[-1] == "":
            parts = parts[:-1]  # "/a/" is "/a"
        params = []
        for part in parts:
            if part == _WILDCARD:
                raise InvalidConfig(f"'...' may only end a route path: {self.path!r}")
            if part.startswith(":"):
                if not _PARAM.fullmatch(part):
                    raise InvalidConfig(f"bad parameter {part!r} in {self.path!r}: use :name")
                params.append(part[1:])
            elif part == "":
                raise InvalidConfig(f"empty segment in route path {self.path!r}")
        if len(set(params)) != len(params):
            raise InvalidConfig(f"repeated parameter name in {self.path!r}")
        object.__setattr__(self, "segments", tuple(parts))
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "params", tuple(params))
        if self.methods is not None:
            methods = frozenset(m.upper() for m in self.methods)
            if not methods or not all(isinstance(m, str) and _METHOD.fullmatch(m) for m in methods):
                raise InvalidConfig(f"route methods must be a non-empty list of HTTP methods: {self.methods!r}")
            object.__setattr__(self, "methods", methods)
        if not isinstance(self.options.get("cache", True), bool):
            raise InvalidConfig(f"route cache must be true or false: {self.options['cache']!r}")
        object.__setattr__(self, "rank", self.precedence())

    @property
    def shape(self) -> tuple[str, tuple[str, ...], bool]:
        """What two routes must share to be ambiguous: host, segments with params unnamed, prefix."""
        return self.host, tuple(":" if s.startswith(":") else s for s in self.segments), self.prefix

    def precedence(self) -> tuple[int, ...]:
        """Sort key: smaller is more specific (see the module docstring)."""
        if self.host == "*":
            host_rank, host_len = 2, 0
        elif self.host.startswith("*."):
            host_rank, host_len = 1, len(self.host)
        else:
            host_rank, host_len = 0, len(self.host)
        kind = 2 if self.prefix else (1 if self.params else 0)
        literals = sum(1 for s in self.segments if not s.startswith(":"))
        return (host_rank, -host_len, kind, -literals, -len(self.segments), 0 if self.methods else 1)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"host": self.host, "path": self.path, "module": self.module}
        if self.methods is not None:
            body["methods"] = sorted(self.methods)
        body.update(self.options)
        return body

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Route:
        if not isinstance(raw, Mapping):
            raise InvalidConfig(f"a route must be an object, got {type(raw).__name__}")
        known = {"host", "path", "module", "methods"}
        missing = {"path", "module"} - set(raw)
        if missing:
            raise InvalidConfig(f"route is missing {', '.join(sorted(missing))}: {dict(raw)!r}")
        methods = raw.get("methods")
        if methods is not None and (isinstance(methods, str) or not isinstance(methods, Sequence)):
            raise InvalidConfig(f"route methods must be a list: {methods!r}")
        return cls(
            path=raw["path"],
            module=raw["module"],
            host=raw.get("host", "*"),
            methods=frozenset(methods) if methods is not None else None,
            options={k: v for k, v in raw.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str]


class RouteTable:
    """Immutable once built; `build` validates the whole table and rejects conflicts."""

    __slots__ = ("routes", "_exact", "_patterns")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        ordered = sorted(routes, key=lambda route: route.rank)
        # Literal paths are looked up by path; only `:param` and prefix routes are scanned. Both
        # lists keep precedence order, so the better of their first matches is the overall best.
        self._exact: dict[str, list[Route]] = {}
        for route in ordered:
            if not route.params and not route.prefix:
                self._exact.setdefault("/" + "/".join(route.segments), []).append(route)
        self._patterns = [route for route in ordered if route.params or route.prefix]

    @classmethod
    def build(cls, routes: Iterable[Route | Mapping[str, Any]]) -> RouteTable:
        built: list[Route] = []
        for index, raw in enumerate(routes):
            try:
                built.append(raw if isinstance(raw, Route) else Route.from_dict(raw))
            except InvalidConfig as exc:
                raise InvalidConfig(f"route {index}: {exc.detail}", route=index) from None
        seen: dict[tuple[Any, ...], list[tuple[int, Route]]] = {}
        for index, route in enumerate(built):
            for other_index, other in seen.get(route.shape, []):
                if route.methods is None or other.methods is None:
                    overlap = route.methods is None and other.methods is None
                else:
                    overlap = bool(route.methods & other.methods)
                if overlap:
                    raise RouteConflict(
                        f"route {index} ({route.host}{route.path}) conflicts with route {other_index} "
                        f"({other.host}{other.path}): both match the same requests",
                        routes=[other_index, index],
                    )
            seen.setdefault(route.shape, []).append((index, route))
        return cls(tuple(built))

    def to_list(self) -> list[dict[str, Any]]:
        return [route.to_dict() for route in self.routes]

    def match(self, host: str, path: str, method: str) -> Match | None:
        """The most specific route for a request, with its path parameters, or None."""
        host = host.lower()
        bare_host = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
        parts = path.split("/")[1:]
        if parts and parts[-1] == "":
            parts.pop()  # "/a/" matches like "/a", and "/" has no segments
        exact: Match | None = None
        for route in self._exact.get("/" + "/".join(parts), ()):
            if _host_matches(route.host, host, bare_host) and (route.methods is None or method in route.methods):
                exact = Match(route, {})
                break
        for route in self._patterns:
            if exact is not None and route.rank >= exact.route.rank:
                break  # nothing later can beat the exact match
            if not _host_matches(route.host, host, bare_host):
                continue
            if route.methods is not None and method not in route.methods:
                continue
            params = _path_matches(route, parts)
            if params is not None:
                return Match(route, params)
        return exact


def _host_matches(pattern: str, host: str, bare_host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return bare_host.endswith(pattern[1:]) and len(bare_host) > len(pattern) - 1
    return pattern == host or pattern == bare_host


def _path_matches(route: Route, parts: list[str]) -> dict[str, str] | None:
    segments = route.segments
    if route.prefix:
        if len(parts) < len(segments):
            return None
    elif len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for segment, part in zip(segments, parts, strict=False):
        if segment.startswith(":"):
            if not part:
                return None
            params[segment[1:]] = part
        elif segment != part:
            return None
    return params
