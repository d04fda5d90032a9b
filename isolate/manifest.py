"""`isolate.toml`, the manifest: modules (a `.wasm` or `.wat` file), their limits and variables, and routes.

    [modules.hello]
    path = "samples/hello-wat/hello.wat"       # .wasm, .wat or a source directory to build; relative
    limits = { timeout = "200ms", memory = "64MiB" }
    variables = { greeting = "hi" }

    [[routes]]
    path = "/hello"
    module = "hello"
    methods = ["GET"]                          # optional; host = "*" by default
    cache = false                              # optional; opts the route out of the response cache

Optionally, the region table (see `isolate.routing.RegionTable`):

    [regions.eu]
    name = "Frankfurt"
    coordinates = [50.1, 8.7]                  # optional: failover goes to the nearest region first
    nodes = ["http://10.0.1.5:8787"]           # edge listeners of the nodes serving this region
    failover = ["us"]                          # optional: explicit order (and limit) for its clients

    [networks]                                 # client address -> region, longest prefix wins
    file = "networks.csv"                      # `cidr,region` lines; relative to the manifest
    "10.1.0.0/16" = "eu"                       # or inline

    [modules.billing]
    path = "billing.wasm"
    regions = ["eu"]                           # placement: may run only in these regions (ignored
                                               # while the server has no region table)

What a module may reach (ABI.md: outbound HTTP, key-value stores, secrets):

    [modules.proxy]
    path = "proxy/"
    allowed_hosts = ["https://api.example.com", "http://127.0.0.1:9000", "https://*.example.org"]
    key_value_stores = ["default"]
    secrets = { api_key = { env = "API_KEY" }, db_password = { file = "secrets/db" } }

A cluster to join (`isolate serve --cluster`, which takes precedence; see isolate.backends):

    [cluster]
    url = "nats://127.0.0.1:4222"

Errors name the file, the line and the reason. Applying a manifest deploys only modules whose bytes
or settings changed, so restarting with the same manifest creates no new versions.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .capabilities import check_secret, check_store_name, parse_allowed_hosts
from .config import parse_limits
from .engine import wat_to_wasm
from .errors import ClusterUnavailable, InvalidConfig, InvalidModule, IsolateError, ManifestError
from .host import Host
from .registry import sha256, validate_name
from .routing import RegionTable, RouteTable, parse_networks_csv, validate_region

if TYPE_CHECKING:
    from .node import ModuleWriter


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    path: Path
    limits: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()
    kv_stores: tuple[str, ...] = ()
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # resolved values: never printed
    line: int = 1
    """Where the module's table starts in the manifest, for errors found when it is deployed."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    modules: tuple[ModuleSpec, ...]
    routes: tuple[dict[str, Any], ...]
    regions: RegionTable | None = None
    """None when the manifest has no [regions]: the server's current region table is kept."""
    placement: dict[str, list[str]] = field(default_factory=dict)
    """Modules' `regions`, also when the manifest has no table (`serve --simulate-regions` uses them)."""
    cluster: str = ""
    """[cluster] url: the NATS JetStream a node started with this manifest joins ("" for none)."""


def load(path: Path, environ: Mapping[str, str] | None = None) -> Manifest:
    """Read and check a manifest; secrets' `env` sources are read from `environ` (default os.environ)."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ManifestError(f"{path}:1: invalid TOML: nested too deeply", line=1) from None
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_in_message(str(exc))
        raise ManifestError(f"{path}:{line}: invalid TOML: {str(exc).split(' (at')[0]}", line=line) from None

    def fail(reason: str, *, module: str | None = None, route: int | None = None, key: str | None = None) -> None:
        line = _locate(text, module=module, route=route, key=key)
        where = f"modules.{module}" if module is not None else (f"routes[{route}]" if route is not None else "")
        if key:
            where = f"{where}.{key}" if where else key
        raise ManifestError(f"{path}:{line}: {where}: {reason}" if where else f"{path}:{line}: {reason}", line=line)

    unknown = set(data) - {"modules", "routes", "regions", "networks", "cluster"}
    if unknown:
        fail(f"unknown table(s) {', '.join(sorted(unknown))}; a manifest has [modules.NAME], [[routes]], "
             "[regions.ID], [networks] and [cluster]", key=sorted(unknown)[0])
    cluster = data.get("cluster", {})
    if not isinstance(cluster, dict) or set(cluster) - {"url"} or not isinstance(cluster.get("url", ""), str) \
            or not str(cluster.get("url", "nats://")).startswith(("nats://", "tls://")):
        fail('must be a table with url = "nats://HOST:PORT"', key="cluster")
    placement: dict[str, Any] = {}
    modules: list[ModuleSpec] = []
    raw_modules = data.get("modules", {})
    if not isinstance(raw_modules, dict):
        fail("must be a table of modules", key="modules")
    for name, spec in raw_modules.items():
        try:
            validate_name(name)
        except IsolateError as exc:
            fail(exc.detail, module=name)
        if not isinstance(spec, dict):
            fail("must be a table with a path", module=name)
        known = ("path", "limits", "variables", "regions", "allowed_hosts", "key_value_stores", "secrets")
        extra = set(spec) - set(known)
        if extra:
            fail(f"unknown key(s) {', '.join(sorted(extra))}; use {', '.join(known)}", module=name,
                 key=sorted(extra)[0])
        try:
            hosts = tuple(entry.text for entry in parse_allowed_hosts(spec.get("allowed_hosts", [])))
        except IsolateError as exc:
            fail(exc.detail, module=name, key="allowed_hosts")
        stores = spec.get("key_value_stores", [])
        if not isinstance(stores, list):
            fail("must be a list of store names", module=name, key="key_value_stores")
        for store in stores:
            try:
                check_store_name(store)
            except IsolateError as exc:
                fail(exc.detail, module=name, key="key_value_stores")
        secrets = _secrets(path, spec.get("secrets", {}), environ,
                           functools.partial(fail, module=name, key="secrets"))
        if "regions" in spec:
            if not isinstance(spec["regions"], list) or not spec["regions"]:
                fail("must be a non-empty list of region ids", module=name, key="regions")
            for region in spec["regions"]:
                try:
                    validate_region(region)
                except IsolateError as exc:
                    fail(exc.detail, module=name, key="regions")
            placement[name] = list(spec["regions"])
        if not isinstance(spec.get("path"), str):
            fail("path (a .wasm or .wat file) is required", module=name, key="path")
        limits = spec.get("limits", {})
        if not isinstance(limits, dict):
            fail("must be a table", module=name, key="limits")
        parsed: dict[str, Any] = {}
        for limit, value in limits.items():
            try:
                parsed.update(parse_limits({limit: value}))
            except IsolateError as exc:
                fail(f"{limit}: {exc.detail}", module=name, key="limits")
        variables = spec.get("variables", {})
        if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
            fail("must be a table of strings", module=name, key="variables")
        if not (path.parent / spec["path"]).exists():
            fail(f"no such file or directory: {(path.parent / spec['path']).resolve()}", module=name, key="path")
        modules.append(ModuleSpec(name, (path.parent / spec["path"]).resolve(), parsed, dict(variables), hosts,
                                  tuple(dict.fromkeys(stores)), secrets,
                                  _locate(text, module=name, route=None, key="path")))

    routes = data.get("routes", [])
    if not isinstance(routes, list):
        fail("must be an array of tables: [[routes]]", key="routes")
    declared = {m.name for m in modules}
    for index, route in enumerate(routes):
        try:
            RouteTable.build([route])
        except IsolateError as exc:
            fail(exc.detail.removeprefix("route 0: "), route=index)
        if route["module"] not in declared:
            fail(f"module {route['module']!r} is not declared in [modules]", route=index, key="module")
    try:
        RouteTable.build(routes)
    except IsolateError as exc:
        fail(exc.detail, route=exc.extra.get("routes", [None, None])[1])
    regions = _region_table(path, data, placement, fail) if "regions" in data else None
    if regions is None and "networks" in data:
        fail("[networks] needs a region table: add [regions.ID] tables", key="networks")
    return Manifest(path, tuple(modules), tuple(routes), regions, placement, str(cluster.get("url", "")))


def _region_table(path: Path, data: dict[str, Any], placement: dict[str, Any], fail: Any) -> RegionTable:
    raw_regions = data["regions"]
    if not isinstance(raw_regions, dict) or not raw_regions:
        fail("must be tables: [regions.ID]", key="regions")
    regions = []
    for region_id, spec in raw_regions.items():
        if not isinstance(spec, dict):
            fail(f"regions.{region_id} must be a table", key="regions")
        regions.append({"id": region_id, **spec})
    networks: list[Any] = []
    raw_networks = data.get("networks", {})
    if not isinstance(raw_networks, dict):
        fail("must be a table of CIDR = region (and file = \"networks.csv\")", key="networks")
    for cidr, region in raw_networks.items():
        if cidr == "file":
            csv_path = (path.parent / str(region)).resolve()
            try:
                text = csv_path.read_text()
            except OSError as exc:
                fail(f"cannot read {csv_path}: {exc.strerror}", key="networks")
            try:
                networks += parse_networks_csv(text, str(csv_path))
            except IsolateError as exc:
                fail(exc.detail, key="networks")
        else:
            networks.append([cidr, region])
    try:
        return RegionTable.build({"regions": regions, "networks": networks, "placement": placement})
    except IsolateError as exc:
        where = next((f"regions.{r}" for r in raw_regions if f"region {r}" in exc.detail), "regions")
        fail(exc.detail, key=where if where != "regions" else "regions")
    raise AssertionError("unreachable")


def with_placement(table: RegionTable, placement: dict[str, list[str]]) -> RegionTable:
    """`table` plus the manifest's module placement (the table's own entries win)."""
    raw = table.to_dict()
    raw["placement"] = {**placement, **raw["placement"]}
    return RegionTable.build(raw)


def _secrets(path: Path, raw: Any, environ: Mapping[str, str], fail: Callable[[str], None]) -> dict[str, str]:
    """`secrets = { NAME = { env = "VAR" } | { file = "PATH" } }`, read now; messages never hold a value."""
    if not isinstance(raw, dict):
        fail('must be a table: secrets = { NAME = { env = "VAR" } } or { file = "PATH" }')
    values: dict[str, str] = {}
    for name, source in raw.items():
        if not isinstance(source, dict) or len(source) != 1 or next(iter(source)) not in ("env", "file") \
                or not isinstance(next(iter(source.values())), str):
            fail(f'{name}: give exactly one source, {{ env = "VAR" }} or {{ file = "PATH" }} (a value written in '
                 "the manifest would be kept in plain text beside the code)")
        kind, where = next(iter(source.items()))
        if kind == "env":
            if where not in environ:
                fail(f"{name}: the environment variable {where} is not set")
            values[name] = environ[where]
        else:
            try:
                values[name] = (path.parent / where).read_text().rstrip("\n")
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"{name}: cannot read {path.parent / where}: {getattr(exc, 'strerror', None) or exc}")
        try:
            check_secret(name, values[name])
        except IsolateError as exc:
            fail(exc.detail)
    return values


def read_module(path: Path) -> bytes:
    """A module's bytes: a `.wasm` file as is, `.wat` text compiled, a source directory built."""
    if Path(path).is_dir():
        from .build import build

        return build(Path(path)).output.read_bytes()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read module: {exc.strerror}") from None
    if not str(path).endswith(".wat") or data.startswith(b"\0asm"):
        return data  # a binary is taken as one, whatever its name says
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidModule(f"{path}: WebAssembly text must be UTF-8 (byte {exc.start} is not)") from None
    return wat_to_wasm(text)


def apply(manifest: Manifest, host: Host, writer: ModuleWriter | None = None) -> list[str]:
    """Deploy the modules whose bytes or settings changed; returns their names (`Node` sets the routes).

    `writer` takes the deploys (default: `host`; a node in a cluster passes the cluster)."""
    writer = writer or host
    deployed = []
    for spec in manifest.modules:
        where = f"{manifest.path}:{spec.line}: modules.{spec.name}.path"
        try:
            wasm = read_module(spec.path)
        except IsolateError as exc:
            raise ManifestError(f"{where}: {exc.kind}: {exc.detail}", module=spec.name, line=spec.line) from None
        try:
            current = host.module(spec.name)
        except IsolateError:
            current = None
        try:
            stored = dict(host.secrets.values(spec.name)) if current is not None else {}
        except IsolateError:
            stored = {}  # damaged: written again below
        secrets = {k: v for k, v in spec.secrets.items() if stored.get(k) != v} or None
        try:
            if (current is None or current.active.digest != sha256(wasm)
                    or dict(current.limit_overrides) != spec.limits or dict(current.variables) != spec.variables
                    or current.allowed_hosts != spec.allowed_hosts or current.kv_stores != spec.kv_stores):
                writer.deploy(spec.name, wasm, limits=spec.limits, variables=spec.variables,
                            allowed_hosts=spec.allowed_hosts, kv_stores=spec.kv_stores, secrets=secrets)
                deployed.append(spec.name)
            elif secrets:
                writer.set_secrets(spec.name, secrets)
                deployed.append(spec.name)
        except ClusterUnavailable:
            raise  # not the manifest's fault: the caller decides (serve goes on with what it has)
        except IsolateError as exc:
            raise ManifestError(f"{manifest.path}:{spec.line}: modules.{spec.name} ({spec.path}): {exc.kind}: "
                                f"{exc.detail}", module=spec.name, line=spec.line) from None
    return deployed


def _line_in_message(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 1


def _locate(text: str, *, module: str | None, route: int | None, key: str | None) -> int:
    """Best-effort line of a key in a table (tomllib gives no positions for valid TOML)."""
    lines = text.splitlines()
    start = 0
    if module is not None:
        header = re.compile(r'\s*\[\s*modules\s*\.\s*"?' + re.escape(module) + r'"?\s*\]')
        start = next((i for i, line in enumerate(lines) if header.match(line)), 0)
    elif route is not None:
        headers = [i for i, line in enumerate(lines) if re.match(r"\s*\[\[\s*routes\s*\]\]", line)]
        start = headers[route] if route < len(headers) else 0
    if key and module is None and route is None:
        header = re.compile(r"\s*\[{1,2}\s*" + re.escape(key) + r"\s*[\].]")
        found = next((i for i, line in enumerate(lines) if header.match(line)), None)
        if found is not None:
            return found + 1
    if key:
        pattern = re.compile(r"\s*" + re.escape(key) + r"\s*[=.]")
        for offset, line in enumerate(lines[start + 1 if (module or route is not None) else 0:]):
            if (module or route is not None) and line.lstrip().startswith("["):
                break
            if pattern.match(line) or (key in line and "=" in line):
                return start + offset + (2 if (module or route is not None) else 1)
    return start + 1
