"""The route table: host + path pattern + methods → module, built and validated whole, then immutable.

Patterns:
    host    "*" (any), "example.com" (exact, case-insensitive; "example.com:8080" only on that port),
            "*.example.com" (any subdomain; wildcards take no port)
    path    "/hello" (exact), "/users/:id" (a `:param` matches one segment),
            "/static/..." (prefix: "/static" and everything below it; may follow `:param`s)
    methods a list of standard HTTP methods (HTTP_METHODS, any case), or absent for every method
    other   any further key is a route option (e.g. "cache": true), kept as given: a JSON scalar

Precedence when several routes match (the most specific wins), compared in this order:
    1. host: exact, then wildcard (longer suffix first), then any
    2. path: exact, then `:param` patterns, then prefix patterns; within a kind, more literal
       segments first, then more segments
    3. methods: a route that lists methods before one that takes every method
Routes that still tie and both match (`/a/:x` and `/:y/b` for "/a/b") go to the one listed first.
Two routes of the same shape (host, and path with parameters unnamed) that share a method are a
conflict, rejected with both named.

Index: routes are grouped by host (exact hosts in a dict, wildcards in a dict by suffix that a
request's host is looked up in suffix by suffix, then any host) and, within a host, kept in a
segment trie (a literal child per segment value, one `:param` child, prefix routes on the node where
their `...` starts). A lookup walks only the trie nodes that agree with the request's path, so its
cost follows the path and host, not the size of the table; building is one sort and one insert per
route.
"""

from __future__ import annotations

import math
import re
import reprlib
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidConfig, InvalidName, RouteConflict
from ..registry import NAME_PATTERN, validate_name

HTTP_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
"""The methods a route may list (RFC 9110 and PATCH); a request with another method can only
match a route that lists none."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # bounded labels also keep the match linear
_HOST = re.compile(rf"(\*|(?:\*\.)?{_LABEL}(?:\.{_LABEL})*)(?::(\d{{1,5}}))?")
_MAX_HOST = 253  # DNS limit on a whole name
_BAD_PATH = re.compile("[?# \x00-\x1f\x7f\ud800-\udfff]")  # surrogates: no UTF-8 file or answer holds them
_SURROGATE = re.compile("[\ud800-\udfff]")
_PARAM = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")
_WILDCARD = "..."
_FIELDS = frozenset({"host", "path", "module", "methods"})
_SCALARS = (str, bool, int, float, type(None))

# Error messages quote what they reject; a bounded repr keeps a hostile value from making them huge.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def _show(value: object) -> str:
    try:
        return _REPR.repr(value)
    except Exception:  # a hostile __repr__ must not escape as anything but InvalidConfig
        return f"<{type(value).__name__}>"


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
        segments, prefix, params = _parse_path(self.path)
        object.__setattr__(self, "host", _check_host(self.host))
        if not isinstance(self.module, str):
            raise InvalidConfig(f"route module must be a module name (a string): {_show(self.module)}")
        try:
            validate_name(self.module)
        except InvalidName:
            raise InvalidConfig(f"invalid module name {_show(self.module)}: names match {NAME_PATTERN}",
                                pattern=NAME_PATTERN) from None
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "params", params)
        if self.methods is not None:
            object.__setattr__(self, "methods", _check_methods(self.methods))
        _check_options(self.options)
        object.__setattr__(self, "rank", self.precedence())

    @property
    def shape(self) -> tuple[str, tuple[str, ...], bool]:
        """What two routes must share to be ambiguous: host, segments with params unnamed, prefix."""
        segments = tuple(":" if s[0] == ":" else s for s in self.segments) if self.params else self.segments
        return self.host, segments, self.prefix

    def precedence(self) -> tuple[int, ...]:
        """Sort key: smaller is more specific (see the module docstring)."""
        if self.host == "*":
            host_rank, host_len = 2, 0
        elif self.host.startswith("*."):
            host_rank, host_len = 1, len(self.host)
        else:
            host_rank, host_len = 0, len(self.host)
        kind = 2 if self.prefix else (1 if self.params else 0)
        literals = len(self.segments) - len(self.params)  # each parameter is one segment
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
        for key in raw:
            if not isinstance(key, str):
                raise InvalidConfig(f"route keys must be strings: {_show(key)}")
        missing = {"path", "module"} - set(raw)
        if missing:
            raise InvalidConfig(f"route is missing {', '.join(sorted(missing))}: {_show(dict(raw))}")
        methods = raw.get("methods")
        if methods is not None and not isinstance(methods, list | tuple):
            raise InvalidConfig(f"route methods must be a list: {_show(methods)}")
        return cls(
            path=raw["path"],
            module=raw["module"],
            host=raw.get("host", "*"),
            methods=None if methods is None else _check_methods(methods),
            options={k: v for k, v in raw.items() if k not in _FIELDS},
        )


def _check_host(host: object) -> str:
    if isinstance(host, str):
        host = host.lower()
        matched = _HOST.fullmatch(host)
        if matched is not None and len(matched[1]) <= _MAX_HOST:
            if matched[2] is not None and matched[1].startswith("*"):
                raise InvalidConfig(f"a wildcard route host takes no port: {_show(host)}")
            if matched[2] is not None and not 0 < int(matched[2]) < 65536:
                raise InvalidConfig(f"route host port must be 1-65535: {_show(host)}")
            return host
    raise InvalidConfig(f"route host must be '*', 'name.example' or '*.example': {_show(host)}")


def _parse_path(path: object) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    """Segments (without a final `...`), whether it is a prefix, and the parameter names."""
    if not isinstance(path, str):
        raise InvalidConfig(f"route path must be a string: {_show(path)}")
    if not path.startswith("/"):
        raise InvalidConfig(f"route path must start with '/': {_show(path)}")
    if _BAD_PATH.search(path):
        raise InvalidConfig(f"route path may not contain '?', '#', spaces, control characters or unpaired "
                            f"surrogates: {_show(path)}")
    parts = path.split("/")[1:]
    if ":" not in path and "//" not in path and _WILDCARD not in path:  # the common all-literal path
        if parts[-1] == "":
            parts.pop()
        return tuple(parts), False, ()
    prefix = bool(parts) and parts[-1] == _WILDCARD
    if prefix:
        parts.pop()
    if parts and parts[-1] == "":
        parts.pop()  # "/a/" is "/a"
    params = []
    for part in parts:
        if part == _WILDCARD:
            raise InvalidConfig(f"'...' may only end a route path: {_show(path)}")
        if part.startswith(":"):
            if not _PARAM.fullmatch(part):
                raise InvalidConfig(f"bad parameter {_show(part)} in {_show(path)}: use :name")
            params.append(part[1:])
        elif part == "":
            raise InvalidConfig(f"empty segment in route path {_show(path)}")
    if len(set(params)) != len(params):
        raise InvalidConfig(f"repeated parameter name in {_show(path)}")
    return tuple(parts), prefix, tuple(params)


def _check_methods(methods: object) -> frozenset[str]:
    """Upper-cased standard methods; any other value is named in the error."""
    if isinstance(methods, str | bytes) or not isinstance(methods, Sequence | Set):
        raise InvalidConfig(f"route methods must be a list: {_show(methods)}")
    checked = set()
    for method in methods:
        upper = method.upper() if isinstance(method, str) else None
        if upper not in HTTP_METHODS:
            raise InvalidConfig(f"route methods must be HTTP methods ({', '.join(sorted(HTTP_METHODS))}), "
                                f"not {_show(method)}")
        checked.add(upper)
    if not checked:
        raise InvalidConfig("route methods must be a non-empty list of HTTP methods (leave it out for every method)")
    return frozenset(checked)


def _check_options(options: object) -> None:
    # Unknown keys pass through (options added later, such as `origin`, need no change here), but
    # only as JSON scalars: the table is stored and served as JSON, and callers read values plainly.
    if not isinstance(options, Mapping):
        raise InvalidConfig(f"route options must be a mapping: {_show(options)}")
    for key, value in options.items():
        if not isinstance(key, str) or not key or key in _FIELDS or _SURROGATE.search(key):
            raise InvalidConfig(f"bad route option name: {_show(key)}")
        if not isinstance(value, _SCALARS) or (isinstance(value, float) and not math.isfinite(value)) \
                or (isinstance(value, str) and _SURROGATE.search(value)):
            raise InvalidConfig(f"route option {_show(key)} must be a string, number, boolean or null: {_show(value)}")
    if not isinstance(options.get("cache", True), bool):
        raise InvalidConfig(f"route cache must be true or false: {_show(options['cache'])}")


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str]


_Key = tuple[int, ...]  # a route's rank followed by its position in the table: total and unique
_Entry = tuple[_Key, Route]


class _Trie:
    """Every host's segment trie, flat: a node is an int, a literal edge a "node/segment" dict key.

    Strings and ints are not containers, so building allocates almost nothing for the garbage
    collector to walk; with a node object holding a dict and two lists, full collections triggered
    by those allocations cost more than the rest of a 50,000-route build.
    """

    __slots__ = ("edges", "param", "shallowest", "ends", "prefixes", "literal_paths", "_children")

    def __init__(self) -> None:
        self.edges: dict[str, int] = {}
        self.param: list[int] = []  # the `:param` child of each node, or -1
        self.shallowest: list[int] = []  # depth of the shallowest route under each node: prunes overlaps
        self.ends: dict[int, list[_Entry]] = {}  # routes whose path ends at a node, best first
        self.prefixes: dict[int, list[_Entry]] = {}  # prefix routes whose `...` starts at a node, best first
        # The `ends` of all-literal paths again, by "root/path": most requests hit one, with one lookup.
        self.literal_paths: dict[str, list[_Entry]] = {}
        self._children: dict[int, list[int]] | None = None  # literal children, only for overlaps

    def node(self) -> int:
        self.param.append(-1)
        self.shallowest.append(sys.maxsize)
        return len(self.param) - 1

    def add(self, root: int, key: _Key, route: Route) -> None:
        """Insert one route; inserting best first keeps every node's lists in precedence order."""
        depth = len(route.segments)
        node = root
        edges, param, shallowest = self.edges, self.param, self.shallowest
        if depth < shallowest[node]:
            shallowest[node] = depth
        for segment in route.segments:
            if segment[0] == ":":
                child = param[node]
                if child < 0:
                    child = param[node] = self.node()
            else:
                edge = f"{node}/{segment}"
                child = edges.get(edge, -1)
                if child < 0:
                    child = edges[edge] = self.node()
            node = child
            if depth < shallowest[node]:
                shallowest[node] = depth
        if route.prefix:
            self.prefixes.setdefault(node, []).append((key, route))
            return
        ends = self.ends.get(node)
        if ends is None:
            ends = self.ends[node] = []
            if not route.params:
                self.literal_paths[f"{root}/{'/'.join(route.segments)}"] = ends
        ends.append((key, route))

    def best(self, root: int, parts: list[str], method: str) -> Route | None:
        """The best route under one host for a path and method: depth first, literal edges first."""
        edges, param, ends, prefixes = self.edges, self.param, self.ends, self.prefixes
        size = len(parts)
        best: _Entry | None = None
        kind, literals = 3, 0  # of the best so far, for pruning
        stack: list[tuple[int, int, int, bool]] = [(root, 0, 0, False)]
        while stack:
            node, depth, matched, via_param = stack.pop()
            # Past a `:param` only `:param` (kind 1) and prefix routes remain; a branch that cannot
            # reach as many literal segments as the best so far cannot win.
            if via_param and (kind == 0 or (kind == 1 and matched + size - depth < literals)):
                continue
            if kind >= 2 and node in prefixes:
                entry = _first(prefixes[node], method)
                if entry is not None and (best is None or entry[0] < best[0]):
                    best, kind = entry, 2
            if depth == size:
                if node in ends:
                    entry = _first(ends[node], method)
                    if entry is not None and (best is None or entry[0] < best[0]):
                        best, kind, literals = entry, entry[0][2], matched
                continue
            part = parts[depth]
            child = param[node]
            if child >= 0 and part:
                stack.append((child, depth + 1, matched, True))
            child = edges.get(f"{node}/{part}", -1)
            if child >= 0:
                stack.append((child, depth + 1, matched + 1, via_param))
        return None if best is None else best[1]

    def matching(self, root: int, parts: list[str]) -> Iterator[_Entry]:
        """Every route under one host whose path matches, whatever its methods."""
        size = len(parts)
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            yield from self.prefixes.get(node, ())
            if depth == size:
                yield from self.ends.get(node, ())
                continue
            part = parts[depth]
            if self.param[node] >= 0 and part:
                stack.append((self.param[node], depth + 1))
            child = self.edges.get(f"{node}/{part}", -1)
            if child >= 0:
                stack.append((child, depth + 1))

    def overlaps(self, root: int, route: Route) -> Iterator[_Entry]:
        """Every route under one host whose path pattern matches some path that `route`'s matches."""
        if self._children is None:
            children: dict[int, list[int]] = {}
            for edge, child in self.edges.items():
                children.setdefault(int(edge.partition("/")[0]), []).append(child)
            self._children = children  # a benign race: two threads would build the same index
        segments, size, open_ended = route.segments, len(route.segments), route.prefix
        stack = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            yield from self.prefixes.get(node, ())  # agrees so far, and `...` takes whatever follows
            if depth >= size:
                if depth == size or open_ended:
                    yield from self.ends.get(node, ())
                if open_ended:  # past its own segments a prefix route matches every continuation
                    stack.extend((child, depth + 1) for child in self._children.get(node, ()))
                    if self.param[node] >= 0:
                        stack.append((self.param[node], depth + 1))
                continue
            segment = segments[depth]
            if segment[0] == ":":
                candidates = list(self._children.get(node, ()))
            else:
                literal = self.edges.get(f"{node}/{segment}", -1)
                candidates = [literal] if literal >= 0 else []
            if self.param[node] >= 0:
                candidates.append(self.param[node])
            stack.extend((child, depth + 1) for child in candidates
                         if open_ended or self.shallowest[child] <= size)


class RouteTable:
    """Immutable once built; `build` validates the whole table and rejects conflicts."""

    __slots__ = ("routes", "_trie", "_exact", "_wild", "_wild_longest", "_any", "_any_only", "_ported")

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self._trie = _Trie()
        self._exact: dict[str, int] = {}  # root by host, port included when the route names one
        self._wild: dict[str, int] = {}  # root by suffix: "*.example.com" under ".example.com"
        self._any = -1
        self._ported: dict[str, list[str]] = {}  # "a.com" → ["a.com:8080", ...], for overlaps
        for key, route in sorted((route.rank + (index,), route) for index, route in enumerate(routes)):
            self._trie.add(self._root(route.host), key, route)
        self._wild_longest = max(map(len, self._wild), default=0)
        # Most tables name no host: then every request's host leads to the same one root, or none.
        self._any_only = None if self._exact or self._wild else [self._any] if self._any >= 0 else []

    def _root(self, host: str) -> int:
        if host == "*":
            if self._any < 0:
                self._any = self._trie.node()
            return self._any
        table = self._wild if host.startswith("*.") else self._exact
        name = host[1:] if table is self._wild else host
        root = table.get(name, -1)
        if root < 0:
            root = table[name] = self._trie.node()
            if ":" in host:
                self._ported.setdefault(host.rsplit(":", 1)[0], []).append(host)
        return root

    @classmethod
    def build(cls, routes: Iterable[Route | Mapping[str, Any]]) -> RouteTable:
        if isinstance(routes, str | bytes | Mapping) or not isinstance(routes, Iterable):
            raise InvalidConfig(f"routes must be a list of route objects, got {type(routes).__name__}")
        built: list[Route] = []
        for index, raw in enumerate(routes):
            try:
                built.append(raw if isinstance(raw, Route) else Route.from_dict(raw))
            except InvalidConfig as exc:
                raise InvalidConfig(f"route {index}: {exc.detail}", route=index) from None
        # Which route claimed each (shape, method) (None: taking every method), so each route is
        # checked against the earlier ones in constant time.
        claimed: dict[tuple[tuple[str, tuple[str, ...], bool], str | None], int] = {}
        for index, route in enumerate(built):
            shape = route.shape
            keys = [(shape, None)] if route.methods is None else [(shape, method) for method in route.methods]
            clashes = [claimed[key] for key in keys if key in claimed]
            if clashes:
                other_index = min(clashes)
                other = built[other_index]
                raise RouteConflict(
                    f"route {index} ({route.host}{route.path}) conflicts with route {other_index} "
                    f"({other.host}{other.path}): both match the same requests",
                    routes=[other_index, index],
                )
            claimed.update(dict.fromkeys(keys, index))
        return cls(tuple(built))

    def to_list(self) -> list[dict[str, Any]]:
        return [route.to_dict() for route in self.routes]

    def match(self, host: str, path: str, method: str) -> Match | None:
        """The most specific route for a request, with its path parameters, or None."""
        trie = self._trie
        literal = path[:-1] if path[-1:] == "/" and len(path) > 1 else path  # "/a/" is "/a"
        exact = literal[:1] == "/" and path != "//"  # "//" is one empty segment, not "/"
        parts: list[str] | None = None
        # Host rank decides first, so the first host (best first) with any match holds the winner;
        # within a host an exact path is best, found without walking the trie.
        for root in self._any_only if self._any_only is not None else self._hosts(host):
            if exact:
                for _, route in trie.literal_paths.get(f"{root}{literal}", ()):
                    if route.methods is None or method in route.methods:
                        return Match(route, {})
            if parts is None:
                parts = _split(path)
            found = trie.best(root, parts, method)
            if found is not None:
                if not found.params:
                    return Match(found, {})
                return Match(found, {s[1:]: p for s, p in zip(found.segments, parts, strict=False) if s[0] == ":"})
        return None

    def allowed(self, host: str, path: str) -> frozenset[str] | None:
        """The methods some route for this host and path accepts, or None when none matches them.

        For a request whose method matched no route (the `Allow` of a 405). A route that lists no
        methods takes every method, so the answer is then all of HTTP_METHODS.
        """
        parts = _split(path)
        found: set[str] | None = None
        for root in self._hosts(host):
            for _, route in self._trie.matching(root, parts):
                if route.methods is None:
                    return HTTP_METHODS
                found = set(route.methods) if found is None else found | route.methods
        return None if found is None else frozenset(found)

    def shadowed(self, route: Route) -> list[Route]:
        """The routes that win over `route` for some of the requests it matches, best first.

        Such a route precedes it (better precedence, or equal and listed earlier) and overlaps it:
        some request matches both, by host, path and method. `/users/:id` is shadowed by `/users/me`
        and by `/users/...` on `api.example.com`; `/a` by `/a` with methods ["GET"] (for GET). A
        route not in this table (nor equal to one of its routes) is judged as if appended to it.

        Costs what the overlap walk visits, not the whole table, unless `route` takes any host or a
        wildcard one (then every host is tried); the first call also indexes the trie's edges once.
        """
        overlapping = [entry for root in self._overlapping_hosts(route.host)
                       for entry in self._trie.overlaps(root, route)]
        position = next((key[-1] for key, other in overlapping if other is route), None)
        if position is None:
            position = next((key[-1] for key, other in overlapping if other == route), len(self.routes))
        mine = route.rank + (position,)
        found = [(key, other) for key, other in overlapping
                 if key < mine and (route.methods is None or other.methods is None or route.methods & other.methods)]
        return [other for _, other in sorted(found, key=lambda entry: entry[0])]

    def _hosts(self, host: str) -> Iterator[int]:
        """The root of every host pattern that matches a request's host, best first."""
        if self._any_only is not None:
            yield from self._any_only
            return
        host = host.lower()
        bare = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
        root = self._exact.get(host, -1)
        if root >= 0:
            yield root
        if bare != host:
            root = self._exact.get(bare, -1)
            if root >= 0:
                yield root
        if self._wild:
            # Only suffixes as long as the longest wildcard's can match: a huge Host costs no more.
            dot = bare.find(".", max(1, len(bare) - self._wild_longest))
            while dot != -1:
                root = self._wild.get(bare[dot:], -1)
                if root >= 0:
                    yield root
                dot = bare.find(".", dot + 1)
        if self._any >= 0:
            yield self._any

    def _overlapping_hosts(self, host: str) -> Iterator[int]:
        """The root of every host pattern that matches some host `host` matches and ranks no lower."""
        if host == "*":
            yield from self._exact.values()
            yield from self._wild.values()
            if self._any >= 0:
                yield self._any
        elif host.startswith("*."):
            suffix = host[1:]
            for name, root in self._exact.items():
                bare = name.rsplit(":", 1)[0]
                if bare.endswith(suffix) and len(bare) > len(suffix):
                    yield root
            yield from (root for name, root in self._wild.items() if name.endswith(suffix))
        else:
            names = [host] if ":" in host else [host, *self._ported.get(host, ())]
            yield from (self._exact[name] for name in names if name in self._exact)


def _split(path: str) -> list[str]:
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()  # "/a/" matches like "/a", and "/" has no segments
    return parts


def _first(entries: list[_Entry], method: str) -> _Entry | None:
    for entry in entries:
        methods = entry[1].methods
        if methods is None or method in methods:
            return entry
    return None
